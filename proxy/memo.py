"""Two small in-process helpers every ecosystem uses: ``SingleFlight`` (one running
computation per key) and ``Memo`` (a small LRU of derived values)."""
from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One running computation per key; concurrent callers share its task and result.

    ``start`` begins (or joins) the work without waiting, for background refreshes;
    ``run`` waits for it. A caller that goes away does not cancel the shared work.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def start(self, key: K, factory: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return task

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        return await asyncio.shield(self.start(key, factory))

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # callers of run() get it; background work logs its own failures

    def cancel_all(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


class Memo(Generic[K, V]):
    """A small LRU for values derived from cached documents (parsed indexes, rendered pages),
    keyed by whatever identifies their inputs (document digests, catalog generations)."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        value = self.get(key)
        return value if value is not None else self.put(key, build())


class PerIteration(Generic[V]):
    """A value read at most once per event-loop iteration (on the loop's thread; any other
    thread reads it afresh each time).

    For a check that must see every commit a client could know about, e.g. SQLite's
    ``data_version`` (has another process committed?): a request handled in iteration K
    arrived before that iteration's select() returned, and the value is read after it, so
    anything committed before the request arrived is seen. The value is forgotten by a
    callback queued for iteration K+1, ahead of that iteration's I/O callbacks, so no request
    that arrives later can be answered with it. With 64 busy connections one read serves
    ~20 requests."""

    def __init__(self, read: Callable[[], V]) -> None:
        self._read = read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the loop's thread while a value is held
        self._value: V | None = None

    def get(self) -> V:
        loop = self._loop
        # held for this iteration: the loop still runs, and this is its thread (no syscall:
        # asyncio.get_running_loop() asks getpid() on every call in Python 3.11)
        if loop is not None and self._thread == threading.get_ident() and loop.is_running():
            return self._value  # type: ignore[return-value]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return self._read()
        value = self._read()
        if loop is None or not loop.is_running():  # (a loop that stopped before forgetting: replaced)
            self._loop, self._thread, self._value = running, threading.get_ident(), value
            running.call_soon(self._forget)
        return value

    def _forget(self) -> None:
        self._loop = self._value = None
