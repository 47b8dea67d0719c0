"""The one place a request is authorised: used by channel dispatch, the JSON APIs and the UI.

``Guard`` knows every kind of credential: policy (YAML) tokens (the live policy's
``Tokens`` memo), tokens that users made (``store.tokens``), and, for sign-in only,
passwords. Failed attempts are counted per client address and per user name
(``accounts.FailureLimiter``; across processes through Redis when it is configured); past
the limit an attempt is refused (429) before any credential is checked.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..errors import Forbidden, Unauthorized
from ..metrics import current_facts
from ..settings import Settings
from ..store.protocols import Tokens
from .accounts import FailureLimiter, SharedBrake, check_password, limiter_keys
from .credentials import (
    BASIC_MAGIC_PASSWORD,
    TOKEN_PREFIX,
    Principal,
    basic_credentials,
    basic_user,
    hash_token,
    token_from_headers,
)
from ..token_settings import Scope
from .policy import Action, Decision, decide

if TYPE_CHECKING:
    from ..context import LivePolicy

PASSWORD_SCOPES = frozenset({Scope.ALL.value})  # a password is the user: every scope, within the user's roles


@dataclass(frozen=True, slots=True)
class Grant:
    """An authorisation decision that a later request with the same credentials may reuse
    (answers.py), while ``Guard.still_valid`` holds: the same policy object, the token not
    revoked nor removed nor expired, and no failed sign-in within the window (then every
    request goes through ``authorize`` and the brake again)."""

    settings: Settings  # the policy it was decided under
    principal: Principal | None  # None: an anonymous read of a public channel
    until: float  # time.time() when the token expires (inf: never)


class Guard:
    def __init__(self, live: "LivePolicy", tokens: Tokens, brake: SharedBrake | None = None) -> None:
        self.live = live
        self.tokens = tokens
        self.limiter = FailureLimiter(shared=brake)

    def verify(self, token: str | None) -> Principal | None:
        """The principal of a valid token of either kind, or None (unknown, expired, revoked)."""
        if not token:
            return None
        principal = self.live.tokens.verify(token)
        if principal is not None:
            return None if self.tokens.is_revoked(principal.digest) else principal
        if not token.startswith(TOKEN_PREFIX):
            return None
        record = self.tokens.find(hash_token(token))
        settings = self.live.settings
        if record is None or record.expired() or record.user not in settings.users:
            return None
        return Principal(
            user=record.user,
            token_name=record.name,
            scopes=frozenset(record.scopes),
            groups=settings.memberships.get(record.user, frozenset()),
            digest=record.sha256,
            user_made=True,
        )

    def identify(
        self, headers: Mapping[str, str], path_token: str | None, remote: str | None
    ) -> tuple[Principal | None, bool]:
        """(principal or None, whether a token was presented). A presented token that is not
        valid counts as a failed authentication; past the limit this raises 429 first."""
        token = path_token or token_from_headers(headers)
        if not token:
            return None, False
        accounts = self.live.settings.accounts
        keys = limiter_keys(remote, basic_user(headers))
        self.limiter.check(keys, accounts)
        principal = self.verify(token)
        if principal is None:
            self.limiter.fail(keys, accounts)
        else:
            _note(principal)
        return principal, True

    def authorize(
        self,
        headers: Mapping[str, str],
        path_token: str | None,
        channel_name: str | None,
        action: Action,
        remote: str | None = None,
    ) -> Principal | None:
        """The principal allowed to do ``action`` on the channel, or raise 401/403.

        A missing channel is decided like a private one (no enumeration). Returns None only
        for anonymous reads of a public channel.
        """
        principal, presented = self.identify(headers, path_token, remote)
        channel = self.live.settings.channels.get(channel_name) if channel_name else None
        decision = decide(principal, channel, action)
        if decision is Decision.UNAUTHENTICATED:
            raise Unauthorized("invalid or expired token" if presented else "authentication required")
        if decision is Decision.FORBIDDEN:
            verb = "upload to" if action in (Action.WRITE, Action.ADMIN) else "read"
            raise Forbidden(f"this token may not {verb} this channel")
        return principal

    def grant(self, settings: Settings, principal: Principal | None) -> Grant:
        """The decision ``authorize`` just made under ``settings``, to be reused (``still_valid``)."""
        until = math.inf
        if principal is not None and principal.user_made:
            record = self.tokens.find(principal.digest)
            until = record.expires_at if record is not None else -math.inf
        elif principal is not None and principal.digest:
            entry = settings.tokens_by_hash.get(principal.digest)
            if entry is not None and entry.expires is not None:  # valid through that (local) day: Tokens.verify
                until = dt.datetime.combine(entry.expires + dt.timedelta(days=1), dt.time()).timestamp()
        return Grant(settings, principal, until)

    def still_valid(self, grant: Grant) -> bool:
        """Whether ``authorize`` would decide the same again now, without its work: checks what
        can change under one policy object (revocation, a removed user token, expiry) and
        gives up while failed sign-ins are being counted (their limit is per client)."""
        if grant.settings is not self.live.settings or not self.limiter.quiet(grant.settings.accounts.failure_window):
            return False
        principal = grant.principal
        if principal is None:
            return True
        if time.time() >= grant.until:
            return False
        if principal.user_made:
            return self.tokens.find(principal.digest) is not None
        return not self.tokens.is_revoked(principal.digest)

    def authenticate(self, headers: Mapping[str, str], path_token: str | None, remote: str | None = None) -> Principal:
        """A valid principal (no channel involved, e.g. anaconda-client's ``GET /api/user``), or 401."""
        principal, presented = self.identify(headers, path_token, remote)
        if principal is None:
            raise Unauthorized("invalid or expired token" if presented else "authentication required")
        return principal

    async def password(self, user: str, password: str, remote: str | None) -> Principal:
        """A user's password, checked with scrypt (in a thread: ~0.1 s of CPU), counted when
        wrong; an unknown user costs the same as a known one."""
        settings = self.live.settings
        keys = limiter_keys(remote, user)
        stored = settings.passwords.get(user)
        with self.limiter.attempt(keys, settings.accounts):  # counted while scrypt runs
            ok = await asyncio.to_thread(check_password, password, stored or _DUMMY_HASH)
            if not ok or stored is None:
                self.limiter.fail(keys, settings.accounts)
                raise Unauthorized("wrong user name or password")
        return _note(Principal(
            user=user, token_name="password", scopes=PASSWORD_SCOPES,
            groups=settings.memberships.get(user, frozenset()),
        ))

    async def sign_in(self, headers: Mapping[str, str], remote: str | None) -> Principal:
        """Basic ``user:password`` (or ``user:<token>``, or any token form): the credential that
        ``anaconda login`` and ``anaconda auth --create`` present. Wrong -> 401, counted."""
        creds = basic_credentials(headers)
        if creds is None or creds[1].startswith(TOKEN_PREFIX) or creds[1] == BASIC_MAGIC_PASSWORD:
            return self.authenticate(headers, None, remote)
        return await self.password(creds[0], creds[1], remote)


def _note(principal: Principal) -> Principal:
    """Who this request is, for its access line (user and token name; never the secret)."""
    facts = current_facts()
    if facts is not None:
        facts.user, facts.token = principal.user, principal.token_name
    return principal


# a hash of no password at all: checking against it makes an unknown user as slow as a known one
_DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
