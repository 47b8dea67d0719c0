"""Decompression on a thread of its own, ahead of the parser.

zstd and bz2 decoders release the GIL while they decode, and msgspec holds it while it
parses: with the decoder one chunk ahead on another core, a 200 MB ``repodata.json.zst``
is parsed in the time of its parse alone, not of decode + parse. Memory stays bounded:
at most ``DEPTH`` chunks wait in the queue.
"""
from __future__ import annotations

import queue
import threading
from typing import BinaryIO

CHUNK = 4 << 20
DEPTH = 3


class ReadAhead:
    """A read-only stream (``readinto``/``read``/``close``) over ``source``, decoded by a
    daemon thread. An error of the source is raised to the reader at the point it occurred."""

    def __init__(self, source: BinaryIO, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._source = source
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="conda-readahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                if not data:
                    break
                if not self._put(data):
                    return
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self._put(exc)

    def _next(self) -> bool:
        """Load the next chunk into ``_pending``; False at the end of the stream."""
        if self._done:
            return False
        item = self._queue.get()
        if item is None:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._pending = memoryview(item)
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if not self._pending and not self._next():
            return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        parts = []
        while size < 0 or size > 0:
            if not self._pending and not self._next():
                break
            take = len(self._pending) if size < 0 else min(size, len(self._pending))
            parts.append(bytes(self._pending[:take]))
            self._pending = self._pending[take:]
            size = size - take if size >= 0 else size
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._source.close()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
