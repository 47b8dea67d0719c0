"""``channelgate export``: the store's content for some channels as one streamed tar
(DESIGN, "Air-gap"; the format is in bundle.py, the manifest's layout in manifest.py).

Memory stays flat however many members: the store is walked as a stream, every member goes
to the bundle and its line to the manifest as it is met, and what ``--since`` must look up
(the earlier bundles' names) sits in an on-disk ledger. Member data goes from file to file
by sendfile(2), never through Python; headers are ustar.py's. Content-addressed members are
not read at all: their name is their sha256 (``channelgate cache verify`` is what finds a
file that rotted on disk). The bundle is written beside its final name and renamed when
complete, so a crash leaves no half bundle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from ..settings import ECOSYSTEMS, Settings
from ..store.s3 import open_store
from ..store.backends import catalog_reader
from . import package_settings, ustar
from .bundle import CATALOG, CONTENT_ADDRESSED, MANIFEST, PACKAGES, BundleError, store_members
from .manifest import Ledger, ManifestReader, ManifestWriter
from .progress import Progress

CHUNK = 1 << 20
SENDFILE = 64 * CHUNK


@dataclass(frozen=True, slots=True)
class Exported:
    members: int
    bytes: int
    channels: list[str]


def manifest_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".manifest.json")


def _catalog_rows(settings: Settings, channels: list[str], rows_file: Path) -> tuple[bytes, set[str]]:
    """Write the channels' catalog rows to ``rows_file`` as JSON lines; their package
    settings, and the upload blobs the rows name."""
    blobs: set[str] = set()
    with open(rows_file, "w") as out, catalog_reader(settings) as catalog:
        if catalog is None:
            return b"", blobs
        for channel in channels:
            for ecosystem in ECOSYSTEMS:
                for upload in catalog.list(channel, ecosystem):
                    row = dataclasses.asdict(upload)
                    row["labels"], row["meta"] = list(upload.labels), dict(row.pop("index_fields"))  # bundle key stays "meta"
                    out.write(json.dumps(row, sort_keys=True) + "\n")
                    blobs.add(upload.sha256)
                    extra = upload.index_fields.get("metadata_sha256")
                    if isinstance(extra, str):
                        blobs.add(extra)
        return package_settings.dump(catalog.packages, channels), blobs


def export_bundle(settings: Settings, out: Path, channels: list[str], since: Path | None,
                  stream: TextIO | None = None) -> Exported:
    unknown = [c for c in channels if c not in settings.channels]
    if unknown:
        raise BundleError(f"no such channel(s) in the policy: {', '.join(unknown)}")
    chosen = channels or sorted(settings.channels)
    store = open_store(settings, clean=False)  # filesystem or S3 (storage.backend)
    work = store.scratch_dir / f"export-{uuid.uuid4().hex}"  # this process's own temp space (scratch.py)
    work.mkdir()
    part = out.with_name(out.name + ".part")
    try:
        ledger = Ledger(work / "ledger.sqlite3")
        try:
            _load_since(ledger, since)
            packages, upload_blobs = _catalog_rows(settings, chosen, work / "rows.jsonl")
            upstreams = {name for c in chosen for name in settings.channels[c].upstreams}
            prefixes = tuple(settings.upstreams[name].url + "/" for name in sorted(upstreams))

            def members() -> Iterator[tuple[str, str | bytes]]:
                yield from store_members(store, upload_blobs, upstreams, prefixes)
                yield CATALOG, str(work / "rows.jsonl")

            total = sum(_size(path) for _, path in members()) + len(packages)
            writer = ManifestWriter(work / MANIFEST, chosen, str(since) if since else None)
            with open(part, "wb") as fh, Progress(f"export {out.name}", total, stream=stream) as progress:
                bundle = _Bundle(fh.fileno(), progress)
                for name, path in members():
                    bundle.add_file(ledger, writer, name, path)
                (work / "packages.jsonl").write_bytes(packages)  # (empty: the channels lock no label)
                bundle.add_file(ledger, writer, PACKAGES, str(work / "packages.jsonl"))  # changed settings only
                writer.known((name, sha) for name, sha, _, _ in ledger.items())
                writer.close()
                bundle.send(MANIFEST, str(work / MANIFEST), (work / MANIFEST).stat(), counted=False)
                bundle.end()
            # no fsync: the bundle is verified member by member when imported, so a bundle that a
            # power cut damaged is refused there; the rename keeps a crash from leaving a half
            # bundle under the final name
            os.replace(part, out)
            shutil.copyfile(work / MANIFEST, work / "copy")
            os.replace(work / "copy", manifest_path(out))
            return Exported(writer.members, writer.bytes, chosen)
        finally:
            ledger.close()
    finally:
        part.unlink(missing_ok=True)
        store.release()


def _load_since(ledger: Ledger, since: Path | None) -> None:
    """What the importing site holds after the earlier bundles: their manifest's ``known``."""
    if since is None:
        return
    reader, fh = ManifestReader.open(since)
    with fh:
        for entry in reader.entries():
            if not entry.member:
                ledger.put(entry.name, entry.sha256)


def _size(path: str | bytes) -> int:
    if isinstance(path, bytes):
        return len(path)
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class _Bundle:
    """The tar being written, on a raw file descriptor: a header and the data by sendfile."""

    def __init__(self, fd: int, progress: Progress) -> None:
        self.fd = fd
        self.progress = progress
        self.offset = 0

    def add_file(self, ledger: Ledger, writer: ManifestWriter, name: str, path: str | bytes) -> None:
        """Add ``path`` (or these bytes) as ``name`` unless the earlier bundles carried the
        same content."""
        if isinstance(path, bytes):
            self.add_bytes(ledger, writer, name, path)
            return
        named = CONTENT_ADDRESSED.match(name)
        try:
            stat = os.stat(path)
            sha = named.group(1) if named is not None else _sha256(path)
        except FileNotFoundError:
            return  # pruned meanwhile: not part of this bundle
        known = ledger.get(name)
        if known is not None and known[0] == sha:
            self.progress.advance(stat.st_size)
            return
        try:
            self.send(name, path, stat)
        except FileNotFoundError:
            return
        writer.member(name, sha, stat.st_size)
        ledger.put(name, sha, stat.st_size)

    def add_bytes(self, ledger: Ledger, writer: ManifestWriter, name: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        known = ledger.get(name)
        if known is None or known[0] != sha:
            self._write(ustar.header(name, len(data)) + data + b"\0" * ustar.padding(len(data)))
            writer.member(name, sha, len(data))
            ledger.put(name, sha, len(data))
        self.progress.advance(len(data))

    def send(self, name: str, path: str, stat: os.stat_result, *, counted: bool = True) -> None:
        """One member: header, data by sendfile, padding (``counted``: in the progress total)."""
        size = stat.st_size
        source = os.open(path, os.O_RDONLY)
        try:
            self._write(ustar.header(name, size, int(stat.st_mtime)))
            sent = 0
            while sent < size:
                n = os.sendfile(self.fd, source, sent, min(size - sent, SENDFILE))
                if n == 0:
                    raise BundleError(f"{name} shrank while it was exported (the store is damaged)")
                sent += n
                if counted:
                    self.progress.advance(n)
            self.offset += size
            self._write(b"\0" * ustar.padding(size))
        finally:
            os.close(source)

    def end(self) -> None:
        self._write(ustar.END)
        self._write(b"\0" * (-self.offset % ustar.RECORD))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.offset += n


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()
