"""Serving a stored blob: hosted uploads and cached upstream artifacts of every ecosystem,
whatever the Store backend (DESIGN "Scale-out on existing engines"; issue 13).

- a file on this machine (the filesystem backend, or an S3 replica's own copy): sendfile
  (``responses.file_response``; aiohttp answers Range, HEAD and conditional requests);
- with ``storage.s3.redirect``: a GET answers 307 to a short-lived presigned URL, so the
  bytes come from the object store, not through this server. The caller has been
  authorised already (app.py's Gateway decides before any handler runs), so an
  unauthorised client never sees a URL. HEAD is answered here (a URL presigned for GET
  does not sign a HEAD);
- otherwise: streamed from the Store (``stat`` then ``stream``: S3 GetObject with
  ``Range``), never blocking the loop and with no local copy first. HTTP semantics match
  aiohttp's FileResponse: ``Accept-Ranges``, one byte range -> 206 (RFC 9110 §14.2), an
  unsatisfiable or malformed one -> 416 with ``Content-Range: bytes */size`` (§15.5.17),
  ``ETag`` (the blob's sha256: the same on every replica) with ``If-None-Match`` -> 304
  (§13.1.2) and ``If-Range`` (§13.1.5), HEAD with ``Content-Length`` (§9.3.2).
"""
from __future__ import annotations

import logging

from aiohttp import web

from .responses import file_response, not_modified
from .store.blobs import Area
from .store.protocols import Store

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"


class BlobStreamResponse(web.StreamResponse):
    """A blob streamed from the Store. ``hosted``: an upload (not an upstream artifact)."""

    hosted = False


class BlobRedirect(web.Response):
    """A 307 to a presigned URL of the blob (``storage.s3.redirect``)."""

    hosted = False


async def blob_response(request: web.BaseRequest, store: Store, area: Area, sha256: str, content_type: str,
                        *, hosted: bool) -> web.StreamResponse | None:
    """The response serving a published blob, or None when it is not published."""
    path = store.local(area, sha256)
    size: int | None = None
    if path is None:
        size = await store.stat(area, sha256)
        if size is None:
            return None
    if request.method == "GET":
        url = await store.presigned_url(area, sha256)
        if url is not None:
            # no-store: the URL expires, a cache must not replay it (RFC 9111 §5.2.2.5)
            redirect = BlobRedirect(status=307, headers={"Location": url, "Cache-Control": "no-store"})
            redirect.hosted = hosted
            return redirect
    if path is not None:
        return file_response(path, content_type, immutable=not hosted)
    assert size is not None
    return await _stream(request, store, area, sha256, size, content_type, hosted=hosted)


def _span(request: web.BaseRequest, etag: str, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` asked by a Range header, None for the whole blob; ValueError when
    unsatisfiable. The same arithmetic as aiohttp's FileResponse, so backends agree."""
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is another representation: send it all
    rng = request.http_range  # ValueError: malformed, several ranges, first > last
    start, end = rng.start, rng.stop
    if start is None:
        return None
    if start < 0 and end is None:  # a suffix: the last -start bytes
        start = max(start + size, 0)
        stop = size
    else:
        stop = min(end if end is not None else size, size)
    if start >= size:
        raise ValueError("range starts past the end")
    return start, stop


async def _stream(request: web.BaseRequest, store: Store, area: Area, sha256: str, size: int,
                  content_type: str, *, hosted: bool) -> web.StreamResponse:
    etag = f'"{sha256}"'
    headers = {"Content-Type": content_type, "ETag": etag, "Accept-Ranges": "bytes"}
    if not hosted:
        headers["Cache-Control"] = IMMUTABLE  # content-addressed: a cached artifact never changes
    if not_modified(request, etag):
        return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    try:
        span = _span(request, etag, size)
    except ValueError:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag})
    start, stop = span if span is not None else (0, size)
    resp = BlobStreamResponse(status=206 if span is not None else 200, headers=headers)
    resp.hosted = hosted
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    resp.content_length = stop - start
    if request.method == "HEAD" or stop == start:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    chunks = store.stream(area, sha256, start, stop)
    try:
        first = await anext(chunks, b"")  # a blob gone since ``stat``: NotFound, before any header
        await resp.prepare(request)
        sent = len(first)
        await resp.write(first)
        async for chunk in chunks:
            sent += len(chunk)
            await resp.write(chunk)
    except ConnectionError:  # the client left (aiohttp's ClientConnectionResetError included)
        log.debug("a client left during %s", sha256)
        return resp
    except Exception:
        if not resp.prepared:
            raise
        log.exception("the store failed while streaming %s/%s", area, sha256)
        return abort(request, resp)
    finally:
        close = getattr(chunks, "aclose", None)  # an async generator: end its GetObject now
        if close is not None:
            await close()
    if sent != stop - start:  # the store sent less than it declared: the client must see a cut body
        log.error("the store sent %d of %d bytes of %s/%s", sent, stop - start, area, sha256)
        return abort(request, resp)
    await resp.write_eof()
    return resp


async def read_blob(store: Store, area: Area, sha256: str, limit: int) -> bytes | None:
    """A small published blob's bytes (a metadata file), or None when absent or over ``limit``."""
    size = await store.stat(area, sha256)
    if size is None or size > limit:
        return None
    return b"".join([chunk async for chunk in store.stream(area, sha256, 0, size)])


def abort(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection so the client sees an incomplete body, never a wrong one."""
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
    return resp


__all__ = ["BlobRedirect", "BlobStreamResponse", "abort", "blob_response", "read_blob"]
