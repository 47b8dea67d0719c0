"""What handlers receive: the app's services and the authorised request context.

Built once in ``app.open_services`` (no globals). The policy (``Services.live``) is swapped on
SIGHUP reload; everything reads ``services.settings`` per request, so a reload takes effect
on the next request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Protocol

from aiohttp import web

from .auth.credentials import Tokens
from .settings import ChannelPolicy, Settings

if TYPE_CHECKING:
    from .artifacts import Artifacts
    from .auth.credentials import Principal
    from .auth.guard import Guard
    from .cache import MetadataCache
    from .coordination import Coordinator
    from .metrics import Metrics
    from .routing import Route
    from .sources import Sources
    from .store.blobs import TempBlob
    from .store.protocols import Catalog, Store
    from .uploads import UploadChecks
    from .upstream import Upstream


class Ecosystem(Protocol):
    """One ecosystem's thin handlers (proxy/ecosystems/<name>/handlers.py)."""

    async def serve(self, request: web.BaseRequest, ctx: "ChannelRequest") -> web.StreamResponse: ...

    async def upload(self, request: web.BaseRequest, ctx: "ChannelRequest", form: "UploadForm") -> web.StreamResponse: ...

    async def close(self) -> None:
        """Stop background work and release threads (called once, at shutdown)."""


# A JSON API under /api/<first segment>/ (e.g. anaconda-client's)
ApiHandler = Callable[[web.BaseRequest, "Route", "Services"], Awaitable[web.StreamResponse]]


class LivePolicy:
    """The running policy and its token memo: the one part of Services a SIGHUP reload
    replaces (both at once, so no token is ever checked against the wrong policy)."""

    def __init__(self, settings: Settings) -> None:
        self.swap(settings)

    def swap(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = Tokens(settings)


@dataclass(frozen=True, eq=False)
class Services:
    """Everything a running server holds (app.open_services builds and closes it).

    Nothing is assigned after construction. ``ecosystems`` and ``api`` are read-only
    views: the plug-ins are built with the Services they belong to, so open_services
    completes the views before anyone else sees the object. The policy is the one part
    that changes while running: ``live`` swaps it on reload."""

    live: LivePolicy
    sources: "Sources"
    store: "Store"
    catalog: "Catalog"
    upstream: "Upstream"
    artifacts: "Artifacts"
    index_cache: "MetadataCache"  # upstream index documents (cache.py)
    metrics: "Metrics"
    checks: "UploadChecks"
    guard: "Guard"
    coordinator: "Coordinator"  # Redis coordination across replicas, or local (coordination.py)
    ecosystems: Mapping[str, Ecosystem] = field(default_factory=lambda: MappingProxyType({}))
    api: Mapping[str, ApiHandler] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def settings(self) -> Settings:
        return self.live.settings

    @property
    def tokens(self) -> "Tokens":
        return self.live.tokens


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    route: "Route"
    channel: ChannelPolicy
    principal: "Principal | None"
    services: Services

    @property
    def settings(self) -> Settings:
        return self.services.settings


@dataclass
class UploadForm:
    """A parsed multipart upload: text fields and the one file, already in a temp blob."""

    fields: dict[str, list[str]]
    filename: str
    blob: "TempBlob"
    digests: dict[str, str]
    size: int

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None
