"""Validate a wheel or sdist uploaded with twine's legacy form (``:action=file_upload``).

Pure and synchronous (call it in an executor): reads the stored temp file once, never
writes. Specs: binary distribution format (wheel file names, ``.dist-info/METADATA``),
source distribution format (``<name>-<version>.tar.gz`` with ``<top>/PKG-INFO``), core
metadata (Name, Version, Requires-Python), the legacy upload API's digest fields.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from proxy.archives import Budget, clip, open_zip, parts_of, read_member, scan_zip, verify_zip, walk_tar
from proxy.errors import BadRequest
from proxy.settings import Limits

__all__ = ["Distribution", "MAX_METADATA_BYTES", "inspect_distribution", "release_file_key", "require_fields", "same_release_file"]

MAX_METADATA_BYTES = 4 * 1024 * 1024  # a METADATA/PKG-INFO larger than this is refused
_DIGEST_FIELDS = (("sha256_digest", "sha256"), ("blake2_256_digest", "blake2_256"), ("md5_digest", "md5"))


@dataclass(frozen=True, slots=True)
class Distribution:
    name: str  # PEP 503 normalised
    display_name: str  # Name as METADATA writes it
    version: str  # PEP 440 normalised
    filename: str
    requires_python: str | None
    metadata: bytes  # the METADATA / PKG-INFO bytes, served as the PEP 658 ``.metadata`` file
    packagetype: Literal["bdist_wheel", "sdist"]


def require_fields(fields: Mapping[str, str], required: Iterable[str] = (":action", "name", "version")) -> None:
    """Raise BadRequest naming every required form field that is missing or empty."""
    missing = [name for name in required if not str(fields.get(name, "")).strip()]
    if missing:
        raise BadRequest("missing required form field(s): " + ", ".join(missing))


# PEP 427 / the binary distribution format: every file name component is ASCII
# (name: [A-Za-z0-9_.]; tags: [A-Za-z0-9_.]; version: PEP 440 public + local); PEP 508 names.
_FILENAME_RE = re.compile(r"^[A-Za-z0-9._+!-]+$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_PROJECT_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)

ReleaseFileKey = tuple[str, Version, str, frozenset[str]]


def _parse_filename(filename: str) -> tuple[str, Version, Literal["bdist_wheel", "sdist"]]:
    if not filename or "/" in filename or "\\" in filename or filename.startswith(".") or "\x00" in filename:
        raise BadRequest(f"invalid distribution file name {clip(filename)!r}")
    if not _FILENAME_RE.match(filename):
        raise BadRequest(
            f"invalid distribution file name {ascii(filename)[1:-1][:200]!r}: only ASCII letters, digits and"
            " '._+!-' are allowed (PEP 427, PEP 625)"
        )
    try:
        if filename.endswith(".whl"):
            name, version, _build, tags = parse_wheel_filename(filename)
            for part in filename[: -len(".whl")].split("-")[-3:]:
                if not all(_TAG_RE.match(tag) for tag in part.split(".")):
                    raise BadRequest(f"invalid wheel file name {filename!r}: tag {part!r} is not [A-Za-z0-9_.]")
            return name, version, "bdist_wheel"
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return name, version, "sdist"
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        raise BadRequest(f"invalid distribution file name {filename!r}: {exc}") from None
    raise BadRequest(
        f"unsupported distribution file type {filename!r}: expected a wheel (.whl) or an sdist (.tar.gz, .zip)"
    )


def release_file_key(filename: str) -> ReleaseFileKey | None:
    """What makes two file names the same release file, however they are spelled: the
    PEP 503 name, the PEP 440 normalised version and, for a wheel, its build tag and tag set
    (PEP 427); a release has one sdist (warehouse's rule), whatever its extension. None for
    a name that is not a distribution file name."""
    try:
        if filename.endswith(".whl"):
            name, version, build, tags = parse_wheel_filename(filename)
            return name, version, "".join(map(str, build)), frozenset(str(t) for t in tags)
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return name, version, "sdist", frozenset()
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return None


def same_release_file(a: ReleaseFileKey | None, b: ReleaseFileKey | None) -> bool:
    """Would an installer see these two files as candidates for the same slot? The same
    name, version and build tag, and a shared tag (or both sdists)."""
    if a is None or b is None or a[:3] != b[:3]:
        return False
    return a[2] == "sdist" or bool(a[3] & b[3])


def check_project_name(name: str, where: str) -> None:
    """PEP 508: project names are ASCII letters, digits and ``._-`` (no confusables)."""
    if not _PROJECT_NAME_RE.match(name):
        raise BadRequest(
            f"{where} {ascii(name)[1:-1][:200]!r} is not a valid project name: only ASCII letters, digits"
            " and '._-' are allowed (PEP 508)"
        )


def _parse_version(text: str, where: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise BadRequest(f"{where} {text!r} is not a valid PEP 440 version") from None


def _actual_digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.blake2b(digest_size=32) if algorithm == "blake2_256" else hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_digests(path: Path, fields: Mapping[str, str], digests: Mapping[str, str]) -> None:
    for field_name, algorithm in _DIGEST_FIELDS:
        declared = str(fields.get(field_name, "") or "").strip().lower()
        if not declared:
            continue
        actual = (digests.get(algorithm) or _actual_digest(path, algorithm)).lower()
        if declared != actual:
            raise BadRequest(f"{field_name} does not match the uploaded file (declared {declared}, got {actual})")


def _wheel_metadata(path: Path, filename: str, fname_name: str, fname_version: Version, budget: Budget) -> bytes:
    with open_zip(path, filename, "wheel") as zf:
        infos = scan_zip(zf, budget)
        candidates: list[zipfile.ZipInfo] = []
        for info in infos:
            parts = info.filename.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                directory = parts[0][: -len(".dist-info")]
                dist_name, _, dist_version = directory.rpartition("-")
                try:
                    same_version = Version(dist_version) == fname_version
                except InvalidVersion:
                    same_version = False
                if canonicalize_name(dist_name) == fname_name and same_version:
                    candidates.append(info)
        expected = f"{filename.split('-')[0]}-{filename.split('-')[1]}.dist-info/METADATA"
        if not candidates:
            raise BadRequest(f"{filename} is not a valid wheel: it has no {expected}")
        if len(candidates) > 1:
            raise BadRequest(f"{filename} is not a valid wheel: more than one {expected}")
        metadata_info = candidates[0]
        wheel_member = metadata_info.filename.rsplit("/", 1)[0] + "/WHEEL"
        if wheel_member not in zf.namelist():
            raise BadRequest(f"{filename} is not a valid wheel: it has no {wheel_member}")
        verify_zip(zf, infos, filename)  # every member's CRC: a corrupt wheel is refused here
        with zf.open(metadata_info) as fh:
            return read_member(fh, metadata_info.file_size, MAX_METADATA_BYTES, f"{filename}: {metadata_info.filename}")


def _pick_pkg_info(names: Iterable[str], filename: str) -> str:
    stem = filename[: -len(".tar.gz")] if filename.endswith(".tar.gz") else filename[: -len(".zip")]
    candidates = [n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO")]
    if not candidates:
        raise BadRequest(f"{filename} is not a valid sdist: it has no <top>/PKG-INFO (expected {stem}/PKG-INFO)")
    return candidates[0]


def _one_top_folder(filename: str, names: Iterable[str]) -> None:
    """An sdist holds one top folder ``<name>-<version>/`` (the source distribution format)."""
    tops = {parts_of(n)[0] for n in names if parts_of(n)}
    if len(tops) > 1:
        shown = ", ".join(repr(clip(t)) for t in sorted(tops)[:3])
        raise BadRequest(f"{filename} is not a valid sdist: more than one top folder ({shown})")


def _sdist_metadata(path: Path, filename: str, budget: Budget) -> bytes:
    if filename.endswith(".zip"):
        with open_zip(path, filename, "sdist") as zf:
            infos = scan_zip(zf, budget, root=1)
            _one_top_folder(filename, (i.filename for i in infos))
            verify_zip(zf, infos, filename)
            info = zf.getinfo(_pick_pkg_info((i.filename for i in infos), filename))
            with zf.open(info) as fh:
                return read_member(fh, info.file_size, MAX_METADATA_BYTES, f"{filename}: {info.filename}")
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        raise BadRequest(f"{filename} is not a valid sdist: not a gzip-compressed tar archive")
    found: dict[str, bytes] = {}
    names: list[str] = []

    def visit(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name.removeprefix("./")
        if not names or parts_of(name)[:1] != parts_of(names[0])[:1]:
            names.append(name)
            _one_top_folder(filename, names)
        if name.count("/") == 1 and name.endswith("/PKG-INFO"):
            if not member.isfile():
                raise BadRequest(f"{filename}: {name} is not a regular file")
            extracted = tar.extractfile(member)
            assert extracted is not None
            found[name] = read_member(extracted, member.size, MAX_METADATA_BYTES, f"{filename}: {name}")

    with gzip.GzipFile(path, mode="rb") as gz:
        walk_tar(gz, budget, visit, where=filename, root=1)
    return found[_pick_pkg_info(found, filename)]


def inspect_distribution(
    path: Path, filename: str, fields: Mapping[str, str], digests: Mapping[str, str], limits: Limits | None = None
) -> Distribution:
    """Check an uploaded distribution against its name, the twine form and its own metadata.

    ``digests`` holds the actual hex digests of the bytes (``sha256``, ``md5``,
    ``blake2_256``; any missing one is computed here). Raises BadRequest naming the problem.
    """
    path = Path(path)
    require_fields(fields, ("name", "version"))
    fname_name, fname_version, packagetype = _parse_filename(filename)

    form_name = str(fields["name"]).strip()
    check_project_name(form_name, "form field name")
    if canonicalize_name(form_name) != fname_name:
        raise BadRequest(f"form field name {form_name!r} does not match the file name {filename!r}")
    form_version = _parse_version(str(fields["version"]).strip(), "form field version")
    if form_version != fname_version:
        raise BadRequest(f"form field version {fields['version']!r} does not match the file name {filename!r}")
    filetype = str(fields.get("filetype", "") or "").strip()
    if filetype and filetype != packagetype:
        raise BadRequest(f"form field filetype {filetype!r} does not match the file {filename!r} ({packagetype})")

    _check_digests(path, fields, digests)

    budget = Budget(filename, limits or Limits(), path.stat().st_size)
    if packagetype == "bdist_wheel":
        metadata = _wheel_metadata(path, filename, fname_name, fname_version, budget)
        where = "METADATA"
    else:
        metadata = _sdist_metadata(path, filename, budget)
        where = "PKG-INFO"

    raw, _unparsed = parse_email(metadata)
    meta_name = raw.get("name")
    meta_version = raw.get("version")
    missing = [f for f, v in (("Name", meta_name), ("Version", meta_version)) if not v]
    if missing:
        raise BadRequest(f"{filename}: {where} has no {' or '.join(missing)} field")
    assert meta_name is not None and meta_version is not None
    check_project_name(meta_name, f"{filename}: {where} Name")
    if canonicalize_name(meta_name) != fname_name:
        raise BadRequest(f"{filename}: {where} Name {meta_name!r} does not match the file name")
    if _parse_version(meta_version, f"{where} Version") != fname_version:
        raise BadRequest(f"{filename}: {where} Version {meta_version!r} does not match the file name")

    requires_python = raw.get("requires_python") or str(fields.get("requires_python", "") or "").strip() or None
    return Distribution(
        name=fname_name,
        display_name=meta_name,
        version=str(fname_version),
        filename=filename,
        requires_python=requires_python,
        metadata=metadata,
        packagetype=packagetype,
    )
