"""anaconda.org's objects (user, package, release, file, label) as anaconda-client reads them.

Field names follow what anaconda-client 1.16 reads (binstar_client/commands/*.py and
utils/pprint.py): ``created_at`` (whoami, show OWNER), ``public``/``summary``/``releases``/
``package_types``/``files`` (show PKG, download), ``public_attrs.description`` (show VER),
``description`` and ``attrs`` (show FILE), ``is_locked`` (label --list/--show),
``full_name``/``latest_version``/``conda_platforms`` (search, show OWNER).

A package is a name in one channel across ecosystems: conda (lower case), PyPI (PEP 503)
and CRAN (as written). What a caller sees goes through ``catalog_key``: on a public channel
someone without the read role reads the catalog's public view (no private package).
"""
from __future__ import annotations

import email.parser
import functools
from dataclasses import dataclass
from typing import Any

from ..auth.credentials import Principal
from ..blob_response import read_blob
from ..auth.policy import Action, sees_private
from ..context import Services
from ..ecosystems.conda.index import normalize as conda_name
from ..ecosystems.conda.version import version_key_or_none
from ..ecosystems.pypi.simple import normalize as pypi_name
from ..store.catalog import Upload, public_view
from ..store.packages import PackageInfo
from .common import iso

ECOSYSTEMS = ("conda", "pypi", "cran")
PACKAGE_TYPE = {"conda": "conda", "pypi": "pypi", "cran": "r"}  # anaconda-client's PackageType values
ECOSYSTEM_OF_TYPE = {"conda": "conda", "pypi": "pypi", "r": "cran", "cran": "cran", "standard_python": "pypi"}


def key_name(ecosystem: str, name: str) -> str:
    """A name as its ecosystem's catalog keys it."""
    if ecosystem == "conda":
        return conda_name(name)
    if ecosystem == "pypi":
        return pypi_name(name)
    return name


def catalog_key(services: Services, owner: str, principal: Principal | None) -> str:
    """The catalog key this caller reads the channel through: the channel, or its public view."""
    channel = services.settings.channels.get(owner)
    if channel is None or not channel.public or not services.catalog.packages.has_private(owner):
        return owner
    if sees_private(principal, channel, Action.API_READ) or sees_private(principal, channel, Action.WRITE):
        return owner
    return public_view(owner)


@dataclass
class Package:
    """One anaconda.org package: its files and settings in every ecosystem of the channel."""

    owner: str
    name: str
    uploads: list[Upload]
    infos: list[PackageInfo]

    @property
    def exists(self) -> bool:
        return bool(self.uploads or self.infos)

    @property
    def private(self) -> bool:
        return any(info.private for info in self.infos)

    def ecosystems(self) -> list[str]:
        found = {u.ecosystem for u in self.uploads} | {i.ecosystem for i in self.infos}
        return [e for e in ECOSYSTEMS if e in found]

    def setting(self, field: str) -> str:
        for info in self.infos:
            if getattr(info, field):
                return str(getattr(info, field))
        return ""


def find_package(services: Services, key: str, owner: str, name: str, version: str | None = None) -> Package:
    """The package ``name`` of channel ``owner`` as catalog key ``key`` shows it."""
    catalog = services.catalog
    uploads: list[Upload] = []
    infos: list[PackageInfo] = []
    hidden = key != owner
    for ecosystem in ECOSYSTEMS:
        wanted = key_name(ecosystem, name)
        found = list(catalog.snapshot(key, ecosystem).by_name.get(wanted, ()))
        if ecosystem == "cran" and not found:  # R names keep their case; the client lowers them
            found = [u for u in catalog.list(key, ecosystem) if u.name.lower() == name.lower()]
            wanted = found[0].name if found else wanted
        info = catalog.packages.get(owner, ecosystem, wanted)
        if info is not None and not (hidden and info.private):
            infos.append(info)
        uploads += [u for u in found if version is None or u.version == version]
    display = uploads[0].name if uploads else (infos[0].name if infos else name)
    return Package(owner, display, uploads, infos)


def versions(uploads: list[Upload]) -> list[str]:
    def order(a: str, b: str) -> int:
        va, vb = version_key_or_none(a), version_key_or_none(b)
        if va is None or vb is None:
            return (a > b) - (a < b)
        return -1 if va < vb else (1 if vb < va else 0)

    return sorted({u.version for u in uploads}, key=functools.cmp_to_key(order))


def basename_of(upload: Upload) -> str:
    """anaconda.org's file basename: ``<subdir>/<file>`` for conda, the file name otherwise
    (a CRAN binary keeps its tree path, which tells R versions apart)."""
    if upload.ecosystem == "cran" and not upload.path.startswith("src/contrib/"):
        return upload.path
    return upload.path if upload.ecosystem == "conda" else upload.filename


async def file_metadata(services: Services, upload: Upload) -> dict[str, str]:
    """summary, description, license and home from the file's own metadata, where it has any."""
    entry = upload.index_fields
    if upload.ecosystem == "cran":
        fields = entry.get("fields") or {}
        return {"summary": fields.get("Title") or "", "description": fields.get("Description") or "",
                "license": fields.get("License") or "", "home": (fields.get("URL") or "").split(",")[0].strip()}
    if upload.ecosystem == "conda":
        return {"license": str(entry.get("license") or "")}
    sha = entry.get("metadata_sha256")
    data = await read_blob(services.store, "uploads", sha, 1024 * 1024) if isinstance(sha, str) else None
    if data is None:
        return {}
    headers = email.parser.BytesHeaderParser().parsebytes(data)
    home = headers.get("Home-page") or next(
        (v.split(",", 1)[1].strip() for v in headers.get_all("Project-URL") or [] if "," in v), "")
    return {"summary": headers.get("Summary") or "", "license": headers.get("License") or "", "home": home}


async def metadata(services: Services, pkg: Package) -> dict[str, str]:
    """Settings made through the API first, then the newest file's own metadata."""
    derived = await file_metadata(services, pkg.uploads[-1]) if pkg.uploads else {}
    return {f: pkg.setting(f) or derived.get(f, "") for f in ("summary", "description", "license", "home")}


def dist_json(services: Services, upload: Upload, owner: str) -> dict[str, Any]:
    entry = dict(upload.index_fields)
    basename = basename_of(upload)
    info = services.catalog.packages.get(owner, upload.ecosystem, upload.name)
    release = (info.releases.get(upload.version) if info else None) or {}
    attrs: dict[str, Any]
    if upload.ecosystem == "conda":
        attrs = {k: entry.get(k) for k in ("subdir", "platform", "arch", "build", "build_number", "license", "timestamp")}
        attrs["depends"] = entry.get("depends", [])
        depends = [{"name": d.split(" ")[0], "specs": []} for d in entry.get("depends", [])]
    else:
        attrs = {k: v for k, v in entry.items() if k != "fields"}
        depends = []
    return {
        "basename": basename,
        "full_name": f"{owner}/{upload.name}/{upload.version}/{basename}",
        "owner": owner,
        "version": upload.version,
        "description": release.get("description", ""),
        "md5": upload.md5,
        "sha256": upload.sha256,
        "size": upload.size,
        "labels": list(upload.labels),
        "type": PACKAGE_TYPE[upload.ecosystem],
        "distribution_type": PACKAGE_TYPE[upload.ecosystem],
        "upload_time": iso(upload.uploaded_at),
        "uploader": upload.uploader,
        "attrs": attrs,
        "dependencies": {"depends": depends},
        "download_url": f"/{owner}/{upload.path}" if upload.ecosystem != "pypi" else f"/{owner}/simple/{upload.name}/{upload.filename}",
    }


async def package_json(services: Services, pkg: Package) -> dict[str, Any]:
    owner, uploads = pkg.owner, pkg.uploads
    vers = versions(uploads)
    meta = await metadata(services, pkg)
    created = min([i.created_at for i in pkg.infos] + [u.uploaded_at for u in uploads] or [0.0])
    modified = max([u.uploaded_at for u in uploads] or [created])
    return {
        "name": pkg.name,
        "full_name": f"{owner}/{pkg.name}",
        "owner": {"login": owner},
        "package_types": [PACKAGE_TYPE[e] for e in pkg.ecosystems()],
        "public": not pkg.private,
        "published": False,
        **meta,
        "license": meta["license"],
        "versions": vers,
        "latest_version": vers[-1] if vers else "",
        "conda_platforms": sorted({u.path.split("/", 1)[0] for u in uploads if u.ecosystem == "conda"}),
        "builds": sorted({str(u.index_fields.get("build")) for u in uploads if u.ecosystem == "conda" and u.index_fields.get("build")}),
        "labels": sorted({label for u in uploads if u.ecosystem == "conda" for label in u.labels}),
        "files": [dist_json(services, u, owner) for u in uploads],
        "releases": [
            {"version": v, "full_name": f"{owner}/{pkg.name}/{v}",
             "distributions": [basename_of(u) for u in uploads if u.version == v]}
            for v in vers
        ],
        "created_at": iso(created),
        "modified_at": iso(modified),
    }


async def release_json(services: Services, pkg: Package, version: str) -> dict[str, Any]:
    notes = next((dict(i.releases[version]) for i in pkg.infos if version in i.releases), {})
    return {
        "name": pkg.name,
        "version": version,
        "full_name": f"{pkg.owner}/{pkg.name}/{version}",
        "public_attrs": {"description": notes.get("description") or (await metadata(services, pkg))["description"],
                         "summary": notes.get("summary", "")},
        "distributions": [dist_json(services, u, pkg.owner) for u in pkg.uploads if u.version == version],
    }


def user_json(services: Services, login: str, user_type: str) -> dict[str, Any]:
    """``pprint_user`` reads ``login`` and ``created_at`` and prints the rest."""
    return {"login": login, "name": login, "user_type": user_type,
            "created_at": iso(services.settings.storage_path.stat().st_mtime)}
