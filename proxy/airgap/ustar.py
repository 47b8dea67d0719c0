"""The one tar shape a bundle uses: POSIX ustar headers of regular files with short names
(IEEE Std 1003.1, "pax", ustar Interchange Format), written and read without ``tarfile``.

Why not ``tarfile``: building a header costs it ~170 µs and reading one ~250 µs (a TarInfo,
every field decoded, pax/GNU extensions probed); a store holds tens of thousands of small
members, so for a 2 GiB store that alone was seconds, the largest cost after the data.
A bundle member is a regular file whose name (bundle.MEMBER_RE) fits the 100-byte name
field, so a header is one ``struct`` pack, and reading refuses everything else (links,
devices, pax and GNU headers) as a bundle may not hold it. Any ``tar`` reads what this writes.
"""
from __future__ import annotations

import struct

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads an archive to whole records
END = b"\0" * (2 * BLOCK)  # two zero blocks close an archive
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_REGULAR = (b"0", b"\0")


class UstarError(ValueError):
    """A header this reader does not accept (its message says why)."""


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def header(name: str, size: int, mtime: int = 0, mode: int = 0o644) -> bytes:
    """The 512-byte ustar header of a regular file."""
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise UstarError(f"member name too long for a ustar header: {name!r}")
    fields = [raw, _octal(mode, 8), _octal(0, 8), _octal(0, 8), _octal(size, 12), _octal(max(0, mtime), 12),
              b" " * 8, b"0", b"", b"ustar\0", b"00", b"", b"", _octal(0, 8), _octal(0, 8), b""]
    block = bytearray(_HEADER.pack(*fields))
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padding(size: int) -> int:
    """Zero bytes after ``size`` bytes of data, up to the next block."""
    return -size % BLOCK


def parse(block: bytes) -> tuple[str, int] | None:
    """(name, size) of a regular-file header; None for a zero block (the archive's end)."""
    if len(block) != BLOCK:
        raise UstarError("the archive ends inside a header (truncated)")
    if not any(block):
        return None
    fields = _HEADER.unpack(block)
    stored = _number(fields[6])
    if stored is None or stored not in (sum(block[:148]) + 256 + sum(block[156:]),):
        raise UstarError("a header's checksum is wrong (not a tar, or damaged)")
    if fields[7] not in _REGULAR:
        raise UstarError(f"a member is not a regular file (type {fields[7]!r})")
    name = fields[0].split(b"\0", 1)[0]
    prefix = fields[15].split(b"\0", 1)[0] if fields[9].startswith(b"ustar") else b""
    size = _number(fields[4])
    if size is None:
        raise UstarError("a header's size field is malformed")
    try:
        text = (prefix + b"/" + name if prefix else name).decode("ascii")
    except UnicodeDecodeError:
        raise UstarError("a member name is not ASCII") from None
    return text, size


def _number(field: bytes) -> int | None:
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None
