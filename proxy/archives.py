"""Reading uploaded archives safely, for every ecosystem (DESIGN "Hostile input and faults").

Every decompression is bounded (``server.limits``): members, total decompressed bytes and
the ratio of decompressed to uploaded bytes; every member name is checked (no absolute
path, no ``..``, no NUL) and so is every link (none may leave the package), and devices
and fifos are refused. Models:

- warehouse's upload checks (``_is_valid_dist_file``): the sum of a zip's declared member
  sizes against a ratio of 50 once past 64 MiB, and only stored or deflated zip members;
- installer's and pip's wheel checks: no member outside the target (absolute, ``..``);
- conda-package-streaming's safe extraction and tarfile's ``data`` filter (PEP 706): no
  absolute link targets, no link leaving the destination, no device files.

A zip member never yields more than its declared size (``zipfile`` stops there and checks
the CRC), so declared sizes are charged before anything is read. Tar streams are counted as
they are decompressed, in bounded reads; truncation shows as the compressed stream ending
early, because every stream is drained to its end.

All of this is synchronous, CPU-bound work: run it on the upload-check pool
(``proxy.uploads.UploadChecks``), never on the event loop or the default pool.
"""
from __future__ import annotations

import bz2
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from .errors import BadRequest, UpstreamError
from .settings import Limits

RATIO_GRACE = 64 * 1024 * 1024  # warehouse's COMPRESSION_RATIO_MIN_SIZE: small files may compress well
CHUNK = 1 << 20
MAX_LINK_TARGET = 4096
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def clip(text: str) -> str:
    """Client-supplied text for an error message: printable and bounded."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:200]) or "(empty)"


class Budget:
    """What reading one uploaded archive may cost, charged as it is read."""

    def __init__(self, filename: str, limits: Limits, compressed_size: int) -> None:
        self.filename = clip(filename)
        self.limits = limits
        self.compressed_size = max(compressed_size, 1)
        self.members = 0
        self.unpacked = 0

    def member(self, name: str, where: str = "") -> None:
        """Count a member and check its name."""
        self.members += 1
        if self.members > self.limits.archive_members:
            raise BadRequest(
                f"{self.filename}: more than {self.limits.archive_members} archive members"
                " (server.limits.archive_members)"
            )
        problem = name_problem(name)
        if problem:
            raise BadRequest(f"{self.filename}: {problem}{f' in {where}' if where else ''}")

    def charge(self, size: int) -> None:
        """Count ``size`` decompressed bytes."""
        self.unpacked += size
        limit = self.limits.archive_unpacked_bytes
        if self.unpacked > limit:
            raise BadRequest(
                f"{self.filename}: decompresses to more than {limit // (1024 * 1024)} MiB"
                " (server.limits.archive_unpacked_mb)"
            )
        ratio = self.limits.archive_ratio
        if self.unpacked > RATIO_GRACE and self.unpacked > ratio * self.compressed_size:
            raise BadRequest(
                f"{self.filename}: decompresses to more than {ratio} times its size"
                " (server.limits.archive_ratio); a decompression bomb is refused"
            )


# --------------------------------------------------------------------------- names and links


def parts_of(name: str) -> list[str]:
    """A member name's path parts, with ``\\`` as a separator too and ``.``/empty parts dropped."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name))


def name_problem(name: str) -> str | None:
    """Why a member name is unsafe to extract, or None."""
    if "\0" in name:
        return f"archive member {clip(name)!r} has a NUL in its name"
    if _is_absolute(name):
        return f"archive member {clip(name)!r} has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"archive member {clip(name)!r} escapes its folder ('..')"
    return None


def link_target(member: str, target: str, *, hard: bool) -> list[str] | None:
    """The archive path a link resolves to, or None when it leaves the archive.

    A hard link names another member; a symbolic link is relative to its own folder."""
    if not target or _is_absolute(target) or "\0" in target:
        return None
    resolved = [] if hard else parts_of(member)[:-1]
    for part in target.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            resolved.append(part)
        elif not resolved:
            return None
        else:
            resolved.pop()
    return resolved


def check_link(filename: str, member: str, target: str, *, hard: bool, root: int = 0) -> None:
    """Refuse a link that leaves the package: the archive root, or with ``root=1`` the
    member's top folder (sdists and R packages live in one folder)."""
    resolved = link_target(member, target, hard=hard)
    if resolved is not None and len(resolved) >= root and resolved[:root] == parts_of(member)[:root]:
        return
    raise BadRequest(f"{clip(filename)}: archive member {clip(member)!r} links outside its folder ({clip(target)!r})")


# --------------------------------------------------------------------------- tar streams


class Counted:
    """A decompressing stream, read in bounded pieces, every byte charged to a budget."""

    def __init__(self, raw: Readable, budget: Budget) -> None:
        self.raw = raw
        self.budget = budget

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(CHUNK if size is None or size < 0 else min(size, CHUNK))
        self.budget.charge(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


TarVisitor = Callable[[tarfile.TarFile, tarfile.TarInfo], None]


def walk_tar(stream: Readable, budget: Budget, visit: TarVisitor, *, where: str = "archive", root: int = 0) -> None:
    """Walk every member of one (decompressed) tar stream, checking names and links, then
    drain the stream to its end so a truncated compressed stream is found.

    ``visit`` may read a member's content (``tar.extractfile``) in bounded pieces. Errors of
    the stream become a BadRequest naming the archive."""
    counted = Counted(stream, budget)
    try:
        with tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                budget.member(member.name, where)
                if member.issym() or member.islnk():
                    check_link(budget.filename, member.name, member.linkname, hard=member.islnk(), root=root)
                elif not (member.isfile() or member.isdir()):
                    raise BadRequest(f"{budget.filename}: archive member {clip(member.name)!r} is a device or fifo")
                visit(tar, member)
        counted.drain()
    except BadRequest:
        raise
    except EOFError:
        raise BadRequest(f"{budget.filename}: archive is truncated ({where} ends early)") from None
    except (tarfile.TarError, OSError, ValueError, zlib.error) as exc:
        kind = "not a valid tar" if isinstance(exc, tarfile.TarError) else "corrupt or truncated"
        raise BadRequest(f"{budget.filename}: archive is {kind} ({where}: {clip(str(exc))})") from None
    except Exception as exc:  # e.g. a zstd error: any decoder failure is the upload's fault
        raise BadRequest(f"{budget.filename}: archive is corrupt or truncated ({where}: {clip(str(exc))})") from None


def read_member(fh: Readable, size: int, limit: int, what: str) -> bytes:
    """A small member's content, refused beyond ``limit`` bytes (checked before reading)."""
    if size > limit:
        raise BadRequest(f"{what} is too large (more than {limit} bytes)")
    return fh.read(size)


# --------------------------------------------------------------------------- zip archives


def scan_zip(zf: zipfile.ZipFile, budget: Budget, *, root: int = 0) -> list[zipfile.ZipInfo]:
    """Check every member of a zip before any is read: names, duplicates, compression
    methods, symlinks; charge the declared sizes. Returns the members."""
    infos = zf.infolist()
    seen: set[str] = set()
    for info in infos:
        budget.member(info.filename)
        if info.filename in seen:
            raise BadRequest(f"{budget.filename}: archive member {clip(info.filename)!r} appears twice")
        seen.add(info.filename)
        if info.compress_type not in ZIP_METHODS:
            raise BadRequest(
                f"{budget.filename}: archive member {clip(info.filename)!r} uses an unsupported"
                f" compression method ({info.compress_type}; only stored and deflated)"
            )
        budget.charge(info.file_size)
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            if info.file_size > MAX_LINK_TARGET:
                raise BadRequest(f"{budget.filename}: archive member {clip(info.filename)!r} is a link with a long target")
            target = zf.read(info).decode("utf-8", "replace")
            check_link(budget.filename, info.filename, target, hard=False, root=root)
    return infos


def verify_zip(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], filename: str) -> None:
    """Read every member to its end (bounded by the declared sizes charged in scan_zip), so
    a corrupt or truncated member fails its CRC check here."""
    try:
        for info in infos:
            with zf.open(info) as fh:
                while fh.read(CHUNK):
                    pass
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
        raise BadRequest(f"{clip(filename)}: archive is truncated or corrupt ({clip(str(exc))})") from None


def open_zip(path: Path, filename: str, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BadRequest(f"{clip(filename)} is not a valid {what}: not a zip archive, or truncated ({clip(str(exc))})") from None


def _decompressor(data: bytes) -> zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor | None:
    """By magic number: gzip, bzip2, xz; None for anything else (served as is)."""
    if data[:2] == b"\x1f\x8b":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if data[:3] == b"BZh":
        return bz2.BZ2Decompressor()
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor()
    return None


INDEX_UNPACKED = 2 << 30  # the default of server.limits.index_unpacked_mb


def decompress_index(data: bytes, what: str, *, limit: int = INDEX_UNPACKED) -> bytes:
    """An upstream index (PACKAGES.gz, an .rds), decompressed if gzip/bzip2/xz, never past
    ``limit`` bytes (``server.limits.index_unpacked_mb``, DESIGN "Hostile input and faults":
    every decompression is bounded, so a bomb costs at most ``limit`` bytes of memory).
    UpstreamError past the limit; ValueError/OSError/EOFError if the stream is corrupt."""
    dec = _decompressor(data)
    if dec is None:
        return data
    out = bytearray()
    if not isinstance(dec, (bz2.BZ2Decompressor, lzma.LZMADecompressor)):  # zlib: max_length per call
        pending = data
        while pending:
            out += dec.decompress(pending, limit + 1 - len(out))
            pending = dec.unconsumed_tail
            if len(out) > limit:
                raise UpstreamError(f"{what} decompresses past the index_unpacked_mb limit")
            if dec.eof or not dec.unconsumed_tail:
                break
        if not dec.eof:
            raise EOFError(f"{what}: compressed stream ends early")
        return bytes(out)
    chunk = dec.decompress(data, max_length=limit + 1)
    while True:
        out += chunk
        if len(out) > limit:
            raise UpstreamError(f"{what} decompresses past the index_unpacked_mb limit")
        if dec.eof or dec.needs_input:
            break
        chunk = dec.decompress(b"", max_length=limit + 1 - len(out))
    if not dec.eof:
        raise EOFError(f"{what}: compressed stream ends early")
    return bytes(out)
