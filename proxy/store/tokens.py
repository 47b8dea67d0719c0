"""Tokens that users make (``anaconda auth --create``, ``anaconda login``), stored hashed,
and revocations of policy (YAML) tokens; DESIGN, "Accounts, tokens made by users".

Its own SQLite file beside the catalog (``accounts.sqlite3``): sign-ins write here, and a
write must not invalidate every worker's catalog snapshots. Revocation reaches every worker
of a host within ``SYNC_INTERVAL``: a lookup asks SQLite's ``data_version`` (~15 us, so
at most every quarter second), and when another process wrote, the in-process memo of
verified digests and the set of revoked policy tokens are read afresh.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Conflict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_tokens (
    user        TEXT NOT NULL,
    name        TEXT NOT NULL,      -- unique per user (anaconda-client's "application")
    sha256      TEXT NOT NULL UNIQUE,  -- hex digest of the secret; the secret is never stored
    scopes      TEXT NOT NULL,      -- JSON list
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    made_with   TEXT NOT NULL,      -- the credential that made it: a token name, or "password"
    hostname    TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    note_url    TEXT NOT NULL DEFAULT '',  -- anaconda-client's application URL (auth --create --url)
    PRIMARY KEY (user, name)
);
CREATE TABLE IF NOT EXISTS revoked_policy_tokens (
    sha256     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    revoked_at REAL NOT NULL
);
"""

COLUMNS = "user, name, sha256, scopes, created_at, expires_at, made_with, hostname, remote_addr, note_url"
SYNC_INTERVAL = 0.25  # seconds; a revocation by another process applies within this (DESIGN: 1 s)


@dataclass(frozen=True, slots=True)
class UserToken:
    user: str
    name: str
    sha256: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float
    made_with: str = ""
    hostname: str = ""
    remote_addr: str = ""
    note_url: str = ""  # the application's URL, as the client gave it (anaconda auth --create --url)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at


class TokenStore:
    def __init__(self, db_path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(user_tokens)")}
        if "note_url" not in columns:  # a store made before note_url was kept
            self._db.execute("ALTER TABLE user_tokens ADD COLUMN note_url TEXT NOT NULL DEFAULT ''")
        self._lock = threading.Lock()
        self._memo: dict[str, UserToken | None] = {}
        self._revoked: frozenset[str] = frozenset()
        self._data_version = -1
        self._clock = clock
        self._checked = 0.0
        self._sync(force=True)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ freshness
    def _sync(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < SYNC_INTERVAL:
            return
        self._checked = now
        with self._lock:
            version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            if version == self._data_version and not force:
                return
            self._data_version = version
            rows = self._db.execute("SELECT sha256 FROM revoked_policy_tokens").fetchall()
        self._revoked = frozenset(r[0] for r in rows)
        self._memo = {}

    def _changed(self) -> None:
        """After this process wrote: forget what it remembered."""
        self._memo = {}
        self._sync(force=True)

    # ------------------------------------------------------------------ reads
    def find(self, digest: str) -> UserToken | None:
        """The user-made token with this digest (expired ones too; callers check)."""
        self._sync()
        if digest in self._memo:
            return self._memo[digest]
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM user_tokens WHERE sha256=?", (digest,)).fetchone()
        token = token_from_row(row) if row else None
        if token is not None:  # unknown digests are never remembered: guesses cannot grow the memo
            self._memo[digest] = token
        return token

    def is_revoked(self, digest: str) -> bool:
        """Whether a policy token with this digest was revoked (``channelgate token revoke``)."""
        self._sync()
        return digest in self._revoked

    def of_user(self, user: str) -> list[UserToken]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM user_tokens WHERE user=? ORDER BY created_at", (user,)).fetchall()
        return [token_from_row(r) for r in rows]

    def all(self) -> list[UserToken]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM user_tokens ORDER BY user, created_at").fetchall()
        return [token_from_row(r) for r in rows]

    def revoked_policy_tokens(self) -> dict[str, str]:
        """digest -> name of every revoked policy token."""
        with self._lock:
            rows = self._db.execute("SELECT sha256, name FROM revoked_policy_tokens").fetchall()
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ writes
    async def add(self, token: UserToken, *, replace: bool = False) -> None:
        """Store a new token; a name the user already has is a Conflict unless ``replace``."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if replace:
                    self._db.execute("DELETE FROM user_tokens WHERE user=? AND name=?", (token.user, token.name))
                self._db.execute(
                    f"INSERT INTO user_tokens ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (token.user, token.name, token.sha256, json.dumps(list(token.scopes)), token.created_at,
                     token.expires_at, token.made_with, token.hostname, token.remote_addr, token.note_url),
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise Conflict(f"you already have a token named {token.name!r}") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._changed()

    async def remove(self, user: str, name: str) -> UserToken | None:
        """Revoke one user-made token; returns it, or None if the user has none of that name."""
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM user_tokens WHERE user=? AND name=?", (user, name)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM user_tokens WHERE user=? AND name=?", (user, name))
        self._changed()
        return token_from_row(row)

    async def revoke_policy_token(self, digest: str, name: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked_policy_tokens VALUES (?,?,?)", (digest, name, time.time())
            )
        self._changed()


def token_from_row(row: tuple[object, ...]) -> UserToken:
    """A token from a row of ``COLUMNS`` (both backends select them in this order)."""
    user, name, sha256, scopes, created, expires, made_with, hostname, remote, note_url = row
    return UserToken(
        user=str(user), name=str(name), sha256=str(sha256), scopes=tuple(json.loads(str(scopes))),
        created_at=float(created), expires_at=float(expires),  # type: ignore[arg-type]
        made_with=str(made_with), hostname=str(hostname), remote_addr=str(remote), note_url=str(note_url or ""),
    )
