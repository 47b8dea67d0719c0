"""Byte ranges of a package file that is still being fetched (RFC 9110 §14, issue 15).

Clients read a wheel's METADATA with Range requests (uv: a HEAD for the length and
``Accept-Ranges``, then the zip's tail, then the member; PEP 658 makes this unneeded when
the index offers ``.metadata``). A cold file must not make them wait for the whole
download:

- HEAD answers the length with ``Accept-Ranges``: from the index when it declares the size,
  from a download under way once the upstream's headers arrive, else from a one-byte Range
  request to the upstream (artifacts.py; never a download);
- a Range within the bytes already written answers at once, 206, from the temp file;
- a Range beyond them is one upstream Range request, relayed as 206, while the full
  download goes on (once) for the cache; an upstream that ignores Range makes us wait
  for the download to reach those bytes instead.

These bytes are not verified against the index's hash yet (the whole file will be), so
they go out ``Cache-Control: private`` like the tee's.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .artifacts import Download
    from .upstream import Upstream

log = logging.getLogger(__name__)

MAX_PROXIED_RANGE = 16 << 20  # a larger range waits for the download rather than fetching twice
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


def wanted_range(header: str, total: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single byte range (RFC 9110 §14.1.2) within ``total`` bytes;
    None for anything else (several ranges, other units, unsatisfiable): then the whole
    file is served, which RFC 9110 §14.2 allows."""
    match = _RANGE.match(header.strip())
    if match is None or total <= 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(total - int(last), 0), total
    start = int(first)
    stop = min(int(last) + 1, total) if last else total
    if start >= stop:
        return None
    return start, stop


async def _until_length(fetch: Download) -> int | None:
    while fetch.total is None and not fetch.finished:
        await fetch.changed()
    return fetch.total if fetch.total is not None else (fetch.written if fetch.path is not None else None)


async def serve_head(request: web.BaseRequest, fetch: Download) -> web.StreamResponse | None:
    """A HEAD on a file being fetched: its length and ``Accept-Ranges`` once known."""
    total = await _until_length(fetch)
    if total is None or fetch.error is not None:
        return None
    return web.Response(headers={"Content-Type": fetch.spec.content_type, "Content-Length": str(total),
                                 "Accept-Ranges": "bytes", "Cache-Control": "private"})


async def serve_range(request: web.BaseRequest, fetch: Download, upstream: Upstream) -> web.StreamResponse | None:
    """A 206 for the request's Range of a file being fetched; None to serve it otherwise."""
    total = await _until_length(fetch)
    if total is None or fetch.error is not None:
        return None
    wanted = wanted_range(request.headers.get("Range", ""), total)
    if wanted is None:
        return None
    start, stop = wanted
    if stop - start > MAX_PROXIED_RANGE:
        return None
    body: bytes | None = None
    if stop > fetch.written and stop - start <= MAX_PROXIED_RANGE:
        spec = fetch.spec
        body = await upstream.fetch_range(spec.upstream, spec.url, start, stop, what=spec.filename,
                                          hashed=spec.hashed)
    while body is None and fetch.written < stop and not fetch.finished:
        await fetch.changed()
    if body is None:
        if fetch.error is not None or fetch.written < stop:
            return None
        body = await asyncio.to_thread(_read, fetch, start, stop)
        if body is None:
            return None
    return web.Response(status=206, body=body, headers={
        "Content-Type": fetch.spec.content_type, "Content-Range": f"bytes {start}-{stop - 1}/{total}",
        "Accept-Ranges": "bytes", "Cache-Control": "private"})


def _read(fetch: Download, start: int, stop: int) -> bytes | None:
    """Bytes already written: from the temp file, or the stored file once published."""
    for path in (fetch.tmp.path, fetch.path):
        if path is None:
            continue
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                return fh.read(stop - start)
        except FileNotFoundError:
            continue
    return None
