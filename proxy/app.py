"""The server's wiring: ``open_services`` (everything the server holds, closed in reverse on an
AsyncExitStack), the ``Gateway`` (the one request handler), ``reload_policy`` and ``create_app``.

Every request goes through ``Gateway.dispatch``: route the path, find the token, decide, then
hand over to the ecosystem; typed errors become HTTP answers in ``Gateway.handle``, once. Authorisation always happens before any body is read and
before anything reveals whether a channel exists.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
import logging
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, AsyncIterator, Callable

import aiohttp
from aiocache import SimpleMemoryCache
from aiohttp import hdrs, web
from multidict import istr

from . import __version__, routing
from .answers import ReadyAnswers, Ticket, Tickets
from .api import accounts, anaconda
from .artifacts import Artifacts
from .auth.guard import Guard
from .auth.policy import READ_ACTION, Action, sees_private
from .cache import FreshnessCache, MetadataCache
from .coordination import Coordinator, Resilient
from .context import ApiHandler, ChannelRequest, Ecosystem, LivePolicy, Services
from .ecosystems.conda.handlers import Conda
from .ecosystems.cran.handlers import Cran
from .ecosystems.pypi.handlers import PyPI
from .errors import ChannelgateError, ConfigError, MethodNotAllowed, NotFound
from .health import liveness, readiness
from .keys import GATEWAY, SERVICES
from .logs import mask
from .memo import Memo
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import REQUEST, Metrics, RequestFacts
from .blob_response import BlobRedirect, BlobStreamResponse, InlineBlobResponse
from .responses import SentFileResponse, http_status, keep_private
from .settings import Settings, load_settings
from . import self_reference
from .self_reference import OwnAddressResolver
from .sources import Sources
from .store.s3 import S3Store, open_store
from .store.backends import open_catalog
from .store.catalog import public_view
from .uploads import UploadChecks, delete_hosted, handle_upload
from .upstream import OwnOrigins, Upstream

if TYPE_CHECKING:
    from .web.ui import WebUI

log = logging.getLogger(__name__)

X_AUTH = istr("X-Auth")

# The ecosystems, by the name routing gives them: each class is built with the services
ECOSYSTEMS: dict[str, Callable[[Services], Ecosystem]] = {"pypi": PyPI, "conda": Conda, "cran": Cran}


def create_app(settings: Settings, *, clean_tmp: bool = True) -> web.Application:
    """An aiohttp Application serving channelgate (for embedding and aiohttp's test client).

    ``channelgate serve`` runs the same ``Gateway`` on aiohttp's low-level server instead,
    which skips the Application's router and middleware machinery (measured: +20% req/s
    on a warm page). ``clean_tmp=False`` for --workers children: the parent cleaned once.
    """
    app = web.Application(client_max_size=1024**2)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, clean_tmp=clean_tmp) as services:
            app[SERVICES] = services
            app[GATEWAY] = Gateway(services)
            yield

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[GATEWAY].handle(request)

    app.cleanup_ctx.append(services_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _make_upstream(settings: Settings, session: aiohttp.ClientSession, metrics: Metrics, own: OwnOrigins) -> Upstream:
    """The upstream client, told this server's own addresses: an index entry may never point
    at them (DESIGN's cross-origin rule)."""
    upstream = Upstream(session, metrics, max_index_bytes=settings.limits.index_fetch_bytes, own=own)
    for listen in (settings.listen, settings.metrics_listen):
        host, _, port = (listen or "").rpartition(":")
        if port.isdigit():
            upstream.own.add_listen(host or "0.0.0.0", int(port))
    upstream.own.add_url(settings.public_url)
    return upstream


def _make_aiocache(settings: Settings, coordinator: Coordinator) -> FreshnessCache:
    """Where index freshness lives: Redis, shared by the replicas (falling back to this
    process's memory while Redis is down: coordination.py), or this process's memory."""
    if settings.cache_backend == "redis":
        from urllib.parse import urlsplit

        from aiocache import RedisCache
        from aiocache.serializers import PickleSerializer

        parts = urlsplit(settings.redis_url or "redis://127.0.0.1:6379/0")
        return Resilient(RedisCache(
            timeout=5,
            serializer=PickleSerializer(),
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int((parts.path or "/0").lstrip("/") or 0),
            password=parts.password,
            namespace="channelgate",
        ), coordinator)
    return SimpleMemoryCache(timeout=None)  # no per-call wait_for: lookups are in-process


@contextlib.asynccontextmanager
async def open_services(settings: Settings, *, clean_tmp: bool = True) -> AsyncIterator[Services]:
    """Everything a running server holds, for its lifetime: store, catalog, one ClientSession,
    the index cache, the ecosystems and the APIs. Each is closed, in reverse order, on exit
    (also when building a later one failed, and when closing an earlier one fails)."""
    async with contextlib.AsyncExitStack() as stack:
        # the database first: a server that cannot reach it changes nothing on disk
        catalog, tokens = await stack.enter_async_context(open_catalog(settings))
        store = open_store(settings, clean=clean_tmp)
        stack.callback(store.release)
        if isinstance(store, S3Store):
            stack.push_async_callback(store.close)
        own = OwnOrigins()  # this server's origins: never fetched from (upstream.py, self_reference.py)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=64, limit_per_host=16, ttl_dns_cache=300, resolver=OwnAddressResolver(own)),
            trust_env=False,
        )
        stack.push_async_callback(session.close)
        coordinator = Coordinator(settings.redis_url if settings.cache_backend == "redis" else None,
                                  lease_seconds=settings.download_lease)
        stack.push_async_callback(coordinator.close)
        await coordinator.start(catalog.changed)  # other replicas' uploads reach this catalog
        catalog.watch(coordinator.changed_here)  # and this one's reach theirs
        aio = _make_aiocache(settings, coordinator)
        stack.push_async_callback(aio.close)
        checks = UploadChecks(settings.limits.validation_workers)
        stack.callback(checks.close)
        metrics = Metrics()
        upstream = _make_upstream(settings, session, metrics, own)
        artifacts = Artifacts(upstream, store, coordinator, max_bytes=settings.limits.artifact_fetch_bytes)
        stack.push_async_callback(artifacts.close)
        index_cache = MetadataCache(
            aio=aio,
            upstream=upstream,
            root=store.area_dir("meta"),
            tmp_dir=store.scratch_dir,
            ttl=settings.metadata_ttl,
            negative_ttl=settings.negative_ttl,
            offline=settings.offline,
            metrics=metrics,
            shared=settings.cache_backend == "redis",
        )
        stack.push_async_callback(index_cache.close)
        live = LivePolicy(settings)
        ecosystems: dict[str, Ecosystem] = {}
        api: dict[str, ApiHandler] = {}
        services = Services(
            live=live, sources=Sources(lambda: live.settings, store, catalog), store=store, catalog=catalog,
            upstream=upstream, artifacts=artifacts, index_cache=index_cache, metrics=metrics, checks=checks,
            guard=Guard(live, tokens, brake=coordinator), coordinator=coordinator, ecosystems=MappingProxyType(ecosystems), api=MappingProxyType(api),
        )
        for name, ecosystem in ECOSYSTEMS.items():
            ecosystems[name] = ecosystem(services)
            stack.push_async_callback(ecosystems[name].close)
        api.update(anaconda.api_handlers(services))  # JSON APIs under /api/<segment>/
        api.update(accounts.api_handlers(services))
        log.info("channelgate %s ready: %d channel(s), storage %s", __version__, len(settings.channels),
                 settings.storage_path)
        yield services


def _web_ui(services: Services) -> "WebUI | None":
    """The web UI, when its extra (jinja2, aiohttp-session) is installed; the server runs without it."""
    try:
        from .web.ui import WebUI
    except ImportError as exc:
        log.warning("web UI off: %s is not installed (pip install 'channelgate[ui]')", exc.name)
        return None
    return WebUI(services)


def reload_policy(services: Services, path: Path | None) -> list[str]:
    """SIGHUP: load the policy file again; keep the running policy if the file is invalid.
    Returns every problem (empty: reloaded)."""
    if path is None:
        log.warning("reload requested, but the server runs on the embedded default policy: nothing to reload")
        return ["the server runs on the embedded default policy: nothing to reload"]
    try:
        new = load_settings(path)
        found = self_reference.problems(new, [f"{h}:{p}" for h, p in services.upstream.own.listens])
        if found:
            raise ConfigError(found)
    except ConfigError as exc:
        log.error("policy reload refused, the running policy stays: %d problem(s)", len(exc.problems))
        for problem in exc.problems:
            log.error("  %s", problem)
        return list(exc.problems)
    old = services.settings
    for attr in ("storage_path", "database_url", "listen", "cache_backend", "redis_url", "metadata_ttl", "negative_ttl", "offline", "metrics_listen"):
        if getattr(old, attr) != getattr(new, attr):
            log.warning("policy reload: %s changed; it takes effect after a restart", attr)
    services.live.swap(new)
    log.info("policy reloaded: %d channel(s), %d token(s)", len(new.channels), len(new.tokens))
    return []


class Gateway:
    """The one request handler: route, authorise, hand over; typed errors become HTTP
    answers here, once."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.ui = _web_ui(services)  # None without the ``ui`` extra installed
        # with server.metrics_listen, /metrics is only there (a restart changes it, not a reload)
        self.metrics_here = services.settings.metrics_listen is None
        self.answers = ReadyAnswers()  # warm index answers, whole (answers.py)
        self.tickets = Tickets()  # where a GET's path and credentials led (answers.py)
        self._routes: Memo[str, routing.Route] = Memo(4096)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            replayed = self._replay(request)
            if replayed is not None:
                return replayed
        # aiohttp serves each request in its own task: the facts are this request's alone
        REQUEST.set(RequestFacts())
        try:
            return await self.dispatch(request)
        except ChannelgateError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, mask(request.path))
            return error_response(ChannelgateError())

    def _replay(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """A repeated GET with a ticket (answers.py): its kept answer, if the grant still holds
        and nothing the answer was built from changed; else None (the whole way: dispatch).
        Its access line's facts are the ticket's, made once (nothing writes to them later)."""
        headers = request.headers
        ticket = self.tickets.get((request.path, headers.get(hdrs.AUTHORIZATION), headers.get(X_AUTH),
                                   headers.get(hdrs.ACCEPT)))
        if ticket is None:
            return None
        services, grant = self.services, ticket.grant
        catalog = services.catalog
        if not services.guard.still_valid(grant) or (
                ticket.public and catalog.packages.has_private(ticket.channel) != ticket.private):
            return None
        ready = self.answers.lookup(ticket.key, (grant.settings, catalog.generation(ticket.view, ticket.ecosystem)))
        if ready is None:
            return None
        facts = ticket.facts(ready.cache)
        REQUEST.set(facts)
        services.metrics.replayed("index", facts)
        return ready.response(request)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        services = self.services
        facts = REQUEST.get() or RequestFacts()
        path = request.path
        if path == "/metrics" and self.metrics_here:
            facts.ecosystem = "metrics"
            return metrics_response(services.metrics)
        if path[:3] == "/ui" and (len(path) == 3 or path[3] == "/"):
            facts.ecosystem = "ui"
            if self.ui is None:
                raise NotFound("the web UI is not installed on this server (pip install 'channelgate[ui]')")
            return await self.ui.handle(request)
        if path == "/" and request.method in ("GET", "HEAD"):  # a browser at the root: the web UI
            return web.Response(status=302, headers={"Location": "/ui/"})
        route = self._routes.get(path)
        if route is None:  # (paths repeat: one per client and token; a bad one raises every time)
            route = self._routes.put(path, routing.parse(path))
        if route.kind == "api":
            facts.ecosystem = "api"
            return await self._api(request, route)
        facts.ecosystem, facts.channel = route.ecosystem, route.channel
        upload = request.method == "POST" and route.rest in ("", "/")
        if upload or request.method not in ("GET", "HEAD"):
            action = Action.WRITE  # decided before anything else, so no method reveals a channel
        else:
            action = READ_ACTION[route.ecosystem]
        settings = services.settings
        principal = services.guard.authorize(request.headers, route.token, route.channel, action, request.remote)
        channel = settings.channels[route.channel]
        shared = channel.public  # may a shared cache keep the answer?
        if channel.public and services.catalog.packages.has_private(channel.name):
            if sees_private(principal, channel, action):
                shared = False
            else:  # without the read role: the channel's public view, no private package in it
                channel = replace(channel, name=public_view(channel.name))
        ctx = ChannelRequest(route, channel, principal, services)
        if upload:
            return await handle_upload(request, ctx)
        if request.method == "DELETE":
            return await delete_hosted(ctx)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed()
        return await self._read(request, ctx, shared, facts)

    async def _read(self, request: web.BaseRequest, ctx: ChannelRequest, shared: bool, facts: RequestFacts) -> web.StreamResponse:
        """GET/HEAD, authorised: a ready answer when nothing it was built from changed
        (answers.py), else the ecosystem's."""
        services, route = self.services, ctx.route
        # keyed by what the caller may see (the view, private or not), never by who asks
        key = (route.channel, route.rest, ctx.channel.name, shared, request.headers.get("Accept"))
        stamp = (services.settings, services.catalog.generation(ctx.channel.name, route.ecosystem))
        # decided before any await: what a ticket needs to tell later whether this still holds
        private = ctx.channel.public and services.catalog.packages.has_private(route.channel)
        ready = self.answers.lookup(key, stamp)
        if ready is not None:
            facts.cache = ready.cache
            services.metrics.replayed("index", facts)
            if request.method == "GET":
                self._ticket(request, ctx, key, stamp[0], private)
            return ready.response(request)
        response = await services.ecosystems[route.ecosystem].serve(request, ctx)
        if not shared:
            keep_private(response)
        if isinstance(response, (SentFileResponse, BlobStreamResponse, BlobRedirect, InlineBlobResponse)) and response.hosted:
            services.metrics.cache_result("artifact", "hosted")
        elif request.method == "GET" and self.answers.keep(key, stamp, response, facts):
            self._ticket(request, ctx, key, stamp[0], private)
        return response

    def _ticket(self, request: web.BaseRequest, ctx: ChannelRequest, key: tuple[object, ...], settings: Settings,
                private: bool) -> None:
        """Remember where this GET's path and credentials led (answers.Tickets), decided under ``settings``."""
        headers, route = request.headers, ctx.route
        self.tickets.put(
            (request.path, headers.get(hdrs.AUTHORIZATION), headers.get(X_AUTH), headers.get(hdrs.ACCEPT)),
            Ticket(self.services.guard.grant(settings, ctx.principal), key, route.ecosystem, route.channel,
                   ctx.channel.name, ctx.channel.public, private),
        )

    async def _api(self, request: web.BaseRequest, route: routing.Route) -> web.StreamResponse:
        head = route.rest.split("/", 1)[0]
        if head in ("health", "ready") and request.method in ("GET", "HEAD"):
            if head == "ready" or "ready" in request.query:
                return await readiness(self.services)
            return liveness()
        handler = self.services.api.get(head)
        if handler is None:
            raise NotFound()
        return await handler(request, route, self.services)


def metrics_response(metrics: Metrics) -> web.Response:
    """GET /metrics: the Prometheus text format (all workers summed under --workers)."""
    return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def error_response(exc: ChannelgateError) -> web.Response:
    headers = dict(exc.headers)
    reason = None
    # twine shows the reason phrase: make it the message when it is a safe single line
    status = http_status(exc)
    if status < 500 and exc.message.isascii() and exc.message.isprintable() and len(exc.message) < 200:
        reason = exc.message
    return web.json_response({"error": exc.message}, status=status, headers=headers, reason=reason)

