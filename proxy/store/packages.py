"""Package settings beside the uploads, in the catalog's database: privacy and the metadata
anaconda-client shows (summary, description, license, home page), and locked labels.

A package here is (channel, ecosystem, name) with the name in its ecosystem's normal form,
the same key the merge rule uses. A row may exist before any file (``anaconda package
--create``). ``private`` makes the package invisible on a public channel to anyone
without the read role (DESIGN, "Accounts ..."): the catalog's public view leaves its files
out, while the merge rule still counts its name, so no upstream version of it shows through.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

SCHEMA = """
CREATE TABLE IF NOT EXISTS packages (
    channel     TEXT NOT NULL,
    ecosystem   TEXT NOT NULL,
    name        TEXT NOT NULL,
    private     INTEGER NOT NULL,
    summary     TEXT NOT NULL,
    description TEXT NOT NULL,
    license     TEXT NOT NULL,
    home        TEXT NOT NULL,
    releases    TEXT NOT NULL,   -- JSON {version: {"description": ...}}
    created_at  REAL NOT NULL,
    PRIMARY KEY (channel, ecosystem, name)
);
CREATE TABLE IF NOT EXISTS locked_labels (
    channel TEXT NOT NULL,
    label   TEXT NOT NULL,
    PRIMARY KEY (channel, label)
);
"""
METADATA_FIELDS = ("summary", "description", "license", "home")


@dataclass(frozen=True, slots=True)
class PackageInfo:
    channel: str
    ecosystem: str
    name: str
    private: bool = False
    summary: str = ""
    description: str = ""
    license: str = ""
    home: str = ""
    releases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    created_at: float = 0.0

    def with_metadata(self, values: Mapping[str, Any]) -> "PackageInfo":
        """This package with the given metadata fields set (others kept)."""
        chosen: dict[str, Any] = {k: str(v)[:100_000] for k, v in values.items() if k in METADATA_FIELDS and v is not None}
        return replace(self, **chosen)


class PackageMirror:
    """The reads of package settings, from memory: the whole table (one row per package name)
    is held, and replaced by ``_load`` when the backend learns it changed."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], PackageInfo] = {}
        self._private: dict[tuple[str, str], frozenset[str]] = {}
        self._locked: dict[str, frozenset[str]] = {}

    def _load(self, rows: Iterable[PackageInfo], locks: Iterable[tuple[str, str]]) -> None:
        self._rows = {(r.channel, r.ecosystem, r.name): r for r in rows}
        private: dict[tuple[str, str], set[str]] = {}
        for info in self._rows.values():
            if info.private:
                private.setdefault((info.channel, info.ecosystem), set()).add(info.name)
        self._private = {k: frozenset(v) for k, v in private.items()}
        locked: dict[str, set[str]] = {}
        for channel, label in locks:
            locked.setdefault(channel, set()).add(label)
        self._locked = {k: frozenset(v) for k, v in locked.items()}

    def changes(self, infos: Iterable[PackageInfo], locked: Mapping[str, Iterable[str]]) -> tuple[
            list[PackageInfo], list[tuple[str, str]], list[tuple[str, str]]]:
        """What ``apply`` would write: (changed rows, locks to add, locks to drop)."""
        rows = [info for info in infos if self.get(info.channel, info.ecosystem, info.name) != info]
        lock_add = [(c, label) for c, labels in locked.items() for label in set(labels) - self.locked_labels(c)]
        lock_drop = [(c, label) for c, labels in locked.items() for label in self.locked_labels(c) - set(labels)]
        return rows, lock_add, lock_drop

    # ------------------------------------------------------------------ reads
    def get(self, channel: str, ecosystem: str, name: str) -> PackageInfo | None:
        return self._rows.get((channel, ecosystem, name))

    def of_channel(self, channel: str) -> list[PackageInfo]:
        return [info for key, info in self._rows.items() if key[0] == channel]

    def private_names(self, channel: str, ecosystem: str) -> frozenset[str]:
        return self._private.get((channel, ecosystem), frozenset())

    def has_private(self, channel: str) -> bool:
        return any(key[0] == channel for key in self._private)

    def locked_labels(self, channel: str) -> frozenset[str]:
        return self._locked.get(channel, frozenset())

    def all(self) -> list[PackageInfo]:
        return list(self._rows.values())

    def all_locked(self) -> dict[str, frozenset[str]]:
        """channel -> its locked labels (channels with none are left out)."""
        return dict(self._locked)



class PackageTable(PackageMirror):
    """Package settings in the SQLite catalog's database (``packages``, ``locked_labels``);
    ``reload`` reads them again (the catalog's sync does when another process wrote)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, changed: Callable[[str, str], None]) -> None:
        super().__init__()
        self._db = db
        self._lock = lock
        self._changed = changed
        db.executescript(SCHEMA)
        self.reload()

    def reload(self) -> None:
        with self._lock:
            rows = self._db.execute("SELECT * FROM packages").fetchall()
            locks = self._db.execute("SELECT channel, label FROM locked_labels").fetchall()
        self._load((package_from_row(r) for r in rows), locks)

    # ------------------------------------------------------------------ writes
    async def put(self, info: PackageInfo) -> PackageInfo:
        old = self.get(info.channel, info.ecosystem, info.name)
        if not info.created_at:
            info = replace(info, created_at=old.created_at if old else time.time())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO packages VALUES (?,?,?,?,?,?,?,?,?,?)", package_values(info))
        self.reload()
        if old is None or old.private != info.private:
            self._changed(info.channel, info.ecosystem)  # the public view's indexes change
        return info

    async def delete(self, channel: str, ecosystem: str, name: str) -> None:
        old = self.get(channel, ecosystem, name)
        if old is None:
            return
        with self._lock:
            self._db.execute("DELETE FROM packages WHERE channel=? AND ecosystem=? AND name=?", (channel, ecosystem, name))
        self.reload()
        if old.private:
            self._changed(channel, ecosystem)

    async def apply(self, infos: Iterable[PackageInfo], locked: Mapping[str, Iterable[str]]) -> int:
        """``channelgate import``: the given rows (as they are, ``created_at`` too) and, for each
        channel of ``locked``, exactly those locked labels, in one transaction. Rows and locks
        equal to the stored ones are left alone (importing twice writes nothing); rows the
        bundle lacks are kept. Returns how many rows and locks changed."""
        rows, lock_add, lock_drop = self.changes(infos, locked)
        if not (rows or lock_add or lock_drop):
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO packages VALUES (?,?,?,?,?,?,?,?,?,?)", [package_values(i) for i in rows])
                self._db.executemany("INSERT OR IGNORE INTO locked_labels VALUES (?,?)", lock_add)
                self._db.executemany("DELETE FROM locked_labels WHERE channel=? AND label=?", lock_drop)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self.reload()
        for channel, ecosystem in {(i.channel, i.ecosystem) for i in rows}:
            self._changed(channel, ecosystem)
        return len(rows) + len(lock_add) + len(lock_drop)

    async def set_locked(self, channel: str, label: str, locked: bool) -> None:
        with self._lock:
            if locked:
                self._db.execute("INSERT OR IGNORE INTO locked_labels VALUES (?,?)", (channel, label))
            else:
                self._db.execute("DELETE FROM locked_labels WHERE channel=? AND label=?", (channel, label))
        self.reload()


def package_values(info: PackageInfo) -> tuple[Any, ...]:
    return (info.channel, info.ecosystem, info.name, int(info.private), info.summary, info.description,
            info.license, info.home, json.dumps(dict(info.releases), sort_keys=True), info.created_at)


def package_from_row(row: tuple[Any, ...]) -> PackageInfo:
    channel, ecosystem, name, private, summary, description, license_, home, releases, created = row
    return PackageInfo(
        channel=channel, ecosystem=ecosystem, name=name, private=bool(private), summary=summary,
        description=description, license=license_, home=home, releases=json.loads(releases), created_at=created,
    )
