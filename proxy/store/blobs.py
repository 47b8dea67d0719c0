"""Filesystem blob store: content-addressed by sha256, written atomically.

Layout under the storage root::

    tmp/r-<host>-<pid>-<id>/   writes in progress, one directory per process (scratch.py): a
                               crash leaves nothing servable, and a start-up removes only the
                               directories of processes that are gone
    uploads/sha256/ab/<hex>    hosted uploads
    cache/sha256/ab/<hex>      cached upstream artifacts
    cache/refs/<key digest>    alias -> sha256, for artifacts an upstream declares by another hash (CRAN's MD5)
    cache/origin/<sha256>      the name of the upstream a cached artifact came from (channelgate cache)
    cache/used/<sha256>        empty; its mtime is when the cached artifact was last served
    meta/                      cached upstream index documents (see cache.py)
    airgap/imported/<sha256>.json  manifests of imported bundles (``channelgate import``; prune keeps their files)

A blob is written to ``tmp/`` while its digests are computed, fsynced, checked against the
digests its source declared, and only then renamed into place (rename is atomic on POSIX).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal, Mapping

from ..errors import InvalidInput, NotFound
from .scratch import ScratchSpace

log = logging.getLogger(__name__)

Area = Literal["uploads", "cache"]
AREAS: tuple[Area, ...] = ("uploads", "cache")
CHUNK = 256 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
SECRET_NAME = re.compile(r"[a-z][a-z0-9.-]*")  # a plain file name at the store's root
IMPORTED = "airgap/imported"  # the manifests of imported bundles, named by their sha256
USE_EVERY = 3600.0  # a blob's last-use stamp is touched at most this often (seconds) per process


@dataclass(frozen=True, slots=True)
class Blob:
    sha256: str
    md5: str
    blake2_256: str
    size: int
    path: Path


@dataclass(frozen=True, slots=True)
class Listed:
    """A published blob as a listing shows it: ``mtime`` is when it was published."""

    sha256: str
    size: int
    mtime: float


class DigestMismatch(Exception):
    def __init__(self, algorithm: str, declared: str, actual: str) -> None:
        self.algorithm, self.declared, self.actual = algorithm, declared, actual
        super().__init__(f"{algorithm} mismatch: declared {declared}, got {actual}")


class TempBlob:
    """A blob being written. Use as an async context manager: anything not committed is removed."""

    def __init__(self, store: "BlobStore", area: Area) -> None:
        self.store = store
        self.area = area
        self.path = store.scratch_dir / f"{area}-{uuid.uuid4().hex}.part"
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish/discard
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._blake = hashlib.blake2b(digest_size=32)
        self.size = 0
        self._digests: dict[str, str] | None = None
        self.committed: Blob | None = None

    async def __aenter__(self) -> "TempBlob":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.committed is None:
            self.discard()

    def write(self, chunk: bytes) -> None:
        """Append bytes (small, page-cache writes; the fsync happens off the loop in ``finish``)."""
        self._fh.write(chunk)
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self._blake.update(chunk)
        self.size += len(chunk)

    def flush(self) -> None:
        """Make written bytes visible to readers of ``path`` (the tee in upstream.py)."""
        self._fh.flush()

    async def finish(self) -> dict[str, str]:
        """Close and fsync; return the digests. Idempotent."""
        if self._digests is None:
            fh = self._fh
            await asyncio.to_thread(_close_synced, fh)
            self._digests = self._hexdigests()
        return self._digests

    def _hexdigests(self) -> dict[str, str]:
        return {"sha256": self._sha256.hexdigest(), "md5": self._md5.hexdigest(), "blake2_256": self._blake.hexdigest()}

    def check(self, expect: Mapping[str, str] | None = None) -> dict[str, str]:
        """The digests of the bytes written so far, checked against declared ones
        (DigestMismatch), before any fsync: a small file may be answered from memory once
        checked, and committed after (write-behind, issue 15)."""
        digests = self._digests or self._hexdigests()
        for algorithm, declared in (expect or {}).items():
            actual = digests.get(algorithm)
            if actual is not None and declared.lower() != actual:
                raise DigestMismatch(algorithm, declared, actual)
        return digests

    async def commit(self, expect: Mapping[str, str] | None = None) -> Blob:
        """Check declared digests, then move into the content-addressed place."""
        digests = await self.finish()
        try:
            self.check(expect)
        except DigestMismatch:
            self.discard()
            raise
        final = await self.store.publish(self)
        self.committed = Blob(digests["sha256"], digests["md5"], digests["blake2_256"], self.size, final)
        return self.committed

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _sync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _close_synced(fh) -> None:  # type: ignore[no-untyped-def]
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


class BlobStore:
    """The filesystem backend of the Store protocol (protocols.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stamped: dict[str, float] = {}  # sha256 -> when this process last touched its stamp
        self.scratch = ScratchSpace(root / "tmp")

    @property
    def scratch_dir(self) -> Path:
        """This process's own temp directory (never another replica's: scratch.py)."""
        return self.scratch.path

    def release(self) -> None:
        """Remove this process's temp directory (at shutdown)."""
        self.scratch.release()

    def area_dir(self, name: str) -> Path:
        if name not in ("meta",):
            raise ValueError(f"no store area {name!r}")
        return self.root / name

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The small secret ``name`` at the store's root, made once by ``make`` (mode 0600,
        linked into place atomically, so sibling processes all read the first one made)."""
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(f"not a secret's name: {name!r}")
        path = self.root / name
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        tmp = self.root / f".{name}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(make())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and refuses to replace a secret a sibling made first
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes().strip()

    def probe(self) -> None:
        """Write, sync and remove a small file in this process's scratch directory; raises
        OSError when the store cannot take a write now (readiness: health.py)."""
        probe = self.scratch_dir / f"ready-{uuid.uuid4().hex}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"ready")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            probe.unlink(missing_ok=True)

    def open(self, *, clean: bool = True) -> None:
        """Create the layout and remove the temp files of processes that are gone (partial
        writes never become blobs; a sibling replica's writes in progress are left alone)."""
        for sub in ("tmp", "uploads/sha256", "cache/sha256", "cache/refs", "cache/used", "meta"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if clean:
            self.scratch.sweep()

    def temp(self, area: Area) -> TempBlob:
        return TempBlob(self, area)

    async def publish(self, tmp: TempBlob) -> Path:
        """Move a finished, verified temp blob into its content-addressed place (atomic rename)."""
        digests = await tmp.finish()
        final = self.blob_path(tmp.area, digests["sha256"])
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.path, final)
        return final

    async def stat(self, area: Area, sha256: str) -> int | None:
        """The size of a published blob, or None."""
        path = self.find(area, sha256)
        return path.stat().st_size if path is not None else None

    async def stream(self, area: Area, sha256: str, start: int = 0, end: int | None = None,
                     chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of a published blob, in chunks (RFC 9110 ranges map here);
        ``NotFound`` when it is not published."""
        path = self.find(area, sha256)
        if path is None:
            raise NotFound(f"no blob {sha256} in {area}")
        with open(path, "rb") as fh:
            fh.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = await asyncio.to_thread(fh.read, chunk_size if left is None else min(chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def blob_path(self, area: Area, sha256: str) -> Path:
        if _SHA256.fullmatch(sha256) is None:  # (a regex: a character loop cost import 10 µs a call)
            raise InvalidInput("malformed sha256")
        return self.root / area / "sha256" / sha256[:2] / sha256

    def find(self, area: Area, sha256: str) -> Path | None:
        path = self.blob_path(area, sha256)
        return path if path.is_file() else None

    def local(self, area: Area, sha256: str) -> Path | None:
        """The published blob's file (this backend has nothing but local files)."""
        return BlobStore.find(self, area, sha256)

    async def presigned_url(self, area: Area, sha256: str) -> str | None:
        return None  # files are served by this server (sendfile)

    async def ready(self) -> None:
        return None  # nothing remote: health.py probes the path itself

    # -- aliases: another declared hash (or a URL) -> sha256 of a cached blob
    def _ref_path(self, key: str) -> Path:
        return self.root / "cache" / "refs" / hashlib.sha256(key.encode()).hexdigest()

    def find_ref(self, key: str) -> Path | None:
        sha256 = self._local_ref(key)
        return self.find("cache", sha256) if sha256 else None

    def _local_ref(self, key: str) -> str | None:
        try:
            return self._ref_path(key).read_text().strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    async def ref(self, key: str) -> str | None:
        return self._local_ref(key)  # one small local read, as cheap as the stat that follows

    def set_ref(self, key: str, sha256: str) -> None:
        atomic_write(self._ref_path(key), sha256.encode(), self.scratch_dir)

    # -- provenance: which upstream a cached artifact came from (``channelgate cache``)
    def origin_path(self, sha256: str) -> Path:
        return self.root / "cache" / "origin" / sha256

    def set_origin(self, sha256: str, upstream: str) -> None:
        atomic_write(self.origin_path(sha256), upstream.encode(), self.scratch_dir)

    def origin(self, sha256: str) -> str | None:
        try:
            return self.origin_path(sha256).read_text().strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    # -- last use: what ``cache prune`` orders by (a fetch counts as a use)
    def used_path(self, sha256: str) -> Path:
        return self.root / "cache" / "used" / sha256

    def record_use(self, sha256: str) -> None:
        """Note that a cached blob was served: its stamp's mtime is set to now, at most once
        per USE_EVERY in this process (one utime(2), no database write, per blob per hour)."""
        now = time.monotonic()
        last = self._stamped.get(sha256)
        if last is not None and now - last < USE_EVERY:
            return
        if len(self._stamped) >= 100_000:  # bounded: forgetting only costs an extra utime
            self._stamped.clear()
        self._stamped[sha256] = now
        path = self.used_path(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            except OSError as exc:  # a read-only store still serves
                log.debug("cannot stamp the use of %s: %s", sha256, exc)
        except OSError as exc:
            log.debug("cannot stamp the use of %s: %s", sha256, exc)

    def last_used(self, sha256: str) -> float | None:
        """When the cached blob was last served (epoch seconds), if recorded."""
        try:
            return self.used_path(sha256).stat().st_mtime
        except OSError:
            return None

    # -- listing and removal (``channelgate cache``: commands only, blocking)
    def blobs(self, area: Area) -> Iterator[Listed]:
        """Every published blob of ``area``: one two-hex-digit directory listed at a time."""
        base = self.root / area / "sha256"
        try:
            folders = sorted(e.path for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return
        for folder in folders:
            with os.scandir(folder) as it:
                for entry in it:
                    if len(entry.name) == 64 and entry.is_file(follow_symlinks=False):
                        stat = entry.stat()
                        yield Listed(entry.name, stat.st_size, stat.st_mtime)

    async def adopt(self, area: Area, path: Path, sha256: str) -> bool:
        final = self.blob_path(area, sha256)
        if final.is_file():
            return False
        try:
            os.replace(path, final)
        except FileNotFoundError:  # the first blob of its two-digit directory (not a mkdir per blob)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
        return True

    def set_alias(self, digest: str, sha256: str) -> bool:
        path = self.root / "cache" / "refs" / digest
        try:
            if path.read_text().strip() == sha256:
                return False
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        atomic_write(path, sha256.encode(), self.scratch_dir)
        return True

    def refs(self) -> Iterator[tuple[str, str]]:
        base = self.root / "cache" / "refs"
        try:
            names = sorted(e.name for e in os.scandir(base) if len(e.name) == 64)
        except FileNotFoundError:
            return
        for name in names:
            try:
                sha256 = (base / name).read_text().strip()
            except (OSError, UnicodeDecodeError):
                continue
            if len(sha256) == 64:
                yield name, sha256

    async def keep_imported(self, sha256: str, manifest: Path) -> bool:
        """Move an imported bundle's manifest (a file in this store's scratch space) to
        ``airgap/imported/<sha256>.json``, fsynced first; False when kept already."""
        self.blob_path("cache", sha256)  # validates the digest
        final = self.root / IMPORTED / f"{sha256}.json"
        if final.exists():
            return False
        await asyncio.to_thread(_sync_file, manifest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(manifest, final)
        return True

    def imported(self) -> Iterator[Path]:
        base = self.root / IMPORTED
        try:
            names = sorted(e.name for e in os.scandir(base) if e.name.endswith(".json"))
        except FileNotFoundError:
            return
        yield from (base / name for name in names)

    def remove(self, area: Area, sha256: str) -> None:
        self.blob_path(area, sha256).unlink(missing_ok=True)
        if area == "cache":
            self.origin_path(sha256).unlink(missing_ok=True)
            self.used_path(sha256).unlink(missing_ok=True)

    async def put_bytes(self, area: Area, data: bytes) -> Blob:
        async with self.temp(area) as tmp:
            tmp.write(data)
            return await tmp.commit()


def atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write a small file atomically (temp file in the store, fsync, rename)."""
    tmp = tmp_dir / f"w-{uuid.uuid4().hex}.part"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)


__all__ = ["Area", "Blob", "BlobStore", "DigestMismatch", "IMPORTED", "Listed", "SECRET_NAME", "TempBlob", "atomic_write"]
