"""CRAN URL paths under a channel prefix (DESIGN, "URL surface"; utils::contrib.url).

    src/contrib/PACKAGES[.gz|.rds]                    the source index
    src/contrib/<pkg>_<ver>.tar.gz                    a current source package
    src/contrib/Archive/<pkg>/<pkg>_<ver>.tar.gz      an older source package
    src/contrib/Meta/archive.rds                      the archive listing (remotes::install_version)
    src/contrib/<Path>/<file>                         a file listed with a ``Path:`` field
    bin/windows/contrib/<x.y>/...                     Windows binaries (.zip)
    bin/macosx/[<subtype>/]contrib/<x.y>/...          macOS binaries (.tgz)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from proxy.ecosystems.cran.index import INDEX_FILENAMES, is_valid_package_name
from proxy.errors import NotFound

Tree = Literal["source", "windows", "macos"]
_R_MINOR = re.compile(r"^[0-9]+\.[0-9]+\Z")
_SUBTYPE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")  # \Z: "$" would let a trailing newline through

FILE_SUFFIX: dict[Tree, str] = {"source": ".tar.gz", "windows": ".zip", "macos": ".tgz"}


@dataclass(frozen=True, slots=True)
class CranPath:
    contrib_dir: str                   # "src/contrib", "bin/windows/contrib/4.3", ...
    tree: Tree
    kind: Literal["index", "file", "archive", "archive_meta"]
    name: str = ""                     # index: PACKAGES file name; file: path below contrib_dir
    package: str = ""                  # archive: the package folder

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def parse_cran_path(rest: str) -> CranPath:
    """Split the path after the channel prefix; NotFound for anything that is not CRAN's."""
    parts = rest.split("/")
    if parts[:2] == ["src", "contrib"]:
        contrib, tree, tail = "src/contrib", "source", parts[2:]
    elif parts[:3] == ["bin", "windows", "contrib"] and len(parts) > 3 and _R_MINOR.match(parts[3]):
        contrib, tree, tail = "/".join(parts[:4]), "windows", parts[4:]
    elif parts[:2] == ["bin", "macosx"] and len(parts) > 3:
        if parts[2] == "contrib" and _R_MINOR.match(parts[3]):
            contrib, tree, tail = "/".join(parts[:4]), "macos", parts[4:]
        elif (len(parts) > 4 and _SUBTYPE.match(parts[2]) and parts[3] == "contrib"
              and _R_MINOR.match(parts[4])):
            contrib, tree, tail = "/".join(parts[:5]), "macos", parts[5:]
        else:
            raise NotFound()
    else:
        raise NotFound()
    if not tail or any(not _SEGMENT.match(seg) for seg in tail):
        raise NotFound()
    t: Tree = tree  # type: ignore[assignment]
    if len(tail) == 1 and tail[0] in INDEX_FILENAMES:
        return CranPath(contrib, t, "index", tail[0])
    if t == "source" and tail == ["Meta", "archive.rds"]:
        return CranPath(contrib, t, "archive_meta", "archive.rds")
    if t == "source" and len(tail) == 3 and tail[0] == "Archive":
        pkg, filename = tail[1], tail[2]
        if not is_valid_package_name(pkg) or not filename.startswith(f"{pkg}_") \
                or not filename.endswith(".tar.gz"):
            raise NotFound()
        return CranPath(contrib, t, "archive", filename, package=pkg)
    if not tail[-1].endswith(FILE_SUFFIX[t]):
        raise NotFound()
    return CranPath(contrib, t, "file", "/".join(tail))
