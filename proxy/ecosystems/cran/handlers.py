"""CRAN handlers: the CRAN-style tree of a channel, and the seed's curl upload form.

Every contrib folder (``src/contrib``, ``bin/windows/contrib/<x.y>``,
``bin/macosx/[<sub>/]contrib/<x.y>``) is a merged view (DESIGN, "Merge semantics"):
the channel's uploads in that folder first, then each CRAN upstream's index of the same
folder (``PACKAGES.gz``, else ``PACKAGES``). A name the channel hosts blocks every upstream
version of it unless listed in ``upstream_allow``; the first source with a given file wins;
PACKAGES lists the newest version of each package (tools::write_PACKAGES, latestOnly);
older uploaded source versions are served under ``src/contrib/Archive/<pkg>/`` as on CRAN.

R builds file URLs from the contrib URL it used and the file name, so indexes hold no
links at all: every download comes back through channelgate under the client's own prefix
(token in the path or Basic credentials alike), and is checked against the upstream
index's MD5sum before it is kept.
"""
from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from ...artifacts import ArtifactSpec
from ...cache import Doc
from ...context import ChannelRequest, Services, UploadForm
from ...errors import NotFound
from ...memo import Memo, SingleFlight
from ...merge import merge
from ...responses import etag_for, index_response
from ...settings import UpstreamSettings
from ...sources import Fields, Walk, upstream_records
from ...store.catalog import Upload
from ...uploads import publish
from .index import (
    ArchivedFile,
    Entry,
    PackagesFiles,
    is_valid_version,
    parse_archive_rds,
    parse_packages,
    render_archive_rds,
    render_index,
    version_key,
)
from .package import CranPackage, inspect_upload
from .paths import FILE_SUFFIX, CranPath, Tree, parse_cran_path

CONTENT_TYPES = {
    "PACKAGES": "text/plain; charset=utf-8",
    "PACKAGES.gz": "application/x-gzip",
    "PACKAGES.rds": "application/octet-stream",
}
FILE_TYPES: dict[Tree, str] = {"source": "application/x-gzip", "windows": "application/zip",
                               "macos": "application/x-gzip"}
_MD5_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Source:
    """One package file of a contrib folder, and where its bytes come from."""

    entry: Mapping[str, str]            # its PACKAGES entry
    relpath: str                        # below the contrib folder ("abc_1.0.tar.gz", "<Path>/x.tar.gz")
    upload: Upload | None = None        # a hosted file
    upstream: UpstreamSettings | None = None  # or a file of this upstream

    @property
    def package(self) -> str:
        return self.entry.get("Package", "")


@dataclass(frozen=True, slots=True)
class ContribView:
    key: tuple[object, ...]
    latest: tuple[Source, ...]          # what PACKAGES lists
    files: Mapping[str, Source]         # relpath -> every servable file of the folder
    archived: tuple[Source, ...]        # uploaded source versions superseded by a newer one
    index: PackagesFiles
    etags: Mapping[str, str]


def as_is(name: str) -> str:
    """CRAN package names compare as they are (merge key and dependency-confusion rule)."""
    return name


def _version_rank(version: str) -> tuple[int, tuple[int, ...]]:
    return (1, version_key(version)) if is_valid_version(version) else (0, ())


def upstream_relpath(entry: Mapping[str, str], tree: Tree) -> str:
    """Where R fetches an index entry's file: ``[<Path>/]<Package>_<Version><suffix>``."""
    name = f"{entry['Package']}_{entry['Version']}{FILE_SUFFIX[tree]}"
    path = entry.get("Path", "").strip("/")
    return f"{path}/{name}" if path else name


FIELDS: Fields[Entry] = Fields(name=lambda e: e.get("Package", ""), version=lambda e: e.get("Version", ""),
                               license=lambda e: e.get("License"))  # what the upstream filters read (sources.py)


def build_view(
    key: tuple[object, ...],
    tree: Tree,
    uploads: Sequence[Upload],
    upstream_entries: Sequence[tuple[UpstreamSettings, Sequence[Entry]]],
    local_names: frozenset[str],
    allow: frozenset[str],
) -> ContribView:
    """Merge one contrib folder (pure; runs in a worker thread)."""
    local = [Source(dict(u.index_fields.get("fields", {})), u.filename, upload=u) for u in uploads]
    remote = [
        [Source(e, upstream_relpath(e, tree), upstream=up) for e in upstream_records(up, entries, FIELDS)
         if e.get("Package")]
        for up, entries in upstream_entries
    ]
    merged = merge(local, remote, name=lambda s: s.package, key=lambda s: s.relpath,
                   allow=allow, local_names=local_names)
    best: dict[str, Source] = {}
    for s in merged:  # newest version per package; on a tie the earlier source wins
        cur = best.get(s.package)
        if cur is None or _version_rank(s.entry.get("Version", "")) > _version_rank(cur.entry.get("Version", "")):
            best[s.package] = s
    latest = tuple(sorted(best.values(), key=lambda s: (s.package.lower(), s.package)))
    archived = tuple(s for s in merged if s.upload is not None and best.get(s.package) is not s
                     and tree == "source")
    index = render_index([s.entry for s in latest], binary=tree != "source")
    etags = {name: etag_for(index.get(name)) for name in CONTENT_TYPES}
    return ContribView(key, latest, {s.relpath: s for s in merged}, archived, index, etags)


class Cran:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._parsed: Memo[str, list[Entry]] = Memo(256)
        self._archives: Memo[str, list[ArchivedFile]] = Memo(16)
        self._views: Memo[tuple[object, ...], ContribView] = Memo(256)
        self._archive_pages: Memo[tuple[object, ...], tuple[bytes, str]] = Memo(64)
        self._building: SingleFlight[tuple[object, ...], ContribView] = SingleFlight()

    async def close(self) -> None:
        self._building.cancel_all()

    # ------------------------------------------------------------------ GET
    async def serve(self, request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
        cp = parse_cran_path(ctx.route.rest)
        if cp.kind == "index":
            view = await self.view(ctx, cp.contrib_dir, cp.tree)
            return index_response(request, view.index.get(cp.name), CONTENT_TYPES[cp.name],
                                  etag=view.etags[cp.name])
        if cp.kind == "file":
            return await self._file(request, ctx, cp)
        if cp.kind == "archive":
            return await self._archive_file(request, ctx, cp)
        return await self._archive_meta(request, ctx)

    async def _upstream_docs(self, ctx: ChannelRequest, contrib_dir: str) -> Walk[Doc]:
        """Each upstream's index of the folder: ``PACKAGES.gz``, else ``PACKAGES`` (what R
        falls back to, minus the .rds)."""
        meta = self.services.index_cache

        async def fetch(up: UpstreamSettings) -> Doc:
            try:
                return await meta.get(up, f"{up.url}/{contrib_dir}/PACKAGES.gz")
            except NotFound:
                return await meta.get(up, f"{up.url}/{contrib_dir}/PACKAGES")

        return await self.services.sources.walk(ctx.channel, "cran", fetch)

    async def _entries(self, doc: Doc) -> list[Entry]:
        entries = self._parsed.get(doc.digest)
        if entries is None:
            limit = self.services.settings.limits.index_unpacked_bytes
            parsed = await asyncio.to_thread(lambda: parse_packages(doc.read(), limit=limit))
            entries = self._parsed.put(doc.digest, parsed)
        return entries

    async def view(self, ctx: ChannelRequest, contrib_dir: str, tree: Tree) -> ContribView:
        """The merged contrib folder; NotFound only when no source has it."""
        channel = ctx.channel
        catalog = self.services.catalog
        uploads = [u for u in catalog.list(channel.name, "cran") if posixpath.dirname(u.path) == contrib_dir]
        walk = await self._upstream_docs(ctx, contrib_dir)
        walk.nothing(hosted=bool(uploads), missing=f"no packages in {contrib_dir}")
        docs = [(f.upstream, f.value) for f in walk.found]
        allow = self.services.sources.allow(channel, as_is)
        key = (channel.name, contrib_dir, catalog.generation(channel.name, "cran"), allow,
               walk.fingerprint(lambda doc: doc.digest))
        view = self._views.get(key)
        if view is not None:
            return view
        local_names = catalog.names(channel.name, "cran")
        # single flight: one merge per inputs, however many clients ask
        return await self._building.run(
            key, lambda: self._build(key, tree, uploads, docs, local_names, allow)
        )

    async def _build(self, key: tuple[object, ...], tree: Tree, uploads: list[Upload],
                     docs: list[tuple[UpstreamSettings, Doc]], local_names: frozenset[str],
                     allow: frozenset[str]) -> ContribView:
        upstream_entries = [(up, await self._entries(doc)) for up, doc in docs]
        view = await asyncio.to_thread(build_view, key, tree, uploads, upstream_entries, local_names, allow)
        return self._views.put(key, view)

    def _hosted(self, ctx: ChannelRequest, path: str) -> Upload | None:
        return self.services.catalog.get(ctx.channel.name, "cran", path)

    async def _serve_upload(self, request: web.BaseRequest, upload: Upload, tree: Tree) -> web.StreamResponse:
        return await self.services.sources.hosted_file(request, upload.sha256, upload.filename, FILE_TYPES[tree])

    async def _file(self, request: web.BaseRequest, ctx: ChannelRequest, cp: CranPath) -> web.StreamResponse:
        upload = self._hosted(ctx, f"{cp.contrib_dir}/{cp.name}")
        if upload is not None:  # any uploaded version, current or superseded
            return await self._serve_upload(request, upload, cp.tree)
        view = await self.view(ctx, cp.contrib_dir, cp.tree)
        source = view.files.get(cp.name)
        if source is None or source.upstream is None:
            raise NotFound(f"no file {cp.filename} in {cp.contrib_dir}")
        up = source.upstream
        md5 = source.entry.get("MD5sum", "").lower()
        spec = ArtifactSpec(
            upstream=up,
            url=f"{up.url}/{cp.contrib_dir}/{source.relpath}",
            expect={"md5": md5} if len(md5) == 32 and set(md5) <= _MD5_HEX else {},
            filename=cp.filename,
            content_type=FILE_TYPES[cp.tree],
        )
        return await self.services.artifacts.serve(request, spec, offline=ctx.settings.offline)

    async def _archive_file(self, request: web.BaseRequest, ctx: ChannelRequest, cp: CranPath) -> web.StreamResponse:
        upload = self._hosted(ctx, f"src/contrib/{cp.filename}")
        if upload is not None and upload.name == cp.package:
            return await self._serve_upload(request, upload, "source")

        def fetch(up: UpstreamSettings) -> Awaitable[web.StreamResponse]:
            # CRAN's archive has no index with checksums: the file is cached by its URL.
            spec = ArtifactSpec(upstream=up, url=f"{up.url}/src/contrib/Archive/{cp.package}/{cp.filename}",
                                expect={}, filename=cp.filename, content_type=FILE_TYPES["source"])
            return self.services.artifacts.serve(request, spec, offline=ctx.settings.offline)

        sources = self.services.sources
        walk = await sources.walk(ctx.channel, "cran", fetch, name=cp.package, first=True,
                                  rule=sources.rule(ctx.channel, "cran", as_is))
        walk.nothing(hosted=False, missing=f"no archived file {cp.filename}")
        return walk.found[0].value

    async def _archive_meta(self, request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
        """``src/contrib/Meta/archive.rds``: uploaded superseded versions, then each
        upstream's archive listing (names the channel hosts left out, as everywhere)."""
        try:
            view: ContribView | None = await self.view(ctx, "src/contrib", "source")
        except NotFound:
            view = None
        local = [ArchivedFile(s.package, s.upload.filename, s.upload.size, s.upload.uploaded_at)
                 for s in (view.archived if view else ()) if s.upload is not None]
        remote: list[tuple[str, list[ArchivedFile]]] = []
        walk = await self.services.sources.walk(
            ctx.channel, "cran", lambda up: self.services.index_cache.get(up, f"{up.url}/src/contrib/Meta/archive.rds")
        )
        for found in walk.found:
            up, doc = found.upstream, found.value
            files = self._archives.get(doc.digest)
            if files is None:
                limit = self.services.settings.limits.index_unpacked_bytes
                parsed = await asyncio.to_thread(lambda: parse_archive_rds(doc.read(), limit=limit))
                files = self._archives.put(doc.digest, parsed)
            remote.append((f"{up.name}:{doc.digest}", files))
        if view is None and not remote:
            raise NotFound("no archive")
        channel = ctx.channel
        allow = self.services.sources.allow(channel, as_is)
        key = (channel.name, self.services.catalog.generation(channel.name, "cran"), allow,
               tuple(k for k, _ in remote))
        page = self._archive_pages.get(key)
        if page is None:
            merged = merge(local, [files for _, files in remote], name=lambda f: f.package,
                           key=lambda f: f"{f.package}/{f.filename}", allow=allow,
                           local_names=self.services.catalog.names(channel.name, "cran"))
            body = await asyncio.to_thread(render_archive_rds, merged)
            page = self._archive_pages.put(key, (body, etag_for(body)))
        return index_response(request, page[0], "application/octet-stream", etag=page[1])

    # ------------------------------------------------------------------ POST (curl -F filetype=...)
    async def upload(self, request: web.BaseRequest, ctx: ChannelRequest, form: UploadForm) -> web.StreamResponse:
        pkg: CranPackage = await self.services.checks.run(
            inspect_upload, form.blob.path, form.filename, form.field("filetype") or "", ctx.settings.limits
        )
        upload = await publish(
            self.services,
            form.blob,
            channel=ctx.channel.name,
            ecosystem="cran",
            path=pkg.path_in_repo,
            name=pkg.name,
            version=pkg.version,
            filename=pkg.filename,
            index_fields={"fields": dict(pkg.fields), "kind": pkg.kind},
            uploader=ctx.principal.user if ctx.principal else "",
        )
        return web.json_response(
            {"ok": True, "package": pkg.name, "version": pkg.version, "path": pkg.path_in_repo,
             "md5": upload.md5, "sha256": upload.sha256},
            status=201,
        )
