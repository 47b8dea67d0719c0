"""Index responses with ETag, Cache-Control and 304 handling (RFC 9110 §13.1.2), shared by
every ecosystem so conditional requests behave the same everywhere."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.web_fileresponse import NOSENDFILE

from . import sendfile
from .errors import (
    ChannelgateError,
    Conflict,
    Forbidden,
    InvalidInput,
    Locked,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UpstreamIsSelf,
    UpstreamTimeout,
)

INDEX_MAX_AGE = 60  # seconds an index may be reused; CEP-16 suggests a short max-age for its shard index too
from aiohttp.abc import AbstractStreamWriter

# The one place a domain error becomes an HTTP status (devpi's ModelException mapping);
# subclasses answer as their nearest listed ancestor, anything else is a 500.
HTTP_STATUS: dict[type[ChannelgateError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    RequestTimeout: 408,
    Conflict: 409,
    PayloadTooLarge: 413,
    Locked: 423,
    TooManyRequests: 429,
    UpstreamError: 502,
    UpstreamIsSelf: 502,  # a bad gateway: the name leads back here (the body says so)
    NotReady: 503,
    Unavailable: 503,
    UpstreamTimeout: 504,
}


def http_status(exc: ChannelgateError) -> int:
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def etag_for(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return f'"{h.hexdigest()}"'


def not_modified(request: web.BaseRequest, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return etag in candidates


def index_response(
    request: web.BaseRequest,
    body: bytes,
    content_type: str,
    *,
    etag: str | None = None,
    max_age: int = INDEX_MAX_AGE,
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
    return IndexResponse(body=body, headers=headers)


class IndexResponse(web.Response):
    """A whole index answer (``index_response``): what answers.py may keep and replay."""


def keep_private(response: web.StreamResponse) -> None:
    """DESIGN: responses of non-public channels are ``Cache-Control: private`` (RFC 9111
    §5.2.2.7): a shared cache in front would replay a package file or a CEP-16 shard to
    anyone. The client's own cache may still keep them (max-age and immutable stay)."""
    if response.prepared:
        return
    value = response.headers.get("Cache-Control")
    if not value:
        response.headers["Cache-Control"] = "private"
    elif "public" in value:
        response.headers["Cache-Control"] = value.replace("public", "private")
    elif "private" not in value and "no-store" not in value:
        response.headers["Cache-Control"] = f"private, {value}"


def file_response(path: Path, content_type: str, *, immutable: bool) -> web.FileResponse:
    """A stored blob via sendfile (aiohttp adds ETag, Last-Modified, Range and 304)."""
    headers = {"Content-Type": content_type}
    if immutable:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response = SentFileResponse(path, headers=headers)
    response.hosted = not immutable  # uploads may be replaced; cached upstream files never change
    return response


class SentFileResponse(web.FileResponse):
    """A FileResponse that knows how many body bytes the kernel's sendfile sent.

    aiohttp counts only what passes through its writer, so a sendfile body is missing from
    ``body_length`` (a 16 MB download logged as its 303 header bytes). ``file_bytes`` is the
    body handed to sendfile once it completed; the access log and metrics add it.
    ``hosted``: an upload served from the store (not an upstream artifact from the cache).
    """

    file_bytes = 0
    hosted = False
    _copied = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if not self._copied and request.method != "HEAD" and self.status in (200, 206):
            self.file_bytes = self.content_length or 0
        return writer

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int) -> AbstractStreamWriter:
        # a bounded chunk per writable event (proxy/sendfile.py), else aiohttp's own way
        if NOSENDFILE or self.compression or request.transport is None:
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)  # the headers (FileResponse.prepare is the caller)
        assert writer is not None
        if not await sendfile.send(request.transport, fobj, offset, count):
            return await super()._sendfile(request, fobj, offset, count)  # prepare again is a no-op
        await web.StreamResponse.write_eof(self)
        return writer

    async def _sendfile_fallback(self, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int) -> AbstractStreamWriter:
        self._copied = True  # no kernel sendfile (e.g. uvloop): the writer counts these bytes itself
        return await super()._sendfile_fallback(writer, fobj, offset, count)


def bytes_sent(response: web.StreamResponse) -> int:
    """Bytes really sent for a response: headers and body, sendfile included."""
    # (getattr, not isinstance: a StreamResponse is a MutableMapping, so isinstance goes
    # through ABCMeta on every request; only SentFileResponse has file_bytes)
    return response.body_length + getattr(response, "file_bytes", 0)  # type: ignore[no-any-return]
