"""conda handlers: every conda URL of DESIGN's surface under a channel prefix ``P``.

    P[/label/<label>]/<subdir>/repodata.json[.zst|.bz2]
    P[/label/<label>]/<subdir>/current_repodata.json[.zst|.bz2]
    P[/label/<label>]/<subdir>/repodata_shards.msgpack.zst          (CEP-16 index)
    P[/label/<label>]/<subdir>/shards/<sha256>.msgpack.zst          (CEP-16 shard)
    P[/label/<label>]/<subdir>/<package file>
    P[/label/<label>]/channeldata.json

Package URLs in every index are relative (records carry no ``url``; CEP-16 ``base_url``
is ``./``), so clients fetch files through the very prefix they used, token included,
and never from an upstream. Uploads (``POST /api/repo/<channel>``, ``content=@file``,
optional ``label=``) and anaconda-client's stage/post flow (proxy/api/) share
``store_conda_upload`` (uploads.py).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import orjson
from aiohttp import web

from ...artifacts import ArtifactSpec
from ...context import ChannelRequest, Services, UploadForm
from ...errors import NotFound
from ...memo import Memo
from ...metrics import provisional
from ...responses import INDEX_MAX_AGE, index_response, not_modified
from ...store.catalog import Upload
from .cep16 import SHARD_INDEX_FILENAME, check_shard_request, package_name_of
from .index import DEFAULT_LABEL, LABEL_RE, SUBDIR_RE, CondaIndexes, normalize
from .sections import is_package_filename
from .subdir_index import SLOW_KINDS, FileKind, IndexFileResponse
from .uploads import parse_labels, store_conda_upload, upload_summary

SMALL_INDEX_BYTES = 2 * 1024 * 1024  # indexes up to this size are answered from memory...
SMALL_INDEX_COUNT = 32  # ...at most this many of them (64 MiB)
PACKAGE_CONTENT_TYPE = "application/octet-stream"
SLOW_RENDERING_WAIT = 4.0  # seconds a GET of a .bz2 waits for bzip2 before a 503 (the bound: 5 s)

INDEX_FILES: dict[str, tuple[FileKind | Literal["shards"], str]] = {
    "repodata.json": ("json", "application/json"),
    "repodata.json.zst": ("zstd", "application/zstd"),
    "repodata.json.bz2": ("bz2", "application/x-bzip2"),
    "current_repodata.json": ("current", "application/json"),
    "current_repodata.json.zst": ("current.zstd", "application/zstd"),
    "current_repodata.json.bz2": ("current.bz2", "application/x-bzip2"),
    SHARD_INDEX_FILENAME: ("shards", "application/octet-stream"),
}


class Conda:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.indexes = CondaIndexes(services)
        self._small: Memo[tuple[Path, str], bytes] = Memo(SMALL_INDEX_COUNT)

    async def close(self) -> None:
        await self.indexes.close()

    # ------------------------------------------------------------------ GET / HEAD
    async def serve(self, request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
        parts = ctx.route.rest.split("/")
        label = DEFAULT_LABEL
        if parts[0] == "label":
            if len(parts) < 3 or not LABEL_RE.match(parts[1]):
                raise NotFound()
            label, parts = parts[1], parts[2:]
        if parts == ["channeldata.json"]:
            body, etag = await self.indexes.channeldata(ctx.channel, label)
            return index_response(request, body, "application/json", etag=etag)
        if len(parts) == 2 and SUBDIR_RE.match(parts[0]):
            subdir, name = parts
            if name in INDEX_FILES:
                return await self._index(request, ctx, label, subdir, name)
            if is_package_filename(name):
                return await self._file(request, ctx, label, subdir, name)
        if len(parts) == 3 and SUBDIR_RE.match(parts[0]) and parts[1] == "shards" and parts[2].endswith(".msgpack.zst"):
            return await self._shard(request, ctx, label, parts[0], parts[2][: -len(".msgpack.zst")])
        raise NotFound()

    async def _index(self, request: web.BaseRequest, ctx: ChannelRequest, label: str, subdir: str, name: str) -> web.StreamResponse:
        index = await self.indexes.subdir(ctx.channel, label, subdir)
        if index is None:
            raise NotFound(f"this channel has no {subdir} packages")
        kind, content_type = INDEX_FILES[name]
        if kind == "shards":
            shard_set = await index.shard_set()
            return index_response(request, shard_set.index, content_type)
        etag = index.etag(kind)
        if not_modified(request, etag):
            return _not_modified(etag)
        if kind in SLOW_KINDS:  # bzip2: never on a client's time (index.py, slow_file)
            wait = 0.0 if request.method == "HEAD" else SLOW_RENDERING_WAIT
            owner, path = await self.indexes.slow_file(ctx.channel.name, label, index, kind, wait)
            if owner is not index:  # the previous build's, while this one's is compressed
                provisional()
                etag, index = owner.etag(kind), owner
                if not_modified(request, etag):
                    return _not_modified(etag)
        else:
            path = await index.file(kind)
        small = self._small.get((path, etag))
        if small is None:
            size = path.stat().st_size
            if size > SMALL_INDEX_BYTES:  # large: sendfile straight from the stored file
                return IndexFileResponse(path, etag=etag, content_type=content_type, max_age=INDEX_MAX_AGE, keep=index)
            # small: kept in memory by file and ETag (a FileResponse costs a thread-pool stat
            # and open per request, more than the bytes of a small index)
            small = self._small.put((path, etag), await asyncio.to_thread(path.read_bytes))
        return index_response(request, small, content_type, etag=etag)

    async def _shard(self, request: web.BaseRequest, ctx: ChannelRequest, label: str, subdir: str, sha256_hex: str) -> web.StreamResponse:
        check_shard_request(sha256_hex)
        body = self.indexes.find_shard(ctx.channel.name, label, subdir, sha256_hex)
        if body is None:  # e.g. after a restart: build the current shards, then look again
            index = await self.indexes.subdir(ctx.channel, label, subdir)
            if index is not None:
                body = (await index.shard_set()).shards.get(sha256_hex)
        if body is None:
            raise NotFound("no such shard")
        # CEP-16: shards are content-addressed, hence immutable
        return index_response(request, body, "application/octet-stream", etag=f'"{sha256_hex}"', immutable=True)

    async def _file(self, request: web.BaseRequest, ctx: ChannelRequest, label: str, subdir: str, filename: str) -> web.StreamResponse:
        channel = ctx.channel
        upload = self.services.catalog.get(channel.name, "conda", f"{subdir}/{filename}")
        if upload is not None and label in upload.labels:
            return await self.services.sources.hosted_file(request, upload.sha256, filename, PACKAGE_CONTENT_TYPE)
        name = package_name_of(filename)
        rule = self.services.sources.rule(channel, "conda", normalize)
        if label != DEFAULT_LABEL or name is None or not rule.upstream_may_serve(normalize(name)):
            raise NotFound(f"no file {filename} in this channel")
        index = await self.indexes.subdir(ctx.channel, label, subdir)
        origin = index.origin(filename) if index is not None else None
        if origin is None or isinstance(origin, Upload):
            raise NotFound(f"no file {filename} in this channel")
        source, raw = origin
        record = orjson.loads(raw)
        expect: dict[str, str] = {}
        for algorithm, length in (("sha256", 64), ("md5", 32)):
            value = record.get(algorithm)
            if isinstance(value, str) and len(value) == length:
                expect = {algorithm: value.lower()}
                break
        spec = ArtifactSpec(
            upstream=source.upstream,
            url=source.file_url(filename),
            expect=expect,
            filename=filename,
            content_type=PACKAGE_CONTENT_TYPE,
            size=record["size"] if type(record.get("size")) is int else None,
        )
        return await self.services.artifacts.serve(request, spec, offline=ctx.settings.offline)

    # ------------------------------------------------------------------ POST /api/repo/<channel>
    async def upload(self, request: web.BaseRequest, ctx: ChannelRequest, form: UploadForm) -> web.StreamResponse:
        labels = parse_labels([*form.fields.get("label", []), *form.fields.get("labels", [])])
        pkg, upload = await store_conda_upload(
            self.services, ctx.channel.name, ctx.principal.user if ctx.principal else "",
            form.blob, form.filename, form.digests, labels,
        )
        return web.json_response(upload_summary(pkg, upload), status=201)


def _not_modified(etag: str) -> web.Response:
    return web.Response(status=304, headers={"ETag": etag, "Cache-Control": f"private, max-age={INDEX_MAX_AGE}"})


__all__ = ["Conda"]
