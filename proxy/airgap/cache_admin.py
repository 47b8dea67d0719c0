"""``channelgate cache``: what the store holds, pruning, and re-hashing (issue 10, part 6).

- ``cache``: bytes per upstream (cached artifacts, by the provenance artifacts.py records,
  and index documents, by URL) and per channel (its uploads plus its upstreams' share).
- ``cache prune --older-than DAYS | --max-size SIZE``: removes cached upstream artifacts,
  least recently used first: last use is the later of the fetch and the last time the server
  served it (the store's use stamps, touched at most once an hour). Never an upload, never an index document (an
  offline site's indexes), never a file that an imported bundle brought (their manifests
  are kept through the Store: ``airgap/imported/`` in the store or the bucket): an
  air-gapped site could not fetch it again.
- ``cache verify``: verify.py.
"""
from __future__ import annotations

import json
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import ECOSYSTEMS, Settings
from ..store.protocols import Store
from ..store.s3 import open_store
from ..store.backends import catalog_reader
from .bundle import BundleError
from .manifest import ManifestReader

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.I)


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500M, 20G)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


@dataclass
class Usage:
    upstream_artifacts: dict[str, int] = field(default_factory=dict)
    upstream_indexes: dict[str, int] = field(default_factory=dict)
    channel_uploads: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)


def _store(settings: Settings) -> Store:
    """The configured Store (filesystem or S3): blobs are listed and removed through it."""
    return open_store(settings, clean=False)


def usage(settings: Settings) -> Usage:
    store = _store(settings)
    out = Usage()
    for blob in store.blobs("cache"):
        name = store.origin(blob.sha256) or "(unknown upstream)"
        out.upstream_artifacts[name] = out.upstream_artifacts.get(name, 0) + blob.size
    prefixes = {up.url + "/": name for name, up in settings.upstreams.items()}
    meta = store.area_dir("meta")
    for doc in (meta / "docs").glob("*.json") if (meta / "docs").is_dir() else ():
        try:
            data = json.loads(doc.read_bytes())
            body = meta / "bodies" / data["digest"][:2] / data["digest"]
            size = body.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            continue
        owner = next((n for p, n in prefixes.items() if str(data.get("url", "")).startswith(p)), "(unknown upstream)")
        out.upstream_indexes[owner] = out.upstream_indexes.get(owner, 0) + size
    with catalog_reader(settings) as catalog:
        for channel, policy in settings.channels.items():
            hosted = sum(u.size for eco in ECOSYSTEMS for u in catalog.list(channel, eco)) if catalog else 0
            out.channel_uploads[channel] = hosted
            out.channels[channel] = hosted + sum(
                out.upstream_artifacts.get(n, 0) + out.upstream_indexes.get(n, 0) for n in policy.upstreams)
    return out


class PruneTable:
    """What ``prune`` weighs, in a SQLite file in the store's scratch space (no journal, no
    fsync) rather than in memory: the sha256s every imported bundle's manifest lists under
    ``cache/`` (a site may have imported many large bundles) and the cached blobs with their
    last use. Rows are written BATCH at a time; memory stays flat however many there are."""

    BATCH = 1024

    def __init__(self, scratch: Path) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="prune-", dir=scratch)
        self._db = sqlite3.connect(Path(self._dir.name) / "prune.db", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE keep (sha256 TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE blob (sha256 TEXT PRIMARY KEY, used REAL NOT NULL, size INTEGER NOT NULL)"
                         " WITHOUT ROWID")

    def __enter__(self) -> "PruneTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        self._dir.cleanup()

    def _insert(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        batch: list[tuple[object, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= self.BATCH:
                self._db.executemany(sql, batch)
                batch.clear()
        if batch:
            self._db.executemany(sql, batch)

    def keep_imported(self, store: Store) -> None:
        """Every cached file an imported bundle brought (its manifest's ``cache/sha256/``
        members), streamed from each kept manifest (through the Store: with S3, in the
        bucket, whichever replica imported them)."""
        for path in store.imported():
            try:
                reader, fh = ManifestReader.open(path)
                with fh:
                    self._insert("INSERT OR IGNORE INTO keep VALUES (?)",
                                 ((e.name.rsplit("/", 1)[-1],) for e in reader.entries()
                                  if e.member and e.name.startswith("cache/sha256/")))
            except BundleError:
                continue

    def add_blobs(self, store: Store) -> int:
        """Every cached blob with its last use (the later of its fetch and the last time it
        was served); their total size."""
        total = 0

        def rows() -> Iterator[tuple[object, ...]]:
            nonlocal total
            for blob in store.blobs("cache"):
                total += blob.size
                yield blob.sha256, max(blob.mtime, store.last_used(blob.sha256) or 0.0), blob.size

        self._insert("INSERT OR REPLACE INTO blob VALUES (?, ?, ?)", rows())
        return total

    def removable(self) -> Iterator[tuple[float, int, str]]:
        """(last use, size, sha256) of each blob no imported bundle brought, least recently
        used first."""
        query = ("SELECT used, size, sha256 FROM blob WHERE sha256 NOT IN (SELECT sha256 FROM keep)"
                 " ORDER BY used, size, sha256")
        for used, size, sha256 in self._db.execute(query):
            yield float(used), int(size), str(sha256)


def prune(settings: Settings, *, older_than_days: float | None, max_size: int | None) -> tuple[int, int]:
    """Remove cached artifacts unused for ``older_than_days`` and/or, least recently used
    first, down to a total size; (files, bytes) removed. Never a file an imported bundle
    brought; memory does not grow with the number of files or bundles (PruneTable)."""
    store = _store(settings)
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    try:
        return _prune(store, cutoff=cutoff, max_size=max_size)
    finally:
        store.release()  # this process's scratch directory, the table's with it


def _prune(store: Store, *, cutoff: float | None, max_size: int | None) -> tuple[int, int]:
    removed = freed = 0
    with PruneTable(store.scratch_dir) as table:
        table.keep_imported(store)
        total = table.add_blobs(store)
        for used, size, sha256 in table.removable():  # least recently used first
            old = cutoff is not None and used < cutoff
            over = max_size is not None and total > max_size
            if not old and not over:
                break  # nothing later was used longer ago, and the size fits
            store.remove("cache", sha256)
            total -= size
            removed += 1
            freed += size
    return removed, freed
