"""Upstream ``repodata.json`` records as sections: the storage parse.py fills and
merge_plan.py copies from.

Sized for conda-forge linux-64 (~465k records, ~207 MB of JSON): no dict per record, no
document in memory. A *section* holds one extension's entries (``packages``: ``.tar.bz2``;
``packages.conda``: ``.conda``, chosen by the file's extension, conda docs "repodata.json"),
each stored as ``,"<file name>":<compact record JSON>`` back to back in a file in the
store's tmp (or bytes, for small documents), in the order the upstream listed them, and
addressed by *sorted position*: file names in UTF-8 byte order (code point order, what
conda-index writes), through a permutation when the upstream was not sorted. Memory keeps
only arrays: entry offsets, key lengths, name ids. A merged ``repodata.json`` is then a copy
of byte ranges; a record is one ``pread``.
"""
from __future__ import annotations

import bisect
import itertools
import json
import operator
import os
import weakref
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

CondaRecord = tuple[str, str, bytes]
"""(filename, package name, record as compact JSON bytes)."""

Encoding = Literal["identity", "zstd", "bz2"]
EXTENSIONS = (".tar.bz2", ".conda")  # section order in repodata.json: packages, packages.conda
REPODATA_VERSION = 1
MAX_DECOMPRESSED = 4 << 30  # refuse a decompression bomb posing as repodata
READ_CHUNK = 4 << 20
# record keys that would point clients at the upstream: links must point at channelgate
UPSTREAM_ONLY_KEYS = ("url", "channel")

def is_package_filename(filename: str) -> bool:
    """A plain ``.conda``/``.tar.bz2`` file name that is safe in a URL path and a JSON key."""
    return (
        filename.endswith((".conda", ".tar.bz2"))
        and "/" not in filename
        and "\\" not in filename
        and '"' not in filename
        and not filename.startswith(".")
        and filename.isprintable()
    )


def dump_record(record: Any) -> bytes:
    try:
        return orjson.dumps(record)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- storage


class Data:
    """Where a section's entries live: bytes in memory, or a file read with pread."""

    def __init__(self, blob: bytes | None = None, path: Path | None = None) -> None:
        self.blob = blob
        self.path = path
        self.fd = os.open(path, os.O_RDONLY) if path is not None else -1
        if path is not None:
            weakref.finalize(self, _close_data, self.fd, path)

    def read(self, offset: int, size: int) -> bytes:
        if self.blob is not None:
            return self.blob[offset : offset + size]
        return os.pread(self.fd, size, offset)


def _close_data(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


class Section:
    """One extension's entries, addressed by sorted position ``0 <= s < len(section)``.

    Entry ``i`` (in the data) is ``data[offsets[i]:offsets[i+1]]`` = ``,"<key>":<record>``;
    ``perm`` maps sorted positions to entries when the upstream was not sorted (and drops
    duplicate keys: the last one in the document wins, as in JSON parsers).
    """

    def __init__(self, ext: str, data: Data, offsets: array[int], klens: array[int],
                 nids: array[int], perm: array[int] | None) -> None:
        self.ext = ext
        self.data = data
        self.offsets = offsets
        self.klens = klens
        self.nids = nids
        self.perm = perm
        self._inverse: array[int] | None = None
        self._starts: array[int] | None = None
        self.compressed: object | None = None  # section_files.py: the entries compressed once, shared by merges

    def __len__(self) -> int:
        return len(self.perm) if self.perm is not None else len(self.klens)

    def index(self, s: int) -> int:
        return self.perm[s] if self.perm is not None else s

    def key(self, s: int) -> bytes:
        i = self.index(s)
        return self.data.read(self.offsets[i] + 2, self.klens[i])

    def inverse(self) -> array[int]:
        """Entry index -> sorted position (-1 for a dropped duplicate)."""
        if self._inverse is None:
            inverse = array("l", [-1]) * len(self.klens)
            for s, i in enumerate(self.perm if self.perm is not None else range(len(self.klens))):
                inverse[i] = s
            self._inverse = inverse
        return self._inverse

    def nid(self, s: int) -> int:
        return self.nids[self.index(s)]

    def record(self, s: int) -> bytes:
        i = self.index(s)
        start = self.offsets[i] + 4 + self.klens[i]
        return self.data.read(start, self.offsets[i + 1] - start)

    def bisect_left(self, key: bytes, lo: int = 0, hi: int | None = None) -> int:
        hi = len(self) if hi is None else hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.key(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, key: bytes) -> int:
        """Sorted position of ``key``, or -1."""
        s = self.bisect_left(key)
        return s if s < len(self) and self.key(s) == key else -1

    def index_runs(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The entries at sorted positions [lo, hi) as runs [first, last) of consecutive
        entries in the data (one run when the upstream was sorted)."""
        if lo >= hi:
            return
        perm = self.perm
        if perm is None:
            yield lo, hi
            return
        starts = self._run_starts()
        i = bisect.bisect_right(starts, lo)
        s = lo
        while s < hi:
            end = min(starts[i], hi) if i < len(starts) else hi
            yield perm[s], perm[end - 1] + 1
            s = end
            i += 1

    def _run_starts(self) -> array[int]:
        """Sorted positions where a run of consecutive entries starts (after the first),
        found at C speed: an unsorted upstream (names in random order, each name's records
        together) has tens of thousands of runs over hundreds of thousands of entries."""
        if self._starts is None:
            perm = self.perm
            assert perm is not None
            breaks = map(operator.ne, itertools.islice(perm, 1, None), map(operator.add, perm, itertools.repeat(1)))
            self._starts = array("Q", itertools.compress(range(1, len(perm)), breaks))
        return self._starts

    def entries(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, bytes, memoryview]]:
        """(sorted position, key, record) for [lo, hi), read in chunks of about READ_CHUNK."""
        hi = len(self) if hi is None else hi
        offsets, klens = self.offsets, self.klens
        s = lo
        for first, last in self.index_runs(lo, hi):
            i = first
            while i < last:
                j = max(i + 1, bisect.bisect_right(offsets, offsets[i] + READ_CHUNK, i + 1, last + 1) - 1)
                base = offsets[i]
                view = memoryview(self.data.read(base, offsets[j] - base))
                for k in range(i, j):
                    a = offsets[k] - base
                    length = klens[k]
                    yield s, bytes(view[a + 2 : a + 2 + length]), view[a + 4 + length : offsets[k + 1] - base]
                    s += 1
                i = j


class Repodata:
    """One parsed ``repodata.json``: info, removed, and its records in two sorted sections."""

    def __init__(self, info: dict[str, Any], removed: tuple[str, ...], repodata_version: int,
                 name_table: list[str], sections: dict[str, Section]) -> None:
        self.info = info
        self.removed = removed
        self.repodata_version = repodata_version
        self.name_table = name_table  # name id -> package name
        self.sections = sections  # ".tar.bz2" / ".conda" -> Section
        self._lower: dict[str, list[int]] | None = None
        self._found: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.sections.values())

    @property
    def base_url(self) -> str | None:
        """CEP-15 ``info.base_url`` (repodata_version 2): where the package files live."""
        value = self.info.get("base_url")
        return value if isinstance(value, str) and value else None

    def section_of(self, filename: str) -> Section:
        return self.sections[".conda" if filename.endswith(".conda") else ".tar.bz2"]

    def lookup(self, filename: str) -> tuple[str, bytes] | None:
        """(package name, record) of one file, by binary search."""
        section = self.section_of(filename)
        s = section.find(filename.encode())
        if s < 0:
            return None
        return self.name_table[section.nid(s)], section.record(s)

    def find_memo(self, filename: str) -> int:
        """Sorted position of ``filename`` in its section, or -1; remembered (for the
        ``removed`` lists, looked up on every merge)."""
        found = self._found.get(filename)
        if found is None:
            found = self._found[filename] = self.section_of(filename).find(filename.encode())
        return found

    def name_ids(self, lower_names: frozenset[str] | set[str]) -> set[int]:
        """Ids of the names whose lower-case form is in ``lower_names``."""
        if self._lower is None:
            lower: dict[str, list[int]] = {}
            for nid, name in enumerate(self.name_table):
                lower.setdefault(name.lower(), []).append(nid)
            self._lower = lower
        return {nid for name in lower_names for nid in self._lower.get(name, ())}

    def iter_records(self) -> Iterator[CondaRecord]:
        """Every record, section by section in file-name order (reads them all)."""
        for section in self.sections.values():
            for s, key, record in section.entries():
                yield key.decode(), self.name_table[section.nid(s)], bytes(record)

    # conveniences for small documents and tests (each reads every record)
    @property
    def records(self) -> dict[str, tuple[str, bytes]]:
        return {fn: (name, raw) for fn, name, raw in self.iter_records()}

    @property
    def packages(self) -> dict[str, bytes]:
        return {fn: raw for fn, _, raw in self.iter_records() if fn.endswith(".tar.bz2")}

    @property
    def packages_conda(self) -> dict[str, bytes]:
        return {fn: raw for fn, _, raw in self.iter_records() if fn.endswith(".conda")}

    def names(self) -> dict[str, str]:
        return {fn: name for fn, name, _ in self.iter_records()}


def copy_range(src: int, dst: int, offset: int, size: int) -> int:
    """Append ``size`` bytes of ``src`` at ``offset`` to ``dst`` (in the kernel when it can)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset + done)
        except OSError:  # e.g. a filesystem that cannot: copy through a buffer
            n = os.write(dst, os.pread(src, min(size - done, READ_CHUNK), offset + done))
        if n <= 0:
            raise OSError(f"short copy at offset {offset + done}")
        done += n
    return done


class Sink(Protocol):
    """Where a builder's entries go: a file, ``io.BytesIO``, section_files.ChunkedFile."""

    def write(self, data: Any, /) -> Any: ...  # bytes-like, copied before the call returns


class SectionBuilder:
    """Entries of one extension as they arrive, written to ``out``."""

    def __init__(self, ext: str, out: Sink) -> None:
        self.ext = ext
        self.out = out
        self.offsets = array("Q", [0])
        self.klens = array("I")
        self.nids = array("I")
        self.keys: list[bytes] = []  # kept for sorting when the upstream was not sorted
        self.sorted = True

    def add_block(self, pieces: list[Any], lengths: list[int], keys: list[bytes], nids: list[int]) -> None:
        """Append entries (``pieces``: their bytes, written in order) with their lengths."""
        if not keys:
            return
        if self.keys and not keys[0] > self.keys[-1]:
            self.sorted = False
        if self.sorted and not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
            self.sorted = False
        write = self.out.write
        for piece in pieces:
            write(piece)
        sums = itertools.accumulate(lengths, initial=self.offsets[-1])
        next(sums)  # the start, already the last offset
        self.offsets.extend(sums)
        self.klens.extend(map(len, keys))
        self.nids.extend(nids)
        self.keys.extend(keys)

    def finish(self, data: Data) -> Section:
        section = self._finish(data)
        self.keys = []
        return section

    def _finish(self, data: Data) -> Section:
        perm: array[int] | None = None
        if not self.sorted:
            keys = self.keys
            perm = _order_by_runs(keys, self.nids)
            if perm is None:
                order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: equal keys keep document order
                ranked = list(map(keys.__getitem__, order))
                if any(map(operator.eq, ranked, itertools.islice(ranked, 1, None))):  # the last one wins
                    order = [i for n, i in enumerate(order) if n + 1 == len(order) or ranked[n + 1] != ranked[n]]
                perm = array("I", order)
        return Section(self.ext, data, self.offsets, self.klens, self.nids, perm)


def _order_by_runs(keys: list[bytes], nids: array[int]) -> array[int] | None:
    """The sorted order of ``keys`` when they come in runs, one name's files each, ascending
    and not overlapping (an upstream whose names come in random order, each name's files
    together and sorted): sorting the runs by their first key is sorting the keys, at a
    fraction of the cost for conda-forge-sized sections. None when two runs overlap or a
    key repeats (then everything is sorted)."""
    n = len(keys)
    breaks = map(operator.or_, map(operator.ge, keys, itertools.islice(keys, 1, None)),
                 map(operator.ne, nids, itertools.islice(nids, 1, None)))
    starts = [0, *itertools.compress(range(1, n), breaks)]
    if len(starts) * 4 > n:  # short runs: a plain sort is as quick
        return None
    ends = [*starts[1:], n]
    runs = sorted(zip(map(keys.__getitem__, starts), starts, ends))
    for (_, _, end), (first, _, _) in zip(runs, itertools.islice(runs, 1, None)):
        if not keys[end - 1] < first:
            return None
    order = array("I")
    for _, start, end in runs:
        order.extend(range(start, end))
    return order
