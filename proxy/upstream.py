"""Talking to upstreams: one shared aiohttp ClientSession for the app's lifetime.

- ``fetch_index``: conditional GET (If-None-Match / If-Modified-Since) with timeouts.
- ``serve_artifact``: a file an upstream index declared with a hash. Served from the cache
  when stored; otherwise one upstream GET per key at a time (single flight), written to a
  temp file in the store while every waiting client reads the bytes written so far (tee),
  checked against the declared hash, and only then renamed into place.

A response's headers go out only once the first STREAM_AFTER bytes have arrived (or the
download is complete and verified): small files are verified before any byte is sent, so
a mismatch is a clean 502. For larger files the last byte is held back until the hash is
checked; on a mismatch the connection is cut, so no client ever receives a complete body
that failed verification, and nothing is stored.
A dead upstream is backed off: after a connection failure it is not contacted again for a
while (growing to BACKOFF_MAX), and callers fall back to what is cached.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from .errors import ChannelgateError, NotFound, UpstreamError, UpstreamTimeout
from .settings import UpstreamSettings
from .store.blobs import BlobStore, DigestMismatch, TempBlob

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
STREAM_AFTER = 4 * 1024 * 1024
BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
USER_AGENT = "channelgate"


def redact_url(url: str) -> str:
    """A URL fit for a log line: no userinfo, no query (credentials hide in both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class IndexResponse:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    upstream: UpstreamSettings
    url: str
    expect: Mapping[str, str]  # algorithm -> hex digest the upstream index declared
    filename: str
    content_type: str = "application/octet-stream"

    @property
    def key(self) -> str:
        for algorithm in ("sha256", "md5"):
            if algorithm in self.expect:
                return f"{algorithm}:{self.expect[algorithm].lower()}"
        return f"url:{self.url}"


@dataclass(eq=False)
class _Fetch:
    spec: ArtifactSpec
    tmp: TempBlob
    written: int = 0
    total: int | None = None
    path: Path | None = None  # set once verified and stored
    error: ChannelgateError | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.path is not None or self.error is not None

    def notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        await self._changed.wait()


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, store: BlobStore) -> None:
        self.session = session
        self.store = store
        self._inflight: dict[str, _Fetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ health of upstreams
    def _check_up(self, up: UpstreamSettings) -> None:
        until = self._down_until.get(up.name)
        if until is not None and time.monotonic() < until:
            raise UpstreamError(f"upstream {up.name} is unreachable (backing off)")

    def _mark(self, up: UpstreamSettings, ok: bool) -> None:
        if ok:
            self._down_until.pop(up.name, None)
            self._backoff.pop(up.name, None)
            return
        delay = min(self._backoff.get(up.name, BACKOFF_START / 2) * 2, BACKOFF_MAX)
        self._backoff[up.name] = delay
        self._down_until[up.name] = time.monotonic() + delay

    def _request_kwargs(self, up: UpstreamSettings, headers: dict[str, str]) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "headers": {"User-Agent": USER_AGENT, **headers},
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=min(up.timeout, 10.0), sock_read=up.timeout),
        }
        if up.username is not None:
            kwargs["auth"] = aiohttp.BasicAuth(up.username, up.password or "")
        return kwargs

    # ------------------------------------------------------------------ index documents
    async def fetch_index(
        self,
        up: UpstreamSettings,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str | None = None,
    ) -> IndexResponse:
        self._check_up(up)
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if accept:
            headers["Accept"] = accept
        try:
            async with self.session.get(url, **self._request_kwargs(up, headers)) as resp:  # type: ignore[arg-type]
                if resp.status == 304:
                    self._mark(up, True)
                    return IndexResponse(304, b"", etag, last_modified, "")
                if resp.status in (404, 410):
                    self._mark(up, True)
                    raise NotFound()
                if resp.status != 200:
                    raise UpstreamError(f"upstream {up.name} answered {resp.status}")
                body = await resp.read()
                self._mark(up, True)
                return IndexResponse(
                    200,
                    body,
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                    resp.headers.get("Content-Type", ""),
                )
        except asyncio.TimeoutError:
            self._mark(up, False)
            log.warning("upstream %s timed out on %s", up.name, redact_url(url))
            raise UpstreamTimeout(f"upstream {up.name} timed out") from None
        except aiohttp.ClientError as exc:
            self._mark(up, False)
            log.warning("upstream %s failed on %s: %s", up.name, redact_url(url), type(exc).__name__)
            raise UpstreamError(f"upstream {up.name} is unreachable") from None

    # ------------------------------------------------------------------ artifacts
    def cached_artifact(self, spec: ArtifactSpec) -> Path | None:
        if "sha256" in spec.expect:
            return self.store.find("cache", spec.expect["sha256"].lower())
        return self.store.find_ref(spec.key)

    async def serve_artifact(self, request: web.Request, spec: ArtifactSpec, *, offline: bool) -> web.StreamResponse:
        path = self.cached_artifact(spec)
        if path is not None:
            return file_response(path, spec.content_type, immutable=True)
        if offline:
            raise NotFound(f"{spec.filename} is not in the cache and the server is offline")
        fetch = self._inflight.get(spec.key)
        if fetch is None:
            self._check_up(spec.upstream)
            fetch = _Fetch(spec, self.store.temp("cache"))
            self._inflight[spec.key] = fetch
            task = asyncio.create_task(self._download(fetch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while not fetch.finished and fetch.written < STREAM_AFTER:
            await fetch.changed()
        if fetch.error is not None:
            raise fetch.error
        if fetch.path is not None:
            return file_response(fetch.path, spec.content_type, immutable=True)
        return await self._tee(request, fetch)

    async def _download(self, fetch: _Fetch) -> None:
        spec = fetch.spec
        up = spec.upstream
        try:
            async with self.session.get(
                spec.url, **self._request_kwargs(up, {"Accept-Encoding": "identity"})  # type: ignore[arg-type]
            ) as resp:
                if resp.status in (404, 410):
                    raise NotFound(f"{spec.filename} is not on the upstream")
                if resp.status != 200:
                    raise UpstreamError(f"upstream {up.name} answered {resp.status} for {spec.filename}")
                fetch.total = resp.content_length
                async for chunk in resp.content.iter_chunked(CHUNK):
                    fetch.tmp.write(chunk)
                    fetch.tmp.flush()
                    fetch.written += len(chunk)
                    fetch.notify()
            self._mark(up, True)
            if fetch.total is not None and fetch.written != fetch.total:
                raise UpstreamError(f"upstream {up.name} sent {fetch.written} of {fetch.total} bytes")
            try:
                blob = await fetch.tmp.commit(spec.expect)
            except DigestMismatch as exc:
                log.error(
                    "upstream %s served %s with %s %s, its index declares %s: not stored",
                    up.name, spec.filename, exc.algorithm, exc.actual, exc.declared,
                )
                raise UpstreamError(
                    f"upstream {up.name} served {spec.filename} with a {exc.algorithm} that does not match its index"
                ) from None
            if "sha256" not in spec.expect:
                self.store.set_ref(spec.key, blob.sha256)
            fetch.path = blob.path
        except ChannelgateError as exc:
            fetch.error = exc
        except asyncio.TimeoutError:
            self._mark(up, False)
            fetch.error = UpstreamTimeout(f"upstream {up.name} timed out")
        except aiohttp.ClientError as exc:
            self._mark(up, False)
            log.warning("upstream %s failed on %s: %s", up.name, redact_url(spec.url), type(exc).__name__)
            fetch.error = UpstreamError(f"upstream {up.name} is unreachable")
        except asyncio.CancelledError:
            fetch.error = UpstreamError("server shutting down")
            raise
        finally:
            if fetch.path is None:
                fetch.tmp.discard()
            self._inflight.pop(spec.key, None)
            fetch.notify()

    async def _tee(self, request: web.Request, fetch: _Fetch) -> web.StreamResponse:
        """Stream a download in progress; the final byte waits for verification."""
        resp = web.StreamResponse(headers={"Content-Type": fetch.spec.content_type})
        if fetch.total is not None:
            resp.content_length = fetch.total
        await resp.prepare(request)
        try:
            fh = open(fetch.tmp.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            if fetch.path is None:
                return _abort(request, resp)
            fh = open(fetch.path, "rb")  # noqa: SIM115
        with fh:
            offset = 0
            while True:
                limit = fetch.written if fetch.finished else fetch.written - 1
                if fetch.error is not None:
                    return _abort(request, resp)
                if offset < limit:
                    data = fh.read(min(limit - offset, CHUNK))
                    offset += len(data)
                    await resp.write(data)
                    continue
                if fetch.finished:
                    break
                await fetch.changed()
        await resp.write_eof()
        return resp


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection so the client sees an incomplete body, never a wrong one."""
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
    return resp


def file_response(path: Path, content_type: str, *, immutable: bool) -> web.FileResponse:
    """A stored blob via sendfile (aiohttp adds ETag, Last-Modified, Range and 304)."""
    headers = {"Content-Type": content_type}
    if immutable:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return web.FileResponse(path, headers=headers)
