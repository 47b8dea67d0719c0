"""A minimal writer of R's serialization format (XDR, version 3), for the .rds files a CRAN
repository publishes (PACKAGES.rds, Meta/archive.rds).

Why not rdata's writer: rdata (used to *read* .rds here, and as the byte-level oracle in
the tests) builds one Python RObject per R value and packs every integer through numpy;
that costs about 0.3 ms per string, i.e. ~9 s for the PACKAGES.rds of CRAN's ~21,000
packages (315,000 strings), rebuilt whenever an upstream index changes. This writer emits
the same bytes (tests compare both) in a fraction of that time.

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

import numpy as np

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

    def int(self, value: int) -> None:
        self.out += struct.pack(">i", value)

    def char(self, value: str | None) -> None:
        if value is None:
            self.int(CHARSXP)
            self.int(-1)
            return
        data = value.encode("utf-8")
        self.int(CHARSXP | ((ASCII_GP if data.isascii() else UTF8_GP) << 12))
        self.int(len(data))
        self.out += data

    def symbol(self, name: str) -> None:
        index = self.symbols.get(name)
        if index is not None:
            self.int((index << 8) | REFSXP)
            return
        self.symbols[name] = len(self.symbols) + 1
        self.int(SYMSXP)
        self.char(name)

    def item(self, obj: RValue) -> None:
        if obj is None:
            self.int(NILVALUE_SXP)
            return
        attrs = list(obj.attributes)
        is_object = any(name == "class" for name, _ in attrs)
        self.int(_TYPE[obj.type] | (is_object << 8) | (bool(attrs) << 9))
        values = obj.values
        self.int(len(values))
        if obj.type == "str":
            for v in values:
                self.char(v)  # type: ignore[arg-type]
        elif obj.type in ("int", "lgl"):
            self.out += np.asarray(values, dtype=">i4").tobytes()
        elif obj.type == "real":
            self.out += np.asarray(values, dtype=">f8").tobytes()
        else:
            for v in values:
                self.item(v)  # type: ignore[arg-type]
        if attrs:
            for name, value in attrs:
                self.int(LISTSXP | (1 << 10))
                self.symbol(name)
                self.item(value)
            self.int(NILVALUE_SXP)


def serialize(obj: RValue) -> bytes:
    """The uncompressed XDR serialization of ``obj`` (what saveRDS(compress=FALSE) writes)."""
    w = _Writer()
    w.out += b"X\n"
    w.int(3)
    w.int(R_VERSION)
    w.int(MIN_READER)
    w.int(5)
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
