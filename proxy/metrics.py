"""Prometheus metrics (DESIGN, "Operations"), with prometheus-client.

One ``Metrics`` per serving process, built in ``app.open_services`` (no module-level
registry). Label values come from small fixed sets: an ecosystem name, an HTTP status,
a cache kind and result, or an upstream's name from the policy. Never a user, a token or
a path.

With ``serve --workers N`` the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before forking
(``multiprocess_dir``); prometheus-client then keeps every worker's values in files there,
and a scrape of any worker sums them all (its multiprocess mode). prometheus-client picks
its value store when first imported, so it is imported here lazily, never at import time.

``RequestFacts``: what the access line needs to know about one request (user, token name,
channel, ecosystem, cache result). The gateway sets a fresh one per request in a context
variable (aiohttp runs each request in its own task, so it is request-scoped); the cache
layers record their result into it, and the access logger reads it.
"""
from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

from aiohttp import web

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

CacheKind = Literal["index", "artifact"]
CacheResult = Literal["hit", "miss", "joined", "stale", "hosted"]
_RESULT_RANK = {"-": 0, "hosted": 1, "hit": 2, "stale": 3, "joined": 4, "miss": 5}
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(slots=True)
class RequestFacts:
    ecosystem: str = "other"  # conda | pypi | cran | api | ui | metrics | other
    channel: str = "-"
    user: str = "-"
    token: str = "-"  # the token's *name* from the policy or catalog, never the secret
    cache: str = "-"
    _file: bool = False
    # answers.py: until when the upstream documents this answer read stay fresh, and whether
    # anything else made it provisional (then it is not kept as a ready answer)
    fresh_until: float = float("inf")
    volatile: bool = False
    # the access line's end (user ... cache), made once for facts that no longer change (a
    # ticket's: answers.Ticket.facts); "" for a request's own facts, formatted per line
    line_tail: str = ""

    def read_fresh(self, until: float) -> None:
        """The answer read an upstream document that this process knows fresh until ``until``."""
        if until < self.fresh_until:
            self.fresh_until = until

    def saw(self, kind: str, result: str) -> None:
        """A file request reports its file's result; an index request its most telling lookup."""
        if kind == "artifact":
            self.cache, self._file = result, True
        elif not self._file and _RESULT_RANK[result] > _RESULT_RANK[self.cache]:
            self.cache = result


REQUEST: contextvars.ContextVar[RequestFacts | None] = contextvars.ContextVar("channelgate_request", default=None)


def current_facts() -> RequestFacts | None:
    return REQUEST.get()


def provisional() -> None:
    """The current request's answer may change without its inputs changing (e.g. a previous
    index served while the new one builds): never keep it as a ready answer (answers.py)."""
    facts = REQUEST.get()
    if facts is not None:
        facts.volatile = True


class Metrics:
    """The metric families. ``multiprocess_dir`` is where prometheus-client's multiprocess
    mode keeps the workers' values (set by the --workers parent; None: one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._children: dict[tuple[int, tuple[object, ...]], Any] = {}
        self._pending: dict[tuple[Any, tuple[object, ...]], float] = {}
        self.requests = Counter(
            "channelgate_requests", "HTTP requests answered, by ecosystem and status", ["ecosystem", "status"], registry=reg
        )
        self.sent_bytes = Counter(
            "channelgate_sent_bytes", "Bytes sent to clients (headers and bodies, sendfile included)", ["ecosystem"], registry=reg
        )
        self.cache = Counter(
            "channelgate_cache", "Cache lookups by kind (index, artifact) and result (hit, miss, stale, hosted)",
            ["kind", "result"], registry=reg,
        )
        self.replays = Counter(
            "channelgate_ready_answers", "Index answers replayed whole from the ready-answer store (answers.py)",
            ["ecosystem"], registry=reg,
        )
        self.upstream_requests = Counter(
            "channelgate_upstream_requests", "Requests to upstreams, by upstream and status (HTTP code, timeout, error)",
            ["upstream", "status"], registry=reg,
        )
        self.upstream_seconds = Histogram(
            "channelgate_upstream_seconds", "Upstream request duration, to the last byte", ["upstream"],
            buckets=UPSTREAM_BUCKETS, registry=reg,
        )
        self.uploads = Counter("channelgate_uploads", "Uploads accepted, by ecosystem", ["ecosystem"], registry=reg)
        self.index_builds = Counter(
            "channelgate_index_builds", "Merged indexes built (one build serves every channel whose inputs are the same)",
            ["ecosystem"], registry=reg,
        )
        self.inflight_downloads = Gauge(
            "channelgate_inflight_downloads", "Upstream artifact downloads in progress (each shared by its waiting clients)",
            registry=reg, multiprocess_mode="livesum",
        )
        self.replica_waits = Gauge(
            "channelgate_replica_waits", "Cold artifacts this process waits for while another replica downloads them",
            registry=reg, multiprocess_mode="livesum",
        )
        self.held_writes = Gauge(
            "channelgate_held_writes", "Small cached things (index pages, metadata files) answered from memory whose "
            "durable write is still to come (write-behind)", registry=reg, multiprocess_mode="livesum",
        )
        self.open_connections = Gauge(
            "channelgate_open_connections", "Client connections open", registry=reg, multiprocess_mode="livesum"
        )

    # ------------------------------------------------------------------ recording
    def _child(self, family: Any, *labels: object) -> Any:
        """``family.labels(...)``, remembered: prometheus-client validates and locks on every
        labels() call (~10 us on this machine, more than a warm request's own work); the label
        sets are small and fixed, so this dict stays small."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*(str(v) for v in labels))
        return child

    def _count(self, family: Any, labels: tuple[object, ...], amount: float = 1) -> None:
        """A counter increment. One process: added up here and handed to prometheus-client
        when scraped (``render``), since its inc() takes a lock and costs more than a warm
        request's own work; under --workers every worker's values must be in the shared
        files for a sibling's scrape, so it is counted there at once."""
        if self.multiprocess_dir is not None:
            self._child(family, *labels).inc(amount)
            return
        key = (family, labels)
        self._pending[key] = self._pending.get(key, 0) + amount

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (family, labels), amount in pending.items():
            self._child(family, *labels).inc(amount)

    def cache_result(self, kind: CacheKind, result: CacheResult) -> None:
        """The one place cache outcomes are counted; also marks the current request."""
        self._count(self.cache, (kind, result))
        facts = REQUEST.get()
        if facts is not None:
            facts.saw(kind, result)

    def replayed(self, kind: CacheKind, facts: RequestFacts) -> None:
        """A kept answer replayed (answers.py); its first request's cache result (``facts.cache``)
        counted again."""
        self._count(self.replays, (facts.ecosystem,))
        if facts.cache != "-":
            self._count(self.cache, (kind, facts.cache))

    def upstream_request(self, upstream: str, status: int | str, seconds: float) -> None:
        self._child(self.upstream_requests, upstream, status).inc()
        self._child(self.upstream_seconds, upstream).observe(seconds)

    def index_built(self, ecosystem: str) -> None:
        self._count(self.index_builds, (ecosystem,))

    def request_done(self, ecosystem: str, status: int, sent: int) -> None:
        self._count(self.requests, (ecosystem, status))
        if sent:
            self._count(self.sent_bytes, (ecosystem,), sent)

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self._flush()
        registry: CollectorRegistry = self.registry
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
        return bytes(generate_latest(registry))


def worker_exited(pid: int) -> None:
    """--workers parent: drop a dead worker's live gauges (prometheus-client's bookkeeping)."""
    from prometheus_client import multiprocess

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)


class CountingServer(web.Server):
    """aiohttp's low-level server, counting open client connections in ``metrics`` (if given)."""

    def __init__(self, handler: Any, *, metrics: Metrics | None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._metrics = metrics  # None: a listener whose connections are not clients' (metrics_listen)
        self._counted: set[object] = set()

    def connection_made(self, handler: Any, transport: Any) -> None:
        super().connection_made(handler, transport)
        if self._metrics is not None:
            self._counted.add(handler)
            self._metrics.open_connections.inc()

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        if self._metrics is not None and handler in self._counted:
            self._counted.discard(handler)
            self._metrics.open_connections.dec()


def metrics_only_handler(metrics: Metrics) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The handler of ``server.metrics_listen``: /metrics and nothing else."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="only GET /metrics is served here\n")
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    return handle
