"""One PostgreSQL database shared by every replica (DESIGN "Scale-out on existing engines"):
a connection pool for writes and loads, and one connection that LISTENs for changes.

Why this shape: the request path reads the catalog synchronously (~60 call sites) and must
not wait for a database round trip, so every backend keeps an in-memory mirror and serves
reads from it. Writes are coroutines (asyncpg): each write bumps its (channel, ecosystem)
generation and sends ``NOTIFY channelgate`` in its own transaction; PostgreSQL delivers the
notification on commit, and every replica's listener reloads just that pair (one query), so
an upload through one replica is in the others' indexes within a second. The writer reloads
at once itself (read-your-writes). When the listening connection is lost, the backend
reconnects with back-off and reloads everything; readiness reports it meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from ..errors import StorageError, Unavailable
from .pg_schema import migrate

log = logging.getLogger(__name__)

CHANNEL = "channelgate"  # the NOTIFY channel
CONNECT_TIMEOUT = 10.0  # seconds to reach the server
COMMAND_TIMEOUT = 30.0  # seconds one statement may take
POOL_SIZE = 8
RETRY_MAX = 5.0  # seconds between reconnection attempts of the listener, at most

# what a lost or refusing server raises (not a constraint violation: that is the caller's to map)
_UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                asyncpg.ObjectNotInPrerequisiteStateError, asyncpg.AdminShutdownError)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class PgBackend:
    """The pool, the listener and the dispatch of notifications to the mirrors' handlers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._handlers: dict[str, Handler] = {}
        self._resync: list[Callable[[], Awaitable[None]]] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.applied = asyncio.Condition()  # notified after each change notification is applied

    @classmethod
    async def open(cls, url: str, *, listen: bool = True) -> "PgBackend":
        """Connect, apply the schema migrations this database lacks, and start listening."""
        db = cls(url)
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            db._pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
                                                 command_timeout=COMMAND_TIMEOUT)
            if listen:
                await db._listen()
                db._spawn(db._dispatch())
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            await db.close()
            raise StorageError(f"database: cannot open {_safe(url)}: {type(exc).__name__}: {exc}") from exc
        return db

    # ------------------------------------------------------------------ wiring
    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler`` with each notification of this kind (in the order they were sent)."""
        self._handlers[kind] = handler

    def on_resync(self, reload: Callable[[], Awaitable[None]]) -> None:
        """Call ``reload`` after the listener reconnected (notifications may have been missed)."""
        self._resync.append(reload)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("database: closed")
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A write transaction; the database being unreachable is ``Unavailable`` (503), never a hang."""
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                yield conn
        except _UNREACHABLE as exc:
            log.warning("database: a write failed, the database is unavailable: %s", type(exc).__name__)
            raise Unavailable() from exc

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """A read-only transaction that sees one consistent state (loads of a mirror)."""
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                yield conn
        except _UNREACHABLE as exc:
            raise Unavailable() from exc

    @staticmethod
    async def notify(conn: asyncpg.Connection, kind: str, **fields: Any) -> None:
        """Tell every replica (this one too) what changed; delivered when the transaction commits."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps({"k": kind, **fields}))

    async def check(self) -> None:
        """Readiness: one query, and the listener must be connected (else replicas drift)."""
        await self.pool.fetchval("SELECT 1")
        if self._listener is None or self._listener.is_closed():
            raise StorageError("database: not listening for other replicas' changes (reconnecting)")

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            async with self.applied:
                await self.applied.wait_for(predicate)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close(timeout=2)
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # ------------------------------------------------------------------ listening
    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` in the background (kept referenced; cancelled on close; failures logged)."""
        self._spawn(self._logged(coro))

    @staticmethod
    async def _logged(coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception as exc:  # a failed refresh is retried by the next notification
            log.warning("database: a background reload failed: %s", exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
        await conn.add_listener(CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        self._listener = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._queue.put_nowait(str(payload))

    def _lost(self, conn: object) -> None:
        if self._closed:
            return
        log.warning("database: the listening connection was lost; reconnecting")
        self._listener = None
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                await self._listen()
                for reload in self._resync:
                    await reload()
                log.warning("database: listening again; mirrors reloaded")
                async with self.applied:
                    self.applied.notify_all()
                return
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, StorageError) as exc:
                log.debug("database: reconnect failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _dispatch(self) -> None:
        """Apply notifications one at a time, in the order PostgreSQL sent them."""
        while True:
            payload = await self._queue.get()
            try:
                message = json.loads(payload)
                handler = self._handlers.get(str(message.get("k")))
                if handler is not None:
                    await handler(message)
                async with self.applied:
                    self.applied.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad notification must not stop the listener
                log.exception("database: applying a change notification failed; it is applied on the next one")


def _safe(url: str) -> str:
    """The URL without its password (for messages)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}@{tail}"


__all__ = ["CHANNEL", "PgBackend"]
