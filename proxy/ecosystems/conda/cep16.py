"""CEP-16 sharded repodata: build (for our merged channels) and parse (from upstreams).

CEP-16 (conda/ceps cep-0016.md):
- ``<subdir>/repodata_shards.msgpack.zst``: zstd-compressed msgpack
  ``{"version": 1, "info": {"base_url", "shards_base_url", "created_at", ...},
  "shards": {name: <32 raw sha256 bytes>}}``; ``base_url`` and ``shards_base_url`` are
  relative to the index URL. Serve with a short ``max-age``.
- ``<shards_base_url><sha256 hex>.msgpack.zst``: zstd-compressed msgpack
  ``{"packages": {...}, "packages.conda": {...}, "removed": [...]}`` holding every record
  of one package name; ``sha256``/``md5`` are raw bytes, not hex. The file name is the
  sha256 of the *compressed* file (content-addressed), so shards are immutable.
"""
from __future__ import annotations

import hashlib
import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import msgpack  # type: ignore[import-untyped]
import orjson
import zstandard

from ...errors import InvalidInput, NotFound
from .merge_plan import Plan, positions_of
from .sections import EXTENSIONS, UPSTREAM_ONLY_KEYS, CondaRecord, dump_record, is_package_filename

SHARD_INDEX_FILENAME = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"
MAX_INDEX_BYTES = 256 << 20
MAX_SHARD_BYTES = 256 << 20
_HASH_FIELDS = {"sha256": 32, "md5": 16}
_LEVEL = 3  # per shard ~100 us at 3, ~200 us at 9, for 3% larger files; 20k names per big subdir


def shard_filename(sha256_hex: str) -> str:
    """``<sha256>.msgpack.zst`` (the name under ``shards_base_url``)."""
    return f"{sha256_hex}.msgpack.zst"


def package_name_of(filename: str) -> str | None:
    """``foo-bar-1.0-h1_0.conda`` -> ``foo-bar`` (name, version and build hold no ``-``)."""
    for ext in (".conda", ".tar.bz2"):
        if filename.endswith(ext):
            parts = filename[: -len(ext)].rsplit("-", 2)
            return parts[0] if len(parts) == 3 and parts[0] else None
    return None


# --------------------------------------------------------------------------- building


def _pack_record(raw: bytes | memoryview) -> dict[str, Any]:
    """JSON record -> CEP-16 record: hex ``sha256``/``md5`` become raw bytes."""
    record: dict[str, Any] = orjson.loads(raw)
    for key, length in _HASH_FIELDS.items():
        value = record.get(key)
        if isinstance(value, str):
            try:
                digest = bytes.fromhex(value)
            except ValueError:
                digest = b""
            if len(digest) == length:
                record[key] = digest
            else:
                del record[key]  # a malformed hash cannot be expressed as bytes
    return record


def build_shard(records: Iterable[tuple[str, str, bytes | memoryview]], *, removed: Iterable[str] = (), level: int = _LEVEL) -> tuple[str, bytes]:
    """One name's shard: returns (sha256 hex of the compressed bytes, compressed bytes).

    Deterministic: file names are sorted, so the same records give the same hash
    (clients cache shards by hash).
    """
    tar_bz2: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for filename, _name, raw in sorted(records, key=lambda r: r[0]):
        target = conda if filename.endswith(".conda") else tar_bz2
        target.setdefault(filename, _pack_record(raw))
    doc = {"packages": tar_bz2, "packages.conda": conda, "removed": sorted(set(removed))}
    body = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(
        msgpack.packb(doc, use_bin_type=True)
    )
    return hashlib.sha256(body).hexdigest(), body


def render_shard_index(
    hashes: Mapping[str, str],
    *,
    subdir: str,
    base_url: str = "./",
    shards_base_url: str = f"./{SHARDS_DIR}/",
    created_at: datetime | None = None,
    level: int = _LEVEL,
) -> bytes:
    """``repodata_shards.msgpack.zst`` for ``{name: sha256 hex}``.

    ``base_url`` (where packages live) and ``shards_base_url`` are relative to the index
    URL: the defaults put packages beside the index and shards in ``shards/``.
    """
    when = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    doc = {
        "version": 1,
        "info": {
            "subdir": subdir,
            "base_url": base_url,
            "shards_base_url": shards_base_url,
            "created_at": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
        "shards": {name: bytes.fromhex(hashes[name]) for name in sorted(hashes)},
    }
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(
        msgpack.packb(doc, use_bin_type=True)
    )


class ShardPack(Mapping[str, bytes]):
    """Compressed shards by sha256 hex, appended to one file in the store's tmp (removed
    with the pack). Successive shard sets of a subdir share a pack, so a client holding a
    slightly older shard index still finds its shards; memory keeps only the offsets."""

    def __init__(self, tmp_dir: Path) -> None:
        self.path = tmp_dir / f"conda-shards-{uuid.uuid4().hex}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._size = 0
        self._lock = threading.Lock()
        self._where: dict[str, tuple[int, int]] = {}
        weakref.finalize(self, _close_pack, self._fd, self.path)

    def add(self, digest: str, body: bytes) -> None:
        with self._lock:
            if digest in self._where:
                return
            os.pwrite(self._fd, body, self._size)
            self._where[digest] = (self._size, len(body))
            self._size += len(body)

    def __getitem__(self, digest: str) -> bytes:
        offset, size = self._where[digest]
        return os.pread(self._fd, size, offset)

    def __contains__(self, digest: object) -> bool:
        return digest in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._where))

    def __len__(self) -> int:
        return len(self._where)

    @property
    def bytes(self) -> int:
        return self._size


def _close_pack(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardSet:
    """A subdir's sharded repodata: the index bytes and every shard by hash."""

    index: bytes
    by_name: dict[str, str]  # name -> sha256 hex
    shards: Mapping[str, bytes] = field(repr=False)  # sha256 hex -> compressed shard
    # what a later build may reuse: each name's local records and whether upstreams fed it
    basis: Any = field(default=None, repr=False, compare=False)


def group_by_name(records: Iterable[CondaRecord]) -> dict[str, list[CondaRecord]]:
    """Records per package name, first occurrence of a file name wins (merge order)."""
    grouped: dict[str, list[CondaRecord]] = {}
    seen: set[str] = set()
    for rec in records:
        if rec[0] in seen:
            continue
        seen.add(rec[0])
        grouped.setdefault(rec[1], []).append(rec)
    return grouped


def build_shards(
    records: Iterable[CondaRecord],
    *,
    subdir: str,
    removed: Iterable[str] = (),
    created_at: datetime | None = None,
    level: int = _LEVEL,
) -> ShardSet:
    """Shard a merged selection: one shard per name plus the index.

    ``removed`` file names go into the shard of the name they belong to (if that name
    still has records).
    """
    grouped = group_by_name(records)
    removed_by_name: dict[str, list[str]] = {}
    for filename in removed:
        name = package_name_of(filename)
        if name is not None and name in grouped:
            removed_by_name.setdefault(name, []).append(filename)
    by_name: dict[str, str] = {}
    shards: dict[str, bytes] = {}
    for name, recs in grouped.items():
        digest, body = build_shard(recs, removed=removed_by_name.get(name, ()), level=level)
        by_name[name] = digest
        shards[digest] = body
    index = render_shard_index(by_name, subdir=subdir, created_at=created_at, level=level)
    return ShardSet(index=index, by_name=by_name, shards=shards)


def build_plan_shards(
    plan: Plan,
    *,
    subdir: str,
    pack: ShardPack,
    basis: Any,
    previous: ShardSet | None = None,
    changed: frozenset[str] | None = None,
    level: int = _LEVEL,
) -> ShardSet:
    """The shards of a merged plan, written into ``pack``.

    With ``previous`` (built from the same upstream documents) and ``changed`` (the
    lower-case names whose records may differ: uploads added or removed, names the merge
    rule newly blocks or frees), only those names are rebuilt; every other shard is reused
    by hash. Otherwise every name is built (a conda-forge-sized subdir: a few seconds).
    """
    positions: dict[str, list[tuple[int, int, int]]] = {}
    incremental = changed is not None and previous is not None
    for e, ext in enumerate(EXTENSIONS):
        sources = plan.sections[ext]
        tables = plan.tables[ext]
        if incremental:  # only the changed names: one C-speed pass over each source's name ids
            assert changed is not None
            for j, (section, table) in enumerate(zip(sources, tables)):
                ids = {nid for nid, name in enumerate(table) if name.lower() in changed}
                for s in positions_of(section, ids):
                    if plan.includes(ext, j, s):
                        positions.setdefault(table[section.nid(s)], []).append((e, j, s))
            continue
        for j, lo, hi in plan.runs[ext]:
            section, table = sources[j], tables[j]
            nids, perm = section.nids, section.perm
            for s in range(lo, hi):
                positions.setdefault(table[nids[perm[s] if perm is not None else s]], []).append((e, j, s))
    removed_by_name: dict[str, list[str]] = {}
    for filename in plan.removed:
        owner = package_name_of(filename)
        if owner is not None and owner in positions:
            removed_by_name.setdefault(owner, []).append(filename)
    by_name: dict[str, str] = {}
    if incremental and previous is not None and changed is not None:
        by_name = {name: digest for name, digest in previous.by_name.items() if name.lower() not in changed}
    for name, where in positions.items():
        records = []
        for e, j, s in where:
            section = plan.sections[EXTENSIONS[e]][j]
            records.append((section.key(s).decode(), name, section.record(s)))
        digest, body = build_shard(records, removed=removed_by_name.get(name, ()), level=level)
        pack.add(digest, body)
        by_name[name] = digest
    index = render_shard_index(by_name, subdir=subdir, level=level)
    return ShardSet(index=index, by_name=by_name, shards=pack, basis=basis)


# --------------------------------------------------------------------------- parsing


def _unzstd(body: bytes, limit: int, what: str) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        data = reader.read(limit + 1)
        while len(data) <= limit and (more := reader.read(limit + 1 - len(data))):
            data += more
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"{what} is not valid zstd ({exc})") from None
    if len(data) > limit:
        raise InvalidInput(f"{what} exceeds the size limit")
    return data


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} is not valid msgpack ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} is not a msgpack map")
    return doc


@dataclass(frozen=True)
class ShardIndex:
    """A parsed ``repodata_shards.msgpack.zst``."""

    info: dict[str, Any]
    shards: dict[str, str]  # name -> sha256 hex

    def shard_url(self, index_url: str, name: str) -> str:
        """Absolute URL of ``name``'s shard (``shards_base_url`` is relative to the index)."""
        base = self.info.get("shards_base_url") or f"./{SHARDS_DIR}/"
        base = str(base)
        if not base.endswith("/"):
            base += "/"
        return urljoin(urljoin(index_url, base), shard_filename(self.shards[name]))

    def package_base_url(self, index_url: str) -> str:
        """Absolute URL packages are relative to (``info.base_url``, default: the subdir)."""
        base = str(self.info.get("base_url") or "./")
        if not base.endswith("/"):
            base += "/"
        return urljoin(index_url, base)


def parse_shard_index(body: bytes, *, limit: int = MAX_INDEX_BYTES) -> ShardIndex:
    """Parse an upstream's shard index (at most ``limit`` decompressed bytes, and never more
    than MAX_INDEX_BYTES); raises ``InvalidInput`` when malformed or too large."""
    doc = _unpack(_unzstd(body, min(limit, MAX_INDEX_BYTES), "shard index"), "shard index")
    info = doc.get("info")
    raw_shards = doc.get("shards")
    if not isinstance(info, dict) or not isinstance(raw_shards, dict):
        raise InvalidInput("shard index lacks 'info' or 'shards'")
    shards: dict[str, str] = {}
    for name, digest in raw_shards.items():
        if isinstance(name, str) and isinstance(digest, (bytes, bytearray)) and len(digest) == 32:
            shards[name] = bytes(digest).hex()
    return ShardIndex(info=info, shards=shards)


@dataclass(frozen=True)
class Shard:
    """One parsed shard: its records as ``CondaRecord`` and its removed file names."""

    records: list[CondaRecord] = field(repr=False)
    removed: tuple[str, ...] = ()
    size: int = 0  # decompressed bytes: what reading it cost (repodata_from_shards' budget)

    def __iter__(self) -> Iterator[CondaRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def _unpack_record(record: dict[str, Any]) -> dict[str, Any]:
    """CEP-16 record -> JSON record: raw-byte hashes become lower-case hex."""
    return {
        key: (bytes(value).hex() if isinstance(value, (bytes, bytearray)) else value)
        for key, value in record.items()
        if key not in UPSTREAM_ONLY_KEYS
    }


def parse_shard(body: bytes, *, expected_sha256: str | None = None, limit: int = MAX_SHARD_BYTES) -> Shard:
    """Parse an upstream shard into records; checks its hash when one is given. At most
    ``limit`` decompressed bytes (and never more than MAX_SHARD_BYTES) are read.

    Raises ``InvalidInput`` on a hash mismatch, a malformed shard or one over the limit.
    """
    if expected_sha256 is not None and hashlib.sha256(body).hexdigest() != expected_sha256.lower():
        raise InvalidInput("shard content does not match its sha256")
    data = _unzstd(body, min(limit, MAX_SHARD_BYTES), "shard")
    doc = _unpack(data, "shard")
    records: list[CondaRecord] = []
    for section in ("packages", "packages.conda"):
        entries = doc.get(section) or {}
        if not isinstance(entries, dict):
            raise InvalidInput(f"shard section {section!r} is not a map")
        for filename, record in entries.items():
            if not isinstance(filename, str) or not is_package_filename(filename) or not isinstance(record, dict):
                continue
            name = record.get("name")
            if not isinstance(name, str):
                continue
            records.append((filename, name, dump_record(_unpack_record(record))))
    removed_raw = doc.get("removed") or []
    removed = tuple(r for r in removed_raw if isinstance(r, str)) if isinstance(removed_raw, list) else ()
    return Shard(records=records, removed=removed, size=len(data))


def check_shard_request(sha256_hex: str) -> str:
    """Validate the ``<sha256>`` of a ``shards/<sha256>.msgpack.zst`` URL (lower-case hex)."""
    if len(sha256_hex) != 64 or any(c not in "0123456789abcdef" for c in sha256_hex):
        raise NotFound("no such shard")
    return sha256_hex
