"""The PostgreSQL schema of the catalog, package settings and user-made tokens, as numbered
migrations (DESIGN "Scale-out on existing engines").

``channelgate_migrations`` records each applied version. ``migrate`` runs at every start,
in one transaction under an advisory lock, so two replicas starting at once apply each
migration exactly once (the second waits, then finds nothing left to do). Add a migration
by appending to ``MIGRATIONS``; never edit one that has shipped.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: the bytes "cgmigr" read as an integer (any constant works; ours alone)
MIGRATION_LOCK = 0x63676D69677272

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "catalog, package settings, tokens", """
CREATE TABLE uploads (
    channel     TEXT NOT NULL,
    ecosystem   TEXT NOT NULL,
    path        TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    filename    TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    md5         TEXT NOT NULL,
    size        BIGINT NOT NULL,
    labels      TEXT NOT NULL,      -- JSON list (the same text as the SQLite catalog)
    meta        TEXT NOT NULL,      -- JSON object, ecosystem specific
    uploader    TEXT NOT NULL,
    uploaded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, ecosystem, path)
);
-- bumped in the same transaction as every change of a (channel, ecosystem); replicas
-- learn of it by NOTIFY and rebuild that pair's snapshot
CREATE TABLE generations (
    channel    TEXT NOT NULL,
    ecosystem  TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (channel, ecosystem)
);
CREATE TABLE packages (
    channel     TEXT NOT NULL,
    ecosystem   TEXT NOT NULL,
    name        TEXT NOT NULL,
    private     BOOLEAN NOT NULL,
    summary     TEXT NOT NULL,
    description TEXT NOT NULL,
    license     TEXT NOT NULL,
    home        TEXT NOT NULL,
    releases    TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, ecosystem, name)
);
CREATE TABLE locked_labels (
    channel TEXT NOT NULL,
    label   TEXT NOT NULL,
    PRIMARY KEY (channel, label)
);
CREATE TABLE user_tokens (
    "user"      TEXT NOT NULL,
    name        TEXT NOT NULL,
    sha256      TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    made_with   TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    PRIMARY KEY ("user", name)
);
CREATE TABLE revoked_policy_tokens (
    sha256     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL
);
"""),
    (2, "user tokens keep their application URL", """
ALTER TABLE user_tokens ADD COLUMN note_url TEXT NOT NULL DEFAULT '';
"""),
)


async def migrate(conn: "asyncpg.Connection") -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied (empty: none)."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS channelgate_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM channelgate_migrations")}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO channelgate_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("database: applied migration %d (%s)", version, name)
            applied.append(version)
    return applied


__all__ = ["MIGRATIONS", "migrate"]
