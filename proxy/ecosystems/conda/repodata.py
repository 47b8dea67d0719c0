"""conda ``repodata.json``: parse (upstream), and render merged indexes.

Sized for the largest upstreams (conda-forge linux-64: ~465k records, ~243 MB of JSON):
records are held as raw compact JSON bytes (one ``bytes`` per record), never as
long-lived dicts, and rendering concatenates those bytes instead of re-serialising.

The unit every source hands to the shared merge is a ``CondaRecord``:
``(filename, name, record_json_bytes)``. Renderers take the merged, ordered sequence.

Formats (conda docs "Channels and generating an index", schemas.conda.org repodata-1):
``{"info": {"subdir": ...}, "packages": {<.tar.bz2 file>: record},
"packages.conda": {<.conda file>: record}, "removed": [file...], "repodata_version": 1}``;
``current_repodata.json`` has the same shape with only the newest records;
``channeldata.json`` is ``{"channeldata_version": 1, "packages": {name: {...}}, "subdirs": [...]}``.
"""
from __future__ import annotations

import bz2
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # the C string scanner
from typing import Any, Callable, Literal

import orjson
import zstandard

from proxy.errors import BadRequest
from proxy.ecosystems.conda.version import VersionOrder, version_key_or_none

CondaRecord = tuple[str, str, bytes]
"""(filename, package name, record as compact JSON bytes)."""

Encoding = Literal["identity", "zstd", "bz2"]
REPODATA_VERSION = 1
CHANNELDATA_VERSION = 1
MAX_DECOMPRESSED = 4 << 30  # refuse a decompression bomb posing as repodata
_CHUNK = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
# record keys that would point clients at the upstream: links must point at channelgate
UPSTREAM_ONLY_KEYS = ("url", "channel")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Repodata:
    """One parsed ``repodata.json``: records kept as bytes, keyed by file name."""

    info: dict[str, Any]
    records: dict[str, tuple[str, bytes]] = field(repr=False)  # filename -> (name, raw JSON)
    removed: tuple[str, ...] = ()
    repodata_version: int = REPODATA_VERSION

    @property
    def packages(self) -> dict[str, bytes]:
        """The ``packages`` section (``.tar.bz2`` files)."""
        return {fn: raw for fn, (_, raw) in self.records.items() if fn.endswith(".tar.bz2")}

    @property
    def packages_conda(self) -> dict[str, bytes]:
        """The ``packages.conda`` section."""
        return {fn: raw for fn, (_, raw) in self.records.items() if fn.endswith(".conda")}

    def names(self) -> dict[str, str]:
        """filename -> package name."""
        return {fn: name for fn, (name, _) in self.records.items()}

    def iter_records(self) -> Iterator[CondaRecord]:
        """This source's records, for the merge: (filename, name, raw JSON)."""
        for fn, (name, raw) in self.records.items():
            yield fn, name, raw

    @property
    def base_url(self) -> str | None:
        """CEP-15 ``info.base_url`` (repodata_version 2): where the package files live."""
        value = self.info.get("base_url")
        return value if isinstance(value, str) and value else None

    def __len__(self) -> int:
        return len(self.records)


def parse_repodata(body: bytes) -> Repodata:
    """Parse ``repodata.json`` bytes without materialising the whole document.

    Walks the top-level object with the stdlib's C scanner and decodes one record at a
    time; each record is kept as compact JSON bytes and its dict dropped at once, so peak
    memory is the text plus the kept bytes rather than a full object tree. Records that
    are not objects, lack a string ``name`` or have an unsafe file name are skipped.
    Raises ``BadRequest`` when the document is not a repodata object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"repodata is not UTF-8 ({exc})") from None
    try:
        return _walk(text)
    except (ValueError, IndexError) as exc:
        raise BadRequest(f"repodata.json is not valid: {exc}") from None


def _walk(text: str) -> Repodata:
    decoder = json.JSONDecoder()
    info: dict[str, Any] = {}
    removed: tuple[str, ...] = ()
    version = REPODATA_VERSION
    records: dict[str, tuple[str, bytes]] = {}
    names: dict[str, str] = {}  # interning: one str object per distinct name
    idx = _expect(text, _skip(text, 0), "{")
    idx = _skip(text, idx)
    if text[idx] == "}":
        return Repodata(info, records)
    while True:
        key, idx = _key(text, idx)
        if key in ("packages", "packages.conda"):
            idx = _walk_records(text, idx, decoder, records, names)
        else:
            value, idx = decoder.raw_decode(text, idx)
            if key == "info" and isinstance(value, dict):
                info = value
            elif key == "removed" and isinstance(value, list):
                removed = tuple(v for v in value if isinstance(v, str))
            elif key == "repodata_version" and isinstance(value, int):
                version = value
        idx = _skip(text, idx)
        if text[idx] == ",":
            idx = _skip(text, idx + 1)
            continue
        _expect(text, idx, "}")
        break
    return Repodata(info, records, removed, version)


def _walk_records(
    text: str, idx: int, decoder: json.JSONDecoder,
    records: dict[str, tuple[str, bytes]], names: dict[str, str],
) -> int:
    # the hot loop (one pass per record): locals only, the C scanner called directly
    ws: Callable[[str, int], re.Match[str]] = _WS.match  # type: ignore[assignment]  # always matches
    scan_once: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    dump = dump_record
    is_pkg = is_package_filename
    idx = ws(text, _expect(text, idx, "{")).end()
    if text[idx] == "}":
        return idx + 1
    while True:
        if text[idx] != '"':
            raise ValueError(f"expected a file name at offset {idx}")
        filename, idx = scanstring(text, idx + 1)
        idx = ws(text, idx).end()
        if text[idx] != ":":
            raise ValueError(f"expected ':' at offset {idx}")
        start = ws(text, idx + 1).end()
        try:
            record, idx = scan_once(text, start)
        except StopIteration:
            raise ValueError(f"invalid record at offset {start}") from None
        name = record.get("name") if type(record) is dict else None
        if type(name) is str and is_pkg(filename):
            for key in UPSTREAM_ONLY_KEYS:
                record.pop(key, None)
            records[filename] = (names.setdefault(name, name), dump(record))
        idx = ws(text, idx).end()
        if text[idx] == ",":
            idx = ws(text, idx + 1).end()
            continue
        return _expect(text, idx, "}")


def _key(text: str, idx: int) -> tuple[str, int]:
    """Read ``"key"`` and the following ``:``; return the key and the value's index."""
    idx = _expect(text, idx, '"')
    key, idx = scanstring(text, idx)
    idx = _expect(text, _skip(text, idx), ":")
    return key, _skip(text, idx)


def _skip(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    return match.end() if match else idx


def _expect(text: str, idx: int, char: str) -> int:
    if idx >= len(text) or text[idx] != char:
        raise ValueError(f"expected {char!r} at offset {idx}")
    return idx + 1


def dump_record(record: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(record)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def is_package_filename(filename: str) -> bool:
    """A plain ``.conda``/``.tar.bz2`` file name that is safe to put in a URL path."""
    return (
        filename.endswith((".conda", ".tar.bz2"))
        and "/" not in filename
        and "\\" not in filename
        and not filename.startswith(".")
        and filename.isprintable()
    )


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
