"""Validate an uploaded conda package and derive its repodata record.

Formats (conda-package-handling / CEP-3):
- ``.tar.bz2``: a bzip2-compressed tar holding ``info/`` and the payload.
- ``.conda``: an uncompressed zip holding ``metadata.json``, ``info-<stem>.tar.zst`` and
  ``pkg-<stem>.tar.zst``.

``inspect_package`` reads every member of every inner tar (so a truncated stream, a
member outside the prefix or a bad archive fails *before* the file is published), and
returns the ``repodata.json`` record: ``info/index.json`` plus ``sha256``/``md5``/``size``
(the caller hashed the bytes while storing them). This is blocking, CPU-bound work:
handlers run it in a thread.
"""
from __future__ import annotations

import bz2
import re
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ...archives import Budget, Readable, clip, open_zip, read_member, scan_zip, walk_tar
from ...errors import BadRequest
from ...settings import Limits
from .version import InvalidVersion, VersionOrder

# the zstd reader conda-package-streaming uses (raises EOFError on a truncated frame)
if sys.version_info >= (3, 14):
    import compression.zstd as _zstd
else:
    import backports.zstd as _zstd

CONDA_EXTENSIONS = (".conda", ".tar.bz2")

# index.json keys that describe a local install or a fetch, never a channel record
# (conda-index and rattler-index drop them as well).
_NOT_IN_REPODATA = frozenset({"fn", "url", "channel", "schannel", "priority", "files", "paths", "link", "auth"})
_REQUIRED_STR = ("name", "version", "build", "subdir")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_BUILD_RE = re.compile(r"^[A-Za-z0-9_.+]+$")  # conda build strings: no '-', no spaces
_SUBDIR_RE = re.compile(r"^(noarch|[a-z0-9]+-[a-z0-9_]+)$")
_MAX_INDEX_JSON = 1 << 20

@dataclass(frozen=True)
class CondaPackage:
    """A validated conda package file and its repodata record."""

    name: str
    version: str
    build: str
    build_number: int
    subdir: str
    filename: str
    record: dict[str, Any] = field(hash=False)
    # info/about.json's descriptive fields (summary, description, home, license): what
    # anaconda-client reads on its side, read here for every upload path (curl, the web UI)
    about: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def record_bytes(self) -> bytes:
        """The record as compact JSON, the form repodata rendering concatenates."""
        return orjson.dumps(self.record, option=orjson.OPT_SORT_KEYS)

    def as_record(self) -> tuple[str, str, bytes]:
        """This package as a merge source entry: (filename, name, record JSON bytes)."""
        return self.filename, self.name, self.record_bytes


def split_filename(filename: str) -> tuple[str, str]:
    """``foo-1.0-0.conda`` -> (``foo-1.0-0``, ``.conda``); BadRequest for other extensions."""
    for ext in CONDA_EXTENSIONS:
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)], ext
    raise BadRequest(f"{_safe(filename)}: unsupported conda package extension (expected .conda or .tar.bz2)")


def inspect_package(
    path: Path, filename: str, *, sha256: str, md5: str, size: int, limits: Limits | None = None
) -> CondaPackage:
    """Validate the conda package stored at ``path`` (uploaded as ``filename``).

    Raises ``BadRequest`` naming the problem when the extension is wrong, the file is not
    really that format or is truncated, ``info/index.json`` is missing or invalid, the
    name does not match ``<name>-<version>-<build>``, or any member path is absolute or
    contains ``..``, a link leaves the package, or it exceeds ``limits`` (a bomb).
    """
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise BadRequest(f"{_safe(filename)}: invalid package file name")
    stem, ext = split_filename(filename)
    budget = Budget(filename, limits or Limits(), size)
    if ext == ".conda":
        info = _scan_conda(path, filename, stem, budget)
    else:
        info = _scan_tar_bz2(path, filename, budget)
    if "index.json" not in info:
        raise BadRequest(f"{filename}: info/index.json is missing")
    index = _parse_index(filename, info["index.json"])
    name, version, build, subdir = (index[k] for k in _REQUIRED_STR)
    expected = f"{name}-{version}-{build}"
    if stem != expected:
        raise BadRequest(
            f"{filename}: file name does not match info/index.json (expected {expected}{ext})"
        )
    record = {k: v for k, v in index.items() if k not in _NOT_IN_REPODATA}
    record["sha256"] = sha256
    record["md5"] = md5
    record["size"] = size
    return CondaPackage(
        name=name, version=version, build=build, build_number=index["build_number"],
        subdir=subdir, filename=filename, record=record, about=_parse_about(info.get("about.json")),
    )


ABOUT_FIELDS = ("summary", "description", "home", "license")


def _parse_about(raw: bytes | None) -> dict[str, str]:
    """The descriptive fields of info/about.json (conda-build's), leniently: it is optional
    metadata, so a missing or malformed file describes nothing rather than refusing the package."""
    try:
        about = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(about, dict):
        return {}
    return {key: about[key].strip() for key in ABOUT_FIELDS if isinstance(about.get(key), str) and about[key].strip()}


# --------------------------------------------------------------------------- archive walking


def _scan_tar_bz2(path: Path, filename: str, budget: Budget) -> dict[str, bytes]:
    with path.open("rb") as raw:
        if raw.read(3) != b"BZh":
            raise BadRequest(f"{filename}: not a valid .tar.bz2 file (no bzip2 header)")
        raw.seek(0)
        with bz2.open(raw, "rb") as reader:
            return _scan_tar(reader, budget, "archive", want_index=True)


def _scan_conda(path: Path, filename: str, stem: str, budget: Budget) -> dict[str, bytes]:
    with open_zip(path, filename, ".conda file") as zf:
        names = [info.filename for info in scan_zip(zf, budget)]
        if "metadata.json" not in names:
            raise BadRequest(f"{filename}: not a valid .conda file (metadata.json is missing)")
        info_name, pkg_name = f"info-{stem}.tar.zst", f"pkg-{stem}.tar.zst"
        for component in (info_name, pkg_name):
            if component not in names:
                raise BadRequest(
                    f"{filename}: not a valid .conda file ({component} is missing;"
                    " the file name must match the package inside)"
                )
        try:
            with zf.open("metadata.json") as fh:
                raw = read_member(fh, zf.getinfo("metadata.json").file_size, _MAX_INDEX_JSON, f"{filename}: metadata.json")
            metadata = orjson.loads(raw)
        except (orjson.JSONDecodeError, zipfile.BadZipFile, OSError) as exc:
            raise BadRequest(f"{filename}: not a valid .conda file (metadata.json: {exc})") from None
        if not isinstance(metadata, dict) or metadata.get("conda_pkg_format_version") != 2:
            raise BadRequest(f"{filename}: not a valid .conda file (conda_pkg_format_version must be 2)")
        info = _scan_component(zf, budget, info_name, want_index=True)
        _scan_component(zf, budget, pkg_name, want_index=False)
        return info


def _scan_component(zf: zipfile.ZipFile, budget: Budget, member: str, *, want_index: bool) -> dict[str, bytes]:
    try:
        with zf.open(member) as compressed, _zstd.open(compressed, "rb") as reader:
            return _scan_tar(reader, budget, member, want_index=want_index)
    except BadRequest:
        raise
    except (zipfile.BadZipFile, _zstd.ZstdError, EOFError, OSError) as exc:
        raise BadRequest(f"{budget.filename}: not a valid .conda file ({member}: {exc})") from None


def _scan_tar(reader: Readable, budget: Budget, where: str, *, want_index: bool) -> dict[str, bytes]:
    """Walk every member of one tar stream (conda-package-streaming's one-pass ``r|`` walk,
    bounded and checked by ``walk_tar``); return info/index.json's and info/about.json's
    bytes (by base name) if asked."""
    found: dict[str, bytes] = {}

    def visit(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name.removeprefix("./")
        if want_index and name in ("info/index.json", "info/about.json") and name[5:] not in found:
            if not member.isfile():
                if name == "info/about.json":
                    return  # optional metadata: a link or folder there describes nothing
                raise BadRequest(f"{budget.filename}: info/index.json is not a regular file")
            fh = tar.extractfile(member)
            if fh is not None:
                found[name[5:]] = read_member(fh, member.size, _MAX_INDEX_JSON, f"{budget.filename}: {name}")

    walk_tar(reader, budget, visit, where=where)
    return found


# --------------------------------------------------------------------------- index.json


def _parse_index(filename: str, raw: bytes) -> dict[str, Any]:
    try:
        index = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{filename}: info/index.json is not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise BadRequest(f"{filename}: info/index.json is not a JSON object")
    for key in _REQUIRED_STR:
        value = index.get(key)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{filename}: info/index.json has no valid '{key}' field")
    checks: list[tuple[str, Callable[[str], bool], str]] = [
        ("name", lambda v: bool(_NAME_RE.match(v)), "letters, digits, '_', '.', '-'"),
        ("build", lambda v: bool(_BUILD_RE.match(v)), "letters, digits, '_', '.', '+'"),
        ("subdir", lambda v: bool(_SUBDIR_RE.match(v)), "'noarch' or '<platform>-<arch>'"),
    ]
    for key, ok, allowed in checks:
        if not ok(index[key]):
            raise BadRequest(f"{filename}: info/index.json '{key}' is invalid (allowed: {allowed})")
    if "-" in index["version"]:
        raise BadRequest(f"{filename}: info/index.json 'version' must not contain '-'")
    try:
        VersionOrder(index["version"])
    except InvalidVersion as exc:
        raise BadRequest(f"{filename}: info/index.json 'version' is invalid ({exc})") from None
    build_number = index.setdefault("build_number", 0)
    if isinstance(build_number, bool) or not isinstance(build_number, int) or build_number < 0:
        raise BadRequest(f"{filename}: info/index.json 'build_number' must be a non-negative integer")
    for key in ("depends", "constrains"):
        value = index.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{filename}: info/index.json '{key}' must be a list of strings")
    timestamp = index.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
        raise BadRequest(f"{filename}: info/index.json 'timestamp' must be a number")
    return index


_safe = clip
