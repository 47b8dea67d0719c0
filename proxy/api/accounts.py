"""Accounts in anaconda-client's API: tokens that users make, sign-in, groups.

    POST   /api/authentications               make a token (``anaconda auth --create``, ``anaconda login``)
    GET    /api/authentications               the caller's user-made tokens (``auth --list``)
    DELETE /api/authentications[/name/<N>]     revoke the current token, or one by name (201)
    GET    /api/authentication                the current token (``auth --info``)
    GET    /api/authentication-type           {"authentication_type": "password"}
    GET    /api/scopes                        scope -> what it allows (``auth --list-scopes``)
    GET    /api/groups/<owner>                groups with a role on channel <owner>
    GET    /api/group/<owner>/<g>[/members]   one group, its members; changes are refused:
                                              the policy file owns groups

A token is made by the credential that ``POST /api/authentications`` presents: HTTP Basic
``user:password`` (``anaconda login``) or any token form; it never carries more scopes than
that credential (``auth.accounts.grantable_scopes``).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..audit import audit
from ..auth.accounts import TokenRequest, make_token, may_manage
from ..auth.credentials import Principal
from ..context import Services
from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..routing import Route
from ..store.tokens import UserToken
from ..token_settings import Scope
from .common import can_read, iso, json_body, principal_of, segments

SCOPE_HELP = {  # one line per token_settings.Scope
    Scope.CONDA_DOWNLOAD.value: "read conda channels (repodata, packages)",
    Scope.PYPI_DOWNLOAD.value: "read PyPI indexes and files",
    Scope.CRAN_DOWNLOAD.value: "read CRAN repositories",
    Scope.API_READ.value: "list channels, packages, labels and files through the API",
    Scope.API_WRITE.value: "upload, remove, copy, move, label and privacy changes (with the write role)",
    Scope.ALL.value: "everything the user's roles allow",
}
GROUPS_READ_ONLY = "groups are defined in the policy file (groups:); change them there and reload"
MAX_NOTE_URL = 2000  # anaconda auth --url: kept and shown back, never followed


def api_handlers(services: Services) -> dict[str, Any]:
    return {
        "authentications": _authentications,
        "authentication": _authentication,
        "authentication-type": _authentication_type,
        "scopes": _scopes,
        "groups": _groups,
        "group": _group,
    }


def _token_json(token: UserToken) -> dict[str, Any]:
    return {
        "id": token.name,
        "application": token.name,
        "name": token.name,
        "user": token.user,
        "scopes": list(token.scopes),
        "created_at": iso(token.created_at),
        "expires": iso(token.expires_at),
        "hostname": token.hostname,
        "remote_addr": token.remote_addr,
        "made_with": token.made_with,
        "note_url": token.note_url,
    }


def _token_request(payload: dict[str, Any], remote: str | None) -> TokenRequest:
    scopes = payload.get("scopes") or []
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of scope names")
    if payload.get("user"):
        raise BadRequest("tokens here belong to users, not organisations: drop --org")
    max_age = payload.get("max-age")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, (int, float))):
        raise BadRequest("max-age must be a number of seconds")
    if payload.get("strength", "strong") not in (None, "strong"):
        # anaconda auth --weak asks for a shorter token; every token here carries 256 bits
        raise BadRequest("weak tokens are not offered: every token carries 256 random bits (drop --weak)")
    note_url = payload.get("note_url") or ""
    if not isinstance(note_url, str) or len(note_url) > MAX_NOTE_URL or any(ord(c) < 32 for c in note_url):
        raise BadRequest(f"note_url (anaconda auth --url) must be a URL of at most {MAX_NOTE_URL} printable characters")
    name = payload.get("note") or payload.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("a token needs a name (anaconda auth --create --name NAME)")
    return TokenRequest(
        name=name,
        scopes=tuple(s for scope in scopes for s in scope.split()),
        max_age=float(max_age) if max_age is not None else None,
        hostname=str(payload.get("hostname") or ""),
        remote_addr=remote or "",
        note_url=note_url,
        replace=payload.get("fail-if-exists") is False,
    )


async def _authentications(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    parts = route.rest.split("/")[1:]
    settings = services.settings
    if request.method == "POST" and not parts:
        creator = await services.guard.sign_in(request.headers, request.remote)
        req = _token_request(await json_body(request), request.remote)
        secret, token = await make_token(services.guard.tokens, settings.accounts, creator, req)
        audit("token-create", creator, "", token.name, scopes=" ".join(token.scopes))
        return web.json_response({"token": secret, **_token_json(token)})
    caller = principal_of(services, request, route)
    if request.method in ("GET", "HEAD") and not parts:
        return web.json_response([_token_json(t) for t in services.guard.tokens.of_user(caller.user)])
    if request.method != "DELETE":
        raise MethodNotAllowed()
    if not parts:  # anaconda logout: the token in use
        if not caller.user_made:
            raise BadRequest("this token is in the policy file: an administrator revokes it (channelgate token revoke)")
        name = caller.token_name
    elif len(parts) == 2 and parts[0] == "name" and parts[1]:
        name = parts[1]
    elif parts and parts[0] == "org":
        raise BadRequest("tokens here belong to users, not organisations: drop --org")
    else:
        raise NotFound()
    await revoke_token(services, caller, name)
    return web.json_response({}, status=201)


async def revoke_token(services: Services, caller: Principal, name: str) -> None:
    """Revoke one of the caller's user-made tokens (the API's and the web UI's one path)."""
    store = services.guard.tokens
    mine = next((t for t in store.of_user(caller.user) if t.name == name), None)
    if mine is None:
        raise NotFound(f"you have no token named {name!r}")
    if not may_manage(caller, mine):
        raise BadRequest(f"token {name!r} carries scopes this token lacks; revoke it with a password sign-in")
    await store.remove(caller.user, name)
    audit("token-revoke", caller, "", name)


async def _authentication(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed()
    caller = principal_of(services, request, route)
    found = [t for t in services.guard.tokens.of_user(caller.user) if t.name == caller.token_name]
    if caller.user_made and found:
        return web.json_response(_token_json(found[0]))
    entry = next((e for e in services.settings.tokens if e.sha256 == caller.digest), None)
    return web.json_response({
        "id": caller.token_name,
        "application": caller.token_name,
        "user": caller.user,
        "scopes": sorted(caller.scopes),
        "expires": entry.expires.isoformat() if entry is not None and entry.expires else None,
        "kind": "policy",
    })


async def _authentication_type(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    return web.json_response({"authentication_type": "password"})


async def _scopes(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    return web.json_response(SCOPE_HELP)


# --------------------------------------------------------------------------- groups (read-only)
def _channel_groups(services: Services, owner: str) -> dict[str, str]:
    """group name -> its highest role on the channel."""
    channel = services.settings.channels[owner]
    out: dict[str, str] = {}
    for role in ("read", "write", "admin"):
        for grantee in getattr(channel, role):
            kind, _, name = grantee.partition(":")
            if kind == "group":
                out[name] = role
    return out


def _group_json(services: Services, owner: str, name: str, perms: str) -> dict[str, Any]:
    members = services.settings.groups.get(name, ())
    return {"name": name, "owner": owner, "perms": perms, "member_count": len(members), "members": list(members)}


async def _groups(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(GROUPS_READ_ONLY)
    (owner,) = segments(route, 1)
    can_read(services, request, route, owner)
    return web.json_response([
        _group_json(services, owner, name, perms) for name, perms in sorted(_channel_groups(services, owner).items())
    ])


async def _group(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    parts = route.rest.split("/")[1:]
    if len(parts) < 2 or not all(parts):
        raise NotFound()
    owner, name = parts[0], parts[1]
    can_read(services, request, route, owner)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(GROUPS_READ_ONLY)
    perms = _channel_groups(services, owner).get(name)
    if perms is None:
        raise NotFound(f"group {name!r} has no role on {owner}")
    if len(parts) == 2:
        return web.json_response(_group_json(services, owner, name, perms))
    if parts[2:] == ["members"]:
        return web.json_response([{"login": m, "name": m} for m in services.settings.groups.get(name, ())])
    if len(parts) == 4 and parts[2] == "members":
        if parts[3] in services.settings.groups.get(name, ()):
            return web.Response(status=204)
        raise NotFound(f"{parts[3]} is not a member of {name}")
    if parts[2] == "packages":
        raise NotFound("groups here grant roles on channels, not on single packages")
    raise NotFound()
