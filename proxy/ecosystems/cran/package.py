"""Validation of uploaded R packages (the ``cran_source_package`` / ``cran_binary_package``
upload forms) and where each one lives in a CRAN-style tree.

Layouts (R Installation and Administration, "Setting up a package repository", and
utils::contrib.url):

- source:   ``src/contrib/<pkg>_<ver>.tar.gz`` (older versions ``src/contrib/Archive/<pkg>/``);
  a gzip tar made by ``R CMD build``, one top folder ``<pkg>/`` with ``<pkg>/DESCRIPTION``.
- Windows:  ``bin/windows/contrib/<x.y>/<pkg>_<ver>.zip``; a zip of the installed package.
- macOS:    ``bin/macosx/[<subtype>/]contrib/<x.y>/<pkg>_<ver>.tgz``; a gzip tar of the
  installed package. contrib.url builds the path from ``.Platform$pkgType``:
  ``mac.binary`` -> ``bin/macosx/contrib/<x.y>``, ``mac.binary.<subtype>`` ->
  ``bin/macosx/<subtype>/contrib/<x.y>``.

Binary DESCRIPTIONs carry ``Built: R x.y.z; <platform>; <date>; <OStype>`` (platform is
empty for packages without compiled code). ``x.y`` picks the contrib folder; the CRAN
macOS subtype follows from the R version and the CPU of the CRAN build for that version.
"""
from __future__ import annotations

import gzip
import hashlib
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy.archives import Budget, open_zip, parts_of, read_member, scan_zip, verify_zip, walk_tar
from proxy.ecosystems.cran.dcf import DcfError, parse_dcf
from proxy.ecosystems.cran.index import (
    DESCRIPTION_INDEX_FIELDS,
    STANDARD_FIELDS,
    is_valid_package_name,
    is_valid_version,
    normalize_entry,
)
from proxy.errors import BadRequest
from proxy.settings import Limits

Kind = Literal["source", "binary"]

MAX_DESCRIPTION_BYTES = 1 << 20
SOURCE_FILETYPE = "cran_source_package"
BINARY_FILETYPE = "cran_binary_package"


@dataclass(frozen=True)
class BuiltInfo:
    """The parsed ``Built:`` field of a binary package."""

    r_version: str      # "4.3.1"
    r_minor: str        # "4.3", the contrib folder
    platform: str       # "x86_64-w64-mingw32", "aarch64-apple-darwin20", or "" (pure R)
    date: str
    os_type: str        # "windows" | "unix"


@dataclass(frozen=True)
class CranPackage:
    """A validated R package file and its place in the repository."""

    name: str
    version: str
    kind: Kind
    path_in_repo: str                      # "src/contrib/abc_2.1.tar.gz", "bin/windows/contrib/4.3/abc_2.1.zip"
    fields: dict[str, str] = field(hash=False)  # the PACKAGES entry (incl. MD5sum)
    filename: str = ""
    md5: str = ""
    sha256: str = ""
    size: int = 0
    built: BuiltInfo | None = None
    description: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def contrib_dir(self) -> str:
        """The contrib folder the file and its PACKAGES entry belong to."""
        return posixpath.dirname(self.path_in_repo)

    @property
    def archive_path(self) -> str:
        """Where this file goes once a newer version replaces it (source packages only,
        like CRAN: ``src/contrib/Archive/<pkg>/<file>``)."""
        if self.kind != "source":
            raise ValueError("only source packages are archived")
        return f"src/contrib/Archive/{self.name}/{self.filename}"


# ---------------------------------------------------------------- helpers

def _file_hashes(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


def _check_filename(filename: str, suffixes: tuple[str, ...]) -> tuple[str, str, str]:
    """Split ``<pkg>_<ver><suffix>`` into (pkg, ver, suffix), or raise."""
    if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise BadRequest(f"invalid file name {filename!r}")
    for suffix in suffixes:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            pkg, sep, ver = stem.partition("_")
            if sep and is_valid_package_name(pkg) and is_valid_version(ver):
                return pkg, ver, suffix
            break
    expected = " or ".join(f"<Package>_<Version>{s}" for s in suffixes)
    raise BadRequest(f"file name {filename!r} is not of the form {expected}")


def _top_folder(name: str, top: str | None) -> str | None:
    """The member's top folder; BadRequest when it differs from the one seen before."""
    parts = parts_of(name)
    if not parts:
        return top
    if top is not None and parts[0] != top:
        raise BadRequest(f"archive has more than one top folder ({top!r} and {parts[0]!r})")
    return parts[0]


def _parse_description(data: bytes, where: str) -> dict[str, str]:
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise BadRequest(f"{where} is too large")
    try:
        records = parse_dcf(data)
    except DcfError as exc:
        raise BadRequest(f"{where} is not valid DCF: {exc.message}") from None
    if len(records) != 1:
        raise BadRequest(f"{where} must hold exactly one record, found {len(records)}")
    return records[0]


def _check_identity(desc: dict[str, str], top: str, filename: str, fname_pkg: str,
                    fname_ver: str, where: str) -> tuple[str, str]:
    name = desc.get("Package", "").strip()
    version = desc.get("Version", "").strip()
    if not name:
        raise BadRequest(f"{where} has no Package field")
    if not version:
        raise BadRequest(f"{where} has no Version field")
    if not is_valid_package_name(name):
        raise BadRequest(f"{where}: invalid package name {name!r}")
    if not is_valid_version(version):
        raise BadRequest(f"{where}: invalid version {version!r} for package {name}")
    if top != name:
        raise BadRequest(f"top folder {top!r} does not match package name {name!r} in DESCRIPTION")
    if (fname_pkg, fname_ver) != (name, version):
        raise BadRequest(
            f"file name {filename!r} does not match DESCRIPTION "
            f"(Package {name}, Version {version}: expected {name}_{version}"
            f"{filename[len(fname_pkg) + 1 + len(fname_ver):]})"
        )
    return name, version


def _field_order(k: str) -> int:
    order = STANDARD_FIELDS + ("Built",)
    return order.index(k) if k in order else len(order)


def _index_fields(desc: dict[str, str], md5: str, *, compiled: bool, binary: bool) -> dict[str, str]:
    """The PACKAGES entry of a package: its DESCRIPTION's index fields plus MD5sum."""
    entry = normalize_entry({k: desc.get(k) for k in DESCRIPTION_INDEX_FIELDS if binary or k != "Built"})
    # R CMD build always writes NeedsCompilation; for hand-made archives infer it the way
    # R does (a src/ folder in a source package, libs/ in an installed one).
    entry.setdefault("NeedsCompilation", "yes" if compiled else "no")
    entry["MD5sum"] = md5
    return {k: entry[k] for k in sorted(entry, key=_field_order)}


# ---------------------------------------------------------------- tar (source, macOS)

def _read_tar(path: Path, what: str, compiled_dir: str, limits: Limits) -> tuple[str, dict[str, str], bool]:
    """Walk a gzip tar completely; return (top folder, DESCRIPTION fields, has <compiled_dir>/).

    The whole stream is read (bounded by ``limits``), so a truncated file, a bad gzip CRC or
    a bomb is found here; links may not leave the package folder.
    """
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            raise BadRequest(f"{what} is not a gzip-compressed tar file")
    state: dict[str, str] = {}
    found: dict[str, bytes] = {}

    def visit(tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        top = _top_folder(m.name, state.get("top"))
        parts = parts_of(m.name)
        if top is None or not parts:
            return
        state["top"] = top
        if len(parts) == 1 and not m.isdir():
            raise BadRequest(f"archive member {m.name!r} is not inside a package folder")
        if len(parts) >= 2 and parts[1] == compiled_dir:
            state["compiled"] = "yes"
        if m.isfile() and len(parts) == 2 and parts[1] == "DESCRIPTION":
            f = tar.extractfile(m)
            assert f is not None
            found["desc"] = read_member(f, m.size, MAX_DESCRIPTION_BYTES, f"{top}/DESCRIPTION")

    # gzip.GzipFile checks the CRC and length in the gzip trailer once drained; tarfile's
    # own "r|gz" stream stops at the tar end blocks and never looks at the trailer.
    try:
        with gzip.GzipFile(path, mode="rb") as gz:
            walk_tar(gz, Budget(what, limits, path.stat().st_size), visit, where=what, root=1)
    except BadRequest as exc:
        if "truncated" in exc.message or "corrupt" in exc.message or "not a valid tar" in exc.message:
            raise BadRequest(f"{what} is truncated or not a valid tar.gz ({exc.message})") from None
        raise
    top = state.get("top")
    if top is None:
        raise BadRequest(f"{what} is empty")
    if "desc" not in found:
        raise BadRequest(f"{what} has no {top}/DESCRIPTION")
    return top, _parse_description(found["desc"], f"{top}/DESCRIPTION"), "compiled" in state


def inspect_source(path: Path, filename: str, limits: Limits | None = None) -> CranPackage:
    """Validate an R source package (``R CMD build`` output) uploaded as ``filename``."""
    fpkg, fver, _ = _check_filename(filename, (".tar.gz",))
    top, desc, has_src = _read_tar(path, f"source package {filename!r}", "src", limits or Limits())
    name, version = _check_identity(desc, top, filename, fpkg, fver, f"{top}/DESCRIPTION")
    if desc.get("Built"):
        raise BadRequest(
            f"{filename!r} is an installed (binary) package (DESCRIPTION has Built:); "
            "upload it with filetype=cran_binary_package as a Windows .zip or macOS .tgz"
        )
    md5, sha256, size = _file_hashes(path)
    return CranPackage(
        name=name, version=version, kind="source",
        path_in_repo=f"src/contrib/{filename}",
        fields=_index_fields(desc, md5, compiled=has_src, binary=False),
        filename=filename, md5=md5, sha256=sha256, size=size, built=None, description=desc,
    )


# ---------------------------------------------------------------- binaries

def parse_built(value: str) -> BuiltInfo:
    """Parse ``Built: R 4.3.1; x86_64-w64-mingw32; 2023-07-10 12:00:00 UTC; windows``."""
    parts = [p.strip() for p in " ".join(value.split()).split(";")]
    if len(parts) != 4:
        raise BadRequest(f"malformed Built field {value!r} (expected 'R x.y.z; platform; date; OStype')")
    m = re.fullmatch(r"R (\d+)\.(\d+)\.(\d+)", parts[0])
    if not m:
        raise BadRequest(f"Built field {value!r} does not start with 'R x.y.z'")
    os_type = parts[3]
    if os_type not in ("windows", "unix"):
        raise BadRequest(f"Built field {value!r} has unknown OS type {os_type!r}")
    return BuiltInfo(
        r_version=".".join(m.groups()), r_minor=f"{m.group(1)}.{m.group(2)}",
        platform=parts[1], date=parts[2], os_type=os_type,
    )


def _cpu(platform: str) -> str:
    cpu = platform.split("-", 1)[0].lower()
    return "arm64" if cpu in ("aarch64", "arm64") else cpu


def macos_subtype(r_minor: str, platform: str) -> str | None:
    """The CRAN macOS binary subtype (``.Platform$pkgType`` minus ``mac.binary.``).

    CRAN's macOS builds per R version (the pkgType each CRAN R build reports):
    R 3.1-3.3 ``mavericks``; R 3.4-3.6 ``el-capitan``; R 4.0 none (legacy tree);
    R 4.1-4.2 ``big-sur-arm64`` on Apple silicon, none on Intel; R 4.3-4.5
    ``big-sur-arm64`` / ``big-sur-x86_64``; R 4.6+ ``sonoma-arm64`` / ``big-sur-x86_64``.
    A package without compiled code has an empty platform: it runs on both CPUs, and
    we file it under the Apple-silicon tree.
    """
    major, minor = (int(x) for x in r_minor.split("."))
    v = (major, minor)
    arm = _cpu(platform) in ("arm64", "") if platform else True
    if v < (3, 1):
        return None
    if v < (3, 4):
        return "mavericks"
    if v < (4, 0):
        return "el-capitan"
    if v < (4, 1):
        return None
    if v < (4, 3):
        return "big-sur-arm64" if arm else None
    if v < (4, 6):
        return "big-sur-arm64" if arm else "big-sur-x86_64"
    return "sonoma-arm64" if arm else "big-sur-x86_64"


def binary_contrib_dir(built: BuiltInfo, suffix: str) -> str:
    """The contrib folder for a binary (utils::contrib.url for win.binary / mac.binary[.sub])."""
    if suffix == ".zip":
        return f"bin/windows/contrib/{built.r_minor}"
    sub = macos_subtype(built.r_minor, built.platform)
    return f"bin/macosx/{sub}/contrib/{built.r_minor}" if sub else f"bin/macosx/contrib/{built.r_minor}"


def _read_zip(path: Path, what: str, limits: Limits) -> tuple[str, dict[str, str], bool]:
    with open_zip(path, what, "zip file") as zf:
        infos = scan_zip(zf, Budget(what, limits, path.stat().st_size), root=1)
        top: str | None = None
        has_libs = False
        for info in infos:
            top = _top_folder(info.filename, top)
            parts = parts_of(info.filename)
            if len(parts) == 1 and not info.is_dir():
                raise BadRequest(f"archive member {info.filename!r} is not inside a package folder")
            if len(parts) >= 2 and parts[1] == "libs":
                has_libs = True
        if top is None:
            raise BadRequest(f"{what} is empty")
        verify_zip(zf, infos, what)
        desc = next((i for i in infos if parts_of(i.filename) == [top, "DESCRIPTION"] and not i.is_dir()), None)
        if desc is None:
            raise BadRequest(f"{what} has no {top}/DESCRIPTION")
        with zf.open(desc) as fh:
            desc_bytes = read_member(fh, desc.file_size, MAX_DESCRIPTION_BYTES, f"{top}/DESCRIPTION")
    return top, _parse_description(desc_bytes, f"{top}/DESCRIPTION"), has_libs


def inspect_binary(path: Path, filename: str, limits: Limits | None = None) -> CranPackage:
    """Validate a Windows ``.zip`` or macOS ``.tgz`` R binary package uploaded as ``filename``."""
    fpkg, fver, suffix = _check_filename(filename, (".zip", ".tgz"))
    what = f"binary package {filename!r}"
    if suffix == ".zip":
        top, desc, has_libs = _read_zip(path, what, limits or Limits())
    else:
        top, desc, has_libs = _read_tar(path, what, "libs", limits or Limits())
    where = f"{top}/DESCRIPTION"
    name, version = _check_identity(desc, top, filename, fpkg, fver, where)
    built_raw = desc.get("Built", "").strip()
    if not built_raw:
        raise BadRequest(
            f"{where} has no Built field: {filename!r} is not an installed (binary) package"
        )
    built = parse_built(built_raw)
    if suffix == ".zip":
        if built.os_type != "windows" or (built.platform and "mingw" not in built.platform):
            raise BadRequest(f"{filename!r} is not a Windows binary (Built: {built_raw})")
    else:
        if built.os_type != "unix" or (built.platform and "darwin" not in built.platform):
            raise BadRequest(
                f"{filename!r} is not a macOS binary (Built: {built_raw}); "
                "only Windows .zip and macOS .tgz binaries are served"
            )
    md5, sha256, size = _file_hashes(path)
    fields = _index_fields(desc, md5, compiled=has_libs, binary=True)
    return CranPackage(
        name=name, version=version, kind="binary",
        path_in_repo=f"{binary_contrib_dir(built, suffix)}/{filename}",
        fields=fields, filename=filename, md5=md5, sha256=sha256, size=size,
        built=built, description=desc,
    )


def inspect_upload(path: Path, filename: str, filetype: str, limits: Limits | None = None) -> CranPackage:
    """Dispatch on the upload form's ``filetype`` (``cran_source_package`` | ``cran_binary_package``)."""
    if filetype == SOURCE_FILETYPE:
        return inspect_source(path, filename, limits)
    if filetype == BINARY_FILETYPE:
        return inspect_binary(path, filename, limits)
    raise BadRequest(f"unknown filetype {filetype!r} (use {SOURCE_FILETYPE} or {BINARY_FILETYPE})")
