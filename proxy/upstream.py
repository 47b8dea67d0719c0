"""Talking to upstreams: one shared aiohttp ClientSession for the app's lifetime.

- ``fetch_index``: conditional GET (If-None-Match / If-Modified-Since).
- ``stream``: a GET whose body the caller reads in chunks (artifacts.py tees it to clients).

A dead upstream is backed off: after a connection failure it is not contacted again for a
while (growing to BACKOFF_MAX), and callers fall back to what is cached.

DESIGN, "Hostile input and faults":
- Same-origin credentials: an upstream's Basic credentials go only to its own origin
  (scheme, host, port; RFC 6454). A URL an upstream index names on another origin is
  fetched anonymously, and only when the index declares its hash; a URL on this server's
  own origin, or with a scheme other than http(s), is never fetched (origins.py:
  ``check_target``). Index documents built from names must lie under the upstream's URL
  (``within``).
- Deadlines: every upstream request has a total deadline: the response headers within the
  upstream's ``timeout``, the whole body within ``timeout + size / min_rate`` (``Deadline``),
  so a trickling upstream cannot hold a client; callers then serve a stale copy or a 504.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp

from .errors import NotFound, UpstreamError, UpstreamIsSelf, UpstreamTimeout
from .metrics import Metrics
from .origins import Origin, OwnOrigins, ResolvesToSelf, Target, check_target, origin_of, redact_url, within
from .settings import UpstreamSettings

log = logging.getLogger(__name__)

BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
USER_AGENT = "channelgate"
CHUNK = 256 * 1024
NO_RANGES_FOR = 3600.0  # seconds an origin that answered a Range request with 200 is not asked for ranges
MAX_NO_RANGES = 1024  # origins remembered so (index entries may name many: the memory is bounded)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

def ack_at_once(resp: aiohttp.ClientResponse) -> None:
    """Acknowledge the rest of a response as it arrives, not after the delayed-ACK timer
    (Linux ``TCP_QUICKACK``, tcp(7); it lasts until the next request on the connection).

    A sender that corks its answers (nginx's ``tcp_nopush`` with ``sendfile``: a common
    mirror set-up) holds a body's last partial segment until the one before it is
    acknowledged (Nagle, RFC 896), and a receiver in request/response mode acknowledges a
    lone segment only after up to 40 ms (RFC 1122 §4.2.3.2): over loopback's 64 KiB
    segments every upstream answer of one full segment plus a little, such as the 64 KiB
    tail of a wheel read for its METADATA, waited 44 ms instead of 0.3 (issue 15).
    """
    connection = resp.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if _QUICKACK is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:  # not a TCP socket after all, or already closed: nothing to hurry
        pass


class Deadline:
    """The total deadline of one upstream request: headers within ``timeout``, the body
    within ``timeout + max(declared length, bytes received) / min_rate``. With a declared
    Content-Length this is fixed when the headers arrive; a trickle earns almost nothing."""

    def __init__(self, up: UpstreamSettings) -> None:
        self.timeout = up.timeout
        self.min_rate = max(up.min_rate, 1)
        self.start = time.monotonic()
        self.length = 0

    def remaining(self, received: int) -> float:
        budget = self.timeout + max(self.length, received) / self.min_rate
        return self.start + budget - time.monotonic()

    async def read(self, resp: aiohttp.ClientResponse, received: int) -> bytes:
        """The next chunk of the body (b"" at its end); TimeoutError past the deadline."""
        remaining = self.remaining(received)
        if remaining <= 0:
            raise asyncio.TimeoutError()
        return await asyncio.wait_for(resp.content.read(CHUNK), remaining)


class Body:
    """A 200 response's body, read in chunks within the request's total deadline."""

    def __init__(self, resp: aiohttp.ClientResponse, deadline: Deadline) -> None:
        self.resp = resp
        self.deadline = deadline
        self.content_length = resp.content_length
        self.received = 0

    def __aiter__(self) -> "Body":
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.deadline.read(self.resp, self.received)
        if not chunk:
            raise StopAsyncIteration
        self.received += len(chunk)
        return chunk


@dataclass(frozen=True, slots=True)
class IndexResponse:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str


class Upstream:
    def __init__(
        self, session: aiohttp.ClientSession, metrics: Metrics, *, max_index_bytes: int = 1 << 30,
        own: OwnOrigins | None = None,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.max_index_bytes = max_index_bytes  # server.limits.index_fetch_mb
        self.own = own or OwnOrigins()
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._no_ranges: dict[Origin | None, float] = {}  # origin -> until when it is not asked for ranges

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

    async def _open(
        self, up: UpstreamSettings, target: Target, headers: dict[str, str], deadline: Deadline
    ) -> aiohttp.ClientResponse:
        """Send the request; the response headers must arrive within the upstream's timeout.
        Credentials only when the target is the upstream's own origin (aiohttp drops them
        on a redirect to another origin)."""
        kwargs: dict[str, object] = {
            "headers": {"User-Agent": USER_AGENT, **headers},
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=min(up.timeout, 10.0), sock_read=up.timeout),
        }
        if target.credentials and up.username is not None:
            kwargs["auth"] = aiohttp.BasicAuth(up.username, up.password or "")
        resp = await asyncio.wait_for(self.session.get(target.url, **kwargs), up.timeout)  # type: ignore[arg-type]
        deadline.length = resp.content_length or 0
        ack_at_once(resp)
        return resp

    # ------------------------------------------------------------------ index documents
    async def fetch_index(
        self,
        up: UpstreamSettings,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str | None = None,
        hashed: bool = False,
    ) -> IndexResponse:
        """GET an index document. ``hashed``: the caller checks the body against a hash the
        upstream's own index declared (CEP-16 shards), so another origin is allowed."""
        if not hashed and not within(url, up.url):
            log.warning("refused an index URL outside upstream %s: %s", up.name, redact_url(url))
            raise NotFound()
        target = check_target(up, url, hashed=hashed, own=self.own, what="an index document")
        self.check_up(up)
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if accept:
            headers["Accept"] = accept
        async with self._request(up, url, target, headers) as (resp, deadline):
            if resp.status == 304:
                self._mark(up, True)
                return IndexResponse(304, b"", etag, last_modified, "")
            if resp.status in (404, 410):
                self._mark(up, True)
                raise NotFound()
            if resp.status != 200:
                raise UpstreamError(f"upstream {up.name} answered {resp.status}")
            body = await self._bounded_body(up, resp, deadline)
            self._mark(up, True)
            return IndexResponse(
                200,
                body,
                resp.headers.get("ETag"),
                resp.headers.get("Last-Modified"),
                resp.headers.get("Content-Type", ""),
            )

    async def _bounded_body(self, up: UpstreamSettings, resp: aiohttp.ClientResponse, deadline: Deadline) -> bytes:
        """The whole body of an index document, at most ``max_index_bytes`` (DESIGN "Hostile
        input": no input may cost unbounded memory): a declared or actual size beyond it is
        an UpstreamError naming the limit (the cache then serves its stale copy, if any)."""
        cap = self.max_index_bytes

        def too_large() -> UpstreamError:
            log.warning("upstream %s sent an index document over server.limits.index_fetch_mb", up.name)
            return UpstreamError(f"upstream {up.name} sent an index document larger than "
                                 f"server.limits.index_fetch_mb ({cap / (1024 * 1024):g} MiB)")

        if resp.content_length is not None and resp.content_length > cap:
            raise too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in Body(resp, deadline):
            size += len(chunk)
            if size > cap:
                raise too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    @contextlib.asynccontextmanager
    async def _request(
        self, up: UpstreamSettings, url: str, target: Target, headers: dict[str, str]
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, Deadline]]:
        """One GET within its deadline; network failures and a missed deadline become
        Upstream* errors (and back the upstream off). Observed once, whatever happens."""
        deadline = Deadline(up)
        outcome: int | str = "error"
        received = 0
        try:
            resp = await self._open(up, target, headers, deadline)
            outcome = resp.status
            try:
                yield resp, deadline
            finally:
                received = resp.content.total_bytes
                resp.release()
        except asyncio.TimeoutError:
            outcome = "timeout"
            self._mark(up, False)
            log.warning("upstream %s missed its deadline on %s", up.name, redact_url(url))
            raise UpstreamTimeout(f"upstream {up.name} timed out") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ResolvesToSelf):  # not the upstream's failure: no back-off
                raise UpstreamIsSelf(f"upstream {up.name}: {exc.os_error.host} resolves to this server itself; "
                                     "refused to fetch from itself") from None
            self._mark(up, False)
            log.warning("upstream %s failed on %s: %s", up.name, redact_url(url), type(exc).__name__)
            raise UpstreamError(f"upstream {up.name} is unreachable") from None
        except aiohttp.ClientError as exc:
            self._mark(up, False)
            log.warning("upstream %s failed on %s: %s", up.name, redact_url(url), type(exc).__name__)
            raise UpstreamError(f"upstream {up.name} is unreachable") from None
        finally:
            self._observe(up, url, outcome, received, deadline.start)

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
    async def stream(self, up: UpstreamSettings, url: str, *, what: str, hashed: bool) -> AsyncIterator[Body]:
        """A 200 response whose body the caller reads (``async for chunk in body``) within
        the request's total deadline; NotFound on 404/410, Upstream* on failure (while
        reading, too). ``hashed``: the index declared the content's hash (DESIGN's
        cross-origin rule). The upstream counts as up once the body is read."""
        target = check_target(up, url, hashed=hashed, own=self.own, what=what)
        async with self._request(up, url, target, {"Accept-Encoding": "identity"}) as (resp, deadline):
            if resp.status in (404, 410):
                raise NotFound(f"{what} is not on the upstream")
            if resp.status != 200:
                raise UpstreamError(f"upstream {up.name} answered {resp.status} for {what}")
            yield Body(resp, deadline)
        self._mark(up, True)

    # ------------------------------------------------------------------ byte ranges
    @contextlib.asynccontextmanager
    async def _ranged(
        self, up: UpstreamSettings, url: str, byte_range: str, *, what: str, hashed: bool
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, Deadline]]:
        """One GET with ``Range: <byte_range>`` (RFC 9110 §14.2) to an upstream that is not
        backed off; 404 or 410 is NotFound. What a 200 or 206 means is the caller's."""
        target = check_target(up, url, hashed=hashed, own=self.own, what=what)
        self.check_up(up)
        headers = {"Accept-Encoding": "identity", "Range": byte_range}
        async with self._request(up, url, target, headers) as (resp, deadline):
            if resp.status in (404, 410):
                raise NotFound(f"{what} is not on the upstream")
            yield resp, deadline

    def serves_ranges(self, url: str) -> bool:
        """False for a while after ``url``'s origin answered a Range request with the whole
        file (RFC 9110 §14.2 lets a server ignore Range): it is not asked again meanwhile."""
        until = self._no_ranges.get(origin_of(url))
        return until is None or time.monotonic() >= until

    def _not_the_range(self, up: UpstreamSettings, url: str, resp: aiohttp.ClientResponse) -> None:
        """A ranged GET answered otherwise than with the range asked: the connection is closed
        at once, its body unread (a 200 is the whole file: never downloaded to find a few
        bytes), and an origin that sent 200 is remembered (``serves_ranges``)."""
        resp.close()
        if resp.status == 200:
            if len(self._no_ranges) >= MAX_NO_RANGES:
                self._no_ranges.clear()
            self._no_ranges[origin_of(url)] = time.monotonic() + NO_RANGES_FOR
            log.info("upstream %s ignores Range (200 for %s): not asked for byte ranges for %ds",
                     up.name, redact_url(url), NO_RANGES_FOR)

    async def fetch_range(
        self, up: UpstreamSettings, url: str, start: int, stop: int, *, what: str, hashed: bool
    ) -> bytes | None:
        """Bytes ``[start, stop)`` of a file by a Range request (RFC 9110 §14.2); None when
        the upstream does not honour it (a 200, or a 206 for other bytes), or is known not to
        (then nothing is asked). At most about ``stop - start`` bytes are read."""
        if not self.serves_ranges(url):
            return None
        async with self._ranged(up, url, f"bytes={start}-{stop - 1}", what=what, hashed=hashed) as (resp, deadline):
            if resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {start}-{stop - 1}/"):
                self._not_the_range(up, url, resp)
                return None
            body = bytearray()
            async for chunk in Body(resp, deadline):
                body += chunk
                if len(body) >= stop - start:
                    break
            if len(body) < stop - start:
                raise UpstreamError(f"upstream {up.name} sent a short range of {what}")
            self._mark(up, True)
            return bytes(body[: stop - start])

    async def probe_length(self, up: UpstreamSettings, url: str, *, what: str, hashed: bool) -> int | None:
        """A file's length without downloading it: one request for its first byte (RFC 9110
        §14.2), read from ``Content-Range`` (206) or ``Content-Length`` (an upstream that
        ignores Range answers 200: the connection is then closed, its body unread). None
        when the upstream states neither."""
        async with self._ranged(up, url, "bytes=0-0", what=what, hashed=hashed) as (resp, _deadline):
            total: int | None = None
            if resp.status == 206:
                match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                total = int(match.group(3)) if match is not None else None
            elif resp.status == 200:
                total = resp.content_length
            else:
                raise UpstreamError(f"upstream {up.name} answered {resp.status} for {what}")
            resp.close()  # at most one byte of body is wanted: never read the rest
            self._mark(up, True)
            return total

    async def fetch_tail(self, up: UpstreamSettings, url: str, size: int, *, what: str, hashed: bool) -> tuple[int, bytes] | None:
        """The last ``size`` bytes of a file (a suffix Range, RFC 9110 §14.1.2) and the
        offset of their first byte; None when the upstream does not honour it, or is known
        not to (then nothing is asked)."""
        if not self.serves_ranges(url):
            return None
        async with self._ranged(up, url, f"bytes=-{size}", what=what, hashed=hashed) as (resp, deadline):
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if resp.status != 206 or match is None:
                self._not_the_range(up, url, resp)
                return None
            first, last, total = (int(g) for g in match.groups())
            if last != total - 1 or not 0 < last - first + 1 <= size:
                self._not_the_range(up, url, resp)
                return None
            body = bytearray()
            async for chunk in Body(resp, deadline):
                body += chunk
                if len(body) > size:
                    raise UpstreamError(f"upstream {up.name} sent a long range of {what}")
            if len(body) != last - first + 1:
                raise UpstreamError(f"upstream {up.name} sent a short range of {what}")
            self._mark(up, True)
            return first, bytes(body)


__all__ = ["Body", "Deadline", "IndexResponse", "Origin", "OwnOrigins", "ResolvesToSelf", "Target", "Upstream",
           "check_target", "origin_of", "redact_url", "within"]
