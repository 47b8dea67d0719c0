"""``channelgate import``: verify a whole bundle, then publish it (DESIGN, "Air-gap").

1. Stream the tar once: every member is checked against bundle.py's list of names (no
   other path, no link, no device can come out of a bundle), hashed while it is copied to a
   staging directory in the store's ``tmp/`` (a member already stored is hashed, not copied).
2. Verify: the manifest exists and lists exactly the members read, with their sizes and
   sha256s; content-addressed members are the hash their name says; catalog rows are
   well-formed and name files the store will hold; package settings are well-formed and
   name only channels the bundle carries. Anything wrong: nothing is published
   and the staging directory is removed (tampered, truncated, wrong format).
3. Publish, content before what points at it: blobs and index bodies (renames into their
   content-addressed places, so an incomplete one is never visible), then aliases and
   descriptors, then the package settings (privacy first: a private package's files never
   show publicly, not even for a moment; a lock set replaces the site's for each carried
   channel), then every catalog row in one SQLite transaction. What is stored already
   is left alone, so importing a bundle twice changes nothing.
"""
from __future__ import annotations

import asyncio

import ctypes
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from ..settings import Settings
from ..store.blobs import BlobStore, atomic_write
from ..store.backends import open_catalog
from ..store.catalog import Upload
from . import package_settings
from .bundle import CATALOG, CONTENT_ADDRESSED, IMPORTED, MANIFEST, MEMBER_RE, PACKAGES, BundleError, Manifest
from .progress import Progress

CHUNK = 1 << 20
MAX_SMALL = 256 << 20  # manifest and catalog rows are read into memory: bounded
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
    channels: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Staged:
    sha256: str
    size: int
    path: Path | None  # None: the store holds this content already


def import_bundle(settings: Settings, bundle: Path, stream: TextIO | None = None) -> ImportReport:
    root = settings.storage_path
    store = BlobStore(root)
    store.open(clean=False)
    staging = store.scratch_dir / "import"  # this process's own temp space (store/scratch.py)
    staging.mkdir()
    try:
        staged, manifest = _read(root, bundle, staging, stream)
        rows = _verify(root, staged, manifest)
        package_rows = _settings(staged, manifest)
        _sync(staging)  # every staged byte on disk before anything points at it
        return _publish(settings, staged, rows, package_rows, manifest)
    finally:
        store.release()


def _read(root: Path, bundle: Path, staging: Path, stream: TextIO | None) -> tuple[dict[str, _Staged], Manifest]:
    staged: dict[str, _Staged] = {}
    manifest: Manifest | None = None
    try:
        size = bundle.stat().st_size
        fh = open(bundle, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise BundleError(f"cannot read {bundle}: {exc.strerror}") from None
    with fh, Progress(f"verify {bundle.name}", size, stream=stream) as progress:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # type: ignore[attr-defined]  # keeps every header otherwise
                    if manifest is not None:
                        raise BundleError("the manifest is not the last member")
                    if not info.isreg():
                        raise BundleError(f"the bundle holds {info.name!r}, which is not a regular file")
                    source = tar.extractfile(info)
                    assert source is not None
                    if info.name == MANIFEST:
                        manifest = Manifest.from_bytes(_small(source, info))
                    elif not MEMBER_RE.match(info.name):
                        raise BundleError(f"the bundle holds {info.name!r}, which no store has")
                    elif info.name in staged:
                        raise BundleError(f"the bundle holds {info.name!r} twice")
                    else:
                        staged[info.name] = _stage(root, staging, info, source, len(staged))
                    progress.advance(fh.tell() - progress.done)
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"{bundle.name} is not a complete channelgate bundle (a tar): {exc}") from None
    if manifest is None:
        raise BundleError(f"{bundle.name} has no manifest: truncated, or not a channelgate bundle")
    return staged, manifest


def _small(source: IO[bytes], info: tarfile.TarInfo) -> bytes:
    if info.size > MAX_SMALL:
        raise BundleError(f"{info.name} is implausibly large ({info.size} bytes)")
    return source.read()


def _stage(root: Path, staging: Path, info: tarfile.TarInfo, source: IO[bytes], n: int) -> _Staged:
    """Hash the member; copy it to staging unless the store holds the same content."""
    sha = hashlib.sha256()
    named = CONTENT_ADDRESSED.match(info.name)
    target: Path | None = None
    if named is None or not (root / info.name).is_file():
        target = staging / f"{n:08d}"
    size = 0
    out = open(target, "wb") if target is not None else None  # noqa: SIM115 - closed below
    try:
        while chunk := source.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if size != info.size:
        raise BundleError(f"{info.name} is truncated")
    return _Staged(sha.hexdigest(), size, target)


def _sync(staging: Path) -> None:
    """Flush the staged files with one syncfs(2) of the store's file system (libc's: Python
    3.11 has no os.syncfs) instead of an fsync per member: thousands of small members cost
    more in fsyncs than in copying. Elsewhere than Linux, sync(2)."""
    fd = os.open(staging, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _verify(root: Path, staged: dict[str, _Staged], manifest: Manifest) -> list[Upload]:
    missing = sorted(set(manifest.members) - set(staged))
    if missing:
        raise BundleError(f"{len(missing)} member(s) of the manifest are missing, e.g. {missing[0]}")
    extra = sorted(set(staged) - set(manifest.members))
    if extra:
        raise BundleError(f"{extra[0]} is in the bundle but not in its manifest")
    for name, item in staged.items():
        expected = manifest.members[name]
        if item.size != expected.size or item.sha256 != expected.sha256:
            raise BundleError(f"{name} does not match the manifest (sha256 or size): the bundle was altered")
        named = CONTENT_ADDRESSED.match(name)
        if named is not None and named.group(1) != item.sha256:
            raise BundleError(f"{name} does not hold the content its name says")
    rows: list[Upload] = []
    catalog = staged.get(CATALOG)
    if catalog is not None and catalog.path is not None:
        for number, line in enumerate(catalog.path.read_bytes().splitlines(), 1):
            rows.append(_row(line, number))
    for row in rows:
        for sha in (row.sha256, row.index_fields.get("metadata_sha256")):
            if isinstance(sha, str):
                name = f"uploads/sha256/{sha[:2]}/{sha}"
                if name not in staged and not (root / name).is_file():
                    raise BundleError(f"catalog row {row.channel}/{row.path} names a file the bundle does not carry")
    return rows


def _settings(staged: dict[str, _Staged], manifest: Manifest) -> package_settings.PackageSettings | None:
    """The bundle's package settings, checked; None when it carries none (a version 1
    bundle, or an increment whose settings did not change)."""
    item = staged.get(PACKAGES)
    if item is None:
        return None
    if item.size > MAX_SMALL:
        raise BundleError(f"{PACKAGES} is implausibly large ({item.size} bytes)")
    data = item.path.read_bytes() if item.path is not None else b""
    return package_settings.parse(data, manifest.channels)


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
    raw["index_fields"] = raw.pop("meta")  # the bundle key stays "meta" (bundle format 1 and 2)
    return Upload(**raw)


def _publish(policy: Settings, staged: dict[str, _Staged], rows: list[Upload],
             settings: package_settings.PackageSettings | None, manifest: Manifest) -> ImportReport:
    root = policy.storage_path
    report = ImportReport(channels=list(manifest.channels))
    order = sorted(staged, key=lambda n: (CONTENT_ADDRESSED.match(n) is None, n))  # content first
    for name in order:
        item = staged[name]
        if name in (CATALOG, PACKAGES):
            continue
        final = root / name
        if item.path is None or (final.is_file() and _same(final, item)):
            report.unchanged += 1
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.path, final)
        report.files += 1
        report.bytes += item.size
    _remember(root, manifest)
    if rows or settings is not None:
        report.settings, report.rows = asyncio.run(_record(policy, rows, settings))
    return report


async def _record(policy: Settings, rows: list[Upload], settings: package_settings.PackageSettings | None) -> tuple[int, int]:
    """Write the bundle's package settings, then its catalog rows, into the configured catalog
    (SQLite in the store, or PostgreSQL): (settings changed, rows changed)."""
    async with open_catalog(policy, listen=False) as (catalog, _):
        changed = 0
        if settings is not None:  # before the rows: privacy holds from their first moment
            changed = await catalog.packages.apply(settings.packages, settings.locked)
        return changed, await catalog.add_many(rows)


def _remember(root: Path, manifest: Manifest) -> None:
    """Keep the manifest in the store (``airgap/imported/``): ``cache prune`` never removes a
    file an imported bundle brought, since an air-gapped site cannot fetch it again."""
    data = manifest.to_bytes()
    path = root / IMPORTED / f"{hashlib.sha256(data).hexdigest()}.json"
    if not path.exists():
        atomic_write(path, data, root / "tmp")


def _same(path: Path, item: _Staged) -> bool:
    """Whether a stored alias or descriptor (small files) already holds the member's bytes."""
    return path.stat().st_size == item.size and hashlib.sha256(path.read_bytes()).hexdigest() == item.sha256
