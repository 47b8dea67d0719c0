"""The one place a request is authorised: used by channel dispatch and by the JSON APIs."""
from __future__ import annotations

from typing import Mapping

from ..errors import Forbidden, Unauthorized
from .credentials import Principal, Tokens, token_from_headers
from .policy import Action, Decision, decide


def authorize(
    tokens: Tokens,
    headers: Mapping[str, str],
    path_token: str | None,
    channel_name: str | None,
    action: Action,
) -> Principal | None:
    """The principal allowed to do ``action`` on the channel, or raise 401/403.

    A missing channel is decided like a private one (no enumeration). Returns None only
    for anonymous reads of a public channel.
    """
    token = path_token or token_from_headers(headers)
    principal = tokens.verify(token)
    channel = tokens.settings.channels.get(channel_name) if channel_name else None
    decision = decide(principal, channel, action)
    if decision is Decision.UNAUTHENTICATED:
        raise Unauthorized("invalid or expired token" if token else "authentication required")
    if decision is Decision.FORBIDDEN:
        verb = "upload to" if action in (Action.WRITE, Action.ADMIN) else "read"
        raise Forbidden(f"this token may not {verb} this channel")
    return principal


def authenticate(tokens: Tokens, headers: Mapping[str, str], path_token: str | None) -> Principal:
    """A valid principal (no channel involved, e.g. anaconda-client's ``GET /api/user``), or 401."""
    token = path_token or token_from_headers(headers)
    principal = tokens.verify(token)
    if principal is None:
        raise Unauthorized("invalid or expired token" if token else "authentication required")
    return principal
