"""The PostgreSQL backend's own promises (proxy/store/pg.py, pg_schema.py): versioned
migrations applied once however many replicas start at the same moment, and a replica whose
listening connection is cut reconnects and catches up on what it missed."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.store.catalog import Upload

asyncpg = pytest.importorskip("asyncpg", reason="the postgres extra is in the test extras")

from proxy.store.pg import PgBackend  # noqa: E402 - after the skip: it imports asyncpg
from proxy.store.pg_catalog import PgCatalog  # noqa: E402
from proxy.store.pg_schema import MIGRATIONS, migrate  # noqa: E402


async def test_concurrent_starts_apply_each_migration_once(pg_url: str) -> None:
    backends = await asyncio.gather(*(PgBackend.open(pg_url, listen=False) for _ in range(4)))
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT version FROM channelgate_migrations ORDER BY version")
            assert [r[0] for r in rows] == [version for version, _, _ in MIGRATIONS]
            assert await migrate(conn) == []  # a later start has nothing to do
        finally:
            await conn.close()
    finally:
        for backend in backends:
            await backend.close()


async def test_a_replica_whose_listener_is_cut_catches_up(pg_url: str, tmp_path: Path) -> None:
    """A change made while a replica was not listening reaches it once it has reconnected."""
    here_db, there_db = await PgBackend.open(pg_url), await PgBackend.open(pg_url)
    try:
        here, there = await PgCatalog.open(here_db), await PgCatalog.open(there_db)
        admin = await asyncpg.connect(pg_url)
        try:
            listener_pid = there_db._listener.get_server_pid()  # type: ignore[union-attr]
            await admin.execute("SELECT pg_terminate_backend($1)", listener_pid)
            upload = Upload("c", "pypi", "a-1.0.tar.gz", "a", "1.0", "a-1.0.tar.gz", "0" * 64, "0" * 32, 3)
            await here.add(upload)
            await there.wait_for(lambda: there.get("c", "pypi", "a-1.0.tar.gz") is not None, 15)
            await there.check()  # listening again: ready
        finally:
            await admin.close()
    finally:
        await here_db.close()
        await there_db.close()
