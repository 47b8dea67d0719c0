"""One build of a merged (channel, label, subdir) conda index and its renderings.

A ``SubdirIndex`` is immutable: it is built (off the event loop) when an input changes —
the uploads of its subdir and label, the channel's uploaded names, ``upstream_allow``, an
upstream document's digest — and holds

- its ``Plan`` (merge_plan.py): which local and upstream records, in which order;
- ``repodata.json.zst``, written while building (the form conda asks for first);
- the other renderings, each produced once on first use, off the loop, single flight:
  ``repodata.json`` (decompressed from the .zst), ``.bz2``, ``current_repodata.json``
  (+ .zst/.bz2) and the CEP-16 shards (incrementally from the previous build's shards
  when only uploads changed). The ``.bz2`` files (``SLOW_KINDS``: bzip2 runs at ~10 MB/s,
  ~20 s for a conda-forge-sized subdir) are compressed on a thread of their own, so index
  builds never queue behind them; index.py decides when to start them and what a client
  gets meanwhile.

Every rendering is a file in the index's own directory under the store's tmp, served with
sendfile; the directory goes when the index is dropped. ETags derive from the inputs, so
every worker process answers the same ETag for the same index.
"""
from __future__ import annotations

import asyncio
import bz2
import logging
import shutil
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urljoin

import zstandard
from aiohttp import web

from ...memo import SingleFlight
from ...responses import etag_for
from ...settings import UpstreamSettings
from ...store.catalog import Upload
from .cep16 import ShardPack, ShardSet, build_plan_shards
from .current import current_subset
from .merge_plan import Plan
from .sections import READ_CHUNK, Repodata

FileKind = Literal["json", "zstd", "bz2", "current", "current.zstd", "current.bz2"]
FILE_NAMES: dict[str, str] = {
    "json": "repodata.json",
    "zstd": "repodata.json.zst",
    "bz2": "repodata.json.bz2",
    "current": "current_repodata.json",
    "current.zstd": "current_repodata.json.zst",
    "current.bz2": "current_repodata.json.bz2",
}
SLOW_KINDS: tuple[FileKind, ...] = ("bz2", "current.bz2")
log = logging.getLogger(__name__)
FORMAT = "2"  # bump when the rendering of the same inputs changes (ETags derive from inputs)
T = TypeVar("T")


@dataclass(frozen=True)
class UpstreamSubdir:
    """One upstream's parsed ``<subdir>/repodata.json`` (or CEP-16 shard index and shards)."""

    upstream: UpstreamSettings
    url: str  # where the document (or shard index) was fetched: package URLs resolve against it
    digest: str
    repodata: Repodata

    def file_url(self, filename: str) -> str:
        """The upstream URL of a package file (CEP-15 / CEP-16 ``info.base_url`` when given)."""
        base = self.repodata.base_url or "./"
        if not base.endswith("/"):
            base += "/"
        return urljoin(urljoin(self.url, base), quote(filename))


@dataclass(frozen=True)
class IndexKey:
    """Everything a merged subdir index derives from (sorted tuples: a stable repr)."""

    local: tuple[tuple[str, str, str], ...]  # (path, sha256, name) of the uploads in this label and subdir
    names: tuple[str, ...]  # the channel's uploaded names (every subdir: the merge rule)
    allow: tuple[str, ...]
    upstreams: tuple[tuple[str, str], ...]  # (upstream name, document digest)

    def same_local(self, other: "IndexKey") -> bool:
        return (self.local, self.names, self.allow) == (other.local, other.names, other.allow)


@dataclass(frozen=True)
class ShardBasis:
    """What a shard set was built from, to rebuild only the names an upload changed."""

    upstreams: tuple[tuple[str, str], ...]
    local: dict[str, frozenset[tuple[str, str]]]  # lower-case name -> its uploads (path, sha256)
    blocked: frozenset[str]  # lower-case names the merge rule keeps from upstreams

    def changed_names(self, newer: "ShardBasis") -> frozenset[str] | None:
        """Names whose shards may differ in ``newer``; None when everything may."""
        if self.upstreams != newer.upstreams:
            return None
        names = {n for n in self.local.keys() | newer.local.keys() if self.local.get(n) != newer.local.get(n)}
        return frozenset(names | (self.blocked ^ newer.blocked))


class IndexFileResponse(web.FileResponse):
    """A rendered index file (sendfile, Range) with the index's own ETag, holding the index
    until the file is open so its directory cannot vanish under the response."""

    def __init__(self, path: Path, *, etag: str, content_type: str, max_age: int, keep: object) -> None:
        self._pinned_etag = etag
        self._keep = keep
        super().__init__(path, headers={"Content-Type": content_type, "Cache-Control": f"private, max-age={max_age}"})

    @property  # type: ignore[override]
    def etag(self) -> Any:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: object) -> None:  # aiohttp sets mtime-size; the index's ETag stays
        self._headers["ETag"] = self._pinned_etag


class SubdirIndex:
    """The merged records of one (channel, label, subdir) and their renderings."""

    def __init__(
        self,
        *,
        key: IndexKey,
        subdir: str,
        plan: Plan,
        local: dict[str, Upload],
        upstreams: list[UpstreamSubdir],
        excluded: dict[str, list[set[int]]],
        workdir: Path,
        tmp_dir: Path,
        executor: Executor,
        shard_basis: ShardBasis,
        slow_executor: Executor | None = None,
    ) -> None:
        self.key = key
        self.subdir = subdir
        self.plan = plan
        self.local = local
        self.upstreams = upstreams
        self.excluded = excluded  # per extension, per source: positions the merge rule drops
        self.workdir = workdir
        self.tmp_dir = tmp_dir
        self.executor = executor
        self.slow_executor = slow_executor or executor
        self.created = time.monotonic()
        # what each channel holding this index wants to hear (an index may be shared: assemble.py)
        self.rendered_hooks: list[Callable[[FileKind], None]] = []
        self.shard_basis = shard_basis
        self.previous_shards: ShardSet | None = None  # a holder's last shard set, for reuse
        self.shard_hooks: list[Callable[[ShardSet], None]] = []
        self.fingerprint = f"{FORMAT}{key!r}"
        self._etags: dict[str, str] = {}
        self._files: dict[str, Path] = {}
        self._shards: ShardSet | None = None
        self._flight: SingleFlight[Hashable, Any] = SingleFlight()
        weakref.finalize(self, shutil.rmtree, str(workdir), True)

    def __len__(self) -> int:
        return len(self.plan)

    def etag(self, kind: str) -> str:
        etag = self._etags.get(kind)
        if etag is None:
            etag = self._etags[kind] = etag_for(self.fingerprint, kind)
        return etag

    def has(self, kind: str) -> bool:
        return kind in self._files or (kind == "shards" and self._shards is not None)

    def origin(self, filename: str) -> Upload | tuple[UpstreamSubdir, bytes] | None:
        """Where a file of this index comes from: a hosted upload, or (upstream, record)."""
        upload = self.local.get(filename)
        if upload is not None:
            return upload
        ext = ".conda" if filename.endswith(".conda") else ".tar.bz2"
        key = filename.encode()
        for j, source in enumerate(self.upstreams, start=1):
            section = source.repodata.sections[ext]
            s = section.find(key)
            if s >= 0 and s not in self.excluded[ext][j]:
                return source, section.record(s)
        return None

    # ------------------------------------------------------------------ files
    def _run(self, fn: Callable[[], T], *, slow: bool = False) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self.slow_executor if slow else self.executor, fn)

    def ready(self, kind: FileKind) -> Path | None:
        """The rendering's file if it is complete, without starting anything."""
        return self._files.get(kind)

    def prepare(self, kind: FileKind) -> "asyncio.Task[Path]":
        """Start producing the rendering (or join the run under way) without waiting."""
        return self._flight.start(kind, lambda: self._make(kind))

    def adopt(self, kind: FileKind, path: Path) -> None:
        self._files[kind] = path

    async def file(self, kind: FileKind) -> Path:
        """The rendering's file, produced on first use (once, off the loop)."""
        done = self._files.get(kind)
        if done is not None:
            return done
        return await self._flight.run(kind, lambda: self._make(kind))  # type: ignore[no-any-return]

    async def _make(self, kind: FileKind) -> Path:
        start = time.monotonic()
        target = self.workdir / FILE_NAMES[kind]
        if kind == "json":
            await self._run(lambda: self.plan.write_json(target, self.tmp_dir))
        elif kind == "current":
            source = await self.file("current.zstd")
            await self._run(lambda: _decompress(source, target, self.tmp_dir))
        elif kind in ("bz2", "current.bz2"):
            source = await self.file("json" if kind == "bz2" else "current")
            await self._run(lambda: _bzip2(source, target, self.tmp_dir), slow=True)
        elif kind == "current.zstd":
            current = await self._run(lambda: current_subset(self.plan))
            await self._run(lambda: current.write(None, target, self.tmp_dir))
        else:  # pragma: no cover - "zstd" is written by the build
            raise KeyError(kind)
        self._files[kind] = target
        log.info("rendered %s/%s in %.2f s", self.subdir, FILE_NAMES[kind], time.monotonic() - start)
        for hook in list(self.rendered_hooks):
            hook(kind)
        return target

    # ------------------------------------------------------------------ CEP-16 shards
    async def shard_set(self) -> ShardSet:
        if self._shards is None:
            shard_set = await self._flight.run("shards", lambda: self._run(self._build_shards))
            if self._shards is None:
                self._shards = shard_set
                for hook in list(self.shard_hooks):
                    hook(shard_set)
        return self._shards

    def _build_shards(self) -> ShardSet:
        previous = self.previous_shards
        changed = None
        if previous is not None and isinstance(previous.basis, ShardBasis):
            changed = previous.basis.changed_names(self.shard_basis)
        if changed is None or previous is None or not isinstance(previous.shards, ShardPack):
            return build_plan_shards(self.plan, subdir=self.subdir, pack=ShardPack(self.tmp_dir),
                                     basis=self.shard_basis)
        return build_plan_shards(self.plan, subdir=self.subdir, pack=previous.shards, basis=self.shard_basis,
                                 previous=previous, changed=changed)


def new_workdir(tmp_dir: Path) -> Path:
    path = tmp_dir / f"conda-index-{uuid.uuid4().hex}"
    path.mkdir()
    return path


def _decompress(source: Path, target: Path, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"conda-index-{uuid.uuid4().hex}.part"
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst, read_size=READ_CHUNK, write_size=READ_CHUNK)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _bzip2(source: Path, target: Path, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"conda-index-{uuid.uuid4().hex}.part"
    try:
        compressor = bz2.BZ2Compressor(9)
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(READ_CHUNK):
                dst.write(compressor.compress(chunk))
            dst.write(compressor.flush())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["FILE_NAMES", "SLOW_KINDS", "FileKind", "IndexFileResponse", "IndexKey", "ShardBasis", "SubdirIndex", "UpstreamSubdir",
           "new_workdir"]
