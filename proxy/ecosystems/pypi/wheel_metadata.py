"""A wheel's ``*.dist-info/METADATA`` without the wheel (issue 15: metadata for every wheel).

An upstream that offers no PEP 658 ``.metadata`` file still serves the wheel, a zip
(APPNOTE.TXT 6.3): its end of central directory record closes the file, the central
directory before it lists each member's local header offset, and the member's bytes follow
its local header. At most three small Range requests (the tail, the central directory when
it is not in the tail, the member when it is not in the tail either) read METADATA from a
cold wheel, usually one; a cached wheel is read
locally. channelgate then serves it as the PEP 658 file it advertises (PEP 714
``data-core-metadata="true"``), so pip, which does no Range reads, resolves without
downloading wheels, and uv needs no Range reads at all.

Every size is bounded: the tail and the central directory by MAX_DIRECTORY, METADATA by
MAX_METADATA; a zip64 or encrypted member, or one compressed otherwise than stored or
deflated, is refused (InvalidInput).
"""
from __future__ import annotations

import dataclasses
import re
import struct
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from ...errors import InvalidInput
from .simple import FileEntry

TAIL = 64 * 1024
MAX_DIRECTORY = 16 << 20
MAX_METADATA = 16 << 20
_EOCD = struct.Struct("<4sHHHHIIH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")

FetchRange = Callable[[int, int], Awaitable[bytes]]  # [start, stop) of the wheel


def readable_metadata(entry: FileEntry) -> bool:
    """An upstream wheel whose METADATA channelgate can read and serve: a wheel with a
    sha256 (the cache key; what the advertisement may promise)."""
    return bool(entry.url) and entry.filename.endswith(".whl") and "sha256" in entry.hashes


def advertise_metadata(entry: FileEntry) -> FileEntry:
    """PEP 714: ``core-metadata`` true for an upstream wheel without a ``.metadata`` file
    whose METADATA channelgate reads itself; other entries as they are."""
    if entry.has_metadata or not readable_metadata(entry):
        return entry
    return dataclasses.replace(entry, core_metadata=True)


def metadata_member(filename: str, names: list[str]) -> str:
    """The wheel's own ``<name>-<version>.dist-info/METADATA`` (PEP 427): the one top-level
    dist-info METADATA, preferring the directory the file name announces."""
    found = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    stem = "-".join(filename.split("-")[:2]).lower()
    preferred = [n for n in found if n.split(".dist-info/")[0].lower() == stem]
    if len(preferred) == 1:
        return preferred[0]
    if len(found) == 1:
        return found[0]
    raise InvalidInput(f"{filename} has {len(found)} top-level METADATA files")


def _directory_bounds(tail: bytes, tail_start: int, filename: str) -> tuple[int, int]:
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise InvalidInput(f"{filename} is not a zip (no end of central directory in its last bytes)")
    _, _, _, _, count, size, offset, _ = _EOCD.unpack_from(tail, at)
    if offset == 0xFFFFFFFF or size == 0xFFFFFFFF or count == 0xFFFF:
        raise InvalidInput(f"{filename} is a zip64 archive")
    if size > MAX_DIRECTORY or offset + size > tail_start + at:
        raise InvalidInput(f"{filename}: its central directory is too large or out of place")
    return offset, offset + size


def _members(directory: bytes, filename: str) -> dict[str, tuple[int, int, int, int, int]]:
    """name -> (method, crc, compressed size, size, local header offset)."""
    out: dict[str, tuple[int, int, int, int, int]] = {}
    pos = 0
    while pos + _CENTRAL.size <= len(directory):
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _, offset) = _CENTRAL.unpack_from(
            directory, pos)
        if sig != b"PK\x01\x02":
            raise InvalidInput(f"{filename}: a malformed central directory")
        name = directory[pos + _CENTRAL.size: pos + _CENTRAL.size + nlen].decode("utf-8", "replace")
        out[name] = (method | (flags & 1) << 16, crc, csize, usize, offset)
        pos += _CENTRAL.size + nlen + elen + clen
    return out


def _inflate(data: bytes, method: int, crc: int, size: int, filename: str) -> bytes:
    if size > MAX_METADATA:
        raise InvalidInput(f"{filename}: METADATA is larger than {MAX_METADATA} bytes")
    if method == zipfile.ZIP_STORED:
        out = data[:size]
    elif method == zipfile.ZIP_DEFLATED:
        try:
            out = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, size + 1)
        except zlib.error as exc:
            raise InvalidInput(f"{filename}: METADATA does not inflate ({exc})") from None
    else:
        raise InvalidInput(f"{filename}: METADATA is stored with zip method {method & 0xFFFF}")
    if len(out) != size or zlib.crc32(out) != crc:
        raise InvalidInput(f"{filename}: METADATA does not match its CRC or size")
    return out


def _within(tail: bytes, tail_start: int, start: int, stop: int) -> bytes | None:
    """Bytes ``[start, stop)`` when the tail already holds them all: a wheel's
    ``.dist-info`` files come last (PEP 427 recommends it), so METADATA usually sits in the
    last bytes read with the central directory, and one Range request reads it all."""
    if start < tail_start or stop > tail_start + len(tail):
        return None
    return tail[start - tail_start: stop - tail_start]


async def remote_metadata(filename: str, tail_start: int, tail: bytes, fetch: FetchRange) -> bytes:
    """METADATA of a wheel whose last bytes (``tail``, from offset ``tail_start``) are known;
    ``fetch`` reads other byte ranges of it."""
    start, stop = _directory_bounds(tail, tail_start, filename)
    directory = tail[start - tail_start: stop - tail_start] if start >= tail_start else await fetch(start, stop)
    members = _members(directory, filename)
    member = metadata_member(filename, list(members))
    method, crc, csize, size, offset = members[member]
    if csize > MAX_METADATA:
        raise InvalidInput(f"{filename}: METADATA is larger than {MAX_METADATA} bytes")
    # the local header's extra field may differ from the central one: read some more; all
    # member data lies before the central directory
    stop = min(offset + _LOCAL.size + len(member.encode()) + 256 + csize, start)
    head = _within(tail, tail_start, offset, stop)
    if head is None:
        head = await fetch(offset, stop)
    if len(head) < _LOCAL.size:
        raise InvalidInput(f"{filename}: no local header for {member}")
    sig, *_, nlen, elen = _LOCAL.unpack_from(head, 0)
    if sig != b"PK\x03\x04":
        raise InvalidInput(f"{filename}: no local header for {member}")
    begin = _LOCAL.size + nlen + elen
    data = head[begin: begin + csize]
    if len(data) < csize:
        data += await fetch(offset + len(head), offset + begin + csize)
    return _inflate(data, method, crc, size, filename)


def local_metadata(path: Path, filename: str) -> bytes:
    """METADATA of a wheel in the store (zipfile stops at the declared size, checks the CRC)."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = metadata_member(filename, zf.namelist())
            if zf.getinfo(member).file_size > MAX_METADATA:
                raise InvalidInput(f"{filename}: METADATA is larger than {MAX_METADATA} bytes")
            return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidInput(f"{filename} is not a readable zip: {exc}") from None
