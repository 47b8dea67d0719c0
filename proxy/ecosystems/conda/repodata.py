"""conda ``repodata.json``: render merged indexes from in-memory records, compress, and
``current_repodata.json`` / ``channeldata.json``.

Upstream documents are parsed by records.py (sorted sections on disk, msgspec windows);
large merged indexes are streamed to files by render.py. This module holds the small,
in-memory forms: an upload's records, label indexes, tests.

The unit every source hands to the merge is a ``CondaRecord``:
``(filename, name, record_json_bytes)``. Renderers take the merged, ordered sequence.

Formats (conda docs "Channels and generating an index", schemas.conda.org repodata-1):
``{"info": {"subdir": ...}, "packages": {<.tar.bz2 file>: record},
"packages.conda": {<.conda file>: record}, "removed": [file...], "repodata_version": 1}``;
``current_repodata.json`` has the same shape with only the newest records;
``channeldata.json`` is ``{"channeldata_version": 1, "packages": {name: {...}}, "subdirs": [...]}``.
"""
from __future__ import annotations

import bz2
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
import zstandard

from proxy.errors import BadRequest
from proxy.ecosystems.conda.records import (
    MAX_DECOMPRESSED,
    REPODATA_VERSION,
    UPSTREAM_ONLY_KEYS,
    CondaRecord,
    Encoding,
    Repodata,
    dump_record,
    is_package_filename,
)
from proxy.ecosystems.conda.parse import parse_repodata
from proxy.ecosystems.conda.version import VersionOrder, version_key_or_none

CHANNELDATA_VERSION = 1
_CHUNK = 1 << 20

__all__ = [
    "CHANNELDATA_VERSION", "MAX_DECOMPRESSED", "REPODATA_VERSION", "UPSTREAM_ONLY_KEYS", "CondaRecord", "Encoding",
    "Repodata", "decode_body", "dump_record", "encode", "is_package_filename", "iter_repodata_json",
    "parse_repodata", "render_channeldata", "render_current_repodata", "render_repodata_json", "select_current",
]


def decode_body(body: bytes, encoding: Encoding, *, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress a ``repodata.json[.zst|.bz2]`` body (bounded, refuses bombs)."""
    if encoding == "identity":
        return body
    if encoding == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        out = bytearray()
        while chunk := reader.read(_CHUNK):
            out += chunk
            if len(out) > limit:
                raise BadRequest("decompressed repodata exceeds the size limit")
        return bytes(out)
    decomp = bz2.BZ2Decompressor()
    data = decomp.decompress(body, max_length=limit + 1)
    if len(data) > limit:
        raise BadRequest("decompressed repodata exceeds the size limit")
    if not decomp.eof:
        raise BadRequest("repodata.json.bz2 is truncated")
    return data


# --------------------------------------------------------------------------- rendering


def iter_repodata_json(
    subdir: str,
    records: Sequence[CondaRecord],
    *,
    removed: Iterable[str] = (),
    info_extra: Mapping[str, Any] | None = None,
) -> Iterator[bytes]:
    """Yield a ``repodata.json`` document in ~1 MB chunks.

    ``records`` is the merged selection in order; each lands in ``packages`` or
    ``packages.conda`` by its extension, as its own bytes (no re-serialisation).
    """
    info = {"subdir": subdir, **(info_extra or {})}
    yield b'{"info":' + orjson.dumps(info) + b',"packages":{'
    yield from _section(records, ".tar.bz2")
    yield b'},"packages.conda":{'
    yield from _section(records, ".conda")
    yield b'},"removed":' + orjson.dumps(sorted(set(removed))) + b',"repodata_version":%d}' % REPODATA_VERSION


def _section(records: Sequence[CondaRecord], ext: str) -> Iterator[bytes]:
    # The first record of a file name wins (merge order); the section is written sorted
    # by file name like conda-index does: rattler's sparse reader pairs a .tar.bz2 with
    # its .conda twin assuming sorted keys.
    chosen: dict[str, bytes] = {}
    for filename, _name, raw in records:
        if filename.endswith(ext) and filename not in chosen:
            chosen[filename] = raw
    parts: list[bytes] = []
    size = 0
    separator = b""
    for filename in sorted(chosen):
        piece = separator + orjson.dumps(filename) + b":" + chosen[filename]
        separator = b","
        parts.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def render_repodata_json(
    subdir: str,
    records: Sequence[CondaRecord],
    *,
    removed: Iterable[str] = (),
    info_extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The whole ``repodata.json`` as bytes (see ``iter_repodata_json``)."""
    return b"".join(iter_repodata_json(subdir, records, removed=removed, info_extra=info_extra))


def encode(body: bytes, encoding: Encoding, *, zstd_level: int = 9, bz2_level: int = 9) -> bytes:
    """``repodata.json`` -> ``.json.zst`` (zstd frame with content size) / ``.json.bz2``."""
    if encoding == "identity":
        return body
    if encoding == "zstd":
        threads = -1 if len(body) > (16 << 20) else 0  # multi-threaded for large channels
        return zstandard.ZstdCompressor(level=zstd_level, threads=threads, write_content_size=True).compress(body)
    return bz2.compress(body, bz2_level)


# --------------------------------------------------------------------------- current_repodata


def _facts(raw: bytes) -> tuple[str, int, int]:
    """(version, build_number, timestamp) of one record; tolerant of missing fields."""
    record = orjson.loads(raw)
    version = record.get("version")
    build_number = record.get("build_number", 0)
    timestamp = record.get("timestamp", 0)
    return (
        version if isinstance(version, str) else "",
        build_number if isinstance(build_number, int) and not isinstance(build_number, bool) else 0,
        int(timestamp) if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool) else 0,
    )


def select_current(records: Iterable[CondaRecord]) -> list[CondaRecord]:
    """The records ``current_repodata.json`` keeps, in input order.

    Per name: the newest version (conda's VersionOrder), then among those the highest
    ``build_number``; every record with that version and build number stays (all build
    variants and both file formats). Records whose version conda cannot parse are left
    out. (conda-index also back-fills dependencies of kept records; that needs a full
    MatchSpec solver and is not done here.)
    """
    kept: list[tuple[CondaRecord, VersionOrder, int]] = []
    best: dict[str, tuple[VersionOrder, int]] = {}
    parsed: dict[str, VersionOrder | None] = {}
    for rec in records:
        version, build_number, _ = _facts(rec[2])
        if version not in parsed:
            parsed[version] = version_key_or_none(version)
        order = parsed[version]
        if order is None:
            continue
        kept.append((rec, order, build_number))
        current = best.get(rec[1])
        if current is None or current[0] < order or (current[0] == order and current[1] < build_number):
            best[rec[1]] = (order, build_number)
    return [rec for rec, order, bn in kept if best[rec[1]][0] == order and best[rec[1]][1] == bn]


def render_current_repodata(
    subdir: str, records: Sequence[CondaRecord], *, removed: Iterable[str] = ()
) -> bytes:
    """``current_repodata.json``: ``repodata.json`` restricted to ``select_current``."""
    return render_repodata_json(subdir, select_current(records), removed=removed)


# --------------------------------------------------------------------------- channeldata


def _seconds(timestamp: float) -> int:
    """conda timestamps may be ms; channeldata uses seconds (conda-build#1988)."""
    value = int(timestamp)
    return value // 1000 if value > 253402300799 else value


def render_channeldata(by_subdir: Mapping[str, Iterable[CondaRecord]]) -> bytes:
    """``channeldata.json`` for a channel: its subdirs, and per name the newest version,
    the subdirs it is built for, its newest timestamp (seconds) and its license."""
    subdirs_of: dict[str, set[str]] = {}
    newest_ts: dict[str, int] = {}
    newest: dict[str, tuple[VersionOrder, bytes]] = {}
    parsed: dict[str, VersionOrder | None] = {}
    for subdir, records in by_subdir.items():
        for _fn, name, raw in records:
            version, _bn, timestamp = _facts(raw)
            subdirs_of.setdefault(name, set()).add(subdir)
            newest_ts[name] = max(newest_ts.get(name, 0), _seconds(timestamp))
            if version not in parsed:
                parsed[version] = version_key_or_none(version)
            order = parsed[version]
            if order is not None and (name not in newest or newest[name][0] < order):
                newest[name] = (order, raw)
    packages: dict[str, dict[str, Any]] = {}
    for name in sorted(subdirs_of):
        entry: dict[str, Any] = {"subdirs": sorted(subdirs_of[name]), "timestamp": newest_ts[name], "version": None}
        if name in newest:
            record = orjson.loads(newest[name][1])
            entry["version"] = record.get("version")
            for key in ("license", "license_family"):
                if isinstance(record.get(key), str):
                    entry[key] = record[key]
        packages[name] = entry
    doc = {"channeldata_version": CHANNELDATA_VERSION, "packages": packages, "subdirs": sorted(by_subdir)}
    return orjson.dumps(doc)
