"""Talking to upstreams: one shared aiohttp ClientSession for the app's lifetime.

- ``fetch_index``: conditional GET (If-None-Match / If-Modified-Since).
- ``stream``: a GET whose body the caller reads in chunks (artifacts.py tees it to clients).

A dead upstream is backed off: after a connection failure it is not contacted again for a
while (growing to BACKOFF_MAX), and callers fall back to what is cached.

DESIGN, "Hostile input and faults":
- Same-origin credentials: an upstream's Basic credentials go only to its own origin
  (scheme, host, port; RFC 6454). A URL an upstream index names on another origin is
  fetched anonymously, and only when the index declares its hash; a URL on this server's
  own origin, or with a scheme other than http(s), is never fetched (``check_target``).
  Index documents built from names must lie under the upstream's URL (``within``).
- Deadlines: every upstream request has a total deadline: the response headers within the
  upstream's ``timeout``, the whole body within ``timeout + size / min_rate`` (``Deadline``),
  so a trickling upstream cannot hold a client; callers then serve a stale copy or a 504.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from yarl import URL

from .errors import NotFound, UpstreamError, UpstreamIsSelf, UpstreamTimeout
from .metrics import Metrics
from .settings import UpstreamSettings

log = logging.getLogger(__name__)

BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
USER_AGENT = "channelgate"
CHUNK = 256 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

Origin = tuple[str, str, int]  # (scheme, host, port), RFC 6454


def redact_url(url: str) -> str:
    """A URL fit for a log line: no userinfo, no query (credentials hide in both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def origin_of(url: str) -> Origin | None:
    """The RFC 6454 origin of an absolute http(s) URL (host lower-cased, IP literals in
    canonical form, default port made explicit); None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, _canonical_host(parts.hostname), port or DEFAULT_PORTS[scheme]


def _canonical_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:  # the forms inet_aton accepts too: 2130706433, 0x7f.1, 127.1
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return host


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


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


class ResolvesToSelf(ConnectionRefusedError):
    """Raised by the upstream client's resolver (self_reference.OwnAddressResolver) for a
    host that resolves to this server's own listener; ``Upstream`` turns it into
    UpstreamIsSelf, which names the problem to the client."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, this server itself: refused")
        self.host = host
        self.address = address


@dataclass(frozen=True, slots=True)
class Target:
    """Where one upstream request may go, and with which credentials."""

    url: str
    credentials: bool


class OwnOrigins:
    """The origins this server answers on (listen address, ``server.public_url``): index
    entries may never make it fetch from itself."""

    def __init__(self) -> None:
        self._ports: set[int] = set()
        self._hosts: set[str] = set()
        self._origins: set[Origin] = set()
        self.listens: list[tuple[str, int]] = []  # (host, port) as listened on: self_reference.py resolves them

    def add_listen(self, host: str, port: int) -> None:
        if (host, port) not in self.listens:
            self.listens.append((host, port))
        self._ports.add(port)
        canonical = _canonical_host(host.strip("[]"))
        self._hosts.add(canonical)
        if _is_local(canonical):  # a wildcard or loopback listener: this machine's name reaches it
            self._hosts.add(socket.gethostname().lower())

    def add_url(self, url: str | None) -> None:
        origin = origin_of(url) if url else None
        if origin is not None:
            self._origins.add(origin)

    def __contains__(self, origin: Origin) -> bool:
        _, host, port = origin
        if origin in self._origins:
            return True
        return port in self._ports and (host in self._hosts or _is_local(host))


def check_target(up: UpstreamSettings, url: str, *, hashed: bool, own: OwnOrigins, what: str) -> Target:
    """Apply DESIGN's origin rule to one URL an upstream (or its index) names.

    Same origin as ``up.url``: allowed, with the upstream's credentials. Another origin:
    only when the index declares the content's hash, and anonymously. This server's own
    origin, or a scheme other than http(s): never. Raises UpstreamError when refused.
    """
    home = origin_of(up.url)
    target = origin_of(url)
    if target is None:
        raise UpstreamError(f"upstream {up.name} names {what} at a URL that is not http(s): refused")
    if target == home:
        return Target(url, credentials=True)
    if target in own:
        log.warning("upstream %s names %s on this server itself (%s): refused", up.name, what, redact_url(url))
        raise UpstreamError(f"upstream {up.name} names {what} on this server itself: refused")
    if not hashed:
        log.warning("upstream %s names %s on another origin without a hash (%s): refused", up.name, what, redact_url(url))
        raise UpstreamError(f"upstream {up.name} names {what} on another origin without a hash: refused")
    return Target(url, credentials=False)


def within(url: str, base: str) -> bool:
    """True if ``url`` (as aiohttp will send it: dot segments resolved) lies under ``base``
    and carries no query or fragment: what an index URL built from a name must satisfy."""
    try:
        target, root = URL(url), URL(base)
    except ValueError:
        return False
    if target.origin() != root.origin() or target.raw_query_string or target.raw_fragment:
        return False
    prefix = root.raw_path.rstrip("/") + "/"
    return target.raw_path == root.raw_path or target.raw_path.startswith(prefix)


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

    async def fetch_range(
        self, up: UpstreamSettings, url: str, start: int, stop: int, *, what: str, hashed: bool
    ) -> bytes | None:
        """Bytes ``[start, stop)`` of a file by a Range request (RFC 9110 §14.2); None when
        the upstream does not honour it (a 200, or a 206 for other bytes). At most about
        ``stop - start`` bytes are read."""
        async with self._ranged(up, url, f"bytes={start}-{stop - 1}", what=what, hashed=hashed) as (resp, deadline):
            if resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {start}-{stop - 1}/"):
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
        offset of their first byte; None when the upstream does not honour it."""
        async with self._ranged(up, url, f"bytes=-{size}", what=what, hashed=hashed) as (resp, deadline):
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if resp.status != 206 or match is None:
                return None
            first, last, total = (int(g) for g in match.groups())
            if last != total - 1 or not 0 < last - first + 1 <= size:
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
