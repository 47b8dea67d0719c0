"""Find a request's token in any of the forms DESIGN allows, and verify it.

Forms, all equivalent: ``/t/<TOKEN>/`` in the path (``routing`` strips it and hands it over),
HTTP Basic with user ``<TOKEN>`` and password ``x-auth-token`` (pip, twine, R), HTTP Basic
with the token as password and any user (``__token__``), ``X-Auth: <TOKEN>``,
``Authorization: token <TOKEN>`` (anaconda-client) and ``Authorization: Bearer <TOKEN>``.

Tokens are stored only as sha256 digests. Lookup is by the digest of the presented token
(timing reveals nothing about the secret: finding a matching digest needs a preimage) and
the match is confirmed with ``hmac.compare_digest``.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from typing import Mapping

from ..settings import Settings, TokenEntry

TOKEN_PREFIX = "cgt-"
_ALPHABET = string.ascii_letters + string.digits
# 43 characters of a 62-letter alphabet carry 256 bits; DESIGN asks for at least 160.
_TOKEN_CHARS = 43
BASIC_MAGIC_PASSWORD = "x-auth-token"


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    token_name: str
    scopes: frozenset[str]
    groups: frozenset[str]
    digest: str = ""  # sha256 of the token: what a revocation names
    user_made: bool = False  # made by its user (store.tokens), not listed in the policy


def generate_token() -> str:
    """A new secret: ``cgt-`` + letters and digits only (conda's ``/t/([a-zA-Z0-9-]*)``)."""
    return TOKEN_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_TOKEN_CHARS))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic header, or None."""
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def basic_user(headers: Mapping[str, str]) -> str | None:
    """The user name of an HTTP Basic header (a password sign-in, or a token's any-user form)."""
    creds = basic_credentials(headers)
    if creds is None or not creds[0] or creds[1] == BASIC_MAGIC_PASSWORD:
        return None
    return creds[0][:200]


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The token carried by headers, or None. Malformed headers count as no token."""
    x_auth = headers.get("X-Auth")
    if x_auth:
        return x_auth.strip() or None
    authz = headers.get("Authorization")
    if not authz:
        return None
    scheme, _, value = authz.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme in ("token", "bearer"):
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        if password == BASIC_MAGIC_PASSWORD:
            return user or None
        return password or None
    return None


class Tokens:
    """One policy's tokens, with every valid one remembered after its first check, so a
    warm request skips the hash (a reload builds a new ``Tokens``: nothing outlives the
    policy it was checked against). Unknown tokens are never remembered, so random
    guesses cannot grow the memo; the expiry is checked every time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._verified: dict[str, tuple[TokenEntry, Principal]] = {}

    def verify(self, token: str | None, today: dt.date | None = None) -> Principal | None:
        """The principal a token stands for, or None if it is unknown or expired."""
        if not token:
            return None
        known = self._verified.get(token)
        if known is None:
            settings = self.settings
            digest = hash_token(token)
            entry: TokenEntry | None = settings.tokens_by_hash.get(digest)
            if entry is None or not hmac.compare_digest(entry.sha256, digest):
                return None
            principal = Principal(
                user=entry.user,
                token_name=entry.name,
                scopes=entry.scopes,
                groups=settings.memberships.get(entry.user, frozenset()),
                digest=entry.sha256,
            )
            known = self._verified[token] = (entry, principal)
        entry, principal = known
        if entry.expires is not None and (today or dt.date.today()) > entry.expires:
            return None
        return principal


def verify(token: str | None, settings: Settings, today: dt.date | None = None) -> Principal | None:
    """A token checked against a policy once, without a memo (see ``Tokens``)."""
    return Tokens(settings).verify(token, today)
