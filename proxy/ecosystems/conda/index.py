"""Merged conda indexes: one per (channel, label, subdir), built from the channel's uploads
and its upstream channels' ``repodata.json`` (DESIGN, "Merge semantics").

- Uploads carry their repodata record in the catalog (``Upload.meta``); upstream
  ``repodata.json(.zst)`` documents come from the metadata cache and are parsed once per
  content digest (``Repodata`` keeps records as bytes).
- The label ``main`` (the default URL) merges uploads labelled ``main`` with the upstreams;
  any other label serves only the uploads carrying it (anaconda.org's labels).
- A ``SubdirIndex`` is keyed by everything it derives from (catalog generation, upstream
  digests, ``upstream_allow``), so it is rebuilt exactly when an input changes. Its
  renderings (json, zst, bz2, current_repodata, CEP-16 shards) are produced on first use,
  off the event loop, once (single flight).
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urljoin

import orjson

from ...cache import Doc, Memo, SingleFlight
from ...context import ChannelRequest, Services
from ...errors import NotFound, UpstreamError, UpstreamTimeout
from ...merge import merge, upstream_may_serve
from ...responses import etag_for
from ...settings import ChannelPolicy, UpstreamSettings
from ...store.catalog import Upload
from .repodata import (
    CondaRecord,
    Encoding,
    Repodata,
    decode_body,
    encode,
    parse_repodata,
    render_channeldata,
    render_current_repodata,
    render_repodata_json,
)
from .shards import ShardSet, build_shards

log = logging.getLogger(__name__)

SUBDIR_RE = re.compile(r"^(noarch|[a-z0-9]+-[a-z0-9_]+)$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
DEFAULT_LABEL = "main"

Rendering = Literal["json", "zstd", "bz2", "current", "current.zstd", "current.bz2", "shards"]
# compressed renderings: which plain rendering they compress, and how
_COMPRESSED: dict[str, tuple[Rendering, Encoding]] = {
    "zstd": ("json", "zstd"),
    "bz2": ("json", "bz2"),
    "current.zstd": ("current", "zstd"),
    "current.bz2": ("current", "bz2"),
}

def normalize(name: str) -> str:
    """conda package names compare lower-case (merge key and dependency-confusion rule)."""
    return name.lower()


def allowed_names(channel: ChannelPolicy) -> frozenset[str]:
    return frozenset(normalize(n) for n in channel.upstream_allow)


def local_record(upload: Upload) -> CondaRecord:
    """An upload as a merge source entry; its repodata record is ``Upload.meta``."""
    return upload.filename, upload.name, orjson.dumps(dict(upload.meta), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class UpstreamSubdir:
    """One upstream's parsed ``<subdir>/repodata.json``."""

    upstream: UpstreamSettings
    url: str  # where the document was fetched (package URLs resolve against it)
    digest: str
    repodata: Repodata

    def file_url(self, filename: str) -> str:
        """The upstream URL of a package file (CEP-15 ``info.base_url`` when given)."""
        base = self.repodata.base_url or "./"
        if not base.endswith("/"):
            base += "/"
        return urljoin(urljoin(self.url, base), quote(filename))


class SubdirIndex:
    """The merged records of one (channel, label, subdir) and their lazy renderings."""

    def __init__(
        self,
        subdir: str,
        records: list[CondaRecord],
        local: dict[str, Upload],
        upstreams: list[UpstreamSubdir],
        local_names: frozenset[str],
        allow: frozenset[str],
        removed: list[str],
        on_shards: Callable[[ShardSet], None] | None = None,
    ) -> None:
        self.on_shards = on_shards
        self.subdir = subdir
        self.records = records
        self.local = local
        self.upstreams = upstreams
        self.local_names = local_names
        self.allow = allow
        self.removed = removed
        self._rendered: dict[str, tuple[bytes, str]] = {}
        self._shards: ShardSet | None = None
        self._flight: SingleFlight[Hashable, Any] = SingleFlight()

    def origin(self, filename: str) -> Upload | tuple[UpstreamSubdir, bytes] | None:
        """Where a file of this index comes from: a hosted upload, or (upstream, record)."""
        upload = self.local.get(filename)
        if upload is not None:
            return upload
        for source in self.upstreams:
            entry = source.repodata.records.get(filename)
            if entry is None:
                continue
            if not upstream_may_serve(normalize(entry[0]), self.local_names, self.allow):
                return None
            return source, entry[1]
        return None

    async def rendered(self, kind: Rendering) -> tuple[bytes, str]:
        """(body, ETag) of one rendering, computed once off the event loop."""
        done = self._rendered.get(kind)
        if done is not None:
            return done
        return await self._flight.run(kind, lambda: self._render(kind))

    async def _render(self, kind: Rendering) -> tuple[bytes, str]:
        if kind == "shards":
            shard_set = await self.shard_set()
            body = shard_set.index
        elif kind in ("json", "current"):
            render = render_repodata_json if kind == "json" else render_current_repodata
            body = await asyncio.to_thread(render, self.subdir, self.records, removed=self.removed)
        else:
            plain_kind, encoding = _COMPRESSED[kind]
            plain, _etag = await self.rendered(plain_kind)
            body = await asyncio.to_thread(encode, plain, encoding)
        result = (body, etag_for(body))
        self._rendered[kind] = result
        return result

    async def shard_set(self) -> ShardSet:
        if self._shards is None:
            shard_set = await self._flight.run(
                "shard-set", lambda: asyncio.to_thread(build_shards, self.records, subdir=self.subdir, removed=self.removed)
            )
            if self._shards is None:
                self._shards = shard_set
                if self.on_shards is not None:
                    self.on_shards(shard_set)
        return self._shards


class CondaIndexes:
    """Builds and memoises the merged indexes of every channel (no globals: one per app)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._parsed: Memo[str, Repodata] = Memo(6)  # by upstream document digest (large)
        # renderings of a conda-forge-sized subdir weigh hundreds of MB: keep few
        self._indexes: Memo[tuple[object, ...], SubdirIndex] = Memo(16)
        self._channeldata: Memo[tuple[object, ...], tuple[bytes, str]] = Memo(64)
        self._upstream_channeldata: Memo[str, dict[str, Any]] = Memo(16)
        # the last few shard sets of each subdir: CEP-16 clients may hold a slightly older index
        self._recent_shards: dict[tuple[str, str, str], deque[ShardSet]] = {}
        self._flight: SingleFlight[Hashable, Any] = SingleFlight()

    # ------------------------------------------------------------------ upstream documents
    async def _upstream_doc(self, up: UpstreamSettings, subdir: str) -> tuple[Doc, Encoding]:
        """conda's order: ``repodata.json.zst`` first, ``repodata.json`` when that 404s."""
        url = f"{up.url}/{subdir}/repodata.json"
        try:
            return await self.services.meta.get(up, url + ".zst"), "zstd"
        except NotFound:
            return await self.services.meta.get(up, url), "identity"

    async def _parse(self, doc: Doc, encoding: Encoding) -> Repodata:
        cached = self._parsed.get(doc.digest)
        if cached is not None:
            return cached

        def work() -> Repodata:
            return parse_repodata(decode_body(doc.read(), encoding))

        async def build() -> Repodata:
            try:
                parsed = await asyncio.to_thread(work)
            except NotFound:
                raise
            except Exception as exc:  # an upstream served something that is not repodata
                log.warning("upstream document %s is not valid repodata: %s", doc.digest[:12], exc)
                raise UpstreamError("an upstream served invalid repodata") from None
            return self._parsed.put(doc.digest, parsed)

        return await self._flight.run(("parse", doc.digest), build)

    async def upstream_subdirs(self, channel: ChannelPolicy, subdir: str) -> tuple[list[UpstreamSubdir], Exception | None]:
        """Each upstream's parsed subdir (404s skipped) and the last failure, if any."""
        out: list[UpstreamSubdir] = []
        failure: Exception | None = None
        for up in self.services.upstreams_for(channel, "conda"):
            try:
                doc, encoding = await self._upstream_doc(up, subdir)
                repodata = await self._parse(doc, encoding)
            except NotFound:
                continue
            except (UpstreamError, UpstreamTimeout) as exc:
                failure = exc
                continue
            out.append(UpstreamSubdir(up, doc.url, doc.digest, repodata))
        return out, failure

    # ------------------------------------------------------------------ merged subdir index
    def uploads(self, channel: str, label: str, subdir: str) -> list[Upload]:
        prefix = f"{subdir}/"
        return [u for u in self.services.catalog.list(channel, "conda") if u.path.startswith(prefix) and label in u.labels]

    async def subdir(self, ctx: ChannelRequest, label: str, subdir: str) -> SubdirIndex | None:
        """The merged index, or None when no source has this subdir (noarch always exists)."""
        channel = ctx.channel
        catalog = self.services.catalog
        uploads = self.uploads(channel.name, label, subdir)
        ups: list[UpstreamSubdir] = []
        failure: Exception | None = None
        if label == DEFAULT_LABEL:
            ups, failure = await self.upstream_subdirs(channel, subdir)
        if not uploads and not ups:
            if failure is not None:
                raise failure
            if subdir != "noarch":
                return None
        allow = allowed_names(channel)
        key = (
            channel.name, label, subdir, catalog.generation(channel.name, "conda"), allow,
            tuple((u.upstream.name, u.digest) for u in ups),
        )
        cached = self._indexes.get(key)
        if cached is not None:
            return cached
        local_names = catalog.names(channel.name, "conda")

        def build() -> SubdirIndex:
            local = [local_record(u) for u in uploads]
            merged = merge(
                local, [u.repodata.iter_records() for u in ups],
                name=lambda r: normalize(r[1]), key=lambda r: r[0], allow=allow, local_names=local_names,
            )
            present = {r[0] for r in merged}
            removed = sorted({fn for u in ups for fn in u.repodata.removed if fn not in present})
            recent = self._recent_shards.setdefault((channel.name, label, subdir), deque(maxlen=3))
            return SubdirIndex(
                subdir, merged, {u.filename: u for u in uploads}, ups, local_names, allow, removed, recent.append
            )

        async def run() -> SubdirIndex:
            return self._indexes.put(key, await asyncio.to_thread(build))

        return await self._flight.run(("subdir", key), run)

    def find_shard(self, channel: str, label: str, subdir: str, sha256_hex: str) -> bytes | None:
        """A shard of any memoised index of this subdir (clients may hold a slightly older index)."""
        for shard_set in reversed(self._recent_shards.get((channel, label, subdir), ())):
            body = shard_set.shards.get(sha256_hex)
            if body is not None:
                return body
        return None

    # ------------------------------------------------------------------ channeldata.json
    async def channeldata(self, ctx: ChannelRequest, label: str) -> tuple[bytes, str]:
        """``channeldata.json``: the uploads' entries first, then the upstreams' own
        ``channeldata.json`` entries for names the merge rule lets them serve."""
        channel = ctx.channel
        catalog = self.services.catalog
        docs: list[Doc] = []
        if label == DEFAULT_LABEL:
            for up in self.services.upstreams_for(channel, "conda"):
                try:
                    docs.append(await self.services.meta.get(up, f"{up.url}/channeldata.json"))
                except (NotFound, UpstreamError, UpstreamTimeout):
                    continue
        allow = allowed_names(channel)
        key = (channel.name, label, catalog.generation(channel.name, "conda"), allow, tuple(d.digest for d in docs))
        cached = self._channeldata.get(key)
        if cached is not None:
            return cached
        by_subdir: dict[str, list[CondaRecord]] = {}
        for upload in catalog.list(channel.name, "conda"):
            if label in upload.labels:
                by_subdir.setdefault(upload.path.split("/", 1)[0], []).append(local_record(upload))
        local_names = catalog.names(channel.name, "conda")
        doc = orjson.loads(render_channeldata(by_subdir))
        packages: dict[str, Any] = doc["packages"]
        subdirs: set[str] = set(doc["subdirs"])
        for upstream_doc in docs:
            theirs = self._upstream_channeldata.get(upstream_doc.digest)
            if theirs is None:
                try:
                    loaded = orjson.loads(upstream_doc.read())
                except orjson.JSONDecodeError:
                    continue
                theirs = self._upstream_channeldata.put(upstream_doc.digest, loaded if isinstance(loaded, dict) else {})
            their_packages = theirs.get("packages")
            for name, entry in (their_packages.items() if isinstance(their_packages, dict) else ()):
                if name in packages or not isinstance(entry, dict):
                    continue
                if not upstream_may_serve(normalize(name), local_names, allow):
                    continue
                # icons would be fetched from the upstream: links must point at channelgate
                packages[name] = {k: v for k, v in entry.items() if k not in ("icon_url", "icon_hash")}
            their_subdirs = theirs.get("subdirs")
            if isinstance(their_subdirs, list):
                subdirs.update(s for s in their_subdirs if isinstance(s, str) and SUBDIR_RE.match(s))
        body = orjson.dumps({
            "channeldata_version": doc["channeldata_version"],
            "packages": dict(sorted(packages.items())),
            "subdirs": sorted(subdirs),
        })
        return self._channeldata.put(key, (body, etag_for(body)))
