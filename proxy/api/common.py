"""What every anaconda-client endpoint needs: path segments, a bounded JSON body, times,
and the right checks on a channel (owner = channel)."""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from ..auth.credentials import Principal
from ..auth.policy import Action
from ..context import Services
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from ..routing import Route

MAX_JSON = 1024 * 1024


def segments(route: Route, count: int, *, rest: bool = False) -> list[str]:
    """The path segments after ``/api/<head>/``: exactly ``count`` (the last may hold
    slashes when ``rest``), or 404."""
    parts = route.rest.split("/")[1:]
    if rest and len(parts) > count:
        parts = [*parts[: count - 1], "/".join(parts[count - 1 :])]
    if len(parts) != count or not all(parts):
        raise NotFound()
    return parts


async def json_body(request: web.BaseRequest) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await request.content.read(MAX_JSON + 1)
    if len(body) > MAX_JSON:
        raise PayloadTooLarge("request body too large")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def can_write(services: Services, request: web.BaseRequest, route: Route, owner: str) -> Principal:
    principal = services.guard.authorize(request.headers, route.token, owner, Action.WRITE, request.remote)
    assert principal is not None  # writing is never anonymous
    return principal


def can_read(services: Services, request: web.BaseRequest, route: Route, owner: str) -> Principal | None:
    """``api:read`` on the channel, or ``api:write`` (uploaders look before they write)."""
    guard = services.guard
    try:
        return guard.authorize(request.headers, route.token, owner, Action.API_READ, request.remote)
    except Forbidden as first:
        try:
            return guard.authorize(request.headers, route.token, owner, Action.WRITE, request.remote)
        except Forbidden:
            raise first from None


def principal_of(services: Services, request: web.BaseRequest, route: Route) -> Principal:
    return services.guard.authenticate(request.headers, route.token, request.remote)
