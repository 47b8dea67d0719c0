"""Index responses with ETag, Cache-Control and 304 handling (RFC 9110 §13.1.2), shared by
every ecosystem so conditional requests behave the same everywhere."""
from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web


def etag_for(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return f'"{h.hexdigest()}"'


def not_modified(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return etag in candidates


def index_response(
    request: web.Request,
    body: bytes,
    content_type: str,
    *,
    etag: str | None = None,
    max_age: int = 60,
    immutable: bool = False,
    vary: str | None = None,
) -> web.Response:
    etag = etag or etag_for(body)
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=31536000, immutable" if immutable else f"private, max-age={max_age}",
    }
    if vary:
        headers["Vary"] = vary
    if not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = content_type
    return web.Response(body=body, headers=headers)


def file_response(path: Path, content_type: str, *, immutable: bool) -> web.FileResponse:
    """A stored blob via sendfile (aiohttp adds ETag, Last-Modified, Range and 304)."""
    headers = {"Content-Type": content_type}
    if immutable:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return web.FileResponse(path, headers=headers)
