"""Accounts: users' passwords, tokens that users make, and the brake on failed sign-ins.

DESIGN, "Accounts, tokens made by users, the anaconda-client surface":
- passwords are scrypt hashes (cryptography's ``Scrypt``), written by ``channelgate user password``;
- a user-made token is a ``cgt-`` secret stored only as its sha256 digest (``store.tokens``),
  never carries a scope the creating credential lacks, and always expires: the policy's
  ``accounts.token_days`` unless the client asks for less, at most ``token_max_days``;
- failed authentications (wrong tokens and wrong passwords alike) are counted per client
  address and per user name; past ``accounts.max_failures`` within ``failure_window``
  seconds further attempts get 429 until the window has passed, before anything is checked.
  The counts are this process's, and, with ``cache.backend: redis``, every process's
  (``SharedBrake``: coordination.Coordinator), so --workers and replicas do not multiply them.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import BadRequest, Forbidden, TooManyRequests
from ..account_settings import AccountPolicy
from ..settings import SCOPES
from ..token_settings import Scope
from ..store.protocols import Tokens
from ..store.tokens import UserToken
from .credentials import Principal, generate_token, hash_token

# RFC 7914 parameters: N=2**15, r=8, p=1 costs 32 MiB and ~0.1 s, OWASP's floor for scrypt
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_LENGTH = 32
MAX_NAME = 200
DAY = 86400.0


# --------------------------------------------------------------------------- passwords
def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt>$<key>`` (base64), the form the policy file's ``password`` holds."""
    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=_SCRYPT_LENGTH, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(password.encode())
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (constant time in the key comparison)."""
    try:
        _, n, r, p, salt, key = stored.split("$")
        kdf = Scrypt(salt=base64.b64decode(salt), length=len(base64.b64decode(key)), n=int(n), r=int(r), p=int(p))
        kdf.verify(password.encode(), base64.b64decode(key))
    except (ValueError, InvalidKey):
        return False
    return True


# --------------------------------------------------------------------------- failed sign-ins
class SharedBrake(Protocol):
    """Failures counted across processes (Redis): fed every failure, it tells which keys any
    process found over the limit. Never awaited: a check costs no round trip."""

    def note_failure(self, key: str, max_failures: int, window: float) -> None: ...

    def braked_until(self, key: str) -> float | None: ...

    def braking(self) -> bool:
        """Whether any key is braked now (else ``braked_until`` is None for every key)."""
        ...


class FailureLimiter:
    """Failures per key (``addr:<ip>``, ``user:<name>``) in a sliding window, in this process,
    and through ``shared`` in every process that shares it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, shared: SharedBrake | None = None) -> None:
        self._clock = clock
        self._shared = shared
        self._failures: dict[str, collections.deque[float]] = {}
        self._pending: collections.Counter[str] = collections.Counter()  # attempts whose outcome is awaited
        self._last = -float("inf")  # the latest failure of any key

    def quiet(self, window: float) -> bool:
        """No key had a failure within ``window`` seconds here, nor is braked by another
        process: then ``check`` cannot refuse anyone."""
        if self._pending or (self._failures and self._clock() - self._last < window):
            return False
        return self._shared is None or not self._shared.braking()

    def _recent(self, key: str, window: float) -> collections.deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self._clock() - window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def check(self, keys: list[str], policy: AccountPolicy) -> None:
        """Raise 429 when any key is over the limit (checked before any credential is)."""
        for key in keys:
            times = self._recent(key, policy.failure_window)
            if len(times or ()) + self._pending[key] >= policy.max_failures:
                _refuse(times[0] + policy.failure_window - self._clock() if times else 0.0)
            until = self._shared.braked_until(key) if self._shared is not None else None
            if until is not None:
                _refuse(until - time.time())

    @contextlib.contextmanager
    def attempt(self, keys: list[str], policy: AccountPolicy) -> Iterator[None]:
        """``check``, for an attempt whose outcome comes later (a password, checked in a
        thread): until it does, it counts against the limit, so concurrent attempts cannot
        all pass the check before the first of them has failed."""
        self.check(keys, policy)
        self._pending.update(keys)
        try:
            yield
        finally:
            self._pending.subtract(keys)
            for key in keys:
                if self._pending[key] <= 0:
                    del self._pending[key]

    def fail(self, keys: list[str], policy: AccountPolicy) -> None:
        for key in keys:
            times = self._recent(key, policy.failure_window) or self._failures.setdefault(key, collections.deque())
            self._last = self._clock()
            times.append(self._last)
            while len(times) > policy.max_failures:  # bounded memory per key
                times.popleft()
            if self._shared is not None:
                self._shared.note_failure(key, policy.max_failures, policy.failure_window)
        if len(self._failures) > 100_000:  # bounded memory overall: forget the oldest keys
            for key in list(self._failures)[: len(self._failures) // 2]:
                del self._failures[key]


def _refuse(wait: float) -> None:
    retry = max(1, int(wait) + 1)
    raise TooManyRequests("too many failed sign-ins; try again later", headers={"Retry-After": str(retry)})


def limiter_keys(remote: str | None, user: str | None) -> list[str]:
    keys = [f"addr:{remote or '-'}"]
    if user:
        keys.append(f"user:{user}")
    return keys


# --------------------------------------------------------------------------- user-made tokens
@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What a client asks for (``POST /api/authentications``)."""

    name: str
    scopes: tuple[str, ...] = ()  # empty: everything the creating credential has
    max_age: float | None = None  # seconds
    hostname: str = ""
    remote_addr: str = ""
    note_url: str = ""  # the application's URL (anaconda auth --create --url)
    replace: bool = False  # anaconda-client's fail-if-exists=false: a new token takes the name over


def grantable_scopes(creator: Principal, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes of a new token: never more than the creator's (DESIGN)."""
    unknown = [s for s in requested if s not in SCOPES]
    if unknown:
        raise BadRequest(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}")
    if not requested:
        return tuple(sorted(creator.scopes))
    if Scope.ALL.value not in creator.scopes:
        beyond = [s for s in requested if s not in creator.scopes]
        if beyond:
            raise Forbidden(f"this credential may not grant scope(s) it does not have: {', '.join(beyond)}")
    return tuple(dict.fromkeys(requested))


def expiry(policy: AccountPolicy, max_age: float | None, now: float) -> float:
    if max_age is None:
        return now + policy.token_days * DAY
    if max_age <= 0:
        raise BadRequest("max-age must be a positive number of seconds")
    if max_age > policy.token_max_days * DAY:
        raise BadRequest(f"max-age may be at most {policy.token_max_days} days ({int(policy.token_max_days * DAY)} s)")
    return now + max_age


async def make_token(
    store: Tokens, policy: AccountPolicy, creator: Principal, req: TokenRequest
) -> tuple[str, UserToken]:
    """Make, store (hashed) and return a new token for the creator's user: (secret, record)."""
    name = req.name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise BadRequest(f"a token name is 1 to {MAX_NAME} printable characters")
    scopes = grantable_scopes(creator, req.scopes)
    now = time.time()
    secret = generate_token()
    record = UserToken(
        user=creator.user, name=name, sha256=hash_token(secret), scopes=scopes, created_at=now,
        expires_at=expiry(policy, req.max_age, now), made_with=creator.token_name,
        hostname=req.hostname[:MAX_NAME], remote_addr=req.remote_addr, note_url=req.note_url,
    )
    await store.add(record, replace=req.replace)
    return secret, record


def may_manage(caller: Principal, token: UserToken) -> bool:
    """A credential manages its user's tokens that carry no scope it lacks (and itself)."""
    if caller.user != token.user:
        return False
    if caller.token_name == token.name or Scope.ALL.value in caller.scopes:
        return True
    return set(token.scopes) <= set(caller.scopes)

