"""The files a parse writes its sections to, each compressed in shared chunks as it is written.

A section's entries go to a file in the store's tmp (sections.py) in the order the upstream
listed them; merged documents copy them in that order (merge_plan.py). The parser, which
holds the GIL, only copies each window's entries into a buffer; one thread beside it writes
them to the file in chunks of ``spliced.CHUNK`` bytes (the system calls, ~0.1-0.45 s for a
conda-forge-sized section, let the GIL go) and compresses each chunk into position-
independent zstd blocks that every merged ``repodata.json.zst`` over the section copies
(spliced.py; zstd's own threads, no GIL). A parse and its compression then take about the
time of the slower of the two, not their sum. At most ``DEPTH`` chunks wait per file:
memory stays bounded.
"""
from __future__ import annotations

import logging
import uuid
from array import array
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from .merge_plan import ZSTD_LEVEL, ZSTD_THREADS
from .sections import EXTENSIONS, Data, Section, SectionBuilder
from . import spliced
from .spliced import CHUNK, BlockCompressor, CompressedSection, SpliceError

log = logging.getLogger(__name__)
DEPTH = 2  # chunks being compressed or waiting, per file


class ChunkedFile:
    """A section file being written by ``pool``'s thread (the parser only copies its bytes into
    a buffer: the system calls, ~0.1-0.45 s for 200 MB into the page cache, run beside it),
    and (``compressor``) its bytes compressed chunk by chunk into a second file there too."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor, compressor: BlockCompressor | None) -> None:
        self.path = path
        self._out: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pool = pool
        self._compressor = compressor
        self._chunks_path = path.with_name(path.name + ".zst-chunks")
        self._chunks: BinaryIO | None = None
        self._pending: deque[Future[bytes | None]] = deque()
        self._buffer = bytearray()
        self._zoffsets = array("Q", [0])
        self.size = 0
        self.failed: SpliceError | None = None

    def write(self, data: Any) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= CHUNK:
            view = memoryview(self._buffer)
            whole = len(view) - len(view) % CHUNK
            for start in range(0, whole, CHUNK):
                self._submit(bytes(view[start:start + CHUNK]))
            view.release()
            del self._buffer[:whole]

    def _submit(self, chunk: bytes) -> None:
        self._settle(DEPTH - 1)
        self._pending.append(self._pool.submit(self._store, chunk))

    def _store(self, chunk: bytes) -> bytes | None:
        """On the pool's thread: the chunk written, and compressed unless that failed before."""
        self._out.write(chunk)
        if self._compressor is None or self.failed is not None:
            return None
        try:
            return self._compressor.blocks_once(chunk)
        except SpliceError as exc:  # not expected; merges then compress documents whole
            log.warning("not compressing %s in shared chunks: %s", self.path.name, exc)
            self.failed = exc
            return None

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            blocks = self._pending.popleft().result()
            if blocks is None or self.failed is not None:
                continue
            if self._chunks is None:
                self._chunks = open(self._chunks_path, "wb")  # noqa: SIM115 - closed in close()
            self._chunks.write(blocks)
            self._zoffsets.append(self._zoffsets[-1] + len(blocks))

    def finish(self) -> CompressedSection | SpliceError | None:
        """Write the rest, close both files; the compressed chunks if the section is large
        enough to share."""
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer = bytearray()
            self._settle(0)
        finally:
            self.close()
        shared = self._compressor is not None and self.size >= spliced.MIN_SHARED
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
        self._buffer = bytearray()
        self._out.close()
        if self._chunks is not None:
            self._chunks.close()

    def remove_chunks(self) -> None:
        self._chunks_path.unlink(missing_ok=True)


class SectionFiles:
    """The files one parse writes its sections to, one per extension, in ``workdir``: a
    context that closes them, and removes every one of them when the parse fails.
    ``compress``: compress them in shared chunks while they are written."""

    def __init__(self, workdir: Path, *, compress: bool = False, level: int = ZSTD_LEVEL,
                 threads: int = ZSTD_THREADS) -> None:
        stem = workdir / f"conda-records-{uuid.uuid4().hex}"
        self.paths = {ext: stem.with_suffix(f".{ext.strip('.').replace('.', '-')}") for ext in EXTENSIONS}
        self.outputs: dict[str, ChunkedFile] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="conda-sections")
        self._compress, self._level, self._threads = compress, level, threads
        self._finished: dict[str, CompressedSection | SpliceError | None] | None = None

    def __enter__(self) -> "SectionFiles":
        try:
            # one compressor (zstd's worker threads and buffers) for both files: one thread uses it
            compressor = BlockCompressor(self._level, self._threads) if self._compress else None
            for ext, path in self.paths.items():
                self.outputs[ext] = ChunkedFile(path, self._pool, compressor)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._remove()
        elif self._finished is None:
            self.finish()

    def finish(self) -> dict[str, CompressedSection | SpliceError | None]:
        """Write what is left and close the files: each section's compressed chunks (see
        ``ChunkedFile.finish``). Before ``data`` is read."""
        if self._finished is None:
            try:
                self._finished = {ext: out.finish() for ext, out in self.outputs.items()}
            finally:
                self._close()
        return self._finished

    def _close(self) -> None:
        """Close the files, abandoning what was not written yet (after an error; ``finish`` writes it)."""
        try:
            for out in self.outputs.values():
                out.close()
        finally:
            self._pool.shutdown()

    def sections(self, builders: Mapping[str, SectionBuilder]) -> dict[str, Section]:
        """The parse's sections, once every entry was added to ``builders``: the files finished,
        each section over its file with its shared chunks (``Section.compressed``). An upstream
        that was not sorted stays as it came (``perm``): merges copy it in its own order
        (merge_plan.layout), so its chunks could be compressed while it was parsed."""
        compressed = self.finish()
        sections = {}
        for ext, path in self.paths.items():
            sections[ext] = section = builders[ext].finish(Data(path=path))
            section.compressed = compressed[ext]
        return sections

    def _remove(self) -> None:
        try:
            self._close()
        finally:
            for path in self.paths.values():
                path.unlink(missing_ok=True)
            for out in self.outputs.values():
                out.remove_chunks()
