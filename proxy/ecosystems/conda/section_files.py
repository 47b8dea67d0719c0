"""The files a parse writes its sections to, each compressed in shared chunks as it is written.

A section's entries go to a file in the store's tmp (sections.py) in the order the upstream
listed them; merged documents copy them in that order (merge_plan.py). A large section is
also compressed as it arrives, in ``spliced.CHUNK``-byte chunks of position-independent
zstd blocks that every merged ``repodata.json.zst`` over it copies (spliced.py): the
compression runs on zstd's threads (no GIL) while the parser, which holds the GIL, goes on
with the next window, so a conda-forge-sized parse and its compression take the time of
the slower of the two, not their sum. At most ``DEPTH`` chunks wait: memory stays bounded.
"""
from __future__ import annotations

import logging
import os
import uuid
from array import array
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from .merge_plan import ZSTD_LEVEL, ZSTD_THREADS
from .sections import EXTENSIONS, Data, Section, sorted_on_disk
from . import spliced
from .spliced import CHUNK, BlockCompressor, CompressedSection, SpliceError

log = logging.getLogger(__name__)
DEPTH = 2  # chunks being compressed or waiting, per file


class ChunkedFile:
    """A section file being written, and (``compress``) its bytes compressed chunk by chunk
    into a second file by ``pool``'s thread, which reads each chunk back from the page cache
    once it is whole: the parser copies nothing more than it writes."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor | None, compressor: BlockCompressor | None) -> None:
        self.path = path
        self._out: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pool = pool
        self._compressor = compressor
        self._fd = os.open(path, os.O_RDONLY) if compressor is not None else -1
        self._chunks_path = path.with_name(path.name + ".zst-chunks")
        self._chunks: BinaryIO | None = None
        self._pending: deque[Future[bytes]] = deque()
        self._submitted = 0  # bytes handed to the compressor
        self._zoffsets = array("Q", [0])
        self.size = 0
        self.failed: SpliceError | None = None

    def write(self, data: Any) -> None:
        self._out.write(data)
        self.size += len(data)
        if self._compressor is not None and self.size - self._submitted >= CHUNK:
            self._out.flush()  # the chunk's bytes are in the file (the page cache) for the thread
            while self.size - self._submitted >= CHUNK:
                self._submit(CHUNK)

    def _submit(self, size: int) -> None:
        assert self._pool is not None and self._compressor is not None
        self._settle(DEPTH - 1)
        if self.failed is None:
            self._pending.append(self._pool.submit(self._compressor.read_blocks, self._fd, self._submitted, size))
        self._submitted += size

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            future = self._pending.popleft()
            try:
                blocks = future.result()
            except SpliceError as exc:  # not expected; merges then compress documents whole
                log.warning("not compressing %s in shared chunks: %s", self.path.name, exc)
                self.failed = exc
                continue
            if self._chunks is None:
                self._chunks = open(self._chunks_path, "wb")  # noqa: SIM115 - closed in close()
            self._chunks.write(blocks)
            self._zoffsets.append(self._zoffsets[-1] + len(blocks))

    def finish(self) -> CompressedSection | SpliceError | None:
        """Close both files; the compressed chunks if the section is large enough to share."""
        shared = self._compressor is not None and self.size >= spliced.MIN_SHARED
        try:
            if shared and self.failed is None:
                self._out.flush()
                if self.size > self._submitted:
                    self._submit(self.size - self._submitted)
                self._settle(0)
        finally:
            self.close()
        if self.failed is not None or not shared:
            self.remove_chunks()
            return self.failed
        return CompressedSection(self._chunks_path, self.size, self._zoffsets)

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()  # wait: its thread must be done with the file
        self._pending.clear()
        self._out.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._chunks is not None:
            self._chunks.close()

    def remove_chunks(self) -> None:
        self._chunks_path.unlink(missing_ok=True)


class SectionFiles:
    """The files one parse writes its sections to, one per extension, in ``workdir``: a
    context that closes them, and removes every one of them when the parse fails.
    ``compress``: compress them in shared chunks while they are written (not for sections
    that ``sort`` rewrites afterwards)."""

    def __init__(self, workdir: Path, *, compress: bool = False, level: int = ZSTD_LEVEL,
                 threads: int = ZSTD_THREADS) -> None:
        stem = workdir / f"conda-records-{uuid.uuid4().hex}"
        self.paths = {ext: stem.with_suffix(f".{ext.strip('.').replace('.', '-')}") for ext in EXTENSIONS}
        self.outputs: dict[str, ChunkedFile] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="conda-chunks") if compress else None
        self._level, self._threads = level, threads

    def __enter__(self) -> "SectionFiles":
        try:
            for ext, path in self.paths.items():
                compressor = BlockCompressor(self._level, self._threads) if self._pool is not None else None
                self.outputs[ext] = ChunkedFile(path, self._pool, compressor)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._remove()
        else:
            self.close()

    def finish(self) -> dict[str, CompressedSection | SpliceError | None]:
        """Close the files: each section's compressed chunks (see ``ChunkedFile.finish``)."""
        try:
            return {ext: out.finish() for ext, out in self.outputs.items()}
        finally:
            self.close()

    def close(self) -> None:
        try:
            for out in self.outputs.values():
                out.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown()

    def data(self) -> dict[str, Data]:
        return {ext: Data(path=path) for ext, path in self.paths.items()}

    def sort(self, sections: dict[str, Section]) -> None:
        """Sections whose entries did not arrive sorted, sorted once on disk (so merges copy
        long ranges)."""
        for ext, section in sections.items():
            if section.perm is not None:
                sections[ext] = sorted_on_disk(section, self._sorted_path(ext))

    def _sorted_path(self, ext: str) -> Path:
        return self.paths[ext].with_name(self.paths[ext].name + "-sorted")

    def _remove(self) -> None:
        try:
            self.close()
        finally:
            for ext, path in self.paths.items():
                path.unlink(missing_ok=True)
                self._sorted_path(ext).unlink(missing_ok=True)
            for out in self.outputs.values():
                out.remove_chunks()
