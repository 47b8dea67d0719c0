"""DESIGN's origin rule, "Hostile input and faults": where an upstream request may go.

- Same-origin credentials: an upstream's Basic credentials go only to its own origin
  (scheme, host, port; RFC 6454). A URL an upstream index names on another origin is
  fetched anonymously, and only when the index declares its hash; a URL on this server's
  own origin (``OwnOrigins``, by spelling; self_reference.py, by resolution), or with a
  scheme other than http(s), is never fetched (``check_target``).
- Index documents built from names must lie under the upstream's URL (``within``).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from yarl import URL

from .errors import UpstreamError
from .settings import UpstreamSettings

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
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
