"""Merged conda indexes from parsed sections: a plan of byte ranges, streamed to files.

Which entries a merged ``repodata.json`` section holds is a merge of sorted sources (the
channel's uploads, then its upstreams in order; sections.py addresses each by sorted
position): ``merge_runs`` walks them with binary searches (galloping), so an index of 465k
upstream records and a few uploads is planned in a few dozen lookups, never by visiting
every record. The plan is a list of runs (source, first, last) of sorted positions.

The document lists those entries source by source — the uploads first, then each upstream
in its own order (``Plan.layout``): every upstream section is copied as long byte ranges of
what it listed (JSON object order carries no meaning; conda reads a dict, rattler sorts the
entries itself), and its shared compressed chunks (spliced.py) can be made while it is
parsed, before the merge knows the sorted order of an unsorted upstream. ``write`` streams
the byte ranges (pread, a few MB at a time) through a multi-threaded zstd compressor into
``repodata.json.zst``; ``write_json`` copies them file to file in the kernel
(copy_file_range) into ``repodata.json``. The document is never held whole.

Merge rule (DESIGN "Merge semantics"): earlier sources win a file name; entries whose
package name the dependency-confusion rule blocks (``excluded`` positions) are skipped and
claim nothing.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard

from .sections import (
    EXTENSIONS,
    READ_CHUNK,
    REPODATA_VERSION,
    CondaRecord,
    Data,
    Repodata,
    Section,
    copy_range,
    is_package_filename,
)

Run = tuple[int, int, int]
"""(source index, first, last): sorted positions [first, last) of one source."""
Span = tuple[int, int, int]
"""(source index, first, last): entries [first, last) of one source's data, as it listed them."""

# zstd level 1: the 208 MB bench repodata in 0.48 s of CPU (level 2: 0.71 s, level 3: 1.5 s)
# and no larger (51.2 MB, level 2: 51.1 MB): sha256/md5 hex dominate what stays after compression
ZSTD_LEVEL = 1
ZSTD_THREADS = 2
_BATCH = 1 << 20


def local_section(records: Iterable[CondaRecord], ext: str) -> tuple[Section, list[str]]:
    """In-memory section of the uploads with extension ``ext`` (first record of a file
    name wins), and its name table."""
    chosen: dict[bytes, tuple[str, bytes]] = {}
    for filename, name, raw in records:
        if filename.endswith(ext) and is_package_filename(filename):  # a JSON key as it is
            chosen.setdefault(filename.encode(), (name, raw))
    names: dict[str, int] = {}
    pieces: list[bytes] = []
    offsets = array("Q", [0])
    klens = array("I")
    nids = array("I")
    for key in sorted(chosen):
        name, raw = chosen[key]
        piece = b',"' + key + b'":' + raw
        pieces.append(piece)
        offsets.append(offsets[-1] + len(piece))
        klens.append(len(key))
        nids.append(names.setdefault(name, len(names)))
    return Section(ext, Data(blob=b"".join(pieces)), offsets, klens, nids, None), list(names)


def merge_sources(local: list[CondaRecord], upstreams: Sequence[tuple[Repodata, Mapping[str, list[int]]]]) -> tuple[
        dict[str, list[Section]], dict[str, list[list[str]]], dict[str, list[list[int]]]]:
    """``build_plan``'s inputs per extension, the uploads first: each source's section, its
    name table and the positions left out of it (``upstreams``: each parsed document with its
    positions left out, per extension; nothing of the uploads is)."""
    sources: dict[str, list[Section]] = {}
    tables: dict[str, list[list[str]]] = {}
    excluded: dict[str, list[list[int]]] = {}
    for ext in EXTENSIONS:
        section, table = local_section(local, ext)
        sources[ext], tables[ext], excluded[ext] = [section], [table], [[]]
        for repodata, cut in upstreams:
            sources[ext].append(repodata.sections[ext])
            tables[ext].append(repodata.name_table)
            excluded[ext].append(cut[ext])
    return sources, tables, excluded


def positions_of(section: Section, blocked: set[int]) -> list[int]:
    """Sorted positions of the entries whose name id is in ``blocked`` (one C-speed pass)."""
    if not blocked or not len(section):
        return []
    indices = itertools.compress(itertools.count(), map(blocked.__contains__, section.nids))
    if section.perm is None:
        return list(indices)
    inverse = section.inverse()
    return sorted(p for p in map(inverse.__getitem__, indices) if p >= 0)


def merge_runs(sections: Sequence[Section], excluded: Sequence[Sequence[int]]) -> list[Run]:
    """The merged, sorted order of ``sections`` as runs; see the module docstring."""
    k = len(sections)
    skip = [set(e) for e in excluded]
    pos = [0] * k
    heads: list[bytes | None] = [None] * k

    def settle(j: int, p: int) -> None:
        while p in skip[j]:
            p += 1
        pos[j] = p
        heads[j] = sections[j].key(p) if p < len(sections[j]) else None

    for j in range(k):
        settle(j, 0)
    runs: list[Run] = []
    while True:
        best = -1
        top: bytes | None = None
        for j in range(k):
            head = heads[j]
            if head is not None and (top is None or head < top):
                best, top = j, head
        if best < 0:
            return runs
        for j in range(best + 1, k):  # later sources lose a file name to the earlier one
            if heads[j] == top:
                settle(j, pos[j] + 1)
        bound: bytes | None = None
        for j in range(k):
            head = heads[j]
            if j != best and head is not None and (bound is None or head < bound):
                bound = head
        section, first = sections[best], pos[best]
        last = len(section) if bound is None else section.bisect_left(bound, first + 1)
        cuts = excluded[best]
        i = bisect.bisect_left(cuts, first)
        while i < len(cuts) and cuts[i] < last:
            if cuts[i] > first:
                runs.append((best, first, cuts[i]))
            first = cuts[i] + 1
            i += 1
        if first < last:
            runs.append((best, first, last))
        settle(best, last)


SECTION_SEPARATOR = b'},"packages.conda":{'
Piece = bytes | tuple[Section, int, int]


def document_head(info: dict[str, Any]) -> bytes:
    return b'{"info":' + orjson.dumps(info) + b',"packages":{'


def layout(sources: Sequence[Section], runs: Sequence[Run]) -> list[Span]:
    """The entries ``runs`` keep, source by source, each source's in its data order."""
    spans: list[Span] = []
    for j, section in enumerate(sources):
        kept = [(lo, hi) for src, lo, hi in runs if src == j]
        if kept:
            spans += ((j, a, b) for a, b in _data_runs(section, kept))
    return spans


def _data_runs(section: Section, kept: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Entries [a, b) of the section's data holding the sorted positions ``kept`` (ascending
    runs), in data order; long runs found at C speed (``bytes.find`` over a flag per entry)."""
    perm = section.perm
    if perm is None:  # sorted data: positions are entries; adjacent runs joined
        lo, hi = kept[0]
        for a, b in kept[1:]:
            if a != hi:
                yield lo, hi
                lo = a
            hi = b
        yield lo, hi
        return
    n = len(section.klens)
    covered = sum(hi - lo for lo, hi in kept)
    if covered * 2 < n:
        flags = bytearray(n)
        for lo, hi in kept:
            for i in perm[lo:hi]:
                flags[i] = 1
    else:  # most are kept: clear the few that are not (left out, or a repeated key's loser)
        flags = bytearray(b"\x01") * n
        if len(perm) < n:
            for i in set(range(n)).difference(perm):
                flags[i] = 0
        start = 0
        for lo, hi in [*kept, (len(perm), len(perm))]:
            for s in range(start, lo):
                flags[perm[s]] = 0
            start = hi
    a = flags.find(1)
    while a >= 0:
        b = flags.find(0, a)
        if b < 0:
            yield a, n
            return
        yield a, b
        a = flags.find(1, b)


def section_pieces(sources: Sequence[Section], spans: Sequence[Span]) -> Iterator[Piece]:
    """One section's entries in document order, as byte ranges of the sources' data."""
    first = 1
    for j, a, b in spans:
        offsets = sources[j].offsets
        yield sources[j], offsets[a] + first, offsets[b]  # the first entry drops its comma
        first = 0


def batched(pieces: Iterable[Piece]) -> Iterator[bytes]:
    """Literal bytes and byte ranges read, in chunks of about ``_BATCH`` bytes."""
    batch: list[bytes] = []
    size = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            batch.append(piece)
            size += len(piece)
            continue
        section, start, stop = piece
        while start < stop:
            data = section.data.read(start, min(stop - start, READ_CHUNK))
            start += len(data)
            batch.append(data)
            size += len(data)
            if size >= _BATCH:
                yield b"".join(batch)
                batch, size = [], 0
    yield b"".join(batch)


@contextlib.contextmanager
def renamed_when_whole(path: Path, tmp_dir: Path) -> Iterator[int]:
    """A new temp file's descriptor (in ``tmp_dir``) to write a document into: when the block
    ends without an error it is closed and renamed to ``path`` (a reader sees the whole
    document or the one before), else closed and removed."""
    tmp = tmp_dir / f"conda-index-{uuid.uuid4().hex}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        yield fd
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


@dataclass
class Plan:
    """A merged document: per extension, its sources (with their name tables) and the
    runs to copy."""

    sections: dict[str, list[Section]]
    tables: dict[str, list[list[str]]]  # name id -> name, per source
    runs: dict[str, list[Run]]
    info: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    _starts: dict[tuple[str, int], tuple[list[int], list[int]]] | None = field(default=None, repr=False)
    _layout: dict[str, list[Span]] = field(default_factory=dict, repr=False)

    def layout(self, ext: str) -> list[Span]:
        """Section ``ext`` in document order: uploads, then each upstream as it listed them."""
        found = self._layout.get(ext)
        if found is None:
            found = self._layout[ext] = layout(self.sections[ext], self.runs[ext])
        return found

    def name(self, ext: str, j: int, s: int) -> str:
        return self.tables[ext][j][self.sections[ext][j].nid(s)]

    def includes(self, ext: str, j: int, s: int) -> bool:
        """Whether position ``s`` of source ``j`` is in the merged document."""
        if self._starts is None:
            starts: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
            for e in EXTENSIONS:
                for src, lo, hi in self.runs[e]:
                    los, his = starts.setdefault((e, src), ([], []))
                    los.append(lo)
                    his.append(hi)
            self._starts = starts  # a source's runs come in order and do not overlap
        found = self._starts.get((ext, j))
        if found is None:
            return False
        los, his = found
        i = bisect.bisect_right(los, s) - 1
        return i >= 0 and s < his[i]

    def __len__(self) -> int:
        return sum(hi - lo for runs in self.runs.values() for _, lo, hi in runs)

    def entries(self, ext: str) -> Iterator[tuple[int, int, bytes, memoryview]]:
        """(source index, sorted position, key, record) of one section, in order."""
        sources = self.sections[ext]
        for j, lo, hi in self.runs[ext]:
            for s, key, record in sources[j].entries(lo, hi):
                yield j, s, key, record

    def subset(self, keep: Mapping[str, Iterable[tuple[int, int]]]) -> "Plan":
        """The same sources restricted to ``keep`` ((source, position) pairs, in order)."""
        runs: dict[str, list[Run]] = {}
        for ext in EXTENSIONS:
            out: list[Run] = []
            for j, s in keep.get(ext, ()):
                if out and out[-1][0] == j and out[-1][2] == s:
                    out[-1] = (j, out[-1][1], s + 1)
                else:
                    out.append((j, s, s + 1))
            runs[ext] = out
        return Plan(self.sections, self.tables, runs, self.info, self.removed)

    # ------------------------------------------------------------------ writing
    def _head(self) -> bytes:
        return document_head(self.info)

    def _tail(self) -> bytes:
        return b'},"removed":' + orjson.dumps(sorted(set(self.removed))) + b',"repodata_version":%d}' % REPODATA_VERSION

    def size(self) -> int:
        total = len(self._head()) + len(self._tail()) + len(SECTION_SEPARATOR)
        for ext in EXTENSIONS:
            sources = self.sections[ext]
            span = sum(sources[j].offsets[b] - sources[j].offsets[a] for j, a, b in self.layout(ext))
            total += span - 1 if span else 0  # the first entry's leading comma is dropped
        return total

    def _pieces(self) -> Iterator[bytes | tuple[Section, int, int]]:
        """The document in order: literal bytes, or ``(section, start, stop)`` byte ranges of
        a section's data (the one walk over the merge plan both writers share)."""
        yield self._head()
        for n, ext in enumerate(EXTENSIONS):
            if n:
                yield SECTION_SEPARATOR
            yield from section_pieces(self.sections[ext], self.layout(ext))
        yield self._tail()

    def chunks(self) -> Iterator[bytes]:
        """The document in pieces of about ``_BATCH`` bytes."""
        return batched(self._pieces())

    def head(self) -> bytes:
        return self._head()

    def tail(self) -> bytes:
        return self._tail()

    def write_json(self, path: Path, tmp_dir: Path) -> int:
        """Write the plain document to ``path``: the upstream runs are copied file to file
        in the kernel (copy_file_range), no byte passes through Python. Returns its size."""
        written = 0
        with renamed_when_whole(path, tmp_dir) as fd:
            def put(data: bytes) -> None:
                nonlocal written
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n

            for piece in self._pieces():
                if isinstance(piece, bytes):
                    put(piece)
                    continue
                section, start, stop = piece
                if section.data.fd >= 0:
                    written += copy_range(section.data.fd, fd, start, stop - start)
                else:
                    put(section.data.read(start, stop - start))
            if written != self.size():
                raise RuntimeError(f"merged repodata is {written} bytes, planned {self.size()}")
        return written

    def write(self, json_path: Path | None, zst_path: Path | None, tmp_dir: Path, *,
              level: int = ZSTD_LEVEL, threads: int = ZSTD_THREADS) -> int:
        """Stream the document to ``json_path`` and/or ``zst_path`` (zstd frame with its
        content size, which one-shot decoders need), each renamed into place when complete.
        Returns the document's size."""
        total = self.size()
        temps = {p: tmp_dir / f"conda-index-{uuid.uuid4().hex}.part" for p in (json_path, zst_path) if p is not None}
        handles: list[BinaryIO] = []
        try:
            outputs: list[Any] = []
            if json_path is not None:
                handles.append(open(temps[json_path], "wb"))  # noqa: SIM115 - closed below
                outputs.append(handles[-1])
            compressor = None
            if zst_path is not None:
                handles.append(open(temps[zst_path], "wb"))  # noqa: SIM115
                cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=True)
                compressor = cctx.stream_writer(handles[-1], size=total, closefd=False)
                outputs.append(compressor)
            written = 0
            for chunk in self.chunks():
                written += len(chunk)
                for out in outputs:
                    out.write(chunk)
            if written != total:
                raise RuntimeError(f"merged repodata is {written} bytes, planned {total}")
            if compressor is not None:
                compressor.close()  # ends the frame; the file stays open (closefd=False)
        except BaseException:
            for fh in handles:
                fh.close()
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
            raise
        for fh in handles:
            fh.close()
        for final, tmp in temps.items():
            os.replace(tmp, final)
        return total

    def render(self) -> bytes:
        """The whole document in memory (small indexes and tests)."""
        return b"".join(self.chunks())


def build_plan(
    sources: dict[str, list[Section]],
    tables: dict[str, list[list[str]]],
    excluded: dict[str, list[list[int]]],
    *,
    info: dict[str, Any],
    removed: list[str],
) -> Plan:
    """Merge each extension's sources (earlier first) into one plan."""
    runs = {ext: merge_runs(sources[ext], excluded[ext]) for ext in EXTENSIONS}
    return Plan(sources, tables, runs, info, removed)


__all__ = [
    "Plan", "Run", "Span", "build_plan", "layout", "local_section", "merge_runs", "positions_of",
]
