"""User-made tokens and revocations of policy tokens in PostgreSQL (DESIGN "Accounts, tokens
made by users"; "Scale-out on existing engines").

Every lookup is on the request path (each authenticated request), so the whole of both
tables is mirrored in memory: a token row is small, and only a user's own sign-in makes
one. A write notifies ``tokens``; every replica reloads, so a revocation applies
everywhere within a second (the SQLite store's promise across workers).
"""
from __future__ import annotations

import json
import time
from typing import Any

import asyncpg

from ..errors import Conflict
from .pg import PgBackend
from .tokens import UserToken, token_from_row

_COLUMNS = '"user", name, sha256, scopes, created_at, expires_at, made_with, hostname, remote_addr, note_url'


class PgTokenStore:
    """The TokenStore interface (tokens.py) over PostgreSQL; ``await PgTokenStore.open(db)``."""

    def __init__(self, db: PgBackend) -> None:
        self._db = db
        self._by_digest: dict[str, UserToken] = {}
        self._revoked: dict[str, str] = {}

    @classmethod
    async def open(cls, db: PgBackend) -> "PgTokenStore":
        store = cls(db)
        db.on("tokens", store._on_change)
        db.on_resync(store.reload)
        await store.reload()
        return store

    def close(self) -> None:
        """The backend is closed by its owner."""

    async def reload(self) -> None:
        async with self._db.snapshot() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM user_tokens ORDER BY \"user\", created_at")
            revoked = await conn.fetch("SELECT sha256, name FROM revoked_policy_tokens")
        tokens = [token_from_row(tuple(r)) for r in rows]
        self._by_digest = {t.sha256: t for t in tokens}
        self._revoked = {str(r[0]): str(r[1]) for r in revoked}

    async def _on_change(self, message: dict[str, Any]) -> None:
        await self.reload()

    # ------------------------------------------------------------------ reads (memory only)
    def find(self, digest: str) -> UserToken | None:
        return self._by_digest.get(digest)

    def is_revoked(self, digest: str) -> bool:
        return digest in self._revoked

    def of_user(self, user: str) -> list[UserToken]:
        return sorted((t for t in self._by_digest.values() if t.user == user), key=lambda t: t.created_at)

    def all(self) -> list[UserToken]:
        return sorted(self._by_digest.values(), key=lambda t: (t.user, t.created_at))

    def revoked_policy_tokens(self) -> dict[str, str]:
        return dict(self._revoked)

    # ------------------------------------------------------------------ writes
    async def add(self, token: UserToken, *, replace: bool = False) -> None:
        async with self._db.transaction() as conn:
            if replace:
                await conn.execute('DELETE FROM user_tokens WHERE "user"=$1 AND name=$2', token.user, token.name)
            try:
                await conn.execute(
                    f"INSERT INTO user_tokens ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                    token.user, token.name, token.sha256, json.dumps(list(token.scopes)), token.created_at,
                    token.expires_at, token.made_with, token.hostname, token.remote_addr, token.note_url,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"you already have a token named {token.name!r}") from None
            await PgBackend.notify(conn, "tokens")
        await self.reload()

    async def remove(self, user: str, name: str) -> UserToken | None:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(f'DELETE FROM user_tokens WHERE "user"=$1 AND name=$2 RETURNING {_COLUMNS}',
                                      user, name)
            if row is None:
                return None
            await PgBackend.notify(conn, "tokens")
        await self.reload()
        return token_from_row(tuple(row))

    async def revoke_policy_token(self, digest: str, name: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO revoked_policy_tokens VALUES ($1, $2, $3) ON CONFLICT (sha256) "
                "DO UPDATE SET name = EXCLUDED.name, revoked_at = EXCLUDED.revoked_at", digest, name, time.time())
            await PgBackend.notify(conn, "tokens")
        await self.reload()


__all__ = ["PgTokenStore"]
