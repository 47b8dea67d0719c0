"""``channelgate import``: verify a whole bundle, then publish it (DESIGN, "Air-gap").

1. Stream the tar once (ustar.py): every member is checked against bundle.py's list of names
   (no other path, no link, no device can come out of a bundle), hashed while it is copied
   to a staging directory in the store's ``tmp/`` (a member already stored is hashed, not
   copied). Two worker threads hash and copy large members side by side (hashlib and file
   I/O release the GIL), a few in flight at most, and a large staged file's writeback starts
   as soon as it is written (staging.py); small members are staged on the reading thread,
   where a thread hop would cost more than the member. What was read goes into an on-disk
   ledger (manifest.py), not a dict: memory stays flat however many members.
2. Verify: the manifest (last member, read as a stream) lists exactly the members read, with
   their sizes and sha256s; content-addressed members are the hash their name says; catalog
   rows are well-formed and name files the store will hold; package settings are
   well-formed and name only channels the bundle carries. Anything wrong: nothing is
   published and the staging directory is removed (tampered, truncated, wrong format).
3. Publish, content before what points at it: blobs and index bodies (renames into their
   content-addressed places, so an incomplete one is never visible), then aliases and
   descriptors, then the manifest is kept through the Store (S3: in the bucket, so every
   replica knows the bundle and ``cache prune`` anywhere keeps its files), then the package
   settings (privacy first: a private package's files never show publicly, not even for a
   moment; a lock set replaces the site's for each carried channel), then every catalog row
   in one transaction. What is stored already is left alone, so importing a bundle twice
   changes nothing. Index documents go to this host's index cache (``meta/``, per replica
   with S3): importing a bundle through a second replica gives it its own copies.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from ..settings import Settings
from ..store.protocols import Store
from ..store.s3 import open_store
from ..store.backends import open_catalog
from ..store.catalog import Upload
from . import package_settings, ustar
from .bundle import CATALOG, CONTENT_ADDRESSED, MANIFEST, MEMBER_RE, PACKAGES, BundleError
from .manifest import Header, Ledger, ManifestReader
from .staging import Staged, stage, sync_filesystem

MAX_SMALL = 256 << 20  # catalog rows and package settings are read into memory: bounded
WORKERS = 2
IN_FLIGHT = 4  # members being hashed at once (each holds one CHUNK buffer)
INLINE = 256 << 10  # members smaller than this are staged on the reading thread
_UPLOAD_FIELDS: dict[str, type | tuple[type, ...]] = {"channel": str, "ecosystem": str, "path": str, "name": str, "version": str, "filename": str,
                  "sha256": str, "md5": str, "size": int, "labels": list, "meta": dict, "uploader": str,
                  "uploaded_at": (int, float)}


@dataclass
class ImportReport:
    files: int = 0  # newly published
    bytes: int = 0
    unchanged: int = 0
    rows: int = 0
    settings: int = 0  # package rows and label locks changed
    index_copies: int = 0  # index documents newly placed in this host's index cache (meta/)
    imported_before: bool = False  # the store (shared by every replica) knew this bundle already
    channels: list[str] = field(default_factory=list)

    @property
    def changed_shared(self) -> bool:
        """Whether anything changed in what every replica sharing the store sees."""
        return bool(self.files or self.rows or self.settings)


def import_bundle(settings: Settings, bundle: Path, stream: TextIO | None = None) -> ImportReport:
    store = open_store(settings, clean=False)  # filesystem or S3 (storage.backend)
    staging = store.scratch_dir / "import"  # this process's own temp space (store/scratch.py)
    staging.mkdir()
    try:
        ledger = Ledger(staging / "ledger.sqlite3")
        try:
            manifest = _read(store, bundle, staging, ledger, stream)
            header = _verify(ledger, manifest)
            rows = _rows(store, ledger)
            package_rows = _settings(ledger, header)
            sync_filesystem(staging)  # every staged byte on disk before anything points at it
            return _publish(settings, store, ledger, rows, package_rows, header, manifest)
        finally:
            ledger.close()
    finally:
        store.release()


def _read(store: Store, bundle: Path, staging: Path, ledger: Ledger, stream: TextIO | None) -> Path:
    """Stage every member, recording it in the ledger; the staged manifest's path."""
    from .progress import Progress

    try:
        fd = os.open(bundle, os.O_RDONLY)
    except OSError as exc:
        raise BundleError(f"cannot read {bundle}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        with Progress(f"verify {bundle.name}", size, stream=stream) as progress, \
                ThreadPoolExecutor(WORKERS, thread_name_prefix="import") as pool:
            pending: deque[tuple[str, Future[Staged]]] = deque()
            manifest: Path | None = None
            offset = 0
            while True:
                try:
                    parsed = ustar.parse(os.pread(fd, ustar.BLOCK, offset))
                except ustar.UstarError as exc:
                    raise BundleError(f"{bundle.name} is not a complete channelgate bundle (a tar): {exc}") from None
                if parsed is None:
                    break
                name, length = parsed
                data = offset + ustar.BLOCK
                if data + length > size:
                    raise BundleError(f"{name} is truncated")
                if manifest is not None:
                    raise BundleError("the manifest is not the last member")
                target = _target(store, staging, name, progress.items)
                if name == MANIFEST:
                    manifest = target
                if length < INLINE:  # a thread hop costs more than staging a small member
                    _record(ledger, name, _staged(name, functools.partial(stage, fd, data, length, target)))
                else:
                    pending.append((name, pool.submit(stage, fd, data, length, target)))
                progress.items += 1
                while len(pending) > (0 if name == MANIFEST else IN_FLIGHT):
                    _record_next(ledger, pending)
                offset = data + length + ustar.padding(length)
                progress.advance(offset - progress.done)
            while pending:
                _record_next(ledger, pending)
            if not ledger.flush():
                raise BundleError(f"the bundle holds {ledger.duplicate()!r} twice")
    finally:
        os.close(fd)
    if manifest is None:
        raise BundleError(f"{bundle.name} has no manifest: truncated, or not a channelgate bundle")
    return manifest


def _target(store: Store, staging: Path, name: str, n: int) -> Path | None:
    """Where a member is staged: None when only hashed (content this host holds already)."""
    if name == MANIFEST:
        return staging / MANIFEST
    if not MEMBER_RE.match(name):
        raise BundleError(f"the bundle holds {name!r}, which no store has")
    if CONTENT_ADDRESSED.match(name) is not None and _local(store, name) is not None:
        return None  # (a name held twice is refused when recorded)
    return staging / f"{n:08d}"


def _local(store: Store, name: str) -> Path | None:
    """The file on this host holding a content-addressed member, without asking a remote
    backend (blobs: ``Store.local``; index bodies: the store's ``meta`` area)."""
    area, _, rest = name.partition("/")
    sha256 = rest[-64:]
    if area == "meta":
        path = store.area_dir("meta") / "bodies" / sha256[:2] / sha256
        return path if path.is_file() else None
    return store.local("uploads" if area == "uploads" else "cache", sha256)


def _staged(name: str, result: Callable[[], Staged]) -> Staged:
    try:
        return result()
    except OSError as exc:
        raise BundleError(f"cannot stage {name}: {exc.strerror}") from None


def _record_next(ledger: Ledger, pending: deque[tuple[str, Future[Staged]]]) -> None:
    name, job = pending.popleft()
    _record(ledger, name, _staged(name, job.result))


def _record(ledger: Ledger, name: str, staged: Staged) -> None:
    if name == MANIFEST:
        return
    named = CONTENT_ADDRESSED.match(name)
    if named is not None and named.group(1) != staged.sha256:
        raise BundleError(f"{name} does not hold the content its name says")
    if not ledger.add(name, staged.sha256, staged.size, str(staged.path) if staged.path else None):
        raise BundleError(f"the bundle holds {ledger.duplicate() or name!r} twice")


def _verify(ledger: Ledger, manifest: Path) -> Header:
    """Every member read is in the manifest with its size and sha256, and the reverse."""
    reader, fh = ManifestReader.open(manifest)
    with fh:
        for entry in reader.entries():
            if not entry.member:
                continue
            found = ledger.get(entry.name)
            if found is None:
                raise BundleError(f"a member of the manifest is missing: {entry.name}")
            sha, size, _, marked = found
            if marked:
                raise BundleError(f"the manifest lists {entry.name} twice")
            if size != entry.size or sha != entry.sha256:
                raise BundleError(f"{entry.name} does not match the manifest (sha256 or size): the bundle was altered")
            ledger.mark(entry.name)
    extra = ledger.unmarked()
    if extra is not None:
        raise BundleError(f"{extra} is in the bundle but not in its manifest")
    return reader.header


def _rows(store: Store, ledger: Ledger) -> list[Upload]:
    found = ledger.get(CATALOG)
    if found is None or found[2] is None:
        return []
    staged = Path(found[2])
    if staged.stat().st_size > MAX_SMALL:
        raise BundleError(f"{CATALOG} is implausibly large")
    rows = [_row(line, number) for number, line in enumerate(staged.read_bytes().splitlines(), 1)]
    for row in rows:
        for sha in (row.sha256, row.index_fields.get("metadata_sha256")):
            if isinstance(sha, str):
                name = f"uploads/sha256/{sha[:2]}/{sha}"
                if ledger.get(name) is None and store.find("uploads", sha) is None:
                    raise BundleError(f"catalog row {row.channel}/{row.path} names a file the bundle does not carry")
    return rows


def _settings(ledger: Ledger, header: Header) -> package_settings.PackageSettings | None:
    """The bundle's package settings, checked; None when it carries none (a version 1
    bundle, or an increment whose settings did not change)."""
    found = ledger.get(PACKAGES)
    if found is None:
        return None
    if found[1] > MAX_SMALL:
        raise BundleError(f"{PACKAGES} is implausibly large ({found[1]} bytes)")
    data = Path(found[2]).read_bytes() if found[2] is not None else b""
    return package_settings.parse(data, header.channels)


def _row(line: bytes, number: int) -> Upload:
    try:
        raw: Any = json.loads(line)
    except ValueError:
        raise BundleError(f"{CATALOG} line {number} is not JSON") from None
    if not isinstance(raw, dict) or set(raw) != set(_UPLOAD_FIELDS):
        raise BundleError(f"{CATALOG} line {number} is not a catalog row")
    for key, kind in _UPLOAD_FIELDS.items():
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise BundleError(f"{CATALOG} line {number}: {key} is malformed")
    raw["labels"] = tuple(str(label) for label in raw["labels"])
    raw["index_fields"] = raw.pop("meta")  # the bundle key stays "meta" (every bundle format)
    return Upload(**raw)


def _publish(policy: Settings, store: Store, ledger: Ledger, rows: list[Upload],
             settings: package_settings.PackageSettings | None, header: Header, manifest: Path) -> ImportReport:
    report = ImportReport(channels=list(header.channels))
    asyncio.run(_content(store, ledger, manifest, report))  # content first, then what points at it
    if rows or settings is not None:
        report.settings, report.rows = asyncio.run(_catalog(policy, rows, settings))
    return report


async def _content(store: Store, ledger: Ledger, manifest: Path, report: ImportReport) -> None:
    """Publish the content-addressed members (blobs through the Store: a rename on the
    filesystem, an upload to S3; index bodies into this host's ``meta`` area), then what
    points at them, then keep the manifest through the Store, where every replica sees it
    (``cache prune`` keeps what it lists; a second import anywhere is known as one)."""
    try:
        for name, sha, size, staged in ledger.items():
            if CONTENT_ADDRESSED.match(name) is None:
                continue
            if staged is None:
                report.unchanged += 1
                continue
            area = name.partition("/")[0]
            if area == "meta":
                final = store.area_dir("meta") / "bodies" / sha[:2] / sha
                _place(Path(staged), final, size, report, present=final.is_file())
                continue
            if await store.adopt("uploads" if area == "uploads" else "cache", Path(staged), sha):
                report.files += 1
                report.bytes += size
            else:
                report.unchanged += 1
        _pointers(store, ledger, report)
        report.imported_before = not await store.keep_imported(_sha256_of(manifest), manifest)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()


def _pointers(store: Store, ledger: Ledger, report: ImportReport) -> None:
    for name, sha, size, staged in ledger.items():
        if CONTENT_ADDRESSED.match(name) is not None or name in (CATALOG, PACKAGES) or staged is None:
            continue
        if name.startswith("meta/docs/"):  # this host's index cache
            final = store.area_dir("meta") / "docs" / name.rpartition("/")[2]  # meta/docs/<key>.json
            _place(Path(staged), final, size, report, present=final.is_file() and _same(final, sha, size))
        elif _point(store, name, Path(staged)):
            report.files += 1
            report.bytes += size
        else:
            report.unchanged += 1


def _place(staged: Path, final: Path, size: int, report: ImportReport, *, present: bool) -> None:
    """Rename a staged index document into this host's index cache unless it holds it."""
    if present:
        report.unchanged += 1
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
    report.index_copies += 1
    report.bytes += size


def _point(store: Store, name: str, staged: Path) -> bool:
    """Publish what points at content (provenance, an alias) unless the store holds the
    same already; whether it changed."""
    area, _, rest = name.rpartition("/")
    if area == "cache/origin":
        upstream = staged.read_text().strip()
        if store.origin(rest) == upstream:
            return False
        store.set_origin(rest, upstream)
        return True
    return store.set_alias(rest, staged.read_text().strip())  # cache/refs/<digest>


async def _catalog(policy: Settings, rows: list[Upload],
                   settings: package_settings.PackageSettings | None) -> tuple[int, int]:
    """Write the bundle's package settings, then its catalog rows, into the configured catalog
    (SQLite in the store, or PostgreSQL): (settings changed, rows changed)."""
    async with open_catalog(policy, listen=False) as (catalog, _):
        changed = 0
        if settings is not None:  # before the rows: privacy holds from their first moment
            changed = await catalog.packages.apply(settings.packages, settings.locked)
        return changed, await catalog.add_many(rows)


def _sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _same(path: Path, sha256: str, size: int) -> bool:
    """Whether a stored alias or descriptor (small files) already holds the member's bytes."""
    return path.stat().st_size == size and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
