"""What the rest of channelgate may ask of storage: the ``Store`` (blobs) and the ``Catalog``
(which channel holds which upload). conda-index's ``MinimalFS`` is the model: a handful of
methods, so a second backend (S3, PostgreSQL) is a class, not a rewrite. Store backends:
``blobs.BlobStore`` (filesystem) and ``s3.S3Store`` (S3-compatible object stores); Catalog:
``catalog.SqliteCatalog`` and ``pg_catalog.PgCatalog`` (``backends.open_catalog`` picks one). Contract tests (tests/test_store_contract.py) run over every backend.

Nothing outside ``store/`` builds a path under the store's root: it asks the Store for
the directory it needs (``scratch_dir`` for work files, ``area_dir`` for the index cache),
for a kept secret (``secret``) or whether it can write (``probe``).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .blobs import Area, Blob, Listed, TempBlob
    from .catalog import Snapshot, Upload
    from .packages import PackageInfo
    from .tokens import UserToken


class Store(Protocol):
    """Content-addressed blobs (by sha256), written through a temp blob and published only
    once verified; aliases (another declared hash or a URL -> sha256) and provenance."""

    def open(self, *, clean: bool = True) -> None:
        """Create what the backend needs; ``clean`` drops partial writes of a crashed run."""

    def temp(self, area: "Area") -> "TempBlob":
        """A blob being written: ``write``, then ``commit(expect)`` verifies and publishes it."""

    def find(self, area: "Area", sha256: str) -> Path | None:
        """The published blob as a local file, or None. A remote backend may download it
        first: commands only. The request path uses ``local``, ``stat`` and ``stream``."""

    def local(self, area: "Area", sha256: str) -> Path | None:
        """A file on this machine holding the published blob, or None, without asking a
        remote backend (filesystem: the blob; S3: this replica's copy). Served by sendfile."""

    async def put_bytes(self, area: "Area", data: bytes) -> "Blob":
        """Publish small bytes (a metadata file) at once."""

    async def stat(self, area: "Area", sha256: str) -> int | None:
        """The size of a published blob, or None (asks the shared backend, not a local copy)."""

    def stream(self, area: "Area", sha256: str, start: int = 0, end: int | None = None,
               chunk_size: int = ...) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a published blob, streamed; ``NotFound`` when absent."""

    async def presigned_url(self, area: "Area", sha256: str) -> str | None:
        """A short-lived URL a client may GET the blob from directly, when the backend offers
        them and the policy asks for them (``storage.s3.redirect``); else None."""

    def find_ref(self, key: str) -> Path | None:
        """The cached blob an alias points at, or None (may download: commands only)."""

    async def ref(self, key: str) -> str | None:
        """The sha256 an alias points at, or None (the request path's ``find_ref``: whether
        that blob is published is for ``local``/``stat`` to say)."""

    def set_ref(self, key: str, sha256: str) -> None:
        """Point an alias at a cached blob (blocking: call it off the loop)."""

    def set_origin(self, sha256: str, upstream: str) -> None:
        """Record which upstream a cached blob came from (blocking: call it off the loop)."""

    def origin(self, sha256: str) -> str | None:
        """The upstream a cached blob came from, if recorded."""

    def record_use(self, sha256: str) -> None:
        """Note that a cached blob was served (cheap: at most one stamp per blob per hour)."""

    def blobs(self, area: "Area") -> Iterator["Listed"]:
        """Every published blob of ``area`` in the shared backend, streamed (commands only:
        ``channelgate cache``)."""

    async def adopt(self, area: "Area", path: Path, sha256: str) -> bool:
        """Publish a file whose sha256 the caller verified (``channelgate import``): moved
        into place (filesystem) or uploaded, then kept as this replica's copy (S3). False,
        and the file left alone, when the store holds that blob already."""

    def set_alias(self, digest: str, sha256: str) -> bool:
        """Point the alias whose key has this digest at a cached blob (import carries key
        digests, not keys); whether it changed."""

    def refs(self) -> Iterator[tuple[str, str]]:
        """Every alias as (digest of its key, sha256), streamed (commands only: export)."""

    async def keep_imported(self, sha256: str, manifest: Path) -> bool:
        """Keep the manifest of an imported bundle (``sha256`` of its bytes) where every
        process sharing the store sees it (filesystem: the store; S3: the bucket), durably;
        False when it is kept already (the bundle was imported before, by any replica)."""

    def imported(self) -> Iterator[Path]:
        """Every kept manifest of an imported bundle, each as a local file readable until the
        next one is yielded (a remote backend fetches each into scratch space first)."""

    def remove(self, area: "Area", sha256: str) -> None:
        """Remove a published blob, its provenance and its use stamp (``cache prune``)."""

    def last_used(self, sha256: str) -> float | None:
        """When a cached blob was last served (epoch seconds), if recorded."""

    async def ready(self) -> None:
        """Readiness of a remote backend: ``StorageError`` naming the problem, in bounded time
        (the local path has its own probe in health.py)."""

    @property
    def scratch_dir(self) -> Path:
        """This process's own directory for work files (nothing in it is ever served as-is;
        a start-up removes only those of processes that are gone: scratch.py)."""

    def release(self) -> None:
        """Remove this process's work files (at shutdown)."""

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A small secret the store keeps (the web UI's session key): made once by ``make``,
        never overwritten, the same for every process sharing the store."""

    def probe(self) -> None:
        """Raise (OSError) unless the store can take a write now (readiness)."""

    def area_dir(self, name: str) -> Path:
        """The directory of a named area (e.g. ``meta``, the index cache's copies)."""


class Packages(Protocol):
    """Package settings (packages.py): reads from memory, writes awaited."""

    def get(self, channel: str, ecosystem: str, name: str) -> "PackageInfo | None": ...

    def of_channel(self, channel: str) -> list["PackageInfo"]: ...

    def private_names(self, channel: str, ecosystem: str) -> frozenset[str]: ...

    def has_private(self, channel: str) -> bool: ...

    def locked_labels(self, channel: str) -> frozenset[str]: ...

    async def put(self, info: "PackageInfo") -> "PackageInfo": ...

    async def delete(self, channel: str, ecosystem: str, name: str) -> None: ...

    async def apply(self, infos: Iterable["PackageInfo"], locked: Mapping[str, Iterable[str]]) -> int: ...

    async def set_locked(self, channel: str, label: str, locked: bool) -> None: ...


class Tokens(Protocol):
    """User-made tokens and revocations of policy tokens (tokens.TokenStore, pg_tokens.PgTokenStore):
    every read is on the request path and answered without a round trip."""

    def close(self) -> None: ...

    def find(self, digest: str) -> "UserToken | None": ...

    def is_revoked(self, digest: str) -> bool: ...

    def of_user(self, user: str) -> list["UserToken"]: ...

    def all(self) -> list["UserToken"]: ...

    def revoked_policy_tokens(self) -> dict[str, str]: ...

    async def add(self, token: "UserToken", *, replace: bool = False) -> None: ...

    async def remove(self, user: str, name: str) -> "UserToken | None": ...

    async def revoke_policy_token(self, digest: str, name: str) -> None: ...


class Catalog(Protocol):
    """Uploads by (channel, ecosystem, path), with labels; ``generation`` changes whenever a
    (channel, ecosystem) changes, in this process or another one sharing the backend.

    ``packages`` holds package settings (privacy, metadata, locked labels). Every read
    method also takes ``catalog.public_view(channel)``: that channel without its private
    packages, ``names`` still holding them (the merge rule counts them)."""

    @property
    def packages(self) -> Packages: ...

    def close(self) -> None: ...

    async def check(self) -> None:
        """Readiness: raise when the database does not answer (the caller bounds the time)."""

    def generation(self, channel: str, ecosystem: str) -> int: ...

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, ecosystem)`` after each change this process commits
        (uploads, removals, labels, package settings): coordination.py tells other replicas."""

    def changed(self, channel: str | None, ecosystem: str | None) -> None:
        """Another replica changed (channel, ecosystem), or anything (None, None): the next
        read re-reads it and ``generation`` moves (merged indexes are rebuilt)."""

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once ``predicate()`` holds, checking as changes from other instances arrive;
        ``TimeoutError`` after ``timeout`` seconds (tests and tools; never on the request path)."""

    def snapshot(self, channel: str, ecosystem: str) -> "Snapshot": ...

    def list(self, channel: str, ecosystem: str) -> tuple["Upload", ...]: ...

    def names(self, channel: str, ecosystem: str) -> frozenset[str]: ...

    def get(self, channel: str, ecosystem: str, path: str) -> "Upload | None": ...

    # Writes are coroutines: a networked backend (PostgreSQL) awaits its server, while reads
    # stay synchronous and are served from memory (no round trip on the request path).
    async def add(self, upload: "Upload", *, replace: bool = False) -> None:
        """Record an upload; ``Conflict`` when the path is taken (unless ``replace``)."""

    async def add_many(self, uploads: Iterable["Upload"]) -> int: ...

    async def remove(self, channel: str, ecosystem: str, paths: Iterable[str]) -> int: ...

    async def set_labels(self, channel: str, ecosystem: str, path: str, labels: Iterable[str]) -> None: ...


__all__ = ["Catalog", "Packages", "Store", "Tokens"]
