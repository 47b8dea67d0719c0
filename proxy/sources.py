"""The one walk over a channel's sources (DESIGN, "Merge semantics"; devpi's ``op_sro``).

A channel's sources, in order: its own uploads, then its upstreams as the policy lists
them. Every ecosystem reads its upstreams through ``Sources.walk``: upstreams of the
ecosystem in order, each asked by the caller's ``fetch``; an upstream that has nothing
(404) is skipped, one that fails is skipped and remembered (the last failure is what a
request gets when no source had anything), and the merge rule decides before any
upstream is asked whether upstreams may serve a name at all.

Upstream filters (DESIGN, "Air-gap") are applied here and nowhere else: subdirs and names
in ``Sources.upstreams``, the one place every walk takes its upstreams from (an upstream
whose filter rules out the name or subdir asked for is not asked); version specs, licenses
and latest N in ``upstream_records`` (``Walk.records``), through which every ecosystem takes
an upstream's records into its merge. An ecosystem only says how its records are read
(``Fields``: name, version, license). So the merged indexes, the files they list and what
``channelgate seed`` resolves (through those indexes) all see one filtered view.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web

from .errors import ChannelgateError, NotFound, UpstreamError, UpstreamTimeout
from .memo import Memo
from .merge import MergeRule
from .blob_response import blob_response
from .settings import ChannelPolicy, Settings, UpstreamSettings
from .store.protocols import Catalog, Store

T = TypeVar("T")
R = TypeVar("R")


def _no_license(_: object) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Fields(Generic[R]):
    """How the upstream filters read one ecosystem's records (version specs are compared in
    that ecosystem's own order: filters.py)."""

    name: Callable[[R], str]
    version: Callable[[R], str]
    license: Callable[[R], "str | None"] = _no_license


def upstream_allows(up: UpstreamSettings, name: str) -> bool:
    """Whether ``up``'s filter can let any record of ``name`` through (names alone)."""
    return up.filter is None or up.filter.allows_name(name)


def upstream_records(up: UpstreamSettings, records: Sequence[R], fields: Fields[R]) -> Sequence[R]:
    """The records of ``up`` its filter keeps (names, version specs, licenses, latest N), in
    their order: the one place filters are applied to records. Pure: safe in a worker thread."""
    flt = up.filter
    if flt is None:
        return records
    return flt.select(records, name=fields.name, version=fields.version, license=fields.license)


@dataclass(frozen=True, slots=True)
class Found(Generic[T]):
    """What one upstream had for the walk's question."""

    upstream: UpstreamSettings
    value: T


@dataclass(frozen=True, slots=True)
class Walk(Generic[T]):
    """The answers of a channel's upstreams, in the channel's order, and the last failure."""

    found: tuple[Found[T], ...]
    failure: ChannelgateError | None = None

    def __bool__(self) -> bool:
        return bool(self.found)

    def records(self, parse: Callable[[T], Sequence[R]], fields: Fields[R]) -> list[tuple[UpstreamSettings, Sequence[R]]]:
        """Each upstream's records (``parse`` of its answer), as its filter keeps them."""
        return [(f.upstream, upstream_records(f.upstream, parse(f.value), fields)) for f in self.found]

    def fingerprint(self, digest: Callable[[T], str]) -> tuple[tuple[str, str, str], ...]:
        """Identifies the inputs for memo keys: each upstream, its answer's digest and its filter."""
        return tuple(
            (f.upstream.name, digest(f.value), f.upstream.filter.fingerprint if f.upstream.filter else "")
            for f in self.found
        )

    def nothing(self, *, hosted: bool, missing: str) -> None:
        """When neither the uploads (``hosted``) nor any upstream had it: the last upstream
        failure if there was one (the answer may exist there), else NotFound(missing)."""
        if not hosted and not self.found:
            raise self.failure if self.failure is not None else NotFound(missing)


class Sources:
    """A channel's sources for every ecosystem: one per app (no globals)."""

    def __init__(self, settings: Callable[[], Settings], store: Store, catalog: Catalog) -> None:
        self._settings = settings
        self.store = store
        self.catalog = catalog
        self._allow: Memo[tuple[frozenset[str], Callable[[str], str]], frozenset[str]] = Memo(256)

    def upstreams(
        self, channel: ChannelPolicy, ecosystem: str, *, name: str | None = None, subdir: str | None = None
    ) -> list[UpstreamSettings]:
        """The channel's upstreams of one ecosystem, in the channel's order, less those whose
        filter rules out ``name`` or ``subdir`` (the one place upstream filters are applied
        to a walk)."""
        ups = self._settings().upstreams
        out = []
        for up_name in channel.upstreams:
            up = ups.get(up_name)
            if up is None or up.type != ecosystem:
                continue
            if name is not None and not upstream_allows(up, name):
                continue
            if subdir is not None and up.filter is not None and not up.filter.allows_subdir(subdir):
                continue
            out.append(up)
        return out

    def allow(self, channel: ChannelPolicy, normalize: Callable[[str], str]) -> frozenset[str]:
        """``upstream_allow`` in the ecosystem's normal form (computed once per policy)."""
        key = (channel.upstream_allow, normalize)
        return self._allow.get_or_build(key, lambda: frozenset(normalize(n) for n in channel.upstream_allow))

    def rule(self, channel: ChannelPolicy, ecosystem: str, normalize: Callable[[str], str]) -> MergeRule:
        """The dependency-confusion rule for this channel: its uploaded names and its allow list."""
        return MergeRule(self.catalog.names(channel.name, ecosystem), self.allow(channel, normalize))

    async def walk(
        self,
        channel: ChannelPolicy,
        ecosystem: str,
        fetch: Callable[[UpstreamSettings], Awaitable[T]],
        *,
        name: str | None = None,
        subdir: str | None = None,
        rule: MergeRule | None = None,
        first: bool = False,
    ) -> Walk[T]:
        """Ask each upstream in order (``first``: stop at the first that has it). With a
        ``name`` and a ``rule``, a name the uploads hold asks no upstream at all."""
        if name is not None and rule is not None and not rule.upstream_may_serve(name):
            return Walk(())
        found: list[Found[T]] = []
        failure: ChannelgateError | None = None
        for up in self.upstreams(channel, ecosystem, name=name, subdir=subdir):
            try:
                value = await fetch(up)
            except NotFound:
                continue
            except (UpstreamError, UpstreamTimeout) as exc:
                failure = exc
                continue
            found.append(Found(up, value))
            if first:
                break
        return Walk(tuple(found), failure)

    async def hosted_file(self, request: web.BaseRequest, sha256: str | None, filename: str,
                          content_type: str) -> web.StreamResponse:
        """An uploaded file (or an upload's companion blob) from the store (blob_response.py)."""
        response = await blob_response(request, self.store, "uploads", sha256, content_type,
                                       hosted=True) if sha256 else None
        if response is None:
            raise NotFound(f"{filename} is not stored")
        return response
