"""CRAN repository indexes: PACKAGES, PACKAGES.gz, PACKAGES.rds, and R version order.

What R reads (utils::available.packages, R 4.x): ``<contrib>/PACKAGES.rds`` first, then
``PACKAGES.gz``, then ``PACKAGES`` when the former fails. tools::write_PACKAGES writes all
three from one character matrix whose columns are the standard repository fields
(tools:::.get_standard_repository_db_fields), one row per package, ``NA`` for a missing
field, row names = the Package column, saved with ``saveRDS``. Checked with R 4.2.2:

    > str(readRDS("PACKAGES.rds"))
     chr [1, 1:15] "abc" "2.1" NA "R (>= 3.5)" "stats" NA NA NA ...
     - attr(*, "dimnames")=List of 2
      ..$ : Named chr "abc"
      ..$ : chr [1:15] "Package" "Version" "Priority" "Depends" ...

available.packages() resets the row names to the Package column and adds any missing
required column itself, so extra columns (Built for binaries, Path as CRAN's own index
uses for recommended packages) are harmless and kept.

The .rds is built with the ``rdata`` package's R-object builders and XDR unparser (its
high-level converter only writes 1-d string vectors, so the matrix, its ``dim`` and
``dimnames`` attributes are assembled from rdata's own building blocks).
"""
from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rdata.conversion.to_r import (
    R_MINIMUM_VERSIONS,
    ConverterFromPythonToR,
    build_r_char,
    build_r_object,
)
from rdata.parser import RData, RExtraInfo, RObject, RObjectType, RVersions
from rdata.unparser import unparse_data

from proxy.ecosystems.cran.dcf import parse_dcf, render_dcf
from proxy.errors import BadRequest

# tools:::.get_standard_repository_db_fields("source"), R 4.2; for "win.binary" and
# "mac.binary" R uses the same list without NeedsCompilation (which, like Built, is then
# kept as an extra column when an entry has it).
STANDARD_FIELDS: tuple[str, ...] = (
    "Package", "Version", "Priority", "Depends", "Imports", "LinkingTo", "Suggests",
    "Enhances", "License", "License_is_FOSS", "License_restricts_use", "OS_type",
    "Archs", "MD5sum", "NeedsCompilation",
)
BINARY_STANDARD_FIELDS: tuple[str, ...] = STANDARD_FIELDS[:-1]
# Fields of a DESCRIPTION that go into a PACKAGES entry (the standard ones, minus
# MD5sum which is computed from the file, plus Built for binary packages).
DESCRIPTION_INDEX_FIELDS: tuple[str, ...] = tuple(f for f in STANDARD_FIELDS if f != "MD5sum") + ("Built",)

Entry = dict[str, str]

# R's valid_package_version regex (base::.standard_regexps()$valid_package_version):
# at least two non-negative integers separated by '.' or '-'.
_VALID_VERSION = re.compile(r"^([0-9]+[.-]){1,}[0-9]+$")
# base::.standard_regexps()$valid_package_name
_VALID_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]$")


def is_valid_package_name(name: str) -> bool:
    return bool(_VALID_NAME.fullmatch(name))


def is_valid_version(version: str) -> bool:
    return bool(_VALID_VERSION.fullmatch(version))


def version_key(version: str) -> tuple[int, ...]:
    """Sort key with R's package_version semantics: integers split on '.' and '-'.

    ``1.10 > 1.9``, ``1.0-1 == 1.0.1``, ``1.0 < 1.0.0`` (a longer version with the same
    prefix is greater, as in R's compareVersion / numeric_version ordering).
    """
    v = version.strip()
    if not is_valid_version(v):
        raise BadRequest(f"invalid R package version {version!r}")
    return tuple(int(p) for p in re.split(r"[.-]", v))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``package_version(a)`` is below, equal to or above ``package_version(b)``."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def _safe_key(version: str) -> tuple[int, tuple[int, ...]]:
    # Upstream indexes may hold a malformed version; such entries sort below all others.
    try:
        return (1, version_key(version))
    except BadRequest:
        return (0, ())


def split_latest(entries: Iterable[Mapping[str, str]]) -> tuple[list[Entry], list[Entry]]:
    """Split entries into (newest per package, all older ones).

    The newest goes into PACKAGES; the others belong in ``src/contrib/Archive/<pkg>/``
    (tools::write_PACKAGES(latestOnly=TRUE) keeps only the highest version per name).
    On equal versions the first entry wins. Both lists are sorted by package name.
    """
    best: dict[str, Entry] = {}
    older: list[Entry] = []
    for raw in entries:
        e = dict(raw)
        name = e.get("Package", "")
        cur = best.get(name)
        if cur is None:
            best[name] = e
        elif _safe_key(e.get("Version", "")) > _safe_key(cur.get("Version", "")):
            older.append(cur)
            best[name] = e
        else:
            older.append(e)
    latest = sorted(best.values(), key=_name_key)
    older.sort(key=lambda e: (_name_key(e), _safe_key(e.get("Version", ""))))
    return latest, older


def _name_key(e: Mapping[str, str]) -> tuple[str, str]:
    name = e.get("Package", "")
    return (name.lower(), name)


def normalize_entry(fields: Mapping[str, str | None]) -> Entry:
    """One PACKAGES entry from DESCRIPTION-like fields.

    Whitespace runs (continuation lines) collapse to one space, as in the PACKAGES files
    R writes; empty values are dropped (write_PACKAGES turns "" into NA).
    """
    out: Entry = {}
    for k, v in fields.items():
        if v is None:
            continue
        v = " ".join(v.split())
        if v:
            out[k] = v
    return out


def columns_for(entries: Sequence[Mapping[str, str]], *, binary: bool = False) -> list[str]:
    """The standard fields, always, then any other field in order of first appearance."""
    cols = list(BINARY_STANDARD_FIELDS if binary else STANDARD_FIELDS)
    seen = set(cols)
    for e in entries:
        for k in e:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def render_packages(entries: Iterable[Mapping[str, str]], *, binary: bool = False) -> bytes:
    """PACKAGES: the entries as DCF, standard fields first, missing fields left out."""
    items = list(entries)
    cols = columns_for(items, binary=binary)
    records = [{c: e[c] for c in cols if e.get(c)} for e in items]
    return render_dcf(records).encode("utf-8")


def render_packages_gz(entries: Iterable[Mapping[str, str]], *, binary: bool = False) -> bytes:
    """PACKAGES.gz, with a zero gzip timestamp so equal indexes give equal bytes (ETags)."""
    return gzip.compress(render_packages(entries, binary=binary), compresslevel=9, mtime=0)


RdsCompression = Literal["gzip", "xz", "none"]


def render_packages_rds(
    entries: Iterable[Mapping[str, str]], *, compression: RdsCompression = "gzip",
    binary: bool = False,
) -> bytes:
    """PACKAGES.rds: a character matrix as saveRDS(db) writes it (XDR, format version 3).

    R's write_PACKAGES compresses with xz; readRDS reads gzip, bzip2 and xz alike, and
    gzip is much cheaper to produce for a merged index rebuilt on the fly.
    """
    items = list(entries)
    cols = columns_for(items, binary=binary)
    nrow, ncol = len(items), len(cols)
    cells = []
    for c in cols:  # R matrices are stored column-major
        for e in items:
            v = e.get(c)
            cells.append(build_r_char(v if v else None, encoding="utf-8"))
    conv = ConverterFromPythonToR(encoding="utf-8")
    rownames = np.array([e.get("Package", "") for e in items], dtype=np.str_) if nrow else None
    attributes = conv.convert_to_r_attributes({
        "dim": np.array([nrow, ncol], dtype=np.int32),
        "dimnames": [rownames, np.array(cols, dtype=np.str_)],
    })
    matrix = build_r_object(RObjectType.STR, value=cells, attributes=attributes)
    data = RData(
        RVersions(3, 0x040202, R_MINIMUM_VERSIONS[3]),
        RExtraInfo("UTF-8"),
        matrix,
    )
    raw = unparse_data(data, file_format="xdr", file_type="rds")
    if compression == "gzip":
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if compression == "xz":
        import lzma

        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    return raw


@dataclass(frozen=True)
class PackagesFiles:
    """The three index files of one contrib directory."""

    packages: bytes
    packages_gz: bytes
    packages_rds: bytes

    def get(self, filename: str) -> bytes:
        """The body for ``PACKAGES``, ``PACKAGES.gz`` or ``PACKAGES.rds``."""
        if filename == "PACKAGES":
            return self.packages
        if filename == "PACKAGES.gz":
            return self.packages_gz
        if filename == "PACKAGES.rds":
            return self.packages_rds
        raise KeyError(filename)


INDEX_FILENAMES: tuple[str, ...] = ("PACKAGES", "PACKAGES.gz", "PACKAGES.rds")


def render_index(entries: Iterable[Mapping[str, str]], *, binary: bool = False) -> PackagesFiles:
    """All three index files for the given entries (sorted by name, in that order).

    ``binary``: the folder is a bin/windows or bin/macosx contrib folder (R's binary
    column set).
    """
    items = sorted((dict(e) for e in entries), key=_name_key)
    return PackagesFiles(
        packages=render_packages(items, binary=binary),
        packages_gz=render_packages_gz(items, binary=binary),
        packages_rds=render_packages_rds(items, binary=binary),
    )


def is_binary_contrib_dir(contrib_dir: str) -> bool:
    """True for ``bin/windows/contrib/<x.y>`` and ``bin/macosx/[<sub>/]contrib/<x.y>``."""
    return contrib_dir.strip("/").startswith("bin/")


def parse_packages(data: bytes) -> list[Entry]:
    """Entries of an upstream ``PACKAGES`` or ``PACKAGES.gz`` (gzip is detected by magic).

    Records without Package or Version are skipped (R's available.packages would fail on
    them later); values are whitespace-normalised like R's own PACKAGES.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BadRequest(f"PACKAGES.gz is not a valid gzip file: {exc}") from None
    out: list[Entry] = []
    for rec in parse_dcf(data):
        e = normalize_entry(rec)
        if e.get("Package") and e.get("Version"):
            out.append(e)
    return out


# ------------------------------------------------------------------ Meta/archive.rds

@dataclass(frozen=True)
class ArchivedFile:
    """One file under ``src/contrib/Archive/<package>/``."""

    package: str
    filename: str
    size: int
    mtime: float  # seconds since the epoch


def _vector(conv: ConverterFromPythonToR, r_type: RObjectType, value: object,
            attributes: Mapping[str, Any] | None = None) -> RObject:
    attrs = conv.convert_to_r_attributes(dict(attributes)) if attributes else None
    return build_r_object(r_type, value=value, attributes=attrs,
                          is_object=bool(attributes and "class" in attributes))


def _strings(values: Sequence[str | None]) -> list[RObject]:
    return [build_r_char(v, encoding="utf-8") for v in values]


def render_archive_rds(files: Iterable[ArchivedFile]) -> bytes:
    """``src/contrib/Meta/archive.rds`` as CRAN publishes it (read by e.g.
    remotes::install_version): a named list, one element per package, each a data.frame
    of ``file.info()`` columns (size, isdir, mode, mtime, ctime, atime, uid, gid, uname,
    grname) whose row names are ``<pkg>/<file>``. Packages sorted by name, files by version.
    """
    by_pkg: dict[str, list[ArchivedFile]] = {}
    for f in files:
        by_pkg.setdefault(f.package, []).append(f)
    names = sorted(by_pkg, key=lambda n: (n.lower(), n))
    conv = ConverterFromPythonToR(encoding="utf-8")
    frames = []
    for name in names:
        rows = by_pkg[name]
        rows.sort(key=lambda f: _safe_key(_file_version(f.filename)))
        n = len(rows)
        times = np.array([float(f.mtime) for f in rows], dtype=np.float64)
        posix = {"class": np.array(["POSIXct", "POSIXt"], dtype=np.str_)}
        columns = [
            _vector(conv, RObjectType.REAL, np.array([float(f.size) for f in rows], dtype=np.float64)),
            _vector(conv, RObjectType.LGL, np.zeros(n, dtype=np.int32)),
            _vector(conv, RObjectType.INT, np.full(n, 0o644, dtype=np.int32),
                    {"class": np.array(["octmode"], dtype=np.str_)}),
            _vector(conv, RObjectType.REAL, times, posix),
            _vector(conv, RObjectType.REAL, times, posix),
            _vector(conv, RObjectType.REAL, times, posix),
            _vector(conv, RObjectType.INT, np.zeros(n, dtype=np.int32)),
            _vector(conv, RObjectType.INT, np.zeros(n, dtype=np.int32)),
            build_r_object(RObjectType.STR, value=_strings(["cran"] * n)),
            build_r_object(RObjectType.STR, value=_strings(["cran"] * n)),
        ]
        frames.append(_vector(conv, RObjectType.VEC, columns, {
            "names": np.array(["size", "isdir", "mode", "mtime", "ctime", "atime", "uid", "gid",
                               "uname", "grname"], dtype=np.str_),
            "class": np.array(["data.frame"], dtype=np.str_),
            "row.names": np.array([f"{name}/{f.filename}" for f in rows], dtype=np.str_),
        }))
    top = build_r_object(
        RObjectType.VEC, value=frames,
        attributes=conv.convert_to_r_attributes({"names": np.array(names, dtype=np.str_)}) if names else None,
    )
    data = RData(RVersions(3, 0x040202, R_MINIMUM_VERSIONS[3]), RExtraInfo("UTF-8"), top)
    return gzip.compress(unparse_data(data, file_format="xdr", file_type="rds"), mtime=0)


def _file_version(filename: str) -> str:
    stem = filename
    for suffix in (".tar.gz", ".zip", ".tgz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.partition("_")[2]
