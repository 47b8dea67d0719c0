"""The accounts layer without a server: scrypt passwords, the failed sign-in brake, scope
capping and expiry of user-made tokens, and revocation seen by another process's store."""
from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth.accounts import (
    FailureLimiter,
    TokenRequest,
    check_password,
    expiry,
    grantable_scopes,
    hash_password,
    make_token,
    may_manage,
)
from proxy.auth.credentials import Principal, hash_token
from proxy.errors import BadRequest, Forbidden, TooManyRequests
from proxy.account_settings import AccountPolicy
from proxy.settings import parse_settings
from proxy.store.tokens import SYNC_INTERVAL, TokenStore, UserToken

POLICY = AccountPolicy(token_days=30, token_max_days=90, max_failures=3, failure_window=60)


def principal(scopes: set[str], user: str = "alice", name: str = "alice-ci") -> Principal:
    return Principal(user=user, token_name=name, scopes=frozenset(scopes), groups=frozenset())


def test_password_hash_is_scrypt_salted_and_checks() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("scrypt$32768$8$1$") and first != second  # salted
    assert "correct horse" not in first
    assert check_password("correct horse", first) and check_password("correct horse", second)
    assert not check_password("wrong horse", first)
    assert not check_password("correct horse", "scrypt$garbage")


def test_policy_users_take_password_hashes(tmp_path: Path) -> None:
    hashed = hash_password("s3cret-pass")
    settings = parse_settings(f"users: [bob, {{name: alice, password: '{hashed}'}}]\n")
    assert settings.users == {"alice", "bob"} and settings.passwords == {"alice": hashed}
    with pytest.raises(Exception) as err:
        parse_settings("users: [{name: alice, password: plaintext}]\naccounts: {token_days: 400}\n")
    text = str(err.value)
    assert "users[0].password" in text and "accounts.token_days" in text


def test_failure_limiter_counts_per_key_in_a_window() -> None:
    now = [0.0]
    limiter = FailureLimiter(clock=lambda: now[0])
    keys = ["addr:10.0.0.1", "user:alice"]
    for _ in range(3):
        limiter.check(keys, POLICY)
        limiter.fail(keys, POLICY)
    with pytest.raises(TooManyRequests) as err:
        limiter.check(["addr:10.0.0.9", "user:alice"], POLICY)  # the user is braked from any address
    assert int(err.value.headers["Retry-After"]) > 0
    limiter.check(["addr:10.0.0.9", "user:bob"], POLICY)  # others are not
    now[0] = 61.0
    limiter.check(keys, POLICY)  # the window has passed


def test_scopes_never_exceed_the_creator() -> None:
    creator = principal({"conda:download", "api:read"})
    assert grantable_scopes(creator, ("conda:download",)) == ("conda:download",)
    assert set(grantable_scopes(creator, ())) == {"conda:download", "api:read"}
    with pytest.raises(Forbidden):
        grantable_scopes(creator, ("api:write",))
    with pytest.raises(Forbidden):
        grantable_scopes(creator, ("all",))
    with pytest.raises(BadRequest):
        grantable_scopes(creator, ("repos",))
    assert grantable_scopes(principal({"all"}), ("api:write",)) == ("api:write",)


def test_expiry_has_a_default_and_a_maximum() -> None:
    assert expiry(POLICY, None, 1000.0) == 1000.0 + 30 * 86400
    assert expiry(POLICY, 3600, 1000.0) == 4600.0
    with pytest.raises(BadRequest, match="at most 90 days"):
        expiry(POLICY, 91 * 86400, 0.0)


async def test_tokens_are_stored_hashed_and_revocation_reaches_another_process(tmp_path: Path) -> None:
    now = [100.0]
    db = tmp_path / "accounts.sqlite3"
    here = TokenStore(db, clock=lambda: now[0])
    there = TokenStore(db, clock=lambda: now[0])  # another worker's connection
    secret, record = await make_token(here, POLICY, principal({"all"}), TokenRequest(name="laptop", scopes=("conda:download",)))
    assert secret.startswith("cgt-") and record.sha256 == hash_token(secret)
    assert secret.encode() not in db.read_bytes() + (tmp_path / "accounts.sqlite3-wal").read_bytes()
    assert there.find(record.sha256) == record  # remembered by the other worker from now on
    with pytest.raises(Exception, match="already have a token named"):
        await make_token(here, POLICY, principal({"all"}), TokenRequest(name="laptop"))
    await here.remove("alice", "laptop")
    assert here.find(record.sha256) is None  # at once in the writing process
    now[0] += SYNC_INTERVAL
    assert there.find(record.sha256) is None  # within SYNC_INTERVAL everywhere else
    await here.revoke_policy_token("ab" * 32, "alice-ci")
    now[0] += SYNC_INTERVAL
    assert there.is_revoked("ab" * 32)


def test_a_token_manages_only_tokens_within_its_scopes() -> None:
    reader = principal({"conda:download"}, name="reader")
    wide = UserToken("alice", "wide", "0" * 64, ("api:write",), 0.0, 1e12)
    narrow = UserToken("alice", "narrow", "1" * 64, ("conda:download",), 0.0, 1e12)
    other = UserToken("bob", "narrow", "2" * 64, ("conda:download",), 0.0, 1e12)
    assert may_manage(reader, narrow) and not may_manage(reader, wide) and not may_manage(reader, other)
    assert may_manage(principal({"all"}), wide)


async def test_a_token_store_made_before_note_url_is_upgraded_in_place(tmp_path: Path) -> None:
    """Stores written by earlier versions have no note_url column: opening one adds it, and
    their tokens read back with an empty note_url."""
    import sqlite3

    db = tmp_path / "accounts.sqlite3"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE user_tokens (user TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
            scopes TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, made_with TEXT NOT NULL,
            hostname TEXT NOT NULL, remote_addr TEXT NOT NULL, PRIMARY KEY (user, name));
        INSERT INTO user_tokens VALUES ('alice', 'old', 'ab', '["all"]', 0, 1e12, 'password', 'h', '127.0.0.1');
    """)
    old.commit()
    old.close()
    store = TokenStore(db)
    assert [(t.name, t.note_url) for t in store.of_user("alice")] == [("old", "")]
    await store.add(UserToken("alice", "new", "cd", ("all",), 0.0, 1e12, note_url="https://ci.example"))
    assert {t.name: t.note_url for t in TokenStore(db).of_user("alice")} == {"old": "", "new": "https://ci.example"}
