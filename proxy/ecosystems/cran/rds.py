"""A minimal writer and reader of R's serialization format (XDR, version 3), for the .rds
files a CRAN repository publishes (PACKAGES.rds, Meta/archive.rds).

Why not the rdata package: rdata (the fallback reader here, and the byte-level oracle in
the tests) builds one Python RObject per R value and packs every integer through numpy;
that costs about 0.3 ms per string, i.e. ~9 s for the PACKAGES.rds of CRAN's ~21,000
packages (315,000 strings), rebuilt whenever an upstream index changes. This writer emits
the same bytes (tests compare both) about 80 times faster; ``read_rds`` reads the same
subset (CRAN's Meta/archive.rds, ~150,000 rows: ~3 s instead of ~20 s with rdata).

Format (R Internals, "Serialization Formats"; R's src/main/serialize.c):
``X\\n``, then big-endian int32s: format version 3, the writer's R version, the minimum
R version to read it (3.5.0), the native encoding as a length-prefixed string, then the
object. Each item starts with a flags word: ``type | is_object << 8 | has_attr << 9 |
has_tag << 10 | gp << 12``. Vectors: flags, length, elements, then the attribute pairlist
(LISTSXP nodes with tags; SYMSXPs enter the reference table in order of first use and are
written as REFSXP ``index << 8 | 255`` afterwards), closed by NILVALUE_SXP (254).
A CHARSXP is its flags (gp: 64 = ASCII, 8 = UTF-8), a byte length, the bytes; NA_STRING is
length -1.
"""
from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

NILVALUE_SXP = 254
REFSXP = 255
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19
ASCII_GP, UTF8_GP = 64, 8
R_VERSION = 0x040202          # the R version recorded as the writer (R 4.2.2, the R we test with)
MIN_READER = 0x030500         # format 3 needs R >= 3.5.0

VectorType = Literal["str", "int", "lgl", "real", "list"]
_TYPE = {"str": STRSXP, "int": INTSXP, "lgl": LGLSXP, "real": REALSXP, "list": VECSXP}


@dataclass(frozen=True)
class RVector:
    """An R vector: ``values`` are str | None (NA) for "str", ints for "int"/"lgl",
    floats for "real", RValues for "list". ``attributes`` in order (names, dim, class, ...)."""

    type: VectorType
    values: Sequence[object]
    attributes: Sequence[tuple[str, "RValue"]] = field(default_factory=tuple)


RValue = Union[RVector, None]

Compression = Literal["gzip", "xz", "none"]


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.symbols: dict[str, int] = {}

    def i32(self, value: int) -> None:
        self.out += struct.pack(">i", value)

    def char(self, value: str | None) -> None:
        if value is None:
            self.i32(CHARSXP)
            self.i32(-1)
            return
        data = value.encode("utf-8")
        self.i32(CHARSXP | ((ASCII_GP if data.isascii() else UTF8_GP) << 12))
        self.i32(len(data))
        self.out += data

    def symbol(self, name: str) -> None:
        index = self.symbols.get(name)
        if index is not None:
            self.i32((index << 8) | REFSXP)
            return
        self.symbols[name] = len(self.symbols) + 1
        self.i32(SYMSXP)
        self.char(name)

    def item(self, obj: RValue) -> None:
        if obj is None:
            self.i32(NILVALUE_SXP)
            return
        attrs = list(obj.attributes)
        is_object = any(name == "class" for name, _ in attrs)
        self.i32(_TYPE[obj.type] | (is_object << 8) | (bool(attrs) << 9))
        values = obj.values
        self.i32(len(values))
        if obj.type == "str":
            for v in values:
                self.char(v)  # type: ignore[arg-type]
        elif obj.type in ("int", "lgl"):
            self.out += struct.pack(f">{len(values)}i", *values)
        elif obj.type == "real":
            self.out += struct.pack(f">{len(values)}d", *values)
        else:
            for v in values:
                self.item(v)  # type: ignore[arg-type]
        if attrs:
            for name, value in attrs:
                self.i32(LISTSXP | (1 << 10))
                self.symbol(name)
                self.item(value)
            self.i32(NILVALUE_SXP)


def serialize(obj: RValue) -> bytes:
    """The uncompressed XDR serialization of ``obj`` (what saveRDS(compress=FALSE) writes)."""
    w = _Writer()
    w.out += b"X\n"
    w.i32(3)
    w.i32(R_VERSION)
    w.i32(MIN_READER)
    w.i32(5)
    w.out += b"UTF-8"
    w.item(obj)
    return bytes(w.out)


def write_rds(obj: RValue, *, compression: Compression = "gzip") -> bytes:
    """An .rds file: readRDS reads gzip, bzip2, xz or uncompressed data alike.
    gzip has mtime 0 so equal objects give equal bytes (stable ETags)."""
    raw = serialize(obj)
    if compression == "gzip":
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if compression == "xz":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    return raw


def strings(values: Sequence[str | None]) -> RVector:
    return RVector("str", values)


# ---------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class _Symbol:
    name: str


class UnsupportedRds(ValueError):
    """The data uses a part of R's format this reader does not implement."""


class _Reader:
    """Reads the subset ``_Writer`` writes (plus bzip2 and REFSXP with an extra index word),
    which is all a CRAN archive.rds or PACKAGES.rds holds. Anything else raises
    UnsupportedRds so callers can fall back to the rdata package's complete parser."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[_Symbol] = []

    def i32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def _char_body(self) -> str | None:
        n = self.i32()
        if n == -1:
            return None
        raw = self.data[self.pos:self.pos + n]
        if len(raw) != n:
            raise ValueError("truncated string")
        self.pos += n
        return raw.decode("utf-8", "replace")

    def item(self) -> object:
        flags = self.i32()
        kind = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind == NILVALUE_SXP:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.i32()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            sym = _Symbol(name if isinstance(name, str) else "")
            self.refs.append(sym)
            return sym
        if kind == CHARSXP:
            return self._char_body()
        if kind == LISTSXP:
            return self._pairlist(has_attr, has_tag)
        values: Sequence[object]
        n = self.i32()
        if kind in (LGLSXP, INTSXP):
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == REALSXP:
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(n)]
        else:
            raise UnsupportedRds(f"R type {kind} is not supported")
        type_name: VectorType = {LGLSXP: "lgl", INTSXP: "int", REALSXP: "real", STRSXP: "str"}.get(kind, "list")  # type: ignore[assignment]
        attrs = self._attributes(self.item()) if has_attr else ()
        return RVector(type_name, values, attrs)

    def _pairlist(self, has_attr: int, has_tag: int) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out.append((tag.name if isinstance(tag, _Symbol) else "", self.item()))
            flags = self.i32()
            if flags & 0xFF == NILVALUE_SXP:
                return out
            if flags & 0xFF != LISTSXP:
                raise UnsupportedRds("a pairlist ends in something else than NULL")
            has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)

    @staticmethod
    def _attributes(value: object) -> tuple[tuple[str, RValue], ...]:
        if not isinstance(value, list):
            raise UnsupportedRds("attributes are not a pairlist")
        return tuple((k, v if isinstance(v, RVector) else None) for k, v in value)


def read_rds(data: bytes) -> object:
    """Read an .rds (gzip, bzip2, xz or plain; XDR format 2 or 3) into RVector / str / None."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:3] == b"BZh":
        import bz2

        data = bz2.decompress(data)
    elif data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    if data[:2] != b"X\n":
        raise UnsupportedRds("not an XDR serialization")
    reader = _Reader(data)
    reader.pos = 2
    version = reader.i32()
    reader.i32()
    reader.i32()
    if version == 3:
        nelen = reader.i32()  # the native encoding's name, skipped
        reader.pos += nelen
    elif version != 2:
        raise UnsupportedRds(f"serialization format {version}")
    try:
        return reader.item()
    except (struct.error, IndexError) as exc:
        raise ValueError(f"truncated or malformed rds: {exc}") from None
