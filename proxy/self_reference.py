"""This server never fetches from itself, whatever name points back at it.

DESIGN "Hostile input and faults" and README "Upstreams": a URL on this server's own origin is
never fetched. ``upstream.OwnOrigins`` recognises that origin by its spelling (the listen
address, loopback and wildcard addresses, this host's name, ``server.public_url``); this module
recognises it by where a name *resolves*:

- ``problems``: at ``check-config``, ``serve`` (once the ports are bound) and on reload, every
  configured upstream URL whose port is one of ours is resolved; one that reaches this server's
  own listener (a local address, for a wildcard listener; the listen address itself otherwise)
  is a configuration error: the server would ask itself, in a loop;
- ``OwnAddressResolver``: the upstream client's resolver refuses, at connect time, any name
  that resolves to this server's own listener, so an index entry or a redirect naming an alias
  of this host (or a name re-pointed after start) never reaches us.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .settings import Settings, parse_listen
from .upstream import OwnOrigins, ResolvesToSelf, origin_of

log = logging.getLogger(__name__)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_local_address(address: str) -> bool:
    """Whether ``address`` is one of this machine's: loopback, unspecified, or one that a
    socket can bind to (the kernel's own answer, whatever the interfaces)."""
    addr = _ip(address)
    if addr is None:
        return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(addr), 0))
    except OSError as exc:
        return exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    return True


@dataclass(frozen=True, slots=True)
class Listener:
    """One address this server listens on: its port, and the addresses that reach it."""

    port: int
    wildcard: bool  # 0.0.0.0 / ::: every local address reaches it
    addresses: frozenset[str]

    @classmethod
    def at(cls, host: str, port: int) -> "Listener":
        found = _resolve(host, port)
        wildcard = not found or any(a is not None and a.is_unspecified for a in map(_ip, found))
        return cls(port, wildcard, frozenset(found))

    def reached_by(self, address: str, port: int) -> bool:
        if port != self.port or _ip(address) is None:
            return False
        if self.wildcard:
            return is_local_address(address)
        return str(_ip(address)) in self.addresses  # 127.0.0.2 does not reach a listener on 127.0.0.1


def _resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (none when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return sorted({str(_ip(str(info[4][0])) or info[4][0]) for info in infos})


def bound(sock: socket.socket) -> str:
    """``HOST:PORT`` of a bound socket (the port a ``:0`` listen address got)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listeners(listens: list[str | None]) -> list[Listener]:
    found = []
    for listen in listens:
        try:
            host, port = parse_listen(listen or "")
        except ValueError:
            continue
        found.append(Listener.at(host, port))
    return found


def problems(settings: Settings, listens: list[str | None]) -> list[str]:
    """One line per configured upstream whose URL reaches this server itself."""
    mine = listeners(listens)
    public = origin_of(settings.public_url) if settings.public_url else None
    found: list[str] = []
    for name, up in sorted(settings.upstreams.items()):
        origin = origin_of(up.url)
        if origin is None:
            continue
        if public is not None and origin == public:
            found.append(f"upstreams.{name}.url: {origin[1]}:{origin[2]} is server.public_url, this server itself")
            continue
        _, host, port = origin
        if not any(listener.port == port for listener in mine):
            continue  # another port: not us, and no name to resolve
        for address in _resolve(host, port):
            hit = next((listener for listener in mine if listener.reached_by(address, port)), None)
            if hit is not None:
                found.append(
                    f"upstreams.{name}.url: {host} resolves to {address}, this server's own listener on port "
                    f"{port}: it would fetch from itself"
                )
                break
    return found


class OwnAddressResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to one of this server's listeners
    (``own``'s listen addresses, as they become known)."""

    def __init__(self, own: OwnOrigins, inner: AbstractResolver | None = None) -> None:
        self._own = own
        self._inner = inner or DefaultResolver()
        self._known: tuple[tuple[str, int], ...] = ()
        self._listeners: list[Listener] = []

    def listeners(self) -> list[Listener]:
        if self._known != tuple(self._own.listens):
            self._known = tuple(self._own.listens)
            self._listeners = [Listener.at(host, port) for host, port in self._known]
        return self._listeners

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        mine = self.listeners()
        for result in results:
            if any(listener.reached_by(result["host"], result["port"] or port) for listener in mine):
                log.warning("refused to connect to %s: it resolves to %s, this server itself", host, result["host"])
                raise ResolvesToSelf(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()
