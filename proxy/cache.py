"""Upstream index documents: TTL, revalidation, stale serving (DESIGN, "Caching semantics").

Two tiers:
- aiocache (memory by default, Redis when configured) holds a small entry per document
  that lives exactly ``metadata_ttl`` seconds: while it is there, the document is fresh.
  Upstream 404s are remembered there for ``negative_ttl``.
- The store's ``meta/`` keeps the last good copy of every document (body content-addressed,
  descriptor beside it), which survives restarts, serves ``offline: true`` and pre-seeded
  air-gapped sites, and is what stale-while-revalidate / stale-if-error serve.

A request never waits for a refresh when a copy exists: a stale copy is returned at once
and one background task per document revalidates it with If-None-Match/If-Modified-Since.
Only a document never seen before is fetched in the foreground (single flight).

``get(..., hold_max=N)`` (callers that read bodies only by ``Doc.read`` or ``Doc.body``:
PyPI pages with WRITE_BEHIND_MAX, conda's repodata with any size): a fetched document of
at most N bytes is returned from memory at once and stored behind (write_behind.py); conda parses a 53 MB ``repodata.json.zst`` while it is
being written. A cold resolve stores a page per project on its critical
path, and each fsync there waits behind every other write of the machine (issue 15). When
freshness is shared with other replicas (``shared``: Redis), documents are stored before
they are answered, as before: a replica that finds the shared entry fresh reads the stored
copy instead of fetching its own.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol


from .errors import NotFound, UpstreamError, UpstreamTimeout
from .metrics import Metrics, current_facts
from .memo import SingleFlight
from .settings import UpstreamSettings
from .store.blobs import atomic_write
from .upstream import Upstream, redact_url
from .write_behind import WriteBehind

log = logging.getLogger(__name__)
OFF_LOOP_HASH = 1 << 20  # bodies larger than this are hashed on a thread (hashlib releases the GIL)
WRITE_BEHIND_MAX = 1 << 20  # larger documents are stored before they are returned

ERROR_RETRY = 30  # seconds a stale copy is served without retrying a failing upstream
# offline: seconds a stored document is taken as it is before the store is read again (only
# ``channelgate import`` changes it while serving: its index copies reach clients this late)
OFFLINE_RECHECK = 1.0


class FreshnessCache(Protocol):
    """What MetadataCache asks of aiocache: memory, or Redis with a local fallback
    (coordination.Resilient)."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, ttl: int | None = None) -> Any: ...

    async def close(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Doc:
    """A cached upstream document. ``digest`` (sha256 of the body) identifies its content.

    ``body_path`` is where the body lies in *this* process's store. It is never persisted
    (descriptors and aiocache entries hold the digest only), so a store copied or imported
    to another path serves the same (DESIGN, "Air-gap": a store is relocatable). ``body``:
    the bytes themselves while they are being stored (write-behind), else None.
    """

    url: str
    digest: str
    etag: str | None
    last_modified: str | None
    content_type: str
    fetched_at: float
    body_path: str
    body: bytes | None = field(default=None, compare=False, repr=False)

    def read(self) -> bytes:
        return self.body if self.body is not None else Path(self.body_path).read_bytes()


class MetadataCache:
    def __init__(
        self,
        *,
        aio: FreshnessCache,
        upstream: Upstream,
        root: Path,
        tmp_dir: Path,
        ttl: int,
        negative_ttl: int,
        offline: bool,
        metrics: Metrics,
        shared: bool = False,
    ) -> None:
        self.metrics = metrics
        self.aio = aio
        self.upstream = upstream
        self.root = root
        self.tmp_dir = tmp_dir
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.offline = offline
        self._flights: SingleFlight[str, Doc] = SingleFlight()
        self._behind: WriteBehind[str, Doc] = WriteBehind("index copy", gauge=metrics.held_writes)  # key -> doc
        self.shared = shared  # freshness shared by replicas (Redis): no write-behind
        # L1: what this process already knows to be fresh, so a warm request touches
        # neither aiocache nor disk. (url, accept) -> (doc or None for a 404, fresh until)
        self._l1: dict[tuple[str, str | None], tuple[Doc | None, float]] = {}
        (root / "docs").mkdir(parents=True, exist_ok=True)
        (root / "bodies").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(url: str, accept: str | None) -> str:
        return hashlib.sha256(f"{url}\n{accept or ''}".encode()).hexdigest()

    async def get(self, up: UpstreamSettings, url: str, *, accept: str | None = None, hashed: bool = False,
                  hold_max: int = -1) -> Doc:
        """The document at ``url``; NotFound if the upstream has none; Upstream* if it is
        unreachable and nothing is cached. ``hashed``: the caller checks the body against a
        hash the upstream's index declared (CEP-16 shards), so it may live on another origin.
        ``hold_max``: the caller reads the body by ``Doc.read`` (or ``Doc.body``) only, so a
        fetched document of at most that many bytes may be returned before it is stored
        (module docstring); -1: stored first."""
        known = self._l1.get((url, accept))
        facts = current_facts()
        if known is not None and time.time() < known[1]:
            self.metrics.cache_result("index", "hit")  # a remembered 404 is a hit too
            if facts is not None:
                facts.read_fresh(known[1])
            if known[0] is None:
                raise NotFound()
            return known[0]
        if facts is not None:  # beyond L1: the answer is not kept whole (answers.py)
            facts.volatile = True
        key = self.key(url, accept)
        entry = await self.aio.get(key)
        if entry is not None:
            if entry.get("missing"):
                self.metrics.cache_result("index", "hit")
                raise NotFound()
            shared = self._doc(entry)
            # a replica with a disk of its own may lack the body another replica fetched
            # (Redis shares freshness, not bodies): then it fetches its own copy below
            if Path(shared.body_path).exists():
                self.metrics.cache_result("index", "hit")
                # fresh in Redis because a replica (maybe another) fetched it: fresh here until
                # that entry ends, as if fetched here, so later answers from it are kept
                # (answers.py) and every replica's expire when the shared entry does
                self._learn(url, accept, shared, shared.fetched_at + self.ttl - time.time())
                return shared
        stored = self._load(key)
        if self.offline:
            self.metrics.cache_result("index", "miss" if stored is None else "hit")
            self._learn(url, accept, stored, OFFLINE_RECHECK)
            if stored is None:
                raise NotFound("not cached, and the server is offline")
            return stored
        if stored is not None:
            age = time.time() - stored.fetched_at
            if age < self.ttl:
                self.metrics.cache_result("index", "hit")
                await self._remember(key, url, accept, stored, self.ttl - age)
            else:
                self.metrics.cache_result("index", "stale")
                # stale-while-revalidate
                self._refresh(key, up, url, accept, stored, hashed, hold_max)
            return stored
        self.metrics.cache_result("index", "miss")
        task = self._refresh(key, up, url, accept, None, hashed, hold_max)
        return await asyncio.shield(task)

    def _refresh(
        self, key: str, up: UpstreamSettings, url: str, accept: str | None, stored: Doc | None, hashed: bool = False,
        hold_max: int = -1,
    ) -> asyncio.Task[Doc]:
        return self._flights.start(key, lambda: self._revalidate(key, up, url, accept, stored, hashed, hold_max))

    async def _revalidate(
        self, key: str, up: UpstreamSettings, url: str, accept: str | None, stored: Doc | None, hashed: bool,
        hold_max: int,
    ) -> Doc:
        try:
            resp = await self.upstream.fetch_index(
                up,
                url,
                etag=stored.etag if stored else None,
                last_modified=stored.last_modified if stored else None,
                accept=accept,
                hashed=hashed,
            )
        except NotFound:
            if self.negative_ttl > 0:
                await self.aio.set(key, {"missing": True}, ttl=self.negative_ttl)
                self._learn(url, accept, None, self.negative_ttl)
            raise
        except (UpstreamError, UpstreamTimeout):
            if stored is None:
                raise
            log.warning("serving a stale copy of %s: upstream %s failed", redact_url(url), up.name)
            await self._remember(key, url, accept, stored, min(ERROR_RETRY, self.ttl) or ERROR_RETRY)
            return stored
        now = time.time()
        if resp.status == 304 and stored is not None:
            doc = replace(stored, fetched_at=now)
            if doc.body is not None:  # its first copy is still being stored: this one goes after it
                return self._store_behind(key, url, accept, doc)
            await asyncio.to_thread(atomic_write, self._doc_path(key), _persisted(doc), self.tmp_dir)
        else:
            if len(resp.body) > OFF_LOOP_HASH:  # a 50 MB repodata: ~0.2 s that would stall every client
                digest = await asyncio.to_thread(lambda: hashlib.sha256(resp.body).hexdigest())
            else:
                digest = hashlib.sha256(resp.body).hexdigest()
            body_path = self.body_path(digest)
            doc = Doc(url, digest, resp.etag, resp.last_modified, resp.content_type, now, str(body_path))
            if not self.shared and len(resp.body) <= hold_max:  # -1: the caller reads the stored copy
                return self._store_behind(key, url, accept, replace(doc, body=resp.body))
            # body, then descriptor, in one trip to a thread: a cold resolve stores a page per
            # project on its critical path, and each trip waits for a pool thread and the GIL
            await asyncio.to_thread(self._write, key, doc, resp.body)
        await self._remember(key, url, accept, doc, self.ttl)
        return doc

    def _store_behind(self, key: str, url: str, accept: str | None, held: Doc) -> Doc:
        """Return ``held`` (its body in memory) at once, fresh in this process; store it behind,
        then share its freshness (aiocache: other replicas read the stored copy) and keep
        only the stored copy in L1 (the body leaves memory)."""
        assert held.body is not None
        body, stored = held.body, replace(held, body=None)

        async def write() -> None:
            await asyncio.to_thread(self._write, key, stored, body)
            left = stored.fetched_at + self.ttl - time.time()
            if left > 0:
                await self.aio.set(key, _portable(stored), ttl=max(1, int(left)))
            known = self._l1.get((url, accept))
            if known is not None and known[0] is held:
                self._l1[(url, accept)] = (stored, known[1])

        self._behind.start(key, held, write, size=len(body))
        self._learn(url, accept, held, self.ttl)
        return held

    async def _remember(self, key: str, url: str, accept: str | None, doc: Doc, ttl: float) -> None:
        """Fresh for ``ttl`` seconds: in aiocache (shared by replicas with Redis) and in L1."""
        if ttl > 0:
            await self.aio.set(key, _portable(doc), ttl=max(1, int(ttl)))
            self._learn(url, accept, doc, ttl)

    def _learn(self, url: str, accept: str | None, doc: Doc | None, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._l1) > 100_000:
            self._l1.clear()
        self._l1[(url, accept)] = (doc, time.time() + ttl)

    def _write(self, key: str, doc: Doc, body: bytes) -> None:
        """Store a fetched document: its body (content-addressed, once), then the descriptor
        naming it, each written whole (atomic_write): a crash leaves either no descriptor
        or one whose body is there."""
        body_path = Path(doc.body_path)
        if not body_path.exists():
            atomic_write(body_path, body, self.tmp_dir)
        atomic_write(self._doc_path(key), _persisted(doc), self.tmp_dir)

    def _doc_path(self, key: str) -> Path:
        return self.root / "docs" / f"{key}.json"

    def body_path(self, digest: str) -> Path:
        return self.root / "bodies" / digest[:2] / digest

    def _doc(self, entry: dict[str, object]) -> Doc:
        """A Doc from a persisted entry; the body path is derived here, from the digest
        (entries written before the store became relocatable carry an absolute one: ignored)."""
        fields = {k: v for k, v in entry.items() if k in _PORTABLE_FIELDS}
        return Doc(**fields, body_path=str(self.body_path(str(entry["digest"]))))  # type: ignore[arg-type]

    def _load(self, key: str) -> Doc | None:
        held = self._behind.get(key)  # fetched, still being stored (write-behind)
        if held is not None:
            return held
        try:
            data = json.loads(self._doc_path(key).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("ignoring a damaged cache descriptor %s", key)
            return None
        if not isinstance(data, dict) or "digest" not in data:
            log.warning("ignoring a damaged cache descriptor %s", key)
            return None
        doc = self._doc(data)
        return doc if Path(doc.body_path).exists() else None

    async def close(self) -> None:
        self._flights.cancel_all()
        await self._behind.drain()  # what was answered is stored before the scratch space goes


_PORTABLE_FIELDS = ("url", "digest", "etag", "last_modified", "content_type", "fetched_at")


def _portable(doc: Doc) -> dict[str, object]:
    """What is stored of a Doc: everything but the machine-specific body path (and body)."""
    return {k: getattr(doc, k) for k in _PORTABLE_FIELDS}


def _persisted(doc: Doc) -> bytes:
    return json.dumps(_portable(doc)).encode()


__all__ = ["Doc", "FreshnessCache", "MetadataCache"]
