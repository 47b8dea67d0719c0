"""Seed CRAN needs: the Depends/Imports/LinkingTo closure of the packages named, read from
the channel's merged ``PACKAGES`` (what ``install.packages(dependencies = NA)`` follows),
minus R itself and its base and recommended packages, which every R installation has.
Optionally the binaries of the closure for an R x.y, from the folder R's ``contrib.url``
gives for that R's default binary type (utils/R/packages.R: ``bin/<windows|macosx[/<subtype>]>/
contrib/<x.y>``): ``windows`` -> ``bin/windows/contrib/<x.y>``; ``macos`` (arm64, type
``mac.binary.big-sur-arm64``) -> ``bin/macosx/big-sur-arm64/contrib/<x.y>``; ``macos-x86_64``
-> ``bin/macosx/big-sur-x86_64/contrib/<x.y>`` from R 4.3, and before it (type ``mac.binary``,
the high-sierra builds) ``bin/macosx/contrib/<x.y>``."""
from __future__ import annotations

import re

from ..ecosystems.cran.handlers import upstream_relpath
from ..ecosystems.cran.index import parse_packages
from ..errors import BadRequest
from .seed import SeedRun, Want
from .seedfile import CranNeeds

# R's own packages: priority "base" and "recommended" (installed.packages(priority=...), R 4.x)
BASE = frozenset({"R", "base", "compiler", "datasets", "grDevices", "graphics", "grid", "methods", "parallel",
                  "splines", "stats", "stats4", "tcltk", "tools", "translations", "utils"})
RECOMMENDED = frozenset({"KernSmooth", "MASS", "Matrix", "boot", "class", "cluster", "codetools", "foreign",
                         "lattice", "mgcv", "nlme", "nnet", "rpart", "spatial", "survival"})
DEPENDENCY_FIELDS = ("Depends", "Imports", "LinkingTo")
BINARY_DIRS = {"windows": ("bin/windows/contrib/{r}", "windows"),
               "macos": ("bin/macosx/big-sur-arm64/contrib/{r}", "macos"),
               "macos-x86_64": ("bin/macosx/big-sur-x86_64/contrib/{r}", "macos")}
LEGACY_MAC = "bin/macosx/contrib/{r}"  # macos-x86_64 before R 4.3


def binary_dir(kind: str, r_version: str) -> tuple[str, str]:
    """(contrib folder, file tree) of ``kind`` binaries for R ``r_version`` (x.y)."""
    pattern, tree = BINARY_DIRS[kind]
    major, minor = (int(p) for p in r_version.split(".")[:2])
    if kind == "macos-x86_64" and (major, minor) < (4, 3):
        pattern = LEGACY_MAC
    return pattern.format(r=r_version), tree


def dependencies(entry: dict[str, str]) -> list[str]:
    names = []
    for fld in DEPENDENCY_FIELDS:
        for item in entry.get(fld, "").split(","):
            name = re.sub(r"\(.*?\)", "", item).strip()
            if name and name not in BASE and name not in RECOMMENDED:
                names.append(name)
    return names


async def _index(run: SeedRun, contrib_dir: str) -> dict[str, dict[str, str]]:
    try:
        entries = parse_packages(await run.get(f"{contrib_dir}/PACKAGES"))
    except BadRequest as exc:
        raise LookupError(str(exc)) from None
    return {e["Package"]: dict(e) for e in entries}


async def resolve(run: SeedRun, needs: CranNeeds) -> list[Want]:
    try:
        index = await _index(run, "src/contrib")
    except LookupError as exc:
        run.fail("cran", "src/contrib/PACKAGES", str(exc))
        return []
    closure: dict[str, dict[str, str]] = {}
    queue = [(name, "the seed file") for name in needs.packages]
    while queue:
        name, needed_by = queue.pop()
        if name in closure or name in BASE or name in RECOMMENDED:
            continue
        entry = index.get(name)
        if entry is None:
            run.fail("cran", name, f"not in the channel (needed by {needed_by})")
            continue
        closure[name] = entry
        queue.extend((dep, name) for dep in dependencies(entry))
    wants = [_want(f"src/contrib/{upstream_relpath(e, 'source')}", e) for e in closure.values()]
    r_version = needs.r_version or ""  # (seedfile.py: binaries need r_version)
    for kind in needs.binaries if r_version else ():
        contrib_dir, tree = binary_dir(kind, r_version)
        try:
            binaries = await _index(run, contrib_dir)
        except LookupError as exc:
            run.fail("cran", f"{contrib_dir}/PACKAGES", str(exc))
            continue
        for name in sorted(closure):
            entry = binaries.get(name)
            if entry is None:
                run.fail("cran", f"{name} ({kind} binary for R {needs.r_version})", f"not in {contrib_dir}")
                continue
            wants.append(_want(f"{contrib_dir}/{upstream_relpath(entry, tree)}", entry))  # type: ignore[arg-type]
    return wants


def _want(path: str, entry: dict[str, str]) -> Want:
    md5 = entry.get("MD5sum", "").lower()
    return Want("cran", path, md5=md5 if len(md5) == 32 else None)
