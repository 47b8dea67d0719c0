"""Talking to upstreams: one shared aiohttp ClientSession for the app's lifetime.

- ``fetch_index``: conditional GET (If-None-Match / If-Modified-Since) with timeouts.
- ``stream``: a GET whose body the caller reads in chunks (artifacts.py tees it to clients).
- Same-origin credentials: an upstream's username/password go only to its own requests.

A dead upstream is backed off: after a connection failure it is not contacted again for a
while (growing to BACKOFF_MAX), and callers fall back to what is cached.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .errors import NotFound, UpstreamError, UpstreamTimeout
from .metrics import Metrics
from .settings import UpstreamSettings

log = logging.getLogger(__name__)

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


@dataclass(slots=True)
class Call:
    """What one upstream request came to, for its metric and log line."""

    outcome: int | str = "error"  # the HTTP status, "timeout" or "error"
    size: int = 0


@dataclass(frozen=True, slots=True)
class IndexResponse:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.session = session
        self.metrics = metrics
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    # ------------------------------------------------------------------ health of upstreams
    def check_up(self, up: UpstreamSettings) -> None:
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
        self.check_up(up)
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if accept:
            headers["Accept"] = accept
        with self._request(up, url) as call:
            async with self.session.get(url, **self._request_kwargs(up, headers)) as resp:  # type: ignore[arg-type]
                call.outcome = resp.status
                if resp.status == 304:
                    self._mark(up, True)
                    return IndexResponse(304, b"", etag, last_modified, "")
                if resp.status in (404, 410):
                    self._mark(up, True)
                    raise NotFound()
                if resp.status != 200:
                    raise UpstreamError(f"upstream {up.name} answered {resp.status}")
                body = await resp.read()
                call.size = len(body)
                self._mark(up, True)
                return IndexResponse(
                    200,
                    body,
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                    resp.headers.get("Content-Type", ""),
                )

    @contextlib.contextmanager
    def _request(self, up: UpstreamSettings, url: str) -> Iterator[Call]:
        """One upstream request: connection failures and timeouts become Upstream* errors
        and back the upstream off; every request is observed once, however it ends."""
        call, started = Call(), time.monotonic()
        try:
            yield call
        except asyncio.TimeoutError:
            call.outcome = "timeout"
            self._mark(up, False)
            log.warning("upstream %s timed out on %s", up.name, redact_url(url))
            raise UpstreamTimeout(f"upstream {up.name} timed out") from None
        except aiohttp.ClientError as exc:
            self._mark(up, False)
            log.warning("upstream %s failed on %s: %s", up.name, redact_url(url), type(exc).__name__)
            raise UpstreamError(f"upstream {up.name} is unreachable") from None
        finally:
            self._observe(up, url, call.outcome, call.size, started)

    def _observe(self, up: UpstreamSettings, url: str, status: int | str, size: int, started: float) -> None:
        """Every upstream request, once: a metric and an INFO line (DESIGN, "Operations")."""
        seconds = time.monotonic() - started
        self.metrics.upstream_request(up.name, status, seconds)
        log.info(
            "upstream %s GET %s -> %s, %d bytes, %.3fs", up.name, redact_url(url), status, size, seconds,
            extra={"upstream": up.name, "url": redact_url(url), "status": status, "bytes": size, "seconds": round(seconds, 4)},
        )

    # ------------------------------------------------------------------ bodies read in chunks
    @contextlib.asynccontextmanager
    async def stream(self, up: UpstreamSettings, url: str, *, what: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 200 response whose body the caller reads; NotFound on 404/410, Upstream* on
        failure (while reading, too). The upstream counts as up once the body is read."""
        with self._request(up, url) as call:
            async with self.session.get(
                url, **self._request_kwargs(up, {"Accept-Encoding": "identity"})  # type: ignore[arg-type]
            ) as resp:
                call.outcome = resp.status
                if resp.status in (404, 410):
                    raise NotFound(f"{what} is not on the upstream")
                if resp.status != 200:
                    raise UpstreamError(f"upstream {up.name} answered {resp.status} for {what}")
                try:
                    yield resp
                finally:
                    call.size = resp.content.total_bytes
            self._mark(up, True)
