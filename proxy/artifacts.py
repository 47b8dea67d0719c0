"""Package files an upstream index declared with a hash (DESIGN, "Caching semantics").

Served from the store when present; otherwise one upstream GET per key at a time (single
flight: per process here, across replicas through a Redis lease, coordination.py: a replica
that does not hold the lease waits for the holder's publish and serves from the shared
store, and takes the download over if the holder dies), written to a temp file in the store while every waiting client reads the bytes
written so far (tee), checked against the declared hash, and only then renamed into place
(verify-then-publish).

A response's headers go out only once the first STREAM_AFTER bytes have arrived (or the
download is complete and verified): small files are verified before any byte is sent, so
a mismatch is a clean 502. For larger files the last byte is held back until the hash is
checked; on a mismatch the connection is cut, so no client ever receives a complete body
that failed verification, and nothing is stored.

DESIGN, "Hostile input and faults": a download that fails for any reason (the upstream,
its deadline, a full disk, a temp file that vanished) ends every waiting client with an
error at once; a client that goes away ends only its own stream. A HEAD on a file not
stored yet is answered from the index (type, declared size, ``Accept-Ranges``) and starts
no download; when the index declares no size, one Range request for the first byte asks the
upstream for it (``Upstream.probe_length``), and the HEAD answers without a length if the
upstream states none (ranges.py: Range reads of cold files, issue 15).

Small files answered from memory (``inline`` specs: PEP 658 metadata, a few KiB) are
written behind (write_behind.py): once the whole body is in and matches the declared hash,
the waiting clients are answered from memory, then the temp file is fsynced and renamed
into place; until then the bytes are held under the spec's key, so later requests are
answered from them too. The cross-replica lease is released only after the rename (with
replicas the write starts at once, not at a quiet moment: another replica may be waiting). The
same holds for small files the ecosystems derive and keep (``keep_small``: METADATA read
out of a wheel).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from aiohttp import web

from .coordination import FAILED, Coordinator, Lease
from .errors import ChannelgateError, NotFound, StorageError, UpstreamError
from .ranges import serve_head, serve_range
from .blob_response import INLINE_MAX, abort, blob_response, bytes_response
from .settings import UpstreamSettings
from .store.blobs import Blob, DigestMismatch, TempBlob
from .store.protocols import Store
from .upstream import Upstream, check_target
from .write_behind import QUIET, WriteBehind

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
STREAM_AFTER = 4 * 1024 * 1024
_HEX_LENGTHS = {"sha256": 64, "md5": 32}


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    upstream: UpstreamSettings
    url: str
    expect: Mapping[str, str]  # algorithm -> hex digest the upstream index declared
    filename: str
    content_type: str = "application/octet-stream"
    size: int | None = None  # what the index declares, for a HEAD on a file not stored yet
    inline: bool = False  # a small document (PEP 658 metadata): answered from memory once stored

    @property
    def hashed(self) -> bool:
        """The index declares a well-formed hash of the content (DESIGN's cross-origin rule)."""
        return any(
            _HEX_LENGTHS.get(algorithm) == len(value) and all(c in "0123456789abcdefABCDEF" for c in value)
            for algorithm, value in self.expect.items()
        )

    @property
    def key(self) -> str:
        for algorithm in ("sha256", "md5"):
            if algorithm in self.expect:
                return f"{algorithm}:{self.expect[algorithm].lower()}"
        return f"url:{self.url}"


@dataclass(eq=False)
class Download:
    """One upstream GET in progress, shared by every client waiting for the same file."""

    spec: ArtifactSpec
    tmp: TempBlob
    written: int = 0
    total: int | None = None
    sha256: str | None = None  # set once verified and published (by this replica or another)
    path: Path | None = None  # then this machine's file of it, if it has one
    error: ChannelgateError | None = None
    data: bytes | None = None  # an inline file's checked bytes, answered while they are stored
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.sha256 is not None or self.error is not None

    def notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        await self._changed.wait()


class Artifacts:
    def __init__(self, upstream: Upstream, store: Store, coordinator: Coordinator, *, max_bytes: int = 1 << 44) -> None:
        self.upstream = upstream
        self.max_bytes = max_bytes  # server.limits.artifact_fetch_mb
        self.store = store
        self.coordinator = coordinator
        self.metrics = upstream.metrics
        self._inflight: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # key -> (sha256, bytes) of small files answered while being stored (write_behind.py)
        # with replicas (a shared lease), stored at once after the answer: the others wait for it
        self._behind: WriteBehind[str, tuple[str, bytes]] = WriteBehind(
            "small cached file", quiet=0 if coordinator.shared else QUIET, gauge=self.metrics.held_writes)

    async def close(self) -> None:
        await self._behind.drain()  # small files answered already: stored (downloads wait on them)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._behind.drain()

    def held(self, key: str) -> tuple[str, bytes] | None:
        """(sha256, bytes) of a small file under ``key`` (a spec's key, or the ref of
        ``keep_small``) whose durable write is under way; None once stored (or never held)."""
        return self._behind.get(key)

    def keep_small(self, key: str, data: bytes) -> str:
        """Keep small derived bytes (METADATA read out of a wheel) in the cache under the ref
        ``key``; returns their sha256 at once. Stored behind (``held`` until then)."""
        sha256 = hashlib.sha256(data).hexdigest()
        self._behind.start(key, (sha256, data), lambda: self._store_small(data, key), len(data))
        return sha256

    async def _write_behind(self, spec: ArtifactSpec, sha256: str, data: bytes) -> Blob:
        """Hold a checked inline file (answered already) until it is stored; the blob."""
        stored: list[Blob] = []
        ref = None if "sha256" in spec.expect else spec.key  # (an alias, as ``_publish`` keeps)

        async def write() -> None:
            stored.append(await self._store_small(data, ref))

        await asyncio.shield(self._behind.start(spec.key, (sha256, data), write, len(data)))
        if not stored:
            raise StorageError(f"{spec.filename} could not be stored")
        return stored[0]

    async def _store_small(self, data: bytes, ref: str | None) -> Blob:
        """The durable write of a held small file: the blob (temp file, fsync, rename), then
        the ref naming it, if any: a crash leaves no ref to a missing blob."""
        blob = await self.store.put_bytes("cache", data)
        if ref is not None:
            await asyncio.to_thread(self.store.set_ref, ref, blob.sha256)
        return blob

    async def blob_of(self, spec: ArtifactSpec) -> str | None:
        """The sha256 the store would hold ``spec`` under (the declared one, or its alias),
        published or not: ``blob_response`` and ``cached`` ask the store."""
        if "sha256" in spec.expect:
            return spec.expect["sha256"].lower()
        return await self.store.ref(spec.key)

    async def cached(self, spec: ArtifactSpec) -> str | None:
        """The sha256 of ``spec``'s published blob, or None (no download)."""
        sha256 = await self.blob_of(spec)
        if sha256 is None:
            return None
        if self.store.local("cache", sha256) is not None or await self.store.stat("cache", sha256) is not None:
            return sha256
        return None

    async def serve(self, request: web.BaseRequest, spec: ArtifactSpec, *, offline: bool) -> web.StreamResponse:
        if spec.expect and not spec.hashed:
            raise UpstreamError(f"upstream {spec.upstream.name} declares a malformed hash for {spec.filename}")
        held = self._behind.get(spec.key) if spec.inline else None
        if held is not None:  # checked, being stored
            self.metrics.cache_result("artifact", "hit")
            return bytes_response(request, held[0], held[1], spec.content_type)
        sha256 = await self.blob_of(spec)
        stored = await self._response(request, spec, sha256) if sha256 else None
        if stored is not None and sha256 is not None:
            self.metrics.cache_result("artifact", "hit")
            self.store.record_use(sha256)  # cache prune removes by last use
            return stored
        fetch = self._inflight.get(spec.key)
        # "miss": this request goes upstream (one per download started); "joined": it waits on
        # a download another request, or a fetch ahead, already started (single flight)
        self.metrics.cache_result("artifact", "joined" if fetch is not None else "miss")
        if offline:
            raise NotFound(f"{spec.filename} is not in the cache and the server is offline")
        check_target(spec.upstream, spec.url, hashed=spec.hashed, own=self.upstream.own, what=spec.filename)
        known = fetch.total if fetch is not None else None
        if request.method == "HEAD" and (spec.size is not None or known is not None):
            return await _head(request, spec, known)  # answered from the index: no download
        if request.method == "HEAD" and fetch is None:  # no size declared: ask for one byte, not the file
            self.upstream.check_up(spec.upstream)
            size = await self.upstream.probe_length(spec.upstream, spec.url, what=spec.filename, hashed=spec.hashed)
            return await _head(request, spec, size)
        if fetch is None:
            fetch = self._start(spec)
        partial = await self._partial(request, fetch) if fetch.data is None else None
        if partial is not None:
            return partial
        while not fetch.finished and fetch.written < STREAM_AFTER:
            await fetch.changed()
        if fetch.data is not None and fetch.sha256 is not None:  # an inline file, checked: from memory
            return bytes_response(request, fetch.sha256, fetch.data, spec.content_type)
        if fetch.error is not None:
            raise fetch.error
        if fetch.sha256 is not None:
            stored = await self._response(request, spec, fetch.sha256)
            if stored is not None:
                return stored
        return await self._tee(request, fetch)

    async def _response(self, request: web.BaseRequest, spec: ArtifactSpec, sha256: str) -> web.StreamResponse | None:
        return await blob_response(request, self.store, "cache", sha256, spec.content_type, hosted=False,
                                   inline=spec.inline)

    def _start(self, spec: ArtifactSpec) -> Download:
        """A new download of ``spec`` (single flight: callers looked for one in progress)."""
        self.upstream.check_up(spec.upstream)
        fetch = Download(spec, self.store.temp("cache"))
        self._inflight[spec.key] = fetch
        task = asyncio.create_task(self._download(fetch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def stored(self, spec: ArtifactSpec) -> str:
        """The sha256 of the blob in the store, downloaded and verified first if need be
        (single flight)."""
        sha256 = await self.cached(spec)
        if sha256 is not None:
            self.store.record_use(sha256)
            return sha256
        check_target(spec.upstream, spec.url, hashed=spec.hashed, own=self.upstream.own, what=spec.filename)
        fetch = self._inflight.get(spec.key)
        if fetch is None:
            self.metrics.cache_result("artifact", "miss")
            fetch = self._start(spec)
        while not fetch.finished:
            await fetch.changed()
        if fetch.error is not None:
            raise fetch.error
        assert fetch.sha256 is not None
        return fetch.sha256

    async def _partial(self, request: web.BaseRequest, fetch: Download) -> web.StreamResponse | None:
        """HEAD and Range on a file being fetched, without waiting for it (ranges.py)."""
        if request.method == "HEAD":
            return await serve_head(request, fetch)
        if request.method == "GET" and "Range" in request.headers:
            return await serve_range(request, fetch, self.upstream)
        return None

    async def _download(self, fetch: Download) -> None:
        spec = fetch.spec
        up = spec.upstream
        lease: Lease | None = None
        self.metrics.inflight_downloads.inc()
        try:
            lease = await self._claim(fetch)
            if lease is None:
                return  # another replica published it (fetch.sha256 is set)
            small = await self._receive(fetch)
            if small is not None:  # answered from memory, then stored
                fetch.tmp.discard()  # (held in memory: no temp file waits with it)
                blob = await self._write_behind(spec, *small)
                fetch.path, fetch.sha256 = blob.path, blob.sha256
            else:
                blob = await self._publish(fetch)
                fetch.path, fetch.sha256 = blob.path, blob.sha256
                fetch.notify()  # the waiting clients are answered from the published file now
            await self._note_origin(fetch.sha256, up.name)
        except ChannelgateError as exc:
            fetch.error = exc
        except DigestMismatch as exc:
            fetch.error = self._mismatch(spec, exc)
        except OSError as exc:  # the store: a full disk, a temp file that vanished, ...
            log.error("could not store %s from upstream %s: %s", spec.filename, up.name, exc)
            fetch.error = StorageError(f"{spec.filename} could not be stored")
        except asyncio.CancelledError:
            fetch.error = UpstreamError("server shutting down")
            raise
        except Exception:
            log.exception("the download of %s from upstream %s failed", spec.filename, up.name)
            fetch.error = StorageError(f"{spec.filename} could not be fetched")
        finally:
            self.metrics.inflight_downloads.dec()
            if fetch.tmp.committed is None:
                fetch.tmp.discard()
            if fetch.sha256 is None and fetch.error is None:  # no path may leave a waiter without an answer
                fetch.error = UpstreamError(f"{spec.filename} could not be fetched")
            self._inflight.pop(spec.key, None)
            fetch.notify()
            if lease is not None:
                await lease.release(ok=fetch.sha256 is not None and fetch.error is None)

    async def _receive(self, fetch: Download) -> tuple[str, bytes] | None:
        """Read the upstream's body into the temp file (readers follow ``written``). An
        inline file of at most INLINE_MAX bytes is kept in memory too: once complete and
        checked against the declared hash it is ``fetch.data`` (its waiting clients are
        answered), and returned as (sha256, bytes) to be stored behind; else None."""
        spec, up = fetch.spec, fetch.spec.upstream
        kept: list[bytes] | None = [] if spec.inline else None
        async with self.upstream.stream(up, spec.url, what=spec.filename, hashed=spec.hashed) as body:
            self._within_size(spec, body.content_length or 0)
            fetch.total = body.content_length
            fetch.notify()  # HEAD and Range answers wait for the length (ranges.py)
            async for chunk in body:
                self._within_size(spec, fetch.written + len(chunk))
                fetch.tmp.write(chunk)
                fetch.tmp.flush()
                fetch.written += len(chunk)
                if kept is not None and fetch.written <= INLINE_MAX:
                    kept.append(chunk)
                else:
                    kept = None
                fetch.notify()
        if fetch.total is not None and fetch.written != fetch.total:
            raise UpstreamError(f"upstream {up.name} sent {fetch.written} of {fetch.total} bytes")
        if kept is None:
            return None
        sha256 = fetch.tmp.check(spec.expect)["sha256"]  # DigestMismatch: nothing answered, nothing kept
        fetch.data, fetch.sha256 = b"".join(kept), sha256
        fetch.notify()
        return sha256, fetch.data

    def _within_size(self, spec: ArtifactSpec, size: int) -> None:
        """DESIGN "Hostile input": a download never grows past the size its index declares
        (PEP 700 ``size``, conda's ``size``), nor, when none is declared, past
        ``server.limits.artifact_fetch_mb``: an endless body would fill the disk, and a fast
        one never meets the deadline (which grows with the bytes received)."""
        if spec.size is not None and size > spec.size:
            raise UpstreamError(f"upstream {spec.upstream.name} sent more of {spec.filename} than the "
                                f"{spec.size} bytes its index declares")
        if size > self.max_bytes:
            raise UpstreamError(f"upstream {spec.upstream.name} sent {spec.filename} larger than "
                                f"server.limits.artifact_fetch_mb ({self.max_bytes / (1024 * 1024):g} MiB)")

    async def _claim(self, fetch: Download) -> Lease | None:
        """The lease on this file across replicas (single flight, coordination.py), or None
        once another replica published it to the shared store (then ``fetch.sha256`` is set).
        A holder that dies lets its lease lapse: then this replica takes the download over."""
        spec = fetch.spec
        while True:
            lease = await self.coordinator.acquire(spec.key)
            if lease is not None:
                if lease.token is None:  # local coordination: the caller has just looked
                    return lease
                sha256 = await self.cached(spec)
                if sha256 is None:
                    return lease
                await lease.release(ok=True)  # published between our look and the lease
            else:
                self.metrics.replica_waits.inc()
                try:
                    outcome = await self.coordinator.wait(spec.key)
                finally:
                    self.metrics.replica_waits.dec()
                sha256 = await self.cached(spec)
                if sha256 is None and outcome == FAILED:
                    raise UpstreamError(f"{spec.filename} could not be fetched (another replica tried)")
                if sha256 is None:
                    continue  # the lease lapsed (its holder died) or Redis went away: take over
            fetch.sha256, fetch.path = sha256, self.store.local("cache", sha256)  # a local copy, if any
            size = await self.store.stat("cache", sha256)
            if size is not None:  # what HEAD and Range answers on this fetch read (ranges.py)
                fetch.total = fetch.written = size
            return None

    async def _note_origin(self, sha256: str, upstream: str) -> None:
        """Which upstream a published blob came from (``channelgate cache``, bundle export),
        written once the waiting clients are answered: it is no part of their answer."""
        try:
            await asyncio.to_thread(self.store.set_origin, sha256, upstream)
        except Exception as exc:  # a full disk, a bucket that went away: the blob itself is published
            log.warning("could not note the origin of %s (upstream %s): %r", sha256, upstream, exc)

    async def _publish(self, fetch: Download) -> Blob:
        """Verify the download against the upstream index's hash, then move it into place."""
        spec = fetch.spec
        try:
            blob = await fetch.tmp.commit(spec.expect)
        except DigestMismatch as exc:
            raise self._mismatch(spec, exc) from None
        if "sha256" not in spec.expect:
            await asyncio.to_thread(self.store.set_ref, spec.key, blob.sha256)
        return blob

    @staticmethod
    def _mismatch(spec: ArtifactSpec, exc: DigestMismatch) -> UpstreamError:
        log.error(
            "upstream %s served %s with %s %s, its index declares %s: not stored",
            spec.upstream.name, spec.filename, exc.algorithm, exc.actual, exc.declared,
        )
        return UpstreamError(
            f"upstream {spec.upstream.name} served {spec.filename} with a {exc.algorithm} "
            "that does not match its index"
        )

    async def _tee(self, request: web.BaseRequest, fetch: Download) -> web.StreamResponse:
        """Stream a download in progress; the final byte waits for verification. A client
        that goes away ends only its own stream: the shared download goes on."""
        # private whatever the channel: these bytes are not yet verified against their hash
        # (and the Gateway cannot mark a response that is already under way)
        resp = web.StreamResponse(headers={"Content-Type": fetch.spec.content_type, "Cache-Control": "private"})
        if fetch.total is not None:
            resp.content_length = fetch.total
        try:
            await resp.prepare(request)
            return await self._stream(request, resp, fetch)
        except ConnectionError:  # the client left (aiohttp's ClientConnectionResetError included)
            log.debug("a client left during %s", fetch.spec.filename)
            return resp

    async def _stream(self, request: web.BaseRequest, resp: web.StreamResponse, fetch: Download) -> web.StreamResponse:
        try:
            fh = open(fetch.tmp.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            if fetch.path is None:
                return abort(request, resp)
            fh = open(fetch.path, "rb")  # noqa: SIM115
        with fh:
            offset = 0
            while True:
                limit = fetch.written if fetch.finished else fetch.written - 1
                if fetch.error is not None:
                    return abort(request, resp)
                if offset < limit:
                    data = fh.read(min(limit - offset, CHUNK))
                    offset += len(data)
                    await resp.write(data)
                    continue
                if fetch.finished:
                    break
                await fetch.changed()
        await resp.write_eof()
        return resp


async def _head(request: web.BaseRequest, spec: ArtifactSpec, total: int | None) -> web.StreamResponse:
    """HEAD on a file not stored yet: its type and length (RFC 9110 §9.3.2); ranges of it are
    served (ranges.py), which uv's METADATA reads need to see (``Accept-Ranges``)."""
    resp = web.StreamResponse(headers={"Content-Type": spec.content_type, "Cache-Control": "private",
                                       "Accept-Ranges": "bytes"})
    size = total if total is not None else spec.size
    if size is not None:
        resp.content_length = size
    await resp.prepare(request)
    await resp.write_eof()
    return resp

