"""``channelgate cache verify`` (issue 10, part 6): re-hash what the store holds, and find
what it should hold but does not.

- The shared store's blobs (uploads and cached artifacts) are listed and streamed through
  the Store (``blobs``, ``stream``), so with ``storage.backend: s3`` every object in the
  bucket is fetched and hashed, not only this replica's copies; up to CONCURRENT at once.
- Files on this host that listing does not cover are re-hashed too: the index cache's
  bodies (``meta/bodies``) and, with S3, this replica's local copies of blobs.
- Missing: every blob a catalog row names (an upload and its PEP 658 ``.metadata``) and
  every blob an imported bundle brought (their manifests are kept through the Store) must
  be in the store: each absent one is reported.

Each problem is one line as it is found (above the progress bar on a terminal); the command
exits 1 when there is any. Memory: one listing page and CONCURRENT chunks at a time.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from ..settings import ECOSYSTEMS, Settings
from ..store.blobs import AREAS, Area, Listed
from ..store.protocols import Store
from ..store.s3 import S3Store, open_store
from ..store.backends import catalog_reader
from .bundle import BundleError
from .manifest import ManifestReader
from .progress import Progress

CONCURRENT = 4  # objects streamed and hashed at once
CHUNK = 1 << 20
PAGE = 1000  # listed blobs taken from the (blocking) listing at a time
Expected = tuple[Area, str, str]  # (area, sha256, who needs it)
T = TypeVar("T")


@dataclass
class Verified:
    checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)  # each missing blob is reported once


def verify(settings: Settings, stream: TextIO | None = None) -> Verified:
    """Re-hash every stored blob (the bucket's with S3) and index body; report mismatches
    and blobs that catalog rows or imported bundles need but the store lacks."""
    store = open_store(settings, clean=False)
    try:
        needed = _catalog_needs(settings)
        remote = isinstance(store, S3Store)
        local = [p for area in _local_areas(remote) for p in _files(settings.storage_path / area)]
        total = sum(b.size for area in AREAS for b in store.blobs(area)) + sum(_size(p) for p in local)
        out = Verified()
        with Progress("verify", total, stream=stream) as progress:
            asyncio.run(_verify_store(store, needed, progress, out))
            for path in local:
                _hash_local(settings.storage_path, path, progress, out, remote)
        return out
    finally:
        store.release()


def _local_areas(remote: bool) -> tuple[str, ...]:
    return ("meta/bodies", "uploads/sha256", "cache/sha256") if remote else ("meta/bodies",)


async def _verify_store(store: Store, needed: list[Expected], progress: Progress, out: Verified) -> None:
    try:
        for area in AREAS:
            listing = store.blobs(area)
            while page := await asyncio.to_thread(_take, listing):
                await _bounded(page, functools.partial(_check_blob, store, area, progress=progress, out=out))
        present = functools.partial(_check_present, store, progress=progress, out=out)
        await _bounded(needed, present)
        bundles = _bundle_needs(store.imported())
        while batch := await asyncio.to_thread(_take, bundles):
            await _bounded(batch, present)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()


def _take(items: Iterator[T]) -> list[T]:
    """The next PAGE items of a blocking iterator (a bucket listing: run on a thread)."""
    return list(itertools.islice(items, PAGE))


async def _bounded(items: list[T], work: Callable[[T], Awaitable[None]]) -> None:
    """Run ``work(item)`` for each item, CONCURRENT at a time."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(CONCURRENT)))


async def _check_blob(store: Store, area: Area, blob: Listed, *, progress: Progress, out: Verified) -> None:
    sha = hashlib.sha256()
    size = 0
    name = f"{area}/sha256/{blob.sha256[:2]}/{blob.sha256}"
    try:
        async for chunk in store.stream(area, blob.sha256, chunk_size=CHUNK):
            sha.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
    except Exception as exc:  # noqa: BLE001 - a blob that cannot be read is reported, the rest go on
        _report(out.missing, progress, f"MISSING {name}: listed, but reading it failed ({exc})")
        return
    out.checked += 1
    progress.advance(blob.size - size)  # a short object: keep the bar's total honest
    if sha.hexdigest() != blob.sha256:
        where = " in the bucket" if isinstance(store, S3Store) else ""
        _report(out.mismatches, progress, f"MISMATCH {name}{where}: holds sha256 {sha.hexdigest()} ({size} bytes)")


async def _check_present(store: Store, need: Expected, *, progress: Progress, out: Verified) -> None:
    area, sha256, why = need
    name = f"{area}/sha256/{sha256[:2]}/{sha256}"
    if name not in out.absent and await store.stat(area, sha256) is None and name not in out.absent:
        out.absent.add(name)
        _report(out.missing, progress, f"MISSING {name}: {why} needs it")


def _report(into: list[str], progress: Progress, line: str) -> None:
    into.append(line)
    progress.note(line)


def _catalog_needs(settings: Settings) -> list[Expected]:
    """(area, sha256, who) for every blob a catalog row names (the catalog is in memory anyway)."""
    needed: list[Expected] = []
    with catalog_reader(settings) as catalog:
        if catalog is None:
            return needed
        for channel in settings.channels:
            for ecosystem in ECOSYSTEMS:
                for upload in catalog.list(channel, ecosystem):
                    why = f"catalog row {channel}/{ecosystem}/{upload.path}"
                    needed.append(("uploads", upload.sha256, why))
                    extra = upload.index_fields.get("metadata_sha256")
                    if isinstance(extra, str):
                        needed.append(("uploads", extra, f"{why} (its .metadata)"))
    return needed


def _bundle_needs(manifests: Iterator[Path]) -> Iterator[Expected]:
    """(area, sha256, who) for every blob an imported bundle brought, one manifest at a time."""
    for path in manifests:
        try:
            reader, fh = ManifestReader.open(path)
            with fh:
                for entry in reader.entries():
                    area = entry.name.partition("/")[0]
                    if entry.member and entry.name.startswith(("uploads/sha256/", "cache/sha256/")):
                        yield ("uploads" if area == "uploads" else "cache"), entry.sha256, "an imported bundle"
        except BundleError:
            continue


def _files(base: Path) -> Iterator[Path]:
    if base.is_dir():
        yield from (p for p in base.rglob("*") if p.is_file() and len(p.name) == 64)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _hash_local(root: Path, path: Path, progress: Progress, out: Verified, remote: bool) -> None:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
                progress.advance(len(chunk))
    except FileNotFoundError:
        return  # pruned meanwhile
    out.checked += 1
    if sha.hexdigest() != path.name:
        where = " (this replica's copy)" if remote and not path.is_relative_to(root / "meta") else ""
        name = path.relative_to(root).as_posix()
        _report(out.mismatches, progress, f"MISMATCH {name}{where}: holds sha256 {sha.hexdigest()}")


__all__ = ["CONCURRENT", "Verified", "verify"]
