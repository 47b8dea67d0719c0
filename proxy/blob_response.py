"""Serving a stored blob: hosted uploads and cached upstream artifacts of every ecosystem,
whatever the Store backend (DESIGN "Scale-out on existing engines"; issue 13).

- a file on this machine (the filesystem backend, or an S3 replica's own copy): sendfile
  (``responses.file_response``; aiohttp answers Range, HEAD and conditional requests);
- with ``storage.s3.redirect``: a GET answers 307 to a short-lived presigned URL, so the
  bytes come from the object store, not through this server. The caller has been
  authorised already (app.py's Gateway decides before any handler runs), so an
  unauthorised client never sees a URL. HEAD is answered here (a URL presigned for GET
  does not sign a HEAD);
- a small local file the caller marks ``inline`` (a PEP 658 metadata file, a few KiB): read at
  once and answered from memory, with the streamed form's headers below. aiohttp's
  FileResponse opens and stats on a thread and closes on another: two trips to the
  executor per answer, and a cold resolve asks for one metadata file per project (issue 15);
- otherwise: streamed from the Store (``stat`` then ``stream``: S3 GetObject with
  ``Range``), never blocking the loop and with no local copy first. HTTP semantics match
  aiohttp's FileResponse: ``Accept-Ranges``, one byte range -> 206 (RFC 9110 §14.2), an
  unsatisfiable or malformed one -> 416 with ``Content-Range: bytes */size`` (§15.5.17),
  ``ETag`` (the blob's sha256: the same on every replica) with ``If-None-Match`` -> 304
  (§13.1.2) and ``If-Range`` (§13.1.5), HEAD with ``Content-Length`` (§9.3.2).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .responses import file_response, not_modified
from .store.blobs import Area
from .store.protocols import Store

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
INLINE_MAX = 64 * 1024  # bytes of an ``inline`` blob read on the loop (like a ref or a small index read)


class BlobStreamResponse(web.StreamResponse):
    """Bytes ``[start, stop)`` of a blob, streamed from the Store when aiohttp sends the
    response (like FileResponse: the handler returns it unsent, so the Gateway may still mark
    it private). ``hosted``: an upload (not an upstream artifact)."""

    hosted = False

    def __init__(self, store: Store, area: Area, sha256: str, start: int, stop: int, *, status: int,
                 headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self._blob = (store, area, sha256)
        self._first, self._stop = start, stop
        self.content_length = stop - start

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared or request.method == "HEAD" or self._stop == self._first:
            return await super().prepare(request)
        store, area, sha256 = self._blob
        chunks = store.stream(area, sha256, self._first, self._stop)
        sent, want = 0, self._stop - self._first
        try:
            chunk = await anext(chunks, b"")  # the blob gone since ``stat``: fails before any header
            writer = await super().prepare(request)
            while chunk:
                sent += len(chunk)
                await self.write(chunk)
                chunk = await anext(chunks, b"")
        except ConnectionError:  # the client left (aiohttp's ClientConnectionResetError included)
            log.debug("a client left during %s", sha256)
            return self._payload_writer
        except Exception:  # the store failed: the client must see a cut body, never a wrong one
            log.exception("the store failed while streaming %s/%s", area, sha256)
            abort(request, self)
            return self._payload_writer
        finally:
            close = getattr(chunks, "aclose", None)  # an async generator: end its GetObject now
            if close is not None:
                await close()
        if sent != want:
            log.error("the store sent %d of %d bytes of %s/%s", sent, want, area, sha256)
            abort(request, self)
        return writer


class InlineBlobResponse(web.Response):
    """A small blob answered from memory (``blob_response(..., inline=True)``)."""

    hosted = False


class BlobRedirect(web.Response):
    """A 307 to a presigned URL of the blob (``storage.s3.redirect``)."""

    hosted = False


async def blob_response(request: web.BaseRequest, store: Store, area: Area, sha256: str, content_type: str,
                        *, hosted: bool, inline: bool = False) -> web.StreamResponse | None:
    """The response serving a published blob, or None when it is not published. ``inline``:
    a local copy of at most INLINE_MAX bytes is answered from memory."""
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
        data = _read_small(path) if inline else None
        if data is not None:
            return _ranged(request, store, area, sha256, len(data), content_type, hosted=hosted, data=data)
        return file_response(path, content_type, immutable=not hosted)
    assert size is not None
    return _ranged(request, store, area, sha256, size, content_type, hosted=hosted)


def _read_small(path: Path) -> bytes | None:
    """The whole file when it holds at most INLINE_MAX bytes; None otherwise (or when it is
    gone: FileResponse then answers as it always does)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > INLINE_MAX:
                return None
            return fh.read(INLINE_MAX + 1)
    except FileNotFoundError:
        return None


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


def bytes_response(request: web.BaseRequest, sha256: str, data: bytes, content_type: str) -> web.StreamResponse:
    """A small cached blob whose bytes are in hand (checked, perhaps still being stored:
    write_behind.py), answered as ``blob_response(..., inline=True)`` answers it once stored:
    the same ETag, ranges and conditional answers."""
    return _ranged(request, None, "cache", sha256, len(data), content_type, hosted=False, data=data)


def _ranged(request: web.BaseRequest, store: Store | None, area: Area, sha256: str, size: int,
            content_type: str, *, hosted: bool, data: bytes | None = None) -> web.StreamResponse:
    """The blob, or the one range asked, with its conditional answers: streamed from the Store,
    or from ``data``, its bytes already read."""
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
    if span is not None:
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    start, stop = span if span is not None else (0, size)
    status = 206 if span is not None else 200
    resp: InlineBlobResponse | BlobStreamResponse
    if data is not None:
        resp = InlineBlobResponse(status=status, body=data[start:stop], headers=headers)
    else:
        assert store is not None
        resp = BlobStreamResponse(store, area, sha256, start, stop, status=status, headers=headers)
    resp.hosted = hosted
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


__all__ = ["BlobRedirect", "BlobStreamResponse", "InlineBlobResponse", "abort", "blob_response", "bytes_response",
           "read_blob"]
