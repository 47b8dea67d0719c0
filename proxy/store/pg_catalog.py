"""The PostgreSQL backend of the Catalog protocol (protocols.py), with package settings.

Reads are served from memory: one ``Snapshot`` per (channel, ecosystem), loaded at start
and reloaded when a notification says that pair's generation moved (pg.py explains the
shape). Writes are transactions that bump the generation and notify in the same commit.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace as _replace
from typing import Any

import asyncpg

from ..errors import Conflict
from .catalog import PUBLIC_VIEW, Snapshot, SnapshotReads, Upload, upload_from_row
from .packages import PackageInfo, PackageMirror, package_from_row, package_values
from .pg import PgBackend

_COLUMNS = ("channel, ecosystem, path, name, version, filename, sha256, md5, size, labels, meta, uploader, "
            "uploaded_at")
_INSERT = f"INSERT INTO uploads ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
_UPSERT = _INSERT + " ON CONFLICT (channel, ecosystem, path) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", ")[3:])
# byte order of paths, as SQLite sorts them: the same uploads list in the same order on either backend
_ORDER = 'ORDER BY uploaded_at, path COLLATE "C"'
_BUMP = ("INSERT INTO generations VALUES ($1, $2, 1) ON CONFLICT (channel, ecosystem) "
         "DO UPDATE SET generation = generations.generation + 1 RETURNING generation")
_PACKAGE_UPSERT = ("INSERT INTO packages VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (channel, ecosystem, name) "
                   "DO UPDATE SET private = EXCLUDED.private, summary = EXCLUDED.summary, "
                   "description = EXCLUDED.description, license = EXCLUDED.license, home = EXCLUDED.home, "
                   "releases = EXCLUDED.releases, created_at = EXCLUDED.created_at")


def _upload_values(u: Upload) -> tuple[Any, ...]:
    return (u.channel, u.ecosystem, u.path, u.name, u.version, u.filename, u.sha256, u.md5, u.size,
            json.dumps(list(u.labels)), json.dumps(dict(u.index_fields), sort_keys=True), u.uploader, u.uploaded_at)


class PgCatalog(SnapshotReads):
    """Catalog over PostgreSQL; build it with ``await PgCatalog.open(backend)``."""

    def __init__(self, db: PgBackend) -> None:
        self._db = db
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._views: dict[tuple[str, str], Snapshot] = {}
        self._nudged: dict[tuple[str, str], int] = {}  # ``changed`` calls per pair (and (None, None): all)
        self._watchers: list[Callable[[str, str], None]] = []
        self.packages = PgPackageTable(db, self)

    @classmethod
    async def open(cls, db: PgBackend) -> "PgCatalog":
        catalog = cls(db)
        db.on("uploads", catalog._on_uploads)
        db.on("packages", catalog._on_packages)
        db.on_resync(catalog.load_all)
        await catalog.load_all()
        return catalog

    def close(self) -> None:
        """The backend (shared with the token store) is closed by its owner."""

    async def check(self) -> None:
        await self._db.check()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        await self._db.wait_for(predicate, timeout)

    # ------------------------------------------------------------------ loading
    async def load_all(self) -> None:
        async with self._db.snapshot() as conn:
            gens = await conn.fetch("SELECT channel, ecosystem, generation FROM generations")
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM uploads {_ORDER}")
        grouped: dict[tuple[str, str], list[Upload]] = {}
        for row in rows:
            upload = upload_from_row(tuple(row))
            grouped.setdefault((upload.channel, upload.ecosystem), []).append(upload)
        self._snapshots = {(g[0], g[1]): Snapshot.build(int(g[2]), tuple(grouped.get((g[0], g[1]), ())))
                           for g in gens}
        self._views = {}
        await self.packages.reload()

    async def reload(self, channel: str, ecosystem: str) -> None:
        """Read one pair again (its generation and rows, consistently); kept unless older than held."""
        async with self._db.snapshot() as conn:
            gen = await conn.fetchval("SELECT generation FROM generations WHERE channel=$1 AND ecosystem=$2",
                                      channel, ecosystem)
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM uploads WHERE channel=$1 AND ecosystem=$2 "
                                    + _ORDER, channel, ecosystem)
        held = self._snapshots.get((channel, ecosystem))
        if held is None or int(gen or 0) >= held.generation:
            self._snapshots[(channel, ecosystem)] = Snapshot.build(int(gen or 0), tuple(upload_from_row(tuple(r)) for r in rows))

    async def _on_uploads(self, message: dict[str, Any]) -> None:
        key = (str(message["c"]), str(message["e"]))
        held = self._snapshots.get(key)
        if held is None or held.generation < int(message["g"]):
            await self.reload(*key)

    async def _on_packages(self, message: dict[str, Any]) -> None:
        await self.packages.reload()
        if "c" in message:
            await self._on_uploads(message)

    # ------------------------------------------------------------------ replicas
    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, ecosystem)`` after each change this process commits."""
        self._watchers.append(callback)

    async def committed(self, pairs: Iterable[tuple[str, str]]) -> None:
        """After this process's write: reload the pairs at once (read-your-writes), tell watchers."""
        for channel, ecosystem in sorted(set(pairs)):
            await self.reload(channel, ecosystem)
            for callback in self._watchers:
                callback(channel, ecosystem)

    def changed(self, channel: str | None, ecosystem: str | None) -> None:
        """Another replica's change, told by another channel than NOTIFY (coordination.py): move
        the generation now and read the pair again (NOTIFY brings the same change too)."""
        key = (channel, ecosystem) if channel is not None and ecosystem is not None else ("", "")
        self._nudged[key] = self._nudged.get(key, 0) + 1
        self._db.spawn(self.reload(*key) if key != ("", "") else self.load_all())

    # ------------------------------------------------------------------ reads (memory only)
    def generation(self, channel: str, ecosystem: str) -> int:
        key = (channel.removesuffix(PUBLIC_VIEW), ecosystem)
        snap = self._snapshots.get(key)
        nudged = self._nudged.get(key, 0) + self._nudged.get(("", ""), 0) if self._nudged else 0
        return (snap.generation if snap is not None else 0) + (nudged << 32)

    def snapshot(self, channel: str, ecosystem: str) -> Snapshot:
        if channel.endswith(PUBLIC_VIEW):
            return self._public_view(channel, ecosystem)
        snap = self._snapshots.get((channel, ecosystem))
        return snap if snap is not None else Snapshot.build(0, ())

    def _public_view(self, view: str, ecosystem: str) -> Snapshot:
        """The channel without its private packages; ``names`` stays whole (the merge rule)."""
        base = self.snapshot(view.removesuffix(PUBLIC_VIEW), ecosystem)
        hidden = self.packages.private_names(view.removesuffix(PUBLIC_VIEW), ecosystem)
        if not hidden:
            return base
        held = self._views.get((view, ecosystem))
        if held is not None and held.generation == base.generation:  # emptied when package settings reload
            return held
        snap = base.without(hidden)
        self._views[(view, ecosystem)] = snap
        return snap

    # ------------------------------------------------------------------ writes
    @staticmethod
    async def bump(conn: asyncpg.Connection, channel: str, ecosystem: str, kind: str = "uploads") -> None:
        gen = await conn.fetchval(_BUMP, channel, ecosystem)
        await PgBackend.notify(conn, kind, c=channel, e=ecosystem, g=gen)

    async def add(self, upload: Upload, *, replace: bool = False) -> None:
        if not upload.uploaded_at:
            upload = _replace(upload, uploaded_at=time.time())
        async with self._db.transaction() as conn:
            try:
                await conn.execute(_UPSERT if replace else _INSERT, *_upload_values(upload))
            except asyncpg.UniqueViolationError:
                raise Conflict("File already exists") from None
            await self.bump(conn, upload.channel, upload.ecosystem)
        await self.committed([(upload.channel, upload.ecosystem)])

    async def add_many(self, uploads: Iterable[Upload]) -> int:
        """Insert or replace rows in one transaction; rows equal to the stored ones are left alone."""
        changed = [u for u in uploads if self.get(u.channel, u.ecosystem, u.path) != u]
        if not changed:
            return 0
        pairs = sorted({(u.channel, u.ecosystem) for u in changed})
        async with self._db.transaction() as conn:
            await conn.executemany(_UPSERT, [_upload_values(u) for u in changed])
            for channel, ecosystem in pairs:
                await self.bump(conn, channel, ecosystem)
        await self.committed(pairs)
        return len(changed)

    async def remove(self, channel: str, ecosystem: str, paths: Iterable[str]) -> int:
        async with self._db.transaction() as conn:
            status = await conn.execute("DELETE FROM uploads WHERE channel=$1 AND ecosystem=$2 AND path = ANY($3)",
                                        channel, ecosystem, list(paths))
            count = int(status.split()[-1])
            if count:
                await self.bump(conn, channel, ecosystem)
        if count:
            await self.committed([(channel, ecosystem)])
        return count

    async def set_labels(self, channel: str, ecosystem: str, path: str, labels: Iterable[str]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE uploads SET labels=$1 WHERE channel=$2 AND ecosystem=$3 AND path=$4",
                               json.dumps(sorted(set(labels))), channel, ecosystem, path)
            await self.bump(conn, channel, ecosystem)
        await self.committed([(channel, ecosystem)])


class PgPackageTable(PackageMirror):
    """Package settings in PostgreSQL, read from memory; a change of privacy bumps the pair's
    generation (the public view's indexes change) in the same transaction."""

    def __init__(self, db: PgBackend, catalog: PgCatalog) -> None:
        super().__init__()
        self._db = db
        self._catalog = catalog

    async def reload(self) -> None:
        async with self._db.snapshot() as conn:
            rows = await conn.fetch("SELECT * FROM packages")
            locks = await conn.fetch("SELECT channel, label FROM locked_labels")
        self._load((package_from_row(tuple(r)) for r in rows), [(r[0], r[1]) for r in locks])
        self._catalog._views = {}

    async def _write(self, pairs: Iterable[tuple[str, str]], sql: str, args: Iterable[tuple[Any, ...]]) -> None:
        """Run one statement per args row; bump the generation of ``pairs``; notify; reload."""
        pairs = sorted(set(pairs))
        async with self._db.transaction() as conn:
            await conn.executemany(sql, list(args))
            for channel, ecosystem in pairs:
                await PgCatalog.bump(conn, channel, ecosystem, "packages")
            if not pairs:
                await PgBackend.notify(conn, "packages")
        await self.reload()
        await self._catalog.committed(pairs)

    async def put(self, info: PackageInfo) -> PackageInfo:
        old = self.get(info.channel, info.ecosystem, info.name)
        if not info.created_at:
            info = _replace(info, created_at=old.created_at if old else time.time())
        changed = old is None or old.private != info.private
        await self._write([(info.channel, info.ecosystem)] if changed else [], _PACKAGE_UPSERT, [_pg_values(info)])
        return info

    async def delete(self, channel: str, ecosystem: str, name: str) -> None:
        old = self.get(channel, ecosystem, name)
        if old is None:
            return
        await self._write([(channel, ecosystem)] if old.private else [],
                          "DELETE FROM packages WHERE channel=$1 AND ecosystem=$2 AND name=$3", [(channel, ecosystem, name)])

    async def apply(self, infos: Iterable[PackageInfo], locked: Mapping[str, Iterable[str]]) -> int:
        """As the SQLite table's ``apply``: changed rows and exact locked labels, in one transaction."""
        rows, lock_add, lock_drop = self.changes(infos, locked)
        if not (rows or lock_add or lock_drop):
            return 0
        async with self._db.transaction() as conn:
            await conn.executemany(_PACKAGE_UPSERT, [_pg_values(i) for i in rows])
            await conn.executemany("INSERT INTO locked_labels VALUES ($1, $2) ON CONFLICT DO NOTHING", lock_add)
            await conn.executemany("DELETE FROM locked_labels WHERE channel=$1 AND label=$2", lock_drop)
            for channel, ecosystem in sorted({(i.channel, i.ecosystem) for i in rows}):
                await PgCatalog.bump(conn, channel, ecosystem, "packages")
            await PgBackend.notify(conn, "packages")
        await self.reload()
        await self._catalog.committed({(i.channel, i.ecosystem) for i in rows})
        return len(rows) + len(lock_add) + len(lock_drop)

    async def set_locked(self, channel: str, label: str, locked: bool) -> None:
        sql = ("INSERT INTO locked_labels VALUES ($1, $2) ON CONFLICT DO NOTHING" if locked
               else "DELETE FROM locked_labels WHERE channel=$1 AND label=$2")
        await self._write([], sql, [(channel, label)])


def _pg_values(info: PackageInfo) -> tuple[Any, ...]:
    values = package_values(info)
    return (*values[:3], bool(values[3]), *values[4:])


__all__ = ["PgCatalog", "PgPackageTable"]
