"""The catalog of hosted uploads: which channel holds which file, with its labels and metadata.

SQLite (stdlib) gives atomic transactions and the uniqueness that turns a duplicate upload
into a 409. Reads are served from an in-process snapshot per (channel, ecosystem) that is
rebuilt only when that pair changes; ``generation`` tells callers when to rebuild what they
derived (merged indexes).
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import Conflict
from ..memo import PerIteration
from .packages import PackageTable

# The catalog key of a channel's public view (``~`` cannot appear in a channel name): its
# uploads minus private packages, with every name kept for the merge rule.
PUBLIC_VIEW = "~public"


def public_view(channel: str) -> str:
    return channel + PUBLIC_VIEW

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    channel     TEXT NOT NULL,
    ecosystem   TEXT NOT NULL,
    path        TEXT NOT NULL,      -- unique serving path within the channel's ecosystem tree
    name        TEXT NOT NULL,      -- merge key: the package name in its ecosystem's normal form
    version     TEXT NOT NULL,
    filename    TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    md5         TEXT NOT NULL,
    size        INTEGER NOT NULL,
    labels      TEXT NOT NULL,      -- JSON list
    meta        TEXT NOT NULL,      -- JSON object, ecosystem specific
    uploader    TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (channel, ecosystem, path)
);
"""


@dataclass(frozen=True, slots=True)
class Upload:
    channel: str
    ecosystem: str
    path: str
    name: str
    version: str
    filename: str
    sha256: str
    md5: str
    size: int
    labels: tuple[str, ...] = ("main",)
    # what the ecosystem's index shows for this file (conda: its repodata record; pypi: the
    # Simple API fields; cran: its PACKAGES fields); stored in the SQL column `meta`
    index_fields: Mapping[str, Any] = field(default_factory=dict)
    uploader: str = ""
    uploaded_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of a (channel, ecosystem), indexed for per-request lookups."""

    generation: int
    uploads: tuple[Upload, ...]
    by_name: Mapping[str, tuple[Upload, ...]]
    by_path: Mapping[str, Upload]
    names: frozenset[str]

    @classmethod
    def build(cls, generation: int, uploads: tuple[Upload, ...]) -> "Snapshot":
        by_name: dict[str, list[Upload]] = {}
        for upload in uploads:
            by_name.setdefault(upload.name, []).append(upload)
        return cls(
            generation,
            uploads,
            {name: tuple(items) for name, items in by_name.items()},
            {u.path: u for u in uploads},
            frozenset(by_name),
        )

    def without(self, hidden: frozenset[str]) -> "Snapshot":
        """A channel's public view: the uploads of ``hidden`` (private) names left out, while
        ``names`` stays whole, so the merge rule keeps hiding upstream versions of a private
        name (DESIGN "Accounts")."""
        kept = Snapshot.build(self.generation, tuple(u for u in self.uploads if u.name not in hidden))
        return _replace(kept, names=self.names)


class SnapshotReads:
    """The Catalog protocol's ``list``, ``names`` and ``get``, answered from ``snapshot``:
    written once for every backend."""

    def snapshot(self, channel: str, ecosystem: str) -> Snapshot:
        raise NotImplementedError

    def list(self, channel: str, ecosystem: str) -> tuple[Upload, ...]:
        return self.snapshot(channel, ecosystem).uploads

    def names(self, channel: str, ecosystem: str) -> frozenset[str]:
        return self.snapshot(channel, ecosystem).names

    def get(self, channel: str, ecosystem: str, path: str) -> Upload | None:
        return self.snapshot(channel, ecosystem).by_path.get(path)


CATALOG_FILE = "catalog.sqlite3"


class SqliteCatalog(SnapshotReads):
    """The SQLite backend of the Catalog protocol (protocols.py)."""

    @classmethod
    def at(cls, storage_root: Path) -> "SqliteCatalog":
        """The catalog of the store at ``storage_root``."""
        return cls(storage_root / CATALOG_FILE)

    def __init__(self, db_path: Path) -> None:
        # timeout: wait on a sibling worker's write lock instead of failing at once
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._generation: dict[tuple[str, str], int] = {}
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._epoch = 0  # bumps when another process (a --workers sibling) committed
        self._watchers: list[Callable[[str, str], None]] = []
        self.packages = PackageTable(self._db, self._lock, self._bump)
        self._data_version = self._read_data_version()
        self._data_version_now = PerIteration(self._read_data_version)

    def close(self) -> None:
        self._db.close()

    async def check(self) -> None:
        self._read_data_version()  # one query to the database

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """SQLite notices other processes' commits when asked (data_version): ask every 10 ms."""
        async with asyncio.timeout(timeout):
            while True:
                self._sync()
                if predicate():
                    return
                await asyncio.sleep(0.01)

    def _read_data_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _sync(self) -> None:
        """SQLite's data_version changes when another connection commits: then every
        snapshot of this process is stale (one pragma per event-loop iteration at most,
        memo.PerIteration: a busy loop answers ~20 requests per iteration)."""
        version = self._data_version_now.get()
        if version != self._data_version:
            self._data_version = version
            self._epoch += 1
            self._snapshots.clear()
            self.packages.reload()

    def generation(self, channel: str, ecosystem: str) -> int:
        self._sync()
        return self._generation.get((channel.removesuffix(PUBLIC_VIEW), ecosystem), 0) + (self._epoch << 32)

    def _bump(self, channel: str, ecosystem: str) -> None:
        """This process committed a change to (channel, ecosystem)."""
        self._advance(channel, ecosystem)
        for callback in self._watchers:
            callback(channel, ecosystem)

    def _advance(self, channel: str, ecosystem: str) -> None:
        key = (channel, ecosystem)
        self._generation[key] = self._generation.get(key, 0) + 1

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, ecosystem)`` after each change this process commits
        (coordination.py publishes it to the other replicas)."""
        self._watchers.append(callback)

    def changed(self, channel: str | None, ecosystem: str | None) -> None:
        """Another replica changed (channel, ecosystem), or anything (None): re-read it."""
        if channel is None or ecosystem is None:
            self._epoch += 1
            self._snapshots.clear()
        else:
            self._advance(channel, ecosystem)
        self.packages.reload()

    def snapshot(self, channel: str, ecosystem: str) -> Snapshot:
        key = (channel, ecosystem)
        gen = self.generation(channel, ecosystem)
        snap = self._snapshots.get(key)
        if snap is not None and snap.generation == gen:
            return snap
        if channel.endswith(PUBLIC_VIEW):
            return self._public_view(channel, ecosystem)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM uploads WHERE channel=? AND ecosystem=? ORDER BY uploaded_at, path", key
            ).fetchall()
        snap = Snapshot.build(gen, tuple(upload_from_row(r) for r in rows))
        self._snapshots[key] = snap
        return snap

    def _public_view(self, view: str, ecosystem: str) -> Snapshot:
        """A channel's uploads without its private packages; ``names`` stays the full set,
        so the merge rule keeps hiding upstream versions of a private name."""
        base = self.snapshot(view.removesuffix(PUBLIC_VIEW), ecosystem)
        hidden = self.packages.private_names(view.removesuffix(PUBLIC_VIEW), ecosystem)
        if not hidden:
            return base
        snap = base.without(hidden)
        self._snapshots[(view, ecosystem)] = snap
        return snap

    async def add(self, upload: Upload, *, replace: bool = False) -> None:
        """Record an upload. A file already at that path is a Conflict unless ``replace``."""
        if not upload.uploaded_at:
            upload = _replace(upload, uploaded_at=time.time())
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        with self._lock:
            try:
                self._db.execute(
                    f"{verb} INTO uploads VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        upload.channel, upload.ecosystem, upload.path, upload.name, upload.version,
                        upload.filename, upload.sha256, upload.md5, upload.size,
                        json.dumps(list(upload.labels)), json.dumps(dict(upload.index_fields), sort_keys=True),
                        upload.uploader, upload.uploaded_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict("File already exists") from None
        self._bump(upload.channel, upload.ecosystem)

    async def add_many(self, uploads: Iterable[Upload]) -> int:
        """Insert or replace rows in one transaction (``channelgate import``): all become
        visible at once, or none. Rows equal to the stored ones are left alone; returns how
        many changed."""
        changed: list[Upload] = []
        for upload in uploads:
            if self.get(upload.channel, upload.ecosystem, upload.path) != upload:
                changed.append(upload)
        if not changed:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO uploads VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(u.channel, u.ecosystem, u.path, u.name, u.version, u.filename, u.sha256, u.md5, u.size,
                      json.dumps(list(u.labels)), json.dumps(dict(u.index_fields), sort_keys=True), u.uploader,
                      u.uploaded_at) for u in changed],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        for channel, ecosystem in {(u.channel, u.ecosystem) for u in changed}:
            self._bump(channel, ecosystem)
        return len(changed)

    async def remove(self, channel: str, ecosystem: str, paths: Iterable[str]) -> int:
        with self._lock:
            count = 0
            for path in paths:
                count += self._db.execute(
                    "DELETE FROM uploads WHERE channel=? AND ecosystem=? AND path=?", (channel, ecosystem, path)
                ).rowcount
        if count:
            self._bump(channel, ecosystem)
        return count

    async def set_labels(self, channel: str, ecosystem: str, path: str, labels: Iterable[str]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE uploads SET labels=? WHERE channel=? AND ecosystem=? AND path=?",
                (json.dumps(sorted(set(labels))), channel, ecosystem, path),
            )
        self._bump(channel, ecosystem)


def upload_from_row(row: tuple[Any, ...]) -> Upload:
    (channel, ecosystem, path, name, version, filename, sha256, md5, size, labels, meta, uploader, at) = row
    return Upload(
        channel=channel, ecosystem=ecosystem, path=path, name=name, version=version, filename=filename,
        sha256=sha256, md5=md5, size=size, labels=tuple(json.loads(labels)), index_fields=json.loads(meta),
        uploader=uploader, uploaded_at=at,
    )
