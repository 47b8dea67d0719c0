"""The seed file (DESIGN, "Air-gap": ``channelgate seed --config FILE SEEDFILE``)::

    channel: internal
    pypi:  {requirements: ["requests>=2.31", "numpy"], python: ["3.11", "3.12"],
            platforms: [manylinux_2_17_x86_64, macosx_11_0_arm64, win_amd64]}
    conda: {specs: ["python 3.11.*", "numpy >=1.26"], subdirs: [linux-64, osx-arm64]}
    cran:  {packages: [ggplot2], r_version: "4.2", binaries: [windows]}

Every ecosystem section is optional; ``requirements_file:`` may stand for ``requirements:``
(relative to the seed file). Unknown keys are errors naming their key path, as in the policy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..settings import Settings

CRAN_BINARIES = ("windows", "macos", "macos-x86_64")
_R_VERSION = re.compile(r"^\d+\.\d+$")
_PY_VERSION = re.compile(r"^3\.\d+$")


@dataclass(frozen=True)
class PypiNeeds:
    requirements: tuple[str, ...]
    python: tuple[str, ...]
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class CondaNeeds:
    specs: tuple[str, ...]
    subdirs: tuple[str, ...]


@dataclass(frozen=True)
class CranNeeds:
    packages: tuple[str, ...]
    r_version: str | None = None
    binaries: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeedFile:
    channel: str
    pypi: PypiNeeds | None = None
    conda: CondaNeeds | None = None
    cran: CranNeeds | None = None
    source: Path = field(default=Path("seed.yaml"))


class _Reader:
    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[str] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{self.label}: {path}: {message}")

    def section(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.bad(path, "must be a mapping")
            return {}
        for key in raw:
            if key not in allowed:
                self.bad(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return raw

    def strings(self, raw: Any, path: str, *, required: bool = False, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        if raw is None:
            if required:
                self.bad(path, "is required")
            return ()
        if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
            self.bad(path, "must be a list of non-empty strings")
            return ()
        for i, value in enumerate(raw):
            if pattern is not None and not pattern.match(value):
                self.bad(f"{path}[{i}]", f"{value!r} is not valid here")
        if required and not raw:
            self.bad(path, "must not be empty")
        return tuple(v.strip() for v in raw)


def load_seed_file(path: Path, settings: Settings) -> SeedFile:
    """Read and check a seed file; ConfigError lists every problem."""
    label = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML: {exc}"]) from None
    r = _Reader(label)
    top = r.section(raw, "", {"channel", "pypi", "conda", "cran"})
    channel = top.get("channel")
    if not isinstance(channel, str) or not channel:
        r.bad("channel", "is required (the channel whose merged indexes the needs resolve through)")
        channel = ""
    elif channel not in settings.channels:
        r.bad("channel", f"names channel {channel!r}, which the policy does not define")
    seed = SeedFile(channel=channel, source=path,
                    pypi=_pypi(r, top.get("pypi"), path.parent) if "pypi" in top else None,
                    conda=_conda(r, top.get("conda")) if "conda" in top else None,
                    cran=_cran(r, top.get("cran")) if "cran" in top else None)
    if r.problems:
        raise ConfigError(r.problems)
    return seed


def _pypi(r: _Reader, raw: Any, base: Path) -> PypiNeeds:
    sec = r.section(raw, "pypi", {"requirements", "requirements_file", "python", "platforms"})
    reqs = r.strings(sec.get("requirements"), "pypi.requirements")
    req_file = sec.get("requirements_file")
    if req_file is not None:
        if not isinstance(req_file, str):
            r.bad("pypi.requirements_file", "must be a path")
        else:
            try:
                text = (base / req_file).read_text(encoding="utf-8")
            except OSError as exc:
                r.bad("pypi.requirements_file", f"cannot read {req_file}: {exc.strerror}")
            else:
                reqs += tuple(line.split("#", 1)[0].strip() for line in text.splitlines()
                              if line.split("#", 1)[0].strip())
    if not reqs:
        r.bad("pypi.requirements", "is required (or requirements_file)")
    return PypiNeeds(reqs, r.strings(sec.get("python"), "pypi.python", required=True, pattern=_PY_VERSION),
                     r.strings(sec.get("platforms"), "pypi.platforms", required=True))


def _conda(r: _Reader, raw: Any) -> CondaNeeds:
    sec = r.section(raw, "conda", {"specs", "subdirs"})
    return CondaNeeds(r.strings(sec.get("specs"), "conda.specs", required=True),
                      r.strings(sec.get("subdirs"), "conda.subdirs", required=True))


def _cran(r: _Reader, raw: Any) -> CranNeeds:
    sec = r.section(raw, "cran", {"packages", "r_version", "binaries"})
    version = sec.get("r_version")
    if version is not None and (not isinstance(version, str) or not _R_VERSION.match(version)):
        r.bad("cran.r_version", "must be an R x.y version, quoted (\"4.2\")")
        version = None
    binaries = r.strings(sec.get("binaries"), "cran.binaries")
    for i, kind in enumerate(binaries):
        if kind not in CRAN_BINARIES:
            r.bad(f"cran.binaries[{i}]", f"must be one of {', '.join(CRAN_BINARIES)}")
    if binaries and version is None:
        r.bad("cran.r_version", "is required when binaries are asked for")
    return CranNeeds(r.strings(sec.get("packages"), "cran.packages", required=True), version, binaries)
