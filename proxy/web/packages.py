"""One package of a channel as the web UI shows it: every file the merged index serves,
with its size, sha256, upload time, uploader, labels and source (hosted or which upstream).

Files are read from the very merged views clients get (DESIGN "Merge semantics"), so the
page never lists a file that a client of the channel would not be served.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import orjson
from packaging.version import Version

from ..context import Services
from ..errors import NotFound, UpstreamError, UpstreamTimeout
from ..merge import upstream_may_serve
from ..settings import ChannelPolicy
from ..store.catalog import Upload
from .names import HOSTED, channel_request

if TYPE_CHECKING:
    from ..ecosystems.conda.subdir_index import SubdirIndex

MAX_FILES = 300  # newest first; a conda-forge package can have thousands of files


@dataclass(frozen=True, slots=True)
class FileRow:
    filename: str
    version: str
    platform: str  # conda subdir, wheel/sdist, R tree
    size: int | None
    sha256: str | None
    uploaded: str  # ISO 8601 UTC, "" when unknown
    uploader: str
    labels: tuple[str, ...]
    source: str  # "hosted" or the upstream's name


@dataclass(frozen=True, slots=True)
class PackageView:
    name: str
    ecosystem: str
    files: tuple[FileRow, ...]
    versions: tuple[str, ...]  # newest first
    total: int  # files before MAX_FILES


def _iso(seconds: float | None) -> str:
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _hosted(upload: Upload, platform: str) -> FileRow:
    return FileRow(upload.filename, upload.version, platform, upload.size, upload.sha256, _iso(upload.uploaded_at),
                   upload.uploader, tuple(upload.labels), HOSTED)


def _view(name: str, ecosystem: str, rows: list[FileRow], version_key: Callable[[str], Any]) -> PackageView:
    if not rows:
        raise NotFound(f"no package {name!r} in this channel")
    rows.sort(key=lambda r: (_safe(version_key, r.version), r.uploaded, r.filename), reverse=True)
    versions = tuple(dict.fromkeys(r.version for r in rows))
    return PackageView(name, ecosystem, tuple(rows[:MAX_FILES]), versions, len(rows))


def _safe(key: Callable[[str], Any], version: str) -> tuple[int, Any]:
    try:
        return 1, key(version)
    except Exception:  # an unparsable version sorts below every parsable one
        return 0, version


async def package_view(services: Services, channel: ChannelPolicy, ecosystem: str, name: str,
                       channeldata_subdirs: Iterable[str] = ()) -> PackageView:
    if ecosystem == "conda":
        return await _conda(services, channel, name, channeldata_subdirs)
    if ecosystem == "pypi":
        return await _pypi(services, channel, name)
    if ecosystem == "cran":
        return await _cran(services, channel, name)
    raise NotFound(f"unknown ecosystem {ecosystem!r}")


# --------------------------------------------------------------------------- conda
async def _conda(services: Services, channel: ChannelPolicy, name: str, subdirs: Iterable[str]) -> PackageView:
    from ..ecosystems.conda.handlers import Conda
    from ..ecosystems.conda.version import VersionOrder

    conda = services.ecosystems.get("conda")
    if not isinstance(conda, Conda):
        raise NotFound("conda is not enabled")
    lname = name.lower()
    snap = services.catalog.snapshot(channel.name, "conda")
    rows = [_hosted(u, u.path.split("/", 1)[0]) for u in snap.by_name.get(lname, ())]
    allow = frozenset(n.lower() for n in channel.upstream_allow)
    if services.sources.upstreams(channel, "conda") and upstream_may_serve(lname, snap.names, allow):
        wanted = {"noarch", *subdirs, *(ix.subdir for ix in conda.indexes.built(channel.name, "main"))}
        for subdir in sorted(wanted):
            try:
                index = await conda.indexes.subdir(channel, "main", subdir)
            except (NotFound, UpstreamError, UpstreamTimeout):
                continue
            if index is not None:
                rows.extend(await asyncio.to_thread(_conda_upstream_rows, index, lname))
    return _view(lname, "conda", rows, VersionOrder)


def _conda_upstream_rows(index: "SubdirIndex", lname: str) -> list[FileRow]:
    from ..ecosystems.conda.sections import EXTENSIONS
    from ..ecosystems.conda.merge_plan import positions_of

    rows: list[FileRow] = []
    for j, source in enumerate(index.upstreams, start=1):  # plan source 0 is the uploads
        ids = source.repodata.name_ids({lname})
        if not ids:
            continue
        for ext in EXTENSIONS:
            section = source.repodata.sections[ext]
            for s in positions_of(section, ids):
                if not index.plan.includes(ext, j, s):
                    continue
                record = orjson.loads(section.record(s))
                stamp = record.get("timestamp")
                seconds = stamp / 1000 if isinstance(stamp, (int, float)) and stamp > 1e11 else stamp
                rows.append(FileRow(
                    section.key(s).decode(), str(record.get("version", "")), index.subdir,
                    record.get("size") if isinstance(record.get("size"), int) else None,
                    record.get("sha256") if isinstance(record.get("sha256"), str) else None,
                    _iso(seconds if isinstance(seconds, (int, float)) else None), "", ("main",),
                    source.upstream.name,
                ))
    return rows


# --------------------------------------------------------------------------- PyPI
async def _pypi(services: Services, channel: ChannelPolicy, name: str) -> PackageView:
    from ..ecosystems.pypi.handlers import PyPI
    from ..ecosystems.pypi.simple import normalize

    pypi = services.ecosystems.get("pypi")
    if not isinstance(pypi, PyPI):
        raise NotFound("PyPI is not enabled")
    project = await pypi.project(channel_request(services, channel, "simple/"), normalize(name))
    rows: list[FileRow] = []
    for filename, source in project.sources.items():
        entry, upload = source.entry, source.upload
        platform = "wheel" if filename.endswith(".whl") else "sdist"
        if upload is not None:
            rows.append(_hosted(upload, platform))
            continue
        rows.append(FileRow(filename, entry.version or "", platform, entry.size, entry.hashes.get("sha256"),
                            (entry.upload_time or "").replace("T", " ")[:19],
                            "", (), source.upstream.name if source.upstream else "upstream"))
    return _view(project.name, "pypi", rows, Version)


# --------------------------------------------------------------------------- CRAN
async def _cran(services: Services, channel: ChannelPolicy, name: str) -> PackageView:
    from ..ecosystems.cran.handlers import Cran
    from ..ecosystems.cran.index import version_key

    cran = services.ecosystems.get("cran")
    if not isinstance(cran, Cran):
        raise NotFound("CRAN is not enabled")
    snap = services.catalog.snapshot(channel.name, "cran")
    rows = [_hosted(u, u.path.rsplit("/", 1)[0]) for u in snap.by_name.get(name, ())]
    if upstream_may_serve(name, snap.names, channel.upstream_allow):
        try:
            view = await cran.view(channel_request(services, channel, "src/contrib/PACKAGES"), "src/contrib", "source")
        except (NotFound, UpstreamError, UpstreamTimeout):
            view = None
        for source in view.files.values() if view is not None else ():
            if source.upstream is not None and source.package == name:
                rows.append(FileRow(source.relpath.rsplit("/", 1)[-1], source.entry.get("Version", ""), "src/contrib",
                                    None, None, "", "", (), source.upstream.name))
    return _view(name, "cran", rows, version_key)

