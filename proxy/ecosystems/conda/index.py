"""Merged conda indexes: one per (channel, label, subdir), built from the channel's uploads
and its upstream channels' ``repodata.json`` (DESIGN, "Merge semantics").

- Upstream ``repodata.json(.zst)`` documents come from the metadata cache and are parsed
  once per content digest, streaming, into sorted sections on disk (sections.py). An
  upstream subdir with neither but a CEP-16 shard index is read from its shards into the
  same sections (shard_upstreams.py); the index's digest then stands for the whole document.
- The label ``main`` (the default URL) merges uploads labelled ``main`` with the upstreams;
  any other label serves only the uploads carrying it (anaconda.org's labels).
- Each (channel, label, subdir) has a slot holding its current ``SubdirIndex`` (subdir_index.py),
  keyed by everything it derives from (``IndexKey``). A request whose key matches gets the
  stored files at once. When only an upstream document changed, the previous index keeps
  being served while the new one builds (stale-while-revalidate: a refresh never blocks a
  client). When the uploads changed, requests wait for the new index (an upload is visible
  to the next request: read-your-writes) — and the build starts when the upload commits
  (``changed``), not on the next request. Builds run off the loop, one at a time per slot.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import orjson

from ...cache import Doc
from ...context import Services
from ...errors import InvalidInput, NotFound, NotReady, UpstreamError
from ...memo import Memo, SingleFlight
from ...metrics import provisional
from ...responses import etag_for
from ...settings import ChannelPolicy, UpstreamSettings
from ...sources import Walk, upstream_allows
from ...store.catalog import Upload
from .cep16 import SHARD_INDEX_FILENAME, ShardSet, parse_shard_index
from .assemble import SharedBuilds, assemble, local_record, normalize, share_key
from .channeldata import render_channeldata
from .parse import parse_repodata_file
from .sections import CondaRecord, Encoding, Repodata
from .shard_upstreams import fetch_shards, repodata_from_shards
from .spliced import write_zst
from .subdir_index import (
    FILE_NAMES,
    SLOW_KINDS,
    FileKind,
    IndexKey,
    SubdirIndex,
    UpstreamSubdir,
)

log = logging.getLogger(__name__)

SUBDIR_RE = re.compile(r"^(noarch|[a-z0-9]+-[a-z0-9_]+)\Z")  # \Z: "$" lets a trailing newline through
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
DEFAULT_LABEL = "main"
MAX_SLOTS = 256  # (channel, label, subdir) indexes kept; labels come from URLs
BAD_DOCUMENT_RETRY = 60.0  # seconds an upstream document that failed to parse is not parsed again
BUILD_RETRY = 30.0  # seconds a failed background build (upstream refresh) is not retried
KNOWN_SHARDS = 1 << 20  # upstream shards (by sha256) whose stored body is read without asking the cache
HOLD_WHILE_STORED = 1 << 40  # any upstream document (its body is in memory once fetched): parsed while stored

DocForm = Encoding | Literal["shards"]
"""How an upstream subdir's records arrive: ``repodata.json`` (plain, zstd, bz2) or CEP-16 shards."""


class _Slot:
    """One (channel, label, subdir): its current index and what its key was computed from."""

    def __init__(self) -> None:
        self.current: SubdirIndex | None = None
        self.installed = -1  # request sequence of the current index
        self.requests = itertools.count()
        self.lock = asyncio.Lock()
        self.recent: deque[ShardSet] = deque(maxlen=3)  # CEP-16 clients may hold an older index
        self.generation = -1
        self.uploads: list[Upload] = []
        self.local: tuple[tuple[str, str, str], ...] = ()
        self.names: tuple[str, ...] = ()
        self.failed: tuple[IndexKey | None, float] = (None, 0.0)  # last background build that failed
        self.wanted: set[FileKind] = set()  # slow renderings clients asked for: made after every build
        self.rendered: dict[FileKind, SubdirIndex] = {}  # newest index with each slow rendering done


class CondaIndexes:
    """Builds and serves the merged indexes of every channel (no globals: one per app)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="conda-index")
        self.slow_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conda-bz2")
        self._parsed: Memo[str, Repodata] = Memo(4)  # by upstream document digest
        self._bad: dict[str, float] = {}
        self._slots: OrderedDict[tuple[str, str, str], _Slot] = OrderedDict()
        self._channeldata: Memo[tuple[object, ...], tuple[bytes, str]] = Memo(64)
        self._upstream_channeldata: Memo[str, dict[str, Any]] = Memo(16)
        self._known_shards: Memo[str, Doc] = Memo(KNOWN_SHARDS)
        self._flight: SingleFlight[Hashable, Any] = SingleFlight()
        self._shared = SharedBuilds()  # built indexes by the content of their inputs, across channels
        self._tasks: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        """Cancel background builds and refreshes, then stop the build threads."""
        self._flight.cancel_all()
        self._shared.cancel_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.slow_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def tmp_dir(self) -> Path:
        return self.services.store.scratch_dir

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _background(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("background %s failed: %s", what, t.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------------ upstream documents
    async def _upstream_doc(self, up: UpstreamSettings, subdir: str) -> tuple[Doc, DocForm]:
        """conda's order: ``repodata.json.zst`` first, ``repodata.json`` when that 404s, and
        the CEP-16 shard index only when both 404.

        Full repodata is preferred when an upstream offers both: channelgate needs every
        record of the subdir to merge anyway, and one document (one conditional request per
        refresh) gives them all, where shards cost one request per package name on a cold
        cache (~30k for conda-forge linux-64). Shards serve the upstreams that offer nothing
        else; their refreshes fetch only the shards whose hash changed. (The 404s before the
        shard index are remembered by the metadata cache for ``negative_ttl``.)"""
        url = f"{up.url}/{subdir}/repodata.json"

        def get(url: str) -> Awaitable[Doc]:
            # parsed from memory while it is stored (``Doc.body``): the store's write and fsync
            # of a 53 MB document are then off the first merge's path
            return self.services.index_cache.get(up, url, hold_max=HOLD_WHILE_STORED)

        try:
            return await get(url + ".zst"), "zstd"
        except NotFound:
            pass
        try:
            return await get(url), "identity"
        except NotFound:
            return await get(f"{up.url}/{subdir}/{SHARD_INDEX_FILENAME}"), "shards"

    async def _docs(self, channel: ChannelPolicy, subdir: str) -> Walk[tuple[Doc, DocForm]]:
        """Each upstream's current document of the subdir (404s skipped) and the last failure."""
        return await self.services.sources.walk(channel, "conda", lambda up: self._upstream_doc(up, subdir),
                                                subdir=subdir)

    async def _parse(self, up: UpstreamSettings, doc: Doc, encoding: DocForm) -> Repodata | None:
        """The parsed document (once per digest); None when it is not valid repodata.

        A shard index is read with its shards (shard_upstreams.py); a shard that cannot be fetched
        fails the build (retried; the previous index is served meanwhile), a shard that is
        not valid makes the upstream's document invalid, like invalid repodata."""
        cached = self._parsed.get(doc.digest)
        if cached is not None:
            return cached
        failed = self._bad.get(doc.digest)
        if failed is not None and time.monotonic() - failed < BAD_DOCUMENT_RETRY:
            return None

        async def work() -> Repodata | None:
            start = time.monotonic()
            try:
                if encoding == "shards":
                    parsed = await self._parse_shards(up, doc)
                else:
                    limit = self.services.settings.limits.index_unpacked_bytes
                    body = Path(doc.body_path) if doc.body is None else doc.body
                    parsed = await self._run(lambda: parse_repodata_file(body, encoding, self.tmp_dir, limit=limit))
            except (InvalidInput, OSError) as exc:
                log.warning("upstream document %s is not valid repodata: %s", doc.digest[:12], exc)
                now = time.monotonic()
                self._bad = {d: t for d, t in self._bad.items() if now - t < BAD_DOCUMENT_RETRY}
                self._bad[doc.digest] = now
                return None
            log.info("parsed upstream repodata %s: %d records in %.2f s", doc.digest[:12], len(parsed),
                     time.monotonic() - start)
            return self._parsed.put(doc.digest, parsed)

        return await self._flight.run(("parse", doc.digest), work)  # type: ignore[no-any-return]

    async def _parse_shards(self, up: UpstreamSettings, doc: Doc) -> Repodata:
        limit = self.services.settings.limits.index_unpacked_bytes  # shards and their index, in all
        index = await self._run(lambda: parse_shard_index(doc.read(), limit=limit))  # InvalidInput: invalid
        stored = await fetch_shards(self.services.index_cache, up, doc.url, index, self._known_shards)
        return await self._run(  # type: ignore[no-any-return]
            lambda: repodata_from_shards(index, stored, self.tmp_dir, limit=limit))

    # ------------------------------------------------------------------ merged subdir index
    def uploads(self, channel: str, label: str, subdir: str) -> list[Upload]:
        prefix = f"{subdir}/"
        return [u for u in self.services.catalog.list(channel, "conda") if u.path.startswith(prefix) and label in u.labels]

    def _slot(self, channel: str, label: str, subdir: str) -> _Slot:
        key = (channel, label, subdir)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            while len(self._slots) > MAX_SLOTS:
                self._slots.popitem(last=False)
        self._slots.move_to_end(key)
        return slot

    async def subdir(self, channel: ChannelPolicy, label: str, subdir: str) -> SubdirIndex | None:
        """The merged index, or None when no source has this subdir (noarch always exists)."""
        catalog = self.services.catalog
        slot = self._slot(channel.name, label, subdir)
        generation = catalog.generation(channel.name, "conda")
        if slot.generation != generation:
            slot.uploads = self.uploads(channel.name, label, subdir)
            slot.local = tuple(sorted((u.path, u.sha256, u.name) for u in slot.uploads))
            slot.names = tuple(sorted(catalog.names(channel.name, "conda")))
            slot.generation = generation
        walk: Walk[tuple[Doc, DocForm]] = Walk(())
        if label == DEFAULT_LABEL:
            walk = await self._docs(channel, subdir)
        if not slot.uploads and not walk:
            if walk.failure is not None:
                raise walk.failure
            if subdir != "noarch":
                return None
        docs = [(f.upstream, *f.value) for f in walk.found]
        key = IndexKey(slot.local, slot.names, tuple(sorted(self.services.sources.allow(channel, normalize))),
                       tuple((up, digest + flt) for up, digest, flt in walk.fingerprint(lambda v: v[0].digest)))
        current = slot.current
        if current is not None and current.key == key:
            return current
        background = current is not None and current.key.same_local(key)  # only an upstream changed
        if background and slot.failed[0] == key and time.monotonic() - slot.failed[1] < BUILD_RETRY:
            provisional()  # not what the inputs make: never kept as a ready answer
            return current
        uploads, seq = slot.uploads, next(slot.requests)
        task = self._flight.start(
            ("build", channel.name, label, subdir, key), lambda: self._build(slot, key, subdir, uploads, docs, seq)
        )
        if background:
            provisional()
            return current  # stale-while-revalidate: the new index builds meanwhile
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    async def _build(self, slot: _Slot, key: IndexKey, subdir: str, uploads: list[Upload],
                     docs: list[tuple[UpstreamSettings, Doc, DocForm]], seq: int) -> SubdirIndex:
        try:
            return await self._build_locked(slot, key, subdir, uploads, docs, seq)
        except Exception as exc:
            slot.failed = (key, time.monotonic())
            log.warning("building the %s index failed: %s", subdir, exc)
            raise

    async def _build_locked(self, slot: _Slot, key: IndexKey, subdir: str, uploads: list[Upload],
                            docs: list[tuple[UpstreamSettings, Doc, DocForm]], seq: int) -> SubdirIndex:
        async with slot.lock:
            current = slot.current
            if current is not None and current.key == key:
                return current
            share = share_key(subdir, key, uploads)
            index = await self._shared.build(share, lambda: self._fresh(key, subdir, uploads, docs))
            if index.previous_shards is None and slot.recent:
                index.previous_shards = slot.recent[-1]
            index.shard_hooks.append(slot.recent.append)
            index.rendered_hooks.append(lambda kind: self._rendered(slot, index, kind))
            if seq < slot.installed:  # a newer request's index is already in place
                return index
            previous, slot.current, slot.installed = slot.current, index, seq
        if previous is not None and (previous.has("json") or previous.has("shards")):
            # what clients of the previous index read is rebuilt now, one after the other
            # (not alongside the .zst: on a small machine that would slow both down)
            self._background(self._warm(index, previous.has("json"), previous.has("shards")), f"{subdir} renderings")
        for kind in sorted(slot.wanted):  # bzip2 on its own thread, once the .zst is served
            self._background(self._prepare(index, kind), f"{subdir} {FILE_NAMES[kind]}")
        return index

    async def _fresh(self, key: IndexKey, subdir: str, uploads: list[Upload],
                     docs: list[tuple[UpstreamSettings, Doc, DocForm]]) -> SubdirIndex:
        """Parse, merge and compress a new index (``SharedBuilds``: once for every channel
        whose inputs are the same)."""
        ups: list[UpstreamSubdir] = []
        for up, doc, encoding in docs:
            repodata = await self._parse(up, doc, encoding)
            if repodata is not None:
                ups.append(UpstreamSubdir(up, doc.url, doc.digest, repodata))
        if docs and not ups and not uploads:
            raise UpstreamError("an upstream served invalid repodata")
        start = time.monotonic()
        index: SubdirIndex = await self._run(lambda: assemble(
            key, subdir, uploads, ups, tmp_dir=self.tmp_dir, executor=self.executor, slow_executor=self.slow_executor))
        zst = index.workdir / "repodata.json.zst"
        spliced = await self._run(write_zst, index.plan, zst, self.tmp_dir)
        index.adopt("zstd", zst)
        self.services.metrics.index_built("conda")
        log.info("built %s index of %d records in %.2f s%s", subdir, len(index), time.monotonic() - start,
                 " (.zst spliced from shared chunks)" if spliced else "")
        return index

    @staticmethod
    async def _prepare(index: SubdirIndex, kind: FileKind) -> None:
        await index.prepare(kind)

    @staticmethod
    def _rendered(slot: _Slot, index: SubdirIndex, kind: FileKind) -> None:
        if kind in SLOW_KINDS:
            done = slot.rendered.get(kind)
            if done is None or done.created < index.created:
                slot.rendered[kind] = index

    async def slow_file(self, channel: str, label: str, index: SubdirIndex, kind: FileKind,
                        wait: float) -> tuple[SubdirIndex, Path]:
        """A ``.bz2`` rendering (``SLOW_KINDS``) without making a client wait for bzip2.

        The first request for it starts it in the background; from then on it is made after
        every build of this index (``_Slot.wanted``). Meanwhile the newest complete one of an
        earlier build is served (stale-while-revalidate, as for upstream documents: a ``.bz2``
        may lag an upload by the time bzip2 takes, where ``.zst`` and ``.json`` never do). When
        there is none, the client waits ``wait`` seconds at most, then gets ``NotReady`` (a 503
        with ``Retry-After``): every conda client fetches ``repodata.json.zst`` or
        ``repodata.json`` first, and rattler, the one that probes ``.bz2`` (HEAD, ``wait`` 0),
        takes an answer other than 200 as "not offered" and reads the ``.zst``."""
        path = index.ready(kind)
        if path is not None:
            return index, path
        slot = self._slot(channel, label, index.subdir)
        slot.wanted.add(kind)
        task = index.prepare(kind)
        done = slot.rendered.get(kind)
        if done is not None and (path := done.ready(kind)) is not None:
            return done, path
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        if task.done():
            return index, task.result()
        raise NotReady(f"{index.subdir}/{FILE_NAMES[kind]} is being compressed: use repodata.json.zst or "
                       "repodata.json, or retry shortly")

    @staticmethod
    async def _warm(index: SubdirIndex, json: bool, shards: bool) -> None:
        if shards:  # incremental: milliseconds
            await index.shard_set()
        if json:
            await index.file("json")

    def changed(self, channel: str, subdirs: tuple[str, ...] = ()) -> None:
        """The channel's uploads changed: rebuild its indexes now, so the next request finds
        them ready (each slot's key tells whether it is really affected). ``subdirs``, the
        ones the change is in, go first (builds queue for two threads)."""
        policy = self.services.settings.channels.get(channel)
        if policy is None:
            return
        slots = [key for key, slot in self._slots.items() if key[0] == channel and slot.current is not None]
        slots.sort(key=lambda k: k[2] not in subdirs)
        for _, label, subdir in slots:
            self._background(self.subdir(policy, label, subdir), f"{subdir} index refresh")

    def built(self, channel: str, label: str) -> list[SubdirIndex]:
        """The merged indexes of this channel and label built so far (what clients asked for)."""
        return [slot.current for (c, lab, _), slot in list(self._slots.items())
                if c == channel and lab == label and slot.current is not None]

    def find_shard(self, channel: str, label: str, subdir: str, sha256_hex: str) -> bytes | None:
        """A shard of a recent index of this subdir (clients may hold a slightly older index)."""
        slot = self._slots.get((channel, label, subdir))
        for shard_set in reversed(slot.recent if slot is not None else ()):
            body = shard_set.shards.get(sha256_hex)
            if body is not None:
                return body
        return None

    # ------------------------------------------------------------------ channeldata.json
    async def channeldata(self, channel: ChannelPolicy, label: str) -> tuple[bytes, str]:
        """``channeldata.json``: the uploads' entries first, then the upstreams' own
        ``channeldata.json`` entries for names the merge rule lets them serve."""
        catalog = self.services.catalog
        walk: Walk[Doc] = Walk(())
        if label == DEFAULT_LABEL:
            walk = await self.services.sources.walk(
                channel, "conda", lambda up: self.services.index_cache.get(up, f"{up.url}/channeldata.json")
            )
        rule = self.services.sources.rule(channel, "conda", normalize)
        key = (channel.name, label, catalog.generation(channel.name, "conda"), rule.allow,
               tuple(digest_and_filter[1:] for digest_and_filter in walk.fingerprint(lambda d: d.digest)))
        cached = self._channeldata.get(key)
        if cached is not None:
            return cached
        by_subdir: dict[str, list[CondaRecord]] = {}
        for upload in catalog.list(channel.name, "conda"):
            if label in upload.labels:
                by_subdir.setdefault(upload.path.split("/", 1)[0], []).append(local_record(upload))
        doc = orjson.loads(render_channeldata(by_subdir))
        packages: dict[str, Any] = doc["packages"]
        subdirs: set[str] = set(doc["subdirs"])
        for found in walk.found:
            up, upstream_doc = found.upstream, found.value
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
                if not rule.upstream_may_serve(normalize(name)):
                    continue
                if not upstream_allows(up, name):
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

