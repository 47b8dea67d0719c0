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

The .rds files are written by ``rds.py`` (a minimal XDR writer whose bytes the tests
compare with the ``rdata`` package's unparser; rdata itself is ~80x slower on CRAN-sized
indexes); upstream archive listings are read by ``rds.read_rds``, with rdata's parser (the optional
``rdata`` extra) as the fallback for anything it does not cover.
"""
from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.archives import INDEX_UNPACKED, decompress_index
from proxy.ecosystems.cran.dcf import parse_dcf, render_dcf
from proxy.ecosystems.cran.rds import Compression, RValue, RVector, UnsupportedRds, read_rds, strings, write_rds
from proxy.errors import BadRequest, UpstreamError

if TYPE_CHECKING:  # rdata (and the pandas it imports) loads only for its rare fallback
    from rdata.parser import RObject

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


def packages_matrix(entries: Sequence[Mapping[str, str]], *, binary: bool = False) -> RVector:
    """The R object of PACKAGES.rds: a character matrix, one row per entry, NA where a
    field is missing, ``dimnames = list(<Package column>, <field names>)``."""
    cols = columns_for(entries, binary=binary)
    cells: list[str | None] = [e.get(c) or None for c in cols for e in entries]  # column-major
    rownames: RValue = strings([e.get("Package", "") for e in entries]) if entries else None
    return RVector("str", cells, (
        ("dim", RVector("int", [len(entries), len(cols)])),
        ("dimnames", RVector("list", [rownames, strings(cols)])),
    ))


def render_packages_rds(
    entries: Iterable[Mapping[str, str]], *, compression: Compression = "gzip",
    binary: bool = False,
) -> bytes:
    """PACKAGES.rds: the matrix as saveRDS(db) writes it (XDR, format version 3).

    R's write_PACKAGES compresses with xz; readRDS reads gzip, bzip2 and xz alike, and
    gzip is much cheaper to produce for a merged index rebuilt on the fly.
    """
    return write_rds(packages_matrix(list(entries), binary=binary), compression=compression)


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


def parse_packages(data: bytes, *, limit: int = INDEX_UNPACKED) -> list[Entry]:
    """Entries of an upstream ``PACKAGES`` or ``PACKAGES.gz`` (gzip is detected by magic).

    Records without Package or Version are skipped (R's available.packages would fail on
    them later); values are whitespace-normalised like R's own PACKAGES.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = decompress_index(data, "PACKAGES.gz", limit=limit)
        except (OSError, EOFError, zlib.error) as exc:
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


_POSIXCT = (("class", strings(["POSIXct", "POSIXt"])),)
ARCHIVE_COLUMNS = ("size", "isdir", "mode", "mtime", "ctime", "atime", "uid", "gid", "uname", "grname")


def archive_list(files: Iterable[ArchivedFile]) -> RVector:
    """The R object of Meta/archive.rds (see render_archive_rds)."""
    by_pkg: dict[str, list[ArchivedFile]] = {}
    for f in files:
        by_pkg.setdefault(f.package, []).append(f)
    names = sorted(by_pkg, key=lambda n: (n.lower(), n))
    frames: list[RValue] = []
    for name in names:
        rows = sorted(by_pkg[name], key=lambda f: _safe_key(_file_version(f.filename)))
        n = len(rows)
        times = [float(f.mtime) for f in rows]
        columns: list[RValue] = [
            RVector("real", [float(f.size) for f in rows]),
            RVector("lgl", [0] * n),
            RVector("int", [0o644] * n, (("class", strings(["octmode"])),)),
            RVector("real", times, _POSIXCT),
            RVector("real", times, _POSIXCT),
            RVector("real", times, _POSIXCT),
            RVector("int", [0] * n),
            RVector("int", [0] * n),
            strings(["cran"] * n),
            strings(["cran"] * n),
        ]
        frames.append(RVector("list", columns, (
            ("names", strings(ARCHIVE_COLUMNS)),
            ("class", strings(["data.frame"])),
            ("row.names", strings([f"{name}/{f.filename}" for f in rows])),
        )))
    return RVector("list", frames, (("names", strings(names)),) if names else ())


def render_archive_rds(files: Iterable[ArchivedFile]) -> bytes:
    """``src/contrib/Meta/archive.rds`` as CRAN publishes it (read by e.g.
    remotes::install_version): a named list, one element per package, each a data.frame
    of ``file.info()`` columns (size, isdir, mode, mtime, ctime, atime, uid, gid, uname,
    grname) whose row names are ``<pkg>/<file>``. Packages sorted by name, files by version.
    """
    return write_rds(archive_list(files))


def _file_version(filename: str) -> str:
    stem = filename
    for suffix in (".tar.gz", ".zip", ".tgz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.partition("_")[2]


def _attr(vec: RVector, name: str) -> RValue:
    return next((v for k, v in vec.attributes if k == name), None)


def _strs(value: RValue) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in value.values] if value and value.type == "str" else []


def _from_list(top: object) -> list[ArchivedFile]:
    if not isinstance(top, RVector) or top.type != "list":
        raise ValueError("not a named list")
    out: list[ArchivedFile] = []
    for pkg, frame in zip(_strs(_attr(top, "names")), top.values):
        if pkg is None or not isinstance(frame, RVector) or frame.type != "list":
            continue
        cols = dict(zip(_strs(_attr(frame, "names")), frame.values))
        size, mtime = cols.get("size"), cols.get("mtime")
        sizes = size.values if isinstance(size, RVector) and size.type == "real" else None
        times = mtime.values if isinstance(mtime, RVector) and mtime.type == "real" else None
        for i, row in enumerate(_strs(_attr(frame, "row.names"))):
            if row is None or "/" not in row:
                continue
            folder, _, filename = row.partition("/")
            out.append(ArchivedFile(
                package=folder or pkg, filename=filename,
                size=int(sizes[i]) if sizes is not None else 0,  # type: ignore[call-overload]
                mtime=float(times[i]) if times is not None else 0.0,  # type: ignore[arg-type]
            ))
    return out


def _rdata_to_rvector(obj: "RObject") -> RValue:
    """rdata's parse tree -> RVector, for files the fast reader does not cover."""
    from rdata.parser import RObjectType

    kinds = {RObjectType.STR: "str", RObjectType.VEC: "list", RObjectType.REAL: "real",
             RObjectType.INT: "int", RObjectType.LGL: "lgl"}
    kind = kinds.get(obj.info.type)
    if kind is None:
        return None
    if kind == "str":
        values: list[object] = [c.value.decode("utf-8", "replace") if isinstance(c.value, bytes) else None
                                for c in obj.value]
    elif kind == "list":
        values = [_rdata_to_rvector(v) for v in obj.value]
    else:
        values = [v for v in obj.value.tolist()]
    attrs: list[tuple[str, RValue]] = []
    node = obj.attributes
    while node is not None and node.info.type == RObjectType.LIST:
        car, cdr = node.value
        tag = node.tag.referenced_object if node.tag is not None and node.tag.info.type == RObjectType.REF else node.tag
        if tag is not None and tag.info.type == RObjectType.SYM:
            attrs.append((tag.value.value.decode("utf-8", "replace"), _rdata_to_rvector(car)))
        node = cdr
    return RVector(kind, values, tuple(attrs))  # type: ignore[arg-type]


def parse_archive_rds(data: bytes, *, limit: int = INDEX_UNPACKED) -> list[ArchivedFile]:
    """The files listed in an upstream ``src/contrib/Meta/archive.rds`` (see render_archive_rds).

    Read with ``rds.read_rds`` (CRAN's ~150,000 rows in about a second); a file using
    parts of R's format it does not cover falls back to the rdata package's parser when the
    optional ``rdata`` extra is installed, else UpstreamError says how to get it.
    Rows whose name is not ``<pkg>/<file>`` are skipped. BadRequest if it is not a listing.
    """
    try:
        try:
            data = decompress_index(data, "archive.rds", limit=limit)
            top = read_rds(data)
        except UnsupportedRds as exc:
            top = _read_with_rdata(data, exc)
        return _from_list(top)
    except (ValueError, TypeError, IndexError, AttributeError, NotImplementedError, EOFError, OSError,
            zlib.error) as exc:
        raise BadRequest(f"archive.rds is not a CRAN archive listing: {exc}") from None


def _read_with_rdata(data: bytes, unsupported: UnsupportedRds) -> RValue:
    """The fallback: rdata's complete parser (an optional extra: it pulls numpy, pandas, xarray)."""
    try:
        from rdata.parser import parse_data
    except ImportError:
        raise UpstreamError(
            f"the upstream archive.rds uses a part of R's format the built-in reader does not cover "
            f"({unsupported}); install the optional reader: pip install 'channelgate[rdata]'"
        ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _rdata_to_rvector(parse_data(data).object)
