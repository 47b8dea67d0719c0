"""Validate a wheel or sdist uploaded with twine's legacy form (``:action=file_upload``).

Pure and synchronous (call it in an executor): reads the stored temp file once, never
writes. Specs: binary distribution format (wheel file names, ``.dist-info/METADATA``),
source distribution format (``<name>-<version>.tar.gz`` with ``<top>/PKG-INFO``), core
metadata (Name, Version, Requires-Python), the legacy upload API's digest fields.
"""
from __future__ import annotations

import hashlib
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

from proxy.errors import BadRequest

__all__ = ["Distribution", "MAX_METADATA_BYTES", "inspect_distribution", "require_fields"]

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


def _parse_filename(filename: str) -> tuple[str, Version, Literal["bdist_wheel", "sdist"]]:
    if not filename or "/" in filename or "\\" in filename or filename.startswith(".") or "\x00" in filename:
        raise BadRequest(f"invalid distribution file name {filename!r}")
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
            return name, version, "bdist_wheel"
        if filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
            return name, version, "sdist"
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        raise BadRequest(f"invalid distribution file name {filename!r}: {exc}") from None
    raise BadRequest(
        f"unsupported distribution file type {filename!r}: expected a wheel (.whl) or an sdist (.tar.gz, .zip)"
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


def _wheel_metadata(path: Path, filename: str, fname_name: str, fname_version: Version) -> bytes:
    if not zipfile.is_zipfile(path):
        raise BadRequest(f"{filename} is not a valid wheel: not a zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            candidates: list[zipfile.ZipInfo] = []
            for info in zf.infolist():
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
            if metadata_info.file_size > MAX_METADATA_BYTES:
                raise BadRequest(f"{filename}: {metadata_info.filename} is too large")
            return zf.read(metadata_info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadRequest(f"{filename} is not a valid wheel: corrupt zip archive ({exc})") from None


def _pick_pkg_info(names: Iterable[str], filename: str) -> str:
    stem = filename[: -len(".tar.gz")] if filename.endswith(".tar.gz") else filename[: -len(".zip")]
    candidates = [n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO")]
    if not candidates:
        raise BadRequest(f"{filename} is not a valid sdist: it has no <top>/PKG-INFO (expected {stem}/PKG-INFO)")
    preferred = [n for n in candidates if n == f"{stem}/PKG-INFO"]
    if preferred:
        return preferred[0]
    if len(candidates) > 1:
        raise BadRequest(f"{filename} is not a valid sdist: several top-level PKG-INFO files, none in {stem}/")
    return candidates[0]


def _sdist_metadata(path: Path, filename: str) -> bytes:
    if filename.endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise BadRequest(f"{filename} is not a valid sdist: not a zip archive")
        try:
            with zipfile.ZipFile(path) as zf:
                member = _pick_pkg_info(zf.namelist(), filename)
                info = zf.getinfo(member)
                if info.file_size > MAX_METADATA_BYTES:
                    raise BadRequest(f"{filename}: {member} is too large")
                return zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BadRequest(f"{filename} is not a valid sdist: corrupt zip archive ({exc})") from None
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        raise BadRequest(f"{filename} is not a valid sdist: not a gzip-compressed tar archive")
    try:
        with tarfile.open(path, mode="r:gz") as tf:
            members = {m.name.removeprefix("./"): m for m in tf.getmembers()}
            name = _pick_pkg_info(members, filename)
            tar_member = members[name]
            if not tar_member.isfile():
                raise BadRequest(f"{filename}: {name} is not a regular file")
            if tar_member.size > MAX_METADATA_BYTES:
                raise BadRequest(f"{filename}: {name} is too large")
            extracted = tf.extractfile(tar_member)
            if extracted is None:
                raise BadRequest(f"{filename}: {name} is not a regular file")
            return extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadRequest(f"{filename} is not a valid sdist: corrupt tar.gz archive ({exc})") from None


def inspect_distribution(
    path: Path, filename: str, fields: Mapping[str, str], digests: Mapping[str, str]
) -> Distribution:
    """Check an uploaded distribution against its name, the twine form and its own metadata.

    ``digests`` holds the actual hex digests of the bytes (``sha256``, ``md5``,
    ``blake2_256``; any missing one is computed here). Raises BadRequest naming the problem.
    """
    path = Path(path)
    require_fields(fields, ("name", "version"))
    fname_name, fname_version, packagetype = _parse_filename(filename)

    form_name = str(fields["name"]).strip()
    if canonicalize_name(form_name) != fname_name:
        raise BadRequest(f"form field name {form_name!r} does not match the file name {filename!r}")
    form_version = _parse_version(str(fields["version"]).strip(), "form field version")
    if form_version != fname_version:
        raise BadRequest(f"form field version {fields['version']!r} does not match the file name {filename!r}")
    filetype = str(fields.get("filetype", "") or "").strip()
    if filetype and filetype != packagetype:
        raise BadRequest(f"form field filetype {filetype!r} does not match the file {filename!r} ({packagetype})")

    _check_digests(path, fields, digests)

    if packagetype == "bdist_wheel":
        metadata = _wheel_metadata(path, filename, fname_name, fname_version)
        where = "METADATA"
    else:
        metadata = _sdist_metadata(path, filename)
        where = "PKG-INFO"

    raw, _unparsed = parse_email(metadata)
    meta_name = raw.get("name")
    meta_version = raw.get("version")
    missing = [f for f, v in (("Name", meta_name), ("Version", meta_version)) if not v]
    if missing:
        raise BadRequest(f"{filename}: {where} has no {' or '.join(missing)} field")
    assert meta_name is not None and meta_version is not None
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
