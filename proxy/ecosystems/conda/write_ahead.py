"""The first merged ``repodata.json.zst`` of an upstream, written while it is still parsed.

An upstream's ``packages`` section (``.tar.bz2``, ~40% of conda-forge linux-64) ends before
``packages.conda`` begins. The parse (parse.py) holds the GIL on one core; zstd compresses on
threads of its own. So as soon as ``packages`` is parsed (``SectionDone``), ``write_ahead``
merges it with the uploads and streams it through zstd on the other core while the parser
reads ``packages.conda``; once the whole plan is known (``assemble``), it writes the rest.
Only for one upstream without a filter (a filter may need every record to decide, e.g.
``latest``), and only when the plan agrees with what was written ahead (same runs, the
very section object the parse returned: a later ``packages.conda`` may add ``.tar.bz2``
entries); otherwise it gives up and the build writes the document as usual.

The document's size is known only at the end, and one-shot zstd decoders need it in the
frame header: ``DeferredSizeFrame`` leaves room before the frame and writes the header again
with ``Frame_Content_Size`` (RFC 8878, 3.1.1.1) when the frame is complete.
"""
from __future__ import annotations

import itertools
import mmap
import os
import queue
import uuid
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Literal, Union

import zstandard

from .merge_plan import (
    SECTION_SEPARATOR,
    ZSTD_LEVEL,
    ZSTD_THREADS,
    _BATCH,
    Piece,
    Plan,
    document_head,
    merge_runs,
    positions_of,
    section_pieces,
)
from .sections import EXTENSIONS, Section

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FCS_BYTES = 8  # Frame_Content_Size field written at the end (FCS_Field_Size flag 3)

Message = Union[
    tuple[Literal["section"], str, Section, list[str]],  # a section ended: ext, section, name table so far
    tuple[Literal["plan"], Plan],  # the whole merge is planned
    tuple[Literal["abort"]],  # the build failed or went another way
]


class _MappedReader:
    """The merged document's bytes, read from the sections' files mapped whole. Slicing a
    map copies under the GIL; ``os.pread`` (``batched``) hands the GIL back on every call, and
    beside the parser each of ~20k reads of an unsorted upstream's runs then waits up to the
    parser's switch interval (5 ms) to get it back. Pages read are dropped from this process
    (MADV_DONTNEED; they stay in the page cache) every ``_BATCH`` * 16 bytes, so RSS stays flat."""

    def __init__(self) -> None:
        self.maps: dict[int, mmap.mmap] = {}
        self.since_drop = 0

    def chunks(self, pieces: Iterable[Piece]) -> Iterator[bytes]:
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            if isinstance(piece, bytes):
                data = piece
            else:
                section, start, stop = piece
                data = self._read(section, start, stop)
            batch.append(data)
            size += len(data)
            if size >= _BATCH:
                yield b"".join(batch)
                batch, size = [], 0
                self._maybe_drop()
        yield b"".join(batch)

    def _read(self, section: Section, start: int, stop: int) -> bytes:
        data = section.data
        if data.fd < 0 or stop <= start:
            return data.read(start, stop - start)
        mapped = self.maps.get(data.fd)
        if mapped is None or len(mapped) < stop:
            mapped = self.maps[data.fd] = mmap.mmap(data.fd, 0, prot=mmap.PROT_READ)
        return mapped[start:stop]

    def _maybe_drop(self) -> None:
        self.since_drop += 1
        if self.since_drop >= 16:
            self.since_drop = 0
            for mapped in self.maps.values():
                mapped.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        for mapped in self.maps.values():
            mapped.close()
        self.maps.clear()


class DeferredSizeFrame:
    """A zstd frame streamed to ``path``, its content size written into the header at the end."""

    def __init__(self, path: Path, *, level: int = ZSTD_LEVEL, threads: int = ZSTD_THREADS) -> None:
        self.path = path
        self.fh = open(path, "w+b")  # noqa: SIM115 - closed in finish/discard; read back in finish
        self.fh.seek(_FCS_BYTES)  # room for the field the header will gain
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=False)
        self.writer = cctx.stream_writer(self.fh, closefd=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """End the frame; rewrite its header as magic, descriptor with FCS_Field_Size 3, window
        descriptor, then the 8-byte content size: exactly the room left before it."""
        self.writer.close()
        self.fh.flush()
        fd = self.fh.fileno()
        header = os.pread(fd, 6, _FCS_BYTES)
        descriptor = header[4]
        # no content size, no single segment (a window descriptor follows), no dictionary id
        if header[:4] != ZSTD_MAGIC or descriptor & 0b1110_0011:
            raise RuntimeError(f"unexpected zstd frame header {header.hex()}")
        os.pwrite(fd, ZSTD_MAGIC + bytes([descriptor | 0xC0, header[5]]) + self.size.to_bytes(_FCS_BYTES, "little"), 0)
        self.fh.close()

    def discard(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)


def write_ahead(box: "queue.Queue[Message]", local: dict[str, Section], blocked: frozenset[str], subdir: str,
                tmp_dir: Path) -> Path | None:
    """Run on a thread of its own: the merged ``repodata.json.zst`` in a temp file, or None
    when the build must write it as usual (see the module docstring)."""
    first = EXTENSIONS[0]
    item = box.get()
    if item[0] != "section" or item[1] != first:
        return None
    section, names = item[2], item[3]
    ids = {nid for nid, name in enumerate(names) if name.lower() in blocked}
    runs = merge_runs([local[first], section], [[], positions_of(section, ids)])
    head = document_head({"subdir": subdir})
    frame = DeferredSizeFrame(tmp_dir / f"conda-index-{uuid.uuid4().hex}.part")
    reader = _MappedReader()
    try:
        for chunk in reader.chunks(itertools.chain([head], section_pieces([local[first], section], runs))):
            frame.write(chunk)
        item = box.get()
        while item[0] == "section":  # later sections: the plan has them
            item = box.get()
        if item[0] != "plan":
            frame.discard()
            return None
        plan = item[1]
        sources = plan.sections[first]  # [uploads, this upstream] unless its parse failed after all
        if len(sources) != 2 or sources[1] is not section or plan.runs[first] != runs or plan.head() != head:
            frame.discard()
            return None
        rest = [SECTION_SEPARATOR, *section_pieces(plan.sections[EXTENSIONS[1]], plan.runs[EXTENSIONS[1]]), plan.tail()]
        for chunk in reader.chunks(rest):
            frame.write(chunk)
        if frame.size != plan.size():
            raise RuntimeError(f"merged repodata is {frame.size} bytes, planned {plan.size()}")
        frame.finish()
    except BaseException:
        frame.discard()
        raise
    finally:
        reader.close()
    return frame.path


__all__ = ["DeferredSizeFrame", "Message", "write_ahead"]
