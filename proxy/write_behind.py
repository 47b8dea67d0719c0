"""Write-behind for small stored things (issue 15, the cold resolve rows): a value the server
has in hand and has checked (an upstream's project page, a verified PEP 658 file, METADATA
read out of a wheel) answers its waiting clients from memory at once, and its durable write
(temp file, fsync, rename: ``store.blobs.atomic_write``, ``TempBlob.commit``) runs behind.

A cold resolve asks for a page and a metadata file per project within a few hundred
milliseconds. Written at once, each of them costs a trip to a pool thread and a few
milliseconds of fsync, and the threads take the GIL from the event loop just when the client
waits for the next answer. So the writes wait until the server has had no new one to make
for QUIET seconds (or LATEST seconds have passed since the oldest, or HELD_BYTES are held),
and then run one after the other.

What stays true (DESIGN, "Caching semantics"):
- the durable write itself is unchanged: a crash before the rename leaves a temp file in
  this process's scratch directory, which is never served and is swept at the next start;
  so a crash loses a copy (fetched again when next asked for), never leaves half of one
  that can be served;
- until the write is done the value is *held*: every lookup of its key in this process
  (``get``) sees it, so single flight holds (no second upstream fetch) and nothing reads
  a file that is not there yet;
- other processes sharing the store learn of it only once it is durable (callers publish
  freshness and release cross-replica leases after the write, not before);
- writes run in the order they were started (a later copy of a key is never overwritten
  by an earlier one);
- ``drain`` (at shutdown, before the scratch directory goes) writes everything held now.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

QUIET = 0.05  # seconds without a new write before the held values are written
LATEST = 1.0  # seconds a value is held at most before its write starts
HELD_BYTES = 32 << 20  # bytes held at most: beyond, writes start at once


class Gauge(Protocol):
    """What is counted of held values (prometheus-client's Gauge: channelgate_held_writes)."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


@dataclass(eq=False)
class _Entry(Generic[K, V]):
    key: K
    value: V
    size: int
    write: Callable[[], Awaitable[object]]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WriteBehind(Generic[K, V]):
    """Values held in memory, by key, while their durable writes wait and run."""

    def __init__(self, what: str, *, quiet: float = QUIET, latest: float = LATEST, held_bytes: int = HELD_BYTES,
                 gauge: Gauge | None = None) -> None:
        self.what = what  # for log lines: "index copy", "small cached file"
        self.gauge = gauge
        self.quiet, self.latest, self.held_bytes = quiet, latest, held_bytes
        self._held: dict[K, _Entry[K, V]] = {}
        self._queue: list[_Entry[K, V]] = []
        self._bytes = 0
        self._first = self._last = 0.0  # monotonic times of the oldest and newest queued write
        self._hurry: asyncio.Event | None = None
        self._draining = False
        self._runner: asyncio.Task[None] | None = None

    def get(self, key: K) -> V | None:
        """The value of ``key`` whose durable write is not done yet, or None."""
        entry = self._held.get(key)
        return entry.value if entry is not None else None

    def __len__(self) -> int:
        return len(self._held)

    def start(self, key: K, value: V, write: Callable[[], Awaitable[object]], size: int = 0) -> asyncio.Future[None]:
        """Hold ``value`` (about ``size`` bytes) under ``key`` until ``write()``, its durable
        write, is done; the future returned is done then too. A failed write is logged: the
        value was answered already, only its copy is lost."""
        entry: _Entry[K, V] = _Entry(key, value, size, write)
        now = time.monotonic()
        if not self._queue:
            self._first = now
        self._last = now
        self._held[key] = entry
        self._queue.append(entry)
        self._bytes += size
        if self.gauge is not None:
            self.gauge.inc()
        if self._bytes >= self.held_bytes and self._hurry is not None:
            self._hurry.set()
        if self._runner is None:
            # an empty context: the writes are no request's doing (access line, kept answers)
            self._runner = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())
        return entry.done

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._settle()
                batch, self._queue = self._queue, []
                for entry in batch:
                    await self._write(entry)
        finally:
            self._runner = None

    async def _settle(self) -> None:
        """Wait until QUIET seconds passed without a new write, or LATEST since the oldest,
        or the held bytes reach HELD_BYTES, or ``drain`` is called."""
        self._hurry = hurry = asyncio.Event()
        if self._bytes >= self.held_bytes or self._draining:
            return
        while True:
            left = min(self._last + self.quiet, self._first + self.latest) - time.monotonic()
            if left <= 0 or hurry.is_set():
                return
            try:
                await asyncio.wait_for(hurry.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _write(self, entry: _Entry[K, V]) -> None:
        try:
            await entry.write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a full disk, a bucket gone: the answer went out already
            log.warning("could not store the %s %s: %r", self.what, entry.key, exc)
        finally:
            self._bytes -= entry.size
            if self.gauge is not None:
                self.gauge.dec()
            if self._held.get(entry.key) is entry:
                del self._held[entry.key]
            if not entry.done.done():
                entry.done.set_result(None)

    async def drain(self) -> None:
        """Write everything held now (and wait for it)."""
        self._draining = True
        try:
            while self._runner is not None:
                if self._hurry is not None:
                    self._hurry.set()
                await asyncio.wait([self._runner])
            # (a runner that was cancelled leaves its entries: write them here)
            batch, self._queue = self._queue, []
            for entry in batch:
                await self._write(entry)
        finally:
            self._draining = False


__all__ = ["Gauge", "HELD_BYTES", "LATEST", "QUIET", "WriteBehind"]
