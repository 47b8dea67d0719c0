"""``channelgate export``: the store's content for some channels as one streamed tar
(DESIGN, "Air-gap"; the format is in bundle.py).

Memory stays flat: members are copied in CHUNK-sized reads, and the manifest holds one
line per member. Content-addressed members are not read twice: their name is their sha256
(``channelgate cache verify`` is what finds a file that rotted on disk). The bundle is
written beside its final name and renamed when complete, so a crash leaves no half bundle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, TextIO, cast

from ..settings import ECOSYSTEMS, Settings
from ..store.backends import catalog_reader
from . import package_settings
from .bundle import CATALOG, CONTENT_ADDRESSED, MANIFEST, PACKAGES, BundleError, Manifest, Member, store_members
from .progress import Progress

CHUNK = 1 << 20


class _Reader:
    """A file read by tarfile: counts progress, and hashes unless the name already says."""

    def __init__(self, fh: BinaryIO, hashing: bool, advance: Callable[[int], None]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256() if hashing else None
        self.advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        if self.sha is not None:
            self.sha.update(data)
        self.advance(len(data))
        return data


def manifest_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".manifest.json")


def _catalog_rows(settings: Settings, channels: list[str]) -> tuple[bytes, bytes, set[str]]:
    """The channels' catalog rows and package settings as JSON lines, and the upload blobs
    the rows name."""
    with catalog_reader(settings) as catalog:
        if catalog is None:
            return b"", b"", set()
        lines, blobs = [], set()
        for channel in channels:
            for ecosystem in ECOSYSTEMS:
                for upload in catalog.list(channel, ecosystem):
                    row = dataclasses.asdict(upload)
                    row["labels"], row["meta"] = list(upload.labels), dict(row.pop("index_fields"))  # bundle key stays "meta"
                    lines.append(json.dumps(row, sort_keys=True))
                    blobs.add(upload.sha256)
                    extra = upload.index_fields.get("metadata_sha256")
                    if isinstance(extra, str):
                        blobs.add(extra)
        return "".join(line + "\n" for line in lines).encode(), package_settings.dump(catalog.packages, channels), blobs


def export_bundle(settings: Settings, out: Path, channels: list[str], since: Path | None,
                  stream: TextIO | None = None) -> Manifest:
    unknown = [c for c in channels if c not in settings.channels]
    if unknown:
        raise BundleError(f"no such channel(s) in the policy: {', '.join(unknown)}")
    chosen = channels or sorted(settings.channels)
    base = Manifest.read(since) if since is not None else None
    known_before = base.known if base is not None else {}
    rows, packages, upload_blobs = _catalog_rows(settings, chosen)
    prefixes = tuple(
        settings.upstreams[name].url + "/" for c in chosen for name in settings.channels[c].upstreams
    )
    root = settings.storage_path
    upstreams = {name for c in chosen for name in settings.channels[c].upstreams}
    members = list(store_members(root, upload_blobs, upstreams, prefixes))
    manifest = Manifest(chosen, since=str(since) if since else None)
    manifest.known = dict(known_before)
    total = sum(path.stat().st_size for _, path in members) + len(rows) + len(packages)
    part = out.with_name(out.name + ".part")
    try:
        with open(part, "wb") as fh, Progress(f"export {out.name}", total, stream=stream) as progress:
            # "w", not the "w|" stream mode: that one re-buffers every block through bytes
            # concatenation (a quarter of tar's speed); ustar: every member name is short
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # 1 MiB reads (default 16 KiB)
                for name, path in members:
                    _add_file(tar, manifest, known_before, name, path, progress)
                _add_bytes(tar, manifest, known_before, CATALOG, rows)
                _add_bytes(tar, manifest, known_before, PACKAGES, packages)  # changed settings only
                tar.addfile(_info(MANIFEST, len(data := manifest.to_bytes())), _BytesReader(data))
        # no fsync: the bundle is verified member by member when imported, so a bundle that a
        # power cut damaged is refused there; the rename keeps a crash from leaving a half
        # bundle under the final name
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    manifest_path(out).write_bytes(manifest.to_bytes())
    return manifest


def _info(name: str, size: int, mtime: float = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(mtime)
    return info


def _add_file(tar: tarfile.TarFile, manifest: Manifest, known: dict[str, str], name: str, path: Path,
              progress: Progress) -> None:
    named = CONTENT_ADDRESSED.match(name)
    try:
        stat = path.stat()
        if named is not None:
            sha = named.group(1)
        elif stat.st_size <= CHUNK:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            sha = ""  # hashed while written
        if sha and known.get(name) == sha:
            progress.advance(stat.st_size)
            return
        with open(path, "rb") as fh:
            info = _info(name, stat.st_size, stat.st_mtime)
            if sha:
                _send(tar, info, fh, progress)
            else:
                reader = _Reader(fh, True, progress.advance)
                tar.addfile(info, reader)  # type: ignore[arg-type]
                sha = reader.sha.hexdigest()  # type: ignore[union-attr]
            tar.members.clear()  # type: ignore[attr-defined]  # TarFile keeps every header: memory stays flat
    except FileNotFoundError:
        return  # pruned meanwhile: not part of this bundle
    manifest.members[name] = Member(sha, stat.st_size)
    manifest.known[name] = sha


def _send(tar: tarfile.TarFile, info: tarfile.TarInfo, source: BinaryIO, progress: Progress) -> None:
    """A member whose hash is known: header by tarfile, data by sendfile(2) from file to
    file (no copy through Python), then the block padding; tarfile's offset kept right."""
    out = cast(BinaryIO, tar.fileobj)
    header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    out.write(header)
    out.flush()
    sent = 0
    while sent < info.size:
        n = os.sendfile(out.fileno(), source.fileno(), sent, min(info.size - sent, 64 * CHUNK))
        if n == 0:
            raise BundleError(f"{info.name} shrank while it was exported (the store is damaged)")
        sent += n
        progress.advance(n)
    pad = -info.size % tarfile.BLOCKSIZE
    out.write(tarfile.NUL * pad)
    tar.offset += len(header) + info.size + pad  # type: ignore[attr-defined]


def _add_bytes(tar: tarfile.TarFile, manifest: Manifest, known: dict[str, str], name: str, data: bytes) -> None:
    sha = hashlib.sha256(data).hexdigest()
    if known.get(name) == sha:
        return
    tar.addfile(_info(name, len(data)), _BytesReader(data))  # type: ignore[arg-type]
    manifest.members[name] = Member(sha, len(data))
    manifest.known[name] = sha


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk = bytes(self.data[self.pos:end])
        self.pos += len(chunk)
        return chunk
