"""PyPI handlers: ``P/simple/``, ``P/simple/<project>/``, files and PEP 658 ``.metadata``.

Files are linked *relative* to the project page (``<filename>#sha256=...``), as PEP 503/691
allow, so every link resolves under the very prefix the client used, ``/t/<TOKEN>/`` and
Basic-auth forms alike, and never points at an upstream.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Literal, Mapping, overload
from urllib.parse import quote

from aiohttp import web

from ...artifacts import ArtifactSpec
from ...cache import WRITE_BEHIND_MAX, Doc
from ...context import ChannelRequest, Services, UploadForm
from ...errors import BadRequest, Conflict, NotFound, UpstreamError
from ...memo import Memo, SingleFlight
from ...merge import MergeRule, merge
from ...blob_response import blob_response, bytes_response
from ...responses import etag_for, index_response
from ...settings import ChannelPolicy, UpstreamSettings
from ...sources import Fields, upstream_allows
from ...store.catalog import Upload
from ...uploads import publish
from .prefetch import DEPTH_AHEAD, MAX_METADATA_READ, Budget, Prefetch, newest_wheels
from .wheel_metadata import TAIL, advertise_metadata, local_metadata, readable_metadata, remote_metadata
from .dist import inspect_distribution, release_file_key, require_fields, same_release_file
from .simple import (
    FileEntry,
    is_project_name,
    negotiate,
    normalize,
    parse_html,
    parse_json,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
    version_from_filename,
)

# Ask upstreams for PEP 691 JSON, accept HTML (PEP 691 "Version + Format Selection")
UPSTREAM_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
HASH_ALGORITHMS = ("sha256", "md5")


@dataclass(frozen=True, slots=True)
class Source:
    entry: FileEntry
    upload: Upload | None = None  # a hosted file
    upstream: UpstreamSettings | None = None  # or a file of this upstream


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    files: tuple[FileEntry, ...]
    sources: Mapping[str, Source]
    key: tuple[object, ...]  # identifies the inputs: catalog generation + upstream digests


def _content_type(filename: str) -> str:
    if filename.endswith((".whl", ".zip", ".egg")):
        return "application/zip"
    if filename.endswith((".tar.gz", ".tgz")):
        return "application/gzip"
    return "application/octet-stream"


def _local_entry(upload: Upload) -> FileEntry:
    fields = upload.index_fields
    return FileEntry(
        filename=upload.filename,
        url="",
        hashes={"sha256": upload.sha256},
        requires_python=fields.get("requires_python"),
        core_metadata={"sha256": fields["metadata_sha256"]} if fields.get("metadata_sha256") else False,
        size=upload.size,
        upload_time=fields.get("upload_time"),
    )


def _metadata_spec(up: UpstreamSettings, entry: FileEntry) -> ArtifactSpec:
    """The upstream's PEP 658 file of ``entry`` (one spec for clients and fetches ahead: one key)."""
    expect = entry.core_metadata if isinstance(entry.core_metadata, Mapping) else {}
    return ArtifactSpec(
        upstream=up,
        url=entry.url + ".metadata",
        expect={k: v for k, v in expect.items() if k in HASH_ALGORITHMS},
        filename=entry.filename + ".metadata",
        content_type="text/plain; charset=utf-8",
        size=None,
        inline=True,
    )


def _wheel_metadata_key(entry: FileEntry) -> str:
    """The ref naming the METADATA read out of an upstream wheel (by the wheel's hash)."""
    return f"wheel-metadata:sha256:{entry.hashes['sha256'].lower()}"


def _link(entry: FileEntry) -> str:
    return quote(entry.filename, safe="+!~*'()@,;=")


class PyPI:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._parsed: Memo[str, list[FileEntry]] = Memo(4096)
        self._projects: Memo[tuple[object, ...], Project] = Memo(4096)
        self._pages: Memo[tuple[object, ...], tuple[bytes, str]] = Memo(4096)
        self._names: Memo[tuple[object, ...], dict[str, str]] = Memo(16)
        # Accept headers repeat (one per client version): negotiate each string once
        self._negotiate = functools.lru_cache(maxsize=256)(negotiate)
        self._ahead = Prefetch()  # what a resolver asks next, fetched ahead (prefetch.py)
        self._ahead_depth: Memo[tuple[object, ...], int] = Memo(4096)  # project key -> levels walked ahead
        self._wheel_reads: SingleFlight[str, str | None] = SingleFlight()  # METADATA read out of a wheel

    async def close(self) -> None:
        """Stop the fetches ahead of clients (every other task belongs to a request)."""
        await self._ahead.close()
        self._wheel_reads.cancel_all()

    # ------------------------------------------------------------------ GET
    async def serve(self, request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
        parts = ctx.route.rest.split("/")
        base = f"{ctx.route.prefix}/simple/"
        if len(parts) == 1:
            raise web.HTTPMovedPermanently(base)
        if len(parts) == 2 and parts[1] == "":
            return await self._root(request, ctx)
        project = normalize(parts[1])
        if not is_project_name(parts[1]):  # before any upstream URL is built from it
            raise NotFound("not a valid project name")
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == "" and parts[1] != project):
            raise web.HTTPMovedPermanently(f"{base}{project}/")  # PEP 503: canonical URLs
        if len(parts) == 3 and parts[2] == "":
            return await self._project_page(request, ctx, project)
        if len(parts) == 3:
            return await self._file(request, ctx, project, parts[2])
        raise NotFound()

    async def _root(self, request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
        kind, content_type = self._negotiate(request.headers.get("Accept"))
        projects = sorted((await self.names(ctx.channel))[1])
        body = render_root_json(projects) if kind == "json" else render_root_html(projects)
        return index_response(request, body, content_type, vary="Accept")

    async def names(self, channel: ChannelPolicy) -> tuple[tuple[object, ...], Mapping[str, str]]:
        """Every project name of the channel's merged index, each with its source
        ("hosted" or the first upstream listing it), and a key identifying the inputs.
        The root page and the web UI's listings both read this."""
        snap = self.services.catalog.snapshot(channel.name, "pypi")
        walk = await self.services.sources.walk(
            channel, "pypi", lambda up: self.services.index_cache.get(up, f"{up.url}/", accept=UPSTREAM_ACCEPT,
                                                            hold_max=WRITE_BEHIND_MAX)
        )
        key = (channel.name, snap.generation, tuple((f.upstream.name, f.value.digest) for f in walk.found))
        found = self._names.get(key)
        if found is None:
            names = dict.fromkeys(snap.by_name, "hosted")  # visible uploads (a public view hides private ones)
            rule = MergeRule(snap.names, self.services.sources.allow(channel, normalize))
            for f in walk.found:
                up = f.upstream
                for entry in self._parse(f.value, root=True):
                    name = normalize(entry.filename)
                    if upstream_allows(up, name) and rule.upstream_may_serve(name):
                        names.setdefault(name, up.name)  # (a private upload's name stays blocked)
            found = self._names.put(key, names)
        return key, found

    def _parse(self, doc: Doc, *, root: bool = False) -> list[FileEntry]:
        def build() -> list[FileEntry]:
            body = doc.read()
            if "json" in doc.content_type:
                if root:
                    import orjson

                    return [FileEntry(p["name"], "") for p in orjson.loads(body).get("projects", [])]
                return parse_json(body, doc.url)
            return parse_html(body, doc.url)

        return self._parsed.get_or_build(doc.digest, build)

    async def project(self, ctx: ChannelRequest, project: str) -> Project:
        """The merged file list of one project (DESIGN's merge rule); ``project`` normalised."""
        if not is_project_name(project) or project != normalize(project):
            raise NotFound("not a valid project name")
        channel = ctx.channel
        sources = self.services.sources
        snap = self.services.catalog.snapshot(channel.name, "pypi")
        uploads = snap.by_name.get(project, ())
        allow = sources.allow(channel, normalize)
        cache = self.services.index_cache
        walk = await sources.walk(
            channel, "pypi",
            lambda up: cache.get(up, f"{up.url}/{project}/", accept=UPSTREAM_ACCEPT, hold_max=WRITE_BEHIND_MAX),
            name=project, rule=MergeRule(snap.names, allow),
        )
        walk.nothing(hosted=bool(uploads), missing=f"no project named {project!r}")
        key = (channel.name, project, snap.generation, allow, walk.fingerprint(lambda doc: doc.digest))
        cached = self._projects.get(key)
        if cached is not None:
            return cached
        local = [Source(_local_entry(u), upload=u) for u in uploads]
        fields: Fields[FileEntry] = Fields(name=lambda e: project,
                                           version=lambda e: version_from_filename(e.filename) or "")
        remote = [[Source(e, upstream=up) for e in entries] for up, entries in walk.records(self._parse, fields)]
        if not uploads and not any(remote):
            raise NotFound(f"no project named {project!r}")  # every file filtered out: absent
        merged = merge(
            local, remote, name=lambda s: project, key=lambda s: s.entry.filename, allow=allow,
            local_names=frozenset({project}) if uploads else frozenset(),
        )
        result = Project(project, tuple(s.entry for s in merged), {s.entry.filename: s for s in merged}, key)
        return self._projects.put(key, result)

    async def _project_page(self, request: web.BaseRequest, ctx: ChannelRequest, project: str) -> web.StreamResponse:
        kind, content_type = self._negotiate(request.headers.get("Accept"))
        merged = await self.project(ctx, project)
        page_key = (merged.key, kind)
        page = self._pages.get(page_key)
        if page is None:
            render = render_project_json if kind == "json" else render_project_html
            body = render(project, [advertise_metadata(e) for e in merged.files], _link)
            page = self._pages.put(page_key, (body, etag_for(body)))
            self._fetch_ahead(ctx, merged, DEPTH_AHEAD, Budget())
        return index_response(request, page[0], content_type, etag=page[1], vary="Accept")

    async def _file(self, request: web.BaseRequest, ctx: ChannelRequest, project: str, filename: str) -> web.StreamResponse:
        metadata = filename.endswith(".metadata")
        dist_name = filename[: -len(".metadata")] if metadata else filename
        merged = await self.project(ctx, project)
        source = merged.sources.get(dist_name)
        if source is None:
            raise NotFound(f"{project} has no file {dist_name}")
        if source.upload is not None:
            sha = source.upload.index_fields.get("metadata_sha256") if metadata else source.upload.sha256
            content_type = "text/plain; charset=utf-8" if metadata else _content_type(filename)
            return await self.services.sources.hosted_file(request, sha, filename, content_type)
        assert source.upstream is not None
        entry = source.entry
        if metadata and not entry.has_metadata and readable_metadata(entry):
            return await self._wheel_metadata(request, ctx, source.upstream, entry, filename)
        if metadata:
            if not entry.has_metadata:
                raise NotFound(f"the upstream offers no metadata file for {dist_name}")
            spec = _metadata_spec(source.upstream, entry)
        else:
            spec = ArtifactSpec(
                upstream=source.upstream,
                url=entry.url,
                expect={k: v for k, v in entry.hashes.items() if k in HASH_ALGORITHMS},
                filename=filename,
                content_type=_content_type(filename),
                size=entry.size,
            )
        return await self.services.artifacts.serve(request, spec, offline=ctx.settings.offline)

    def _fetch_ahead(self, ctx: ChannelRequest, merged: Project, depth: int, budget: Budget) -> None:
        """A page rendered for the first time: its newest version's metadata (the upstream's
        ``.metadata``, or METADATA read out of the wheel), then ``depth`` levels of its
        dependencies' pages and their newest metadata, fetched ahead of the client
        (prefetch.py)."""
        walked = self._ahead_depth.get(merged.key)
        if ctx.settings.offline or (walked is not None and walked >= depth):
            return
        self._ahead_depth.put(merged.key, depth)
        upstream_of = {name: s.upstream for name, s in merged.sources.items() if s.upstream is not None}
        wheels = newest_wheels(advertise_metadata(e) for e in merged.files if e.filename in upstream_of)
        if not wheels:
            return

        async def fetch(entry: FileEntry) -> bytes:
            up, source = upstream_of[entry.filename], merged.sources[entry.filename].entry
            if source.has_metadata:
                spec = _metadata_spec(up, source)
                key, sha256 = spec.key, await self.services.artifacts.stored(spec)
            else:  # by Range requests only: a fetch ahead never downloads a wheel
                key = _wheel_metadata_key(source)
                found = await self._wheel_metadata_blob(ctx, up, source, whole=False)
                if found is None:
                    raise NotFound(f"upstream {up.name} serves no byte ranges of {source.filename}")
                sha256 = found
            held = self.services.artifacts.held(key)  # still being stored (write-behind)
            return held[1][:MAX_METADATA_READ] if held is not None else await self._metadata_head(sha256)

        async def page(name: str) -> None:
            self._fetch_ahead(ctx, await self.project(ctx, name), depth - 1, budget)

        self._ahead.start(self._ahead.metadata_then_pages(wheels, fetch, page if depth > 0 else None, budget))

    async def _metadata_head(self, sha256: str) -> bytes:
        """The first MAX_METADATA_READ bytes of a stored metadata file: read at once from this
        machine's file (a few KiB, like the ref read before it: cheaper than a trip to a
        thread), else streamed from the store."""
        local = self.services.store.local("cache", sha256)
        if local is not None:
            try:
                with open(local, "rb") as fh:
                    return fh.read(MAX_METADATA_READ)
            except FileNotFoundError:
                pass  # pruned meanwhile: the store says so below
        return b"".join([c async for c in self.services.store.stream("cache", sha256, 0, MAX_METADATA_READ)])

    async def _wheel_metadata(
        self, request: web.BaseRequest, ctx: ChannelRequest, up: UpstreamSettings, entry: FileEntry, filename: str
    ) -> web.StreamResponse:
        """METADATA read out of the wheel (wheel_metadata.py), cached by the wheel's hash,
        served as the PEP 658 file advertised for it (``data-core-metadata="true"``)."""
        store, text = self.services.store, "text/plain; charset=utf-8"
        sha256 = await self._wheel_metadata_blob(ctx, up, entry, whole=True)
        held = self.services.artifacts.held(_wheel_metadata_key(entry))
        if held is not None:  # read, being stored (write-behind)
            return bytes_response(request, held[0], held[1], text)
        served = await blob_response(request, store, "cache", sha256, text, hosted=False, inline=True)
        if served is None:  # removed from the cache meanwhile: read again
            sha256 = await self._wheel_metadata_blob(ctx, up, entry, whole=True, stored=False)
            served = await blob_response(request, store, "cache", sha256, text, hosted=False, inline=True)
        if served is None:
            raise NotFound(f"{filename} is not stored")
        return served

    @overload
    async def _wheel_metadata_blob(self, ctx: ChannelRequest, up: UpstreamSettings, entry: FileEntry, *,
                                   whole: Literal[True], stored: bool = True) -> str: ...

    @overload
    async def _wheel_metadata_blob(self, ctx: ChannelRequest, up: UpstreamSettings, entry: FileEntry, *,
                                   whole: Literal[False], stored: bool = True) -> str | None: ...

    async def _wheel_metadata_blob(self, ctx: ChannelRequest, up: UpstreamSettings, entry: FileEntry, *,
                                   whole: bool, stored: bool = True) -> str | None:
        """The sha256 of an upstream wheel's METADATA in the store (``wheel-metadata:`` ref by
        the wheel's hash), read first if need be: one read per wheel at a time (single
        flight), so a client joins a fetch ahead of it. Without byte ranges from the
        upstream, METADATA comes out of the whole wheel, downloaded for the cache, only when
        ``whole`` (a client asked: never a fetch ahead); else None. ``stored=False``: the
        ref is stale."""
        key = _wheel_metadata_key(entry)
        held = self.services.artifacts.held(key)
        if held is not None:
            return held[0]
        known = await self.services.store.ref(key) if stored else None
        if known is not None:
            return known
        sha256 = await self._wheel_reads.run(key, lambda: self._read_wheel_metadata(ctx, up, entry, key, whole))
        if sha256 is None and whole:  # joined a fetch ahead that would not download the wheel
            sha256 = await self._wheel_reads.run(key, lambda: self._read_wheel_metadata(ctx, up, entry, key, True))
        return sha256

    async def _read_wheel_metadata(self, ctx: ChannelRequest, up: UpstreamSettings, entry: FileEntry, key: str,
                                   whole: bool) -> str | None:
        data: bytes | None
        spec = ArtifactSpec(upstream=up, url=entry.url, expect={"sha256": entry.hashes["sha256"]},
                            filename=entry.filename, size=entry.size)
        wheel = await self.services.artifacts.cached(spec)
        if wheel is not None:
            data = await self._stored_metadata(wheel, entry.filename)
        elif ctx.settings.offline:
            raise NotFound(f"{entry.filename}.metadata is not in the cache and the server is offline")
        else:
            data = await self._remote_metadata(spec)
        if data is None and not whole:
            return None
        if data is None:  # the upstream serves no byte ranges: the whole wheel, once, for the cache
            wheel = await self.services.artifacts.stored(spec)
            data = await self._stored_metadata(wheel, entry.filename)
        return self.services.artifacts.keep_small(key, data)  # answered at once, stored behind

    async def _stored_metadata(self, sha256: str, filename: str) -> bytes:
        """METADATA of a stored wheel: from this machine's file, else by ranges of the store's blob."""
        store = self.services.store
        local = store.local("cache", sha256)
        if local is not None:
            return await asyncio.to_thread(local_metadata, local, filename)
        size = await store.stat("cache", sha256)
        if size is None:
            raise NotFound(f"{filename} is not stored")

        async def fetch(start: int, stop: int) -> bytes:
            return b"".join([chunk async for chunk in store.stream("cache", sha256, start, stop)])

        tail_start = max(0, size - TAIL)
        return await remote_metadata(filename, tail_start, await fetch(tail_start, size), fetch)

    async def _remote_metadata(self, spec: ArtifactSpec) -> bytes | None:
        """METADATA by Range requests; None when the upstream does not honour them."""
        upstream, up, name = self.services.upstream, spec.upstream, spec.filename

        async def fetch(start: int, stop: int) -> bytes:
            body = await upstream.fetch_range(up, spec.url, start, stop, what=name, hashed=spec.hashed)
            if body is None:
                raise UpstreamError(f"upstream {up.name} stopped serving byte ranges of {name}")
            return body

        tail = await upstream.fetch_tail(up, spec.url, TAIL, what=name, hashed=spec.hashed)
        if tail is None:
            return None
        return await remote_metadata(name, tail[0], tail[1], fetch)

    # ------------------------------------------------------------------ POST (twine)
    async def upload(self, request: web.BaseRequest, ctx: ChannelRequest, form: UploadForm) -> web.StreamResponse:
        fields = {k: v[0] for k, v in form.fields.items() if v}
        require_fields(fields, (":action", "name", "version"))
        dist = await self.services.checks.run(
            inspect_distribution, form.blob.path, form.filename, fields, form.digests, ctx.settings.limits
        )
        key = release_file_key(dist.filename)

        def same_release(upload: Upload) -> bool:  # PEP 503 name, PEP 440 version, PEP 427 tags
            return upload.name == dist.name and same_release_file(release_file_key(upload.filename), key)

        # checked early too, so a duplicate stores not even its metadata file
        if self.services.catalog.get(ctx.channel.name, "pypi", dist.filename) is not None:
            raise Conflict("File already exists")
        clash = next((u for u in self.services.catalog.list(ctx.channel.name, "pypi") if same_release(u)), None)
        if clash is not None:
            raise Conflict(f"File already exists: {dist.filename} is the same release file as {clash.filename}")
        if not dist.metadata:
            raise BadRequest(f"{dist.filename} has no metadata")
        meta_blob = await self.services.store.put_bytes("uploads", dist.metadata)
        now = dt.datetime.now(dt.timezone.utc)
        upload = await publish(
            self.services,
            form.blob,
            channel=ctx.channel.name,
            ecosystem="pypi",
            path=dist.filename,
            name=dist.name,
            version=dist.version,
            filename=dist.filename,
            index_fields={
                "requires_python": dist.requires_python,
                "metadata_sha256": meta_blob.sha256,
                "upload_time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "display_name": dist.display_name,
                "packagetype": dist.packagetype,
            },
            uploader=ctx.principal.user if ctx.principal else "",
            uploaded_at=now.timestamp(),
            same_release=same_release,
        )
        return web.json_response({"ok": True, "filename": dist.filename, "sha256": upload.sha256})
