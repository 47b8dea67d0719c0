"""Coordination across replicas through Redis (issue 13 part 3; DESIGN, "Scale-out on existing
engines"). With ``cache.backend: redis`` every replica (and every ``--workers`` process) shares:

- **Artifact leases** (single flight across replicas): ``SET lock:<key> <token> NX PX <lease>``
  (the Redis lock pattern); the holder renews it every ``lease/3`` while it downloads and
  deletes it (only if still its own) when done, then publishes the outcome. Waiters on other
  replicas wake on that message, or poll the lock with backoff in case they missed it; a lock
  that vanished without a message means its holder died (the lease lapsed): they take over.
- **Invalidation**: each catalog change a process commits is published as one message per
  (channel, ecosystem); every other process tells its catalog to re-read that pair, so an
  upload is in every replica's merged indexes as soon as the message lands, whatever the
  catalog backend does by itself.
- **The sign-in brake** (auth.accounts.FailureLimiter): each failed authentication is also
  added to a sorted set per key in Redis (``channelgate:brake:<sha256 of the key>``: client
  addresses and user names, which may hold a mistyped secret, never go to Redis as they are),
  trimmed to the window; the process whose failure fills the set publishes the key's
  "braked until", so every process refuses it from then on (the check itself never waits on
  Redis: it reads what the messages brought).

**Redis down**: every operation falls back to local coordination (a lease is granted at once:
single flight is then per process, as without Redis; nothing is published), the outage is
logged once and its end once, and ``state`` names it for readiness (health.py). When the
subscription comes back, every catalog snapshot is re-read (messages may have been missed).

Without ``cache.backend: redis`` the coordinator is local from the start and never logs.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EVENTS = "channelgate:events"
LOCK_PREFIX = "channelgate:lock:"
POLL_MAX = 1.0  # seconds between lock checks when no message arrives (a missed message)
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
BRAKE_PREFIX = "channelgate:brake:"
MAX_BRAKES = 100_000  # braked keys remembered per process (bounded memory)
# one failure at ARGV[1] (wall clock) in a window of ARGV[2] s, at most ARGV[3] kept: the oldest
# kept failure's time when the set is full (braked until it leaves the window), else false
_FAIL = """
local now, window, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - window)
redis.call('zadd', KEYS[1], now, ARGV[4])
redis.call('zremrangebyrank', KEYS[1], 0, -(most + 1))
redis.call('pexpire', KEYS[1], math.ceil(window * 1000))
if redis.call('zcard', KEYS[1]) >= most then return redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')[2] end
return false
"""

# what a waiter learns: the file was published, its download failed, the lease is gone
# without a word (the holder died: take over), or Redis is down (coordinate locally)
PUBLISHED, FAILED, LAPSED, DOWN = "published", "failed", "lapsed", "down"

Changed = Callable[[str | None, str | None], None]  # (channel, ecosystem); None, None: everything


class Lease:
    """The right to download one key, cluster-wide (or only locally when Redis is not in use)."""

    def __init__(self, coordinator: "Coordinator", key: str, token: str | None) -> None:
        self.coordinator, self.key, self.token = coordinator, key, token
        self._heartbeat: asyncio.Task[None] | None = None
        if token is not None:
            self._heartbeat = asyncio.create_task(coordinator._renew(self))

    async def release(self, *, ok: bool) -> None:
        """Give the lease up and tell the waiters whether the file is in the shared store."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.token is not None:
            await self.coordinator._release(self, ok=ok)


class Coordinator:
    """One per process (built by app.open_services). ``redis_url`` None: local only."""

    def __init__(self, redis_url: str | None, *, lease_seconds: float = 15.0) -> None:
        self.redis_url = redis_url
        self.lease_ms = int(lease_seconds * 1000)
        self.me = uuid.uuid4().hex
        self._client: Any = None
        self._down: str | None = None  # why Redis is unusable, while it is
        self._on_change: list[Changed] = []
        self._waiters: dict[str, tuple[asyncio.Event, list[str]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = asyncio.Event()
        self._brakes: dict[str, float] = {}  # sha256 of a brake key -> wall-clock time it is braked until

    @property
    def shared(self) -> bool:
        return self.redis_url is not None

    @property
    def state(self) -> str | None:
        """For readiness: None without Redis, "ok", or why Redis is down."""
        if not self.shared:
            return None
        return self._down or "ok"

    async def start(self, on_change: Changed) -> None:
        """Connect, and listen for other processes' changes (``on_change`` is called for each)."""
        self._on_change.append(on_change)
        self._loop = asyncio.get_running_loop()
        if self.redis_url is None:
            return
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=5)
        self._listener = asyncio.create_task(self._listen())
        try:  # the first subscription, so a change made right after start is not missed
            await asyncio.wait_for(self._subscribed.wait(), 3)
        except asyncio.TimeoutError:
            pass  # Redis is down: logged by the listener, which keeps trying

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def up(self) -> bool:
        """Redis is in use and was reachable at the last attempt."""
        return self.shared and self._down is None

    def report(self, exc: BaseException) -> None:
        """Another user of Redis (the index cache) found it failing."""
        self._failed(exc)

    # -- Redis health: log once when it goes, once when it comes back
    def _failed(self, exc: BaseException) -> None:
        if self._down is None:
            log.warning("Redis is unreachable, coordinating locally until it is back: %s",
                        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self._down = f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__

    def _ok(self) -> None:
        if self._down is not None:
            log.warning("Redis is back: coordinating across replicas again")
            self._down = None

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One Redis command; raises _Down (after logging) when Redis cannot be used."""
        try:
            result = await getattr(self._client, method)(*args, **kwargs)
        except (OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise _Down() from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):  # ConnectionError, TimeoutError, ...
                self._failed(exc)
                raise _Down() from exc
            raise
        self._ok()
        return result

    # -- invalidation
    def changed_here(self, channel: str, ecosystem: str) -> None:
        """This process committed a change to (channel, ecosystem): tell the others. Safe to
        call from any thread (catalog writes may run in worker threads)."""
        if self._client is None or self._loop is None:
            return
        message = json.dumps({"from": self.me, "kind": "catalog", "channel": channel, "ecosystem": ecosystem})
        self._spawn(self._publish(message))

    def _spawn(self, job: Any) -> None:
        """Run ``job`` on this coordinator's loop, from the loop's thread or any other."""
        assert self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.create_task(job)
        else:
            asyncio.run_coroutine_threadsafe(job, self._loop)

    # -- the sign-in brake, shared (auth.accounts.SharedBrake)
    def note_failure(self, key: str, max_failures: int, window: float) -> None:
        """A failed authentication for ``key`` (``addr:...``/``user:...``): counted in Redis in
        the background; without Redis (or while it is down) the brake stays per process."""
        if self._client is not None and self._loop is not None and self.up:
            self._spawn(self._count_failure(_brake_id(key), max_failures, window))

    def braked_until(self, key: str) -> float | None:
        """The wall-clock time until which another process (or this one) braked ``key``."""
        if not self._brakes:
            return None
        ident = _brake_id(key)
        until = self._brakes.get(ident)
        if until is not None and until <= time.time():
            del self._brakes[ident]
            return None
        return until

    def braking(self) -> bool:
        """Whether any key is braked now (expired brakes are forgotten here)."""
        if self._brakes and max(self._brakes.values()) <= time.time():
            self._brakes.clear()
        return bool(self._brakes)

    async def _count_failure(self, ident: str, max_failures: int, window: float) -> None:
        try:
            oldest = await self._call("eval", _FAIL, 1, BRAKE_PREFIX + ident, time.time(), window, max_failures,
                                      uuid.uuid4().hex)
            if oldest is not None:
                until = float(oldest) + window
                self._brake(ident, until)
                await self._call("publish", EVENTS, json.dumps(
                    {"from": self.me, "kind": "brake", "key": ident, "until": until}))
        except _Down:
            pass  # logged; the brake is per process meanwhile

    def _brake(self, ident: str, until: float) -> None:
        if len(self._brakes) >= MAX_BRAKES:
            now = time.time()
            self._brakes = {k: v for k, v in self._brakes.items() if v > now}
            if len(self._brakes) >= MAX_BRAKES:  # still full: forget the oldest half
                self._brakes = dict(list(self._brakes.items())[MAX_BRAKES // 2:])
        self._brakes[ident] = max(until, self._brakes.get(ident, 0.0))

    async def _publish(self, message: str) -> None:
        if not self.up:
            return  # other replicas re-read everything once their subscription is back
        try:
            await self._call("publish", EVENTS, message)
        except _Down:
            pass  # logged; other replicas re-read everything once they resubscribe

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(EVENTS)
                    recovered = self._down is not None
                    self._ok()
                    self._subscribed.set()
                    delay = 0.1
                    if recovered:  # messages may have been missed while Redis was away
                        self._notify_change(None, None)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._dispatch(message.get("data"))
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the subscription: Redis is down, retry
                self._failed(exc)
                self._wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _dispatch(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict) or event.get("from") == self.me:
            return
        if event.get("kind") == "catalog":
            self._notify_change(str(event.get("channel")), str(event.get("ecosystem")))
        elif event.get("kind") == "brake":
            try:
                self._brake(str(event["key"]), float(event["until"]))
            except (KeyError, TypeError, ValueError):
                pass
        elif event.get("kind") == "artifact":
            waiter = self._waiters.get(str(event.get("key")))
            if waiter is not None:
                waiter[1].append(PUBLISHED if event.get("ok") else FAILED)
                waiter[0].set()

    def _notify_change(self, channel: str | None, ecosystem: str | None) -> None:
        for callback in self._on_change:
            try:
                callback(channel, ecosystem)
            except Exception:
                log.exception("could not apply a change another replica made")

    def _wake_all(self) -> None:
        for event, outcomes in self._waiters.values():
            outcomes.append(DOWN)
            event.set()

    # -- artifact leases (single flight across replicas)
    async def acquire(self, key: str) -> Lease | None:
        """The lease on ``key``, or None while another process holds it. Without Redis (or
        while it is down) the lease is granted at once: single flight is then per process."""
        if self._client is None or not self.up:  # while Redis is down, the listener watches for its return
            return Lease(self, key, None)
        token = f"{self.me}:{uuid.uuid4().hex}"
        try:
            taken = await self._call("set", LOCK_PREFIX + key, token, nx=True, px=self.lease_ms)
        except _Down:
            return Lease(self, key, None)
        return Lease(self, key, token) if taken else None

    async def wait(self, key: str) -> str:
        """Until the holder of ``key``'s lease finishes: PUBLISHED, FAILED, LAPSED (the lease
        is gone without a word: take over) or DOWN (Redis went away: coordinate locally)."""
        if not self.up:
            return DOWN
        event, outcomes = self._waiters.setdefault(key, (asyncio.Event(), []))
        delay = 0.05
        try:
            while True:
                try:
                    held = await self._call("exists", LOCK_PREFIX + key)
                except _Down:
                    return DOWN
                if outcomes:
                    return outcomes[-1]
                if not held:
                    return LAPSED
                try:
                    await asyncio.wait_for(event.wait(), delay)
                except asyncio.TimeoutError:
                    delay = min(delay * 2, POLL_MAX)
                if outcomes:
                    return outcomes[-1]
        finally:
            if self._waiters.get(key) == (event, outcomes):
                del self._waiters[key]

    async def _renew(self, lease: Lease) -> None:
        """The heartbeat: extend the lease while the download runs."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                kept = await self._call("eval", _RENEW, 1, LOCK_PREFIX + lease.key, lease.token, self.lease_ms)
            except _Down:
                continue
            if not kept:
                log.warning("the lease on %s lapsed (a stall?): another replica may fetch it too", lease.key)
                return

    async def _release(self, lease: Lease, *, ok: bool) -> None:
        message = json.dumps({"from": self.me, "kind": "artifact", "key": lease.key, "ok": ok})
        try:
            await self._call("eval", _RELEASE, 1, LOCK_PREFIX + lease.key, lease.token)
            await self._call("publish", EVENTS, message)
        except _Down:
            pass  # the lease lapses by itself; waiters poll


class Resilient:
    """Index freshness in a shared aiocache (Redis) that falls back to this process's memory
    while Redis is down (then freshness is per process, as without Redis) instead of failing
    the request (issue 13: "Redis down: fall back to local coordination and keep serving")."""

    def __init__(self, shared: Any, coordinator: Coordinator) -> None:
        from aiocache import SimpleMemoryCache

        self.shared = shared
        self.local = SimpleMemoryCache(timeout=None)
        self.coordinator = coordinator

    async def get(self, key: str) -> Any:
        if self.coordinator.up:
            try:
                return await self.shared.get(key)
            except Exception as exc:  # the shared cache is an optimisation: never fail a request on it
                self.coordinator.report(exc)
        return await self.local.get(key)

    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        if self.coordinator.up:
            try:
                await self.shared.set(key, value, ttl=ttl)
                return
            except Exception as exc:
                self.coordinator.report(exc)
        await self.local.set(key, value, ttl=ttl)

    async def close(self) -> None:
        # aiocache 0.12's RedisCache.close() calls redis-py's deprecated Redis.close() (a
        # DeprecationWarning since redis 5.0.1): close its client by aclose() ourselves
        aclose = getattr(getattr(self.shared, "client", None), "aclose", None)
        if callable(aclose):
            await aclose()
        else:
            await self.shared.close()
        await self.local.close()


def _brake_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class _Down(Exception):
    """Redis cannot be used right now (already logged)."""


__all__ = ["DOWN", "FAILED", "LAPSED", "PUBLISHED", "Coordinator", "Lease", "Resilient"]
