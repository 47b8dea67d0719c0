"""Browser sessions: the Fernet key, the encrypted cookie and CSRF tokens.

DESIGN "Web UI": the session is an encrypted cookie (aiohttp-session's EncryptedCookieStorage,
cryptography's Fernet) whose key comes from ``server.session_key`` or is generated once in
the store (``Store.secret``: ``<storage>/ui-session.key``, mode 0600, created atomically so
--workers siblings agree on it). The cookie is HttpOnly and SameSite=Lax, and Secure when the
request came over TLS. Every form carries the session's CSRF token (OWASP "synchronizer token pattern").
Failed sign-ins are braked by the accounts layer (auth.accounts.FailureLimiter), as for the API.
"""
from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, cast

from aiohttp import web
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

if TYPE_CHECKING:
    from ..store.protocols import Store

COOKIE_NAME = "channelgate_session"
SESSION_MAX_AGE = 12 * 3600  # seconds a sign-in lasts (Fernet's ttl check enforces it too)
KEY_FILE = "ui-session.key"
CSRF_FIELD = "csrf"


def session_key(configured: str | None, store: Store) -> bytes:
    """The Fernet key: the configured one, else the store's (made once, never overwritten)."""
    if configured:
        return configured.encode()
    return store.secret(KEY_FILE, Fernet.generate_key)


class Sessions:
    """Load and save the encrypted session cookie around a UI request (no middleware:
    channelgate runs on aiohttp's low-level server, see proxy/web/ui.py)."""

    def __init__(self, key: bytes) -> None:
        fernet = Fernet(key)
        common = dict(cookie_name=COOKIE_NAME, max_age=SESSION_MAX_AGE, path="/ui/", httponly=True, samesite="Lax")
        self._plain = EncryptedCookieStorage(fernet, secure=None, **common)  # type: ignore[arg-type]
        self._tls = EncryptedCookieStorage(fernet, secure=True, **common)  # type: ignore[arg-type]

    def _storage(self, request: web.BaseRequest) -> EncryptedCookieStorage:
        return self._tls if request.secure else self._plain

    async def load(self, request: web.BaseRequest) -> Session:
        return await self._storage(request).load_session(cast(web.Request, request))

    async def save(self, request: web.BaseRequest, response: web.StreamResponse, session: Session) -> None:
        if session._changed or (session.empty and not session.new):
            await self._storage(request).save_session(cast(web.Request, request), response, session)


def csrf_token(session: Session) -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(session: Session, presented: str | None) -> bool:
    expected = session.get("csrf")
    return isinstance(expected, str) and isinstance(presented, str) and hmac.compare_digest(expected, presented)
