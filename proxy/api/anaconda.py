"""The anaconda-client (binstar) API under ``/api``: users, packages, releases, files,
search and downloads (owner = channel). Uploads are in ``files.py``, labels and copies in
``labels.py``, tokens and groups in ``accounts.py``.

Calls anaconda-client makes (binstar_client/__init__.py), and what it expects back:

    HEAD /api                                       200 (check_server)
    GET  /api/user[/<owner>], /api/user/orgs, /api/users/<u>/orgs   user objects (created_at)
    GET  /api/packages/<owner>                      the owner's packages (show OWNER)
    GET|POST|PATCH|DELETE /api/package/<o>/<n>      200 (DELETE: 201); POST creates, PATCH
                                                    changes privacy (public) and metadata (public_attrs)
    GET|POST|PATCH|DELETE /api/release/<o>/<n>/<v>  200 (DELETE: 201)
    GET|DELETE /api/dist/<o>/<n>/<v>/<basename>     200
    GET  /api/download/<o>/<n>/<v>/<basename>       the file
    GET  /api/search?name=Q[&type=T][&platform=P]   packages the caller may read
    GET  /api/channels                              the channels the caller may read
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..audit import audit
from ..auth.credentials import Principal
from ..auth.policy import Action, Decision, decide
from ..context import ApiHandler, Services
from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..routing import Route
from ..store.packages import PackageInfo
from . import files, labels
from .common import can_read, can_write, json_body, segments
from .objects import (
    ECOSYSTEM_OF_TYPE,
    ECOSYSTEMS,
    PACKAGE_TYPE,
    Package,
    basename_of,
    catalog_key,
    dist_json,
    find_package,
    key_name,
    package_json,
    release_json,
    user_json,
)

MAX_SEARCH_RESULTS = 500


def api_handlers(services: Services) -> dict[str, ApiHandler]:
    return {
        "": _root,
        "user": _user,
        "users": _users,
        "packages": _packages,
        "package": _package,
        "release": _release,
        "dist": _dist,
        "download": _download,
        "search": _search,
        **files.handlers(),
        **labels.handlers(),
    }


async def _root(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """``HEAD /api`` is anaconda-client's server check."""
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed()
    return web.json_response({"ok": True, "api": "anaconda-client compatible (channelgate)"})


async def _user(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed()
    parts = route.rest.split("/")[1:]
    if not parts or parts == [""]:
        principal = services.guard.authenticate(request.headers, route.token, request.remote)
        return web.json_response(user_json(services, principal.user, "user"))
    if parts == ["orgs"]:  # organisations are channels here: see GET /api/channels
        services.guard.authenticate(request.headers, route.token, request.remote)
        return web.json_response([])
    (owner,) = segments(route, 1)
    can_read(services, request, route, owner)  # a missing channel answers like a private one
    return web.json_response(user_json(services, owner, "org"))


async def _users(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """``GET /api/users/<user>/orgs``: none (a user's channels are listed by GET /api/channels)."""
    services.guard.authenticate(request.headers, route.token, request.remote)
    return web.json_response([])


def _readable(services: Services, request: web.BaseRequest, route: Route) -> tuple[Principal | None, list[str]]:
    """The caller, and the channels they may list through the API (public ones included)."""
    principal, _ = services.guard.identify(request.headers, route.token, request.remote)
    names = []
    for name, channel in services.settings.channels.items():
        for action in (Action.API_READ, Action.WRITE):
            if decide(principal, channel, action) is Decision.ALLOW:
                names.append(name)
                break
    return principal, sorted(names)


def _all_packages(services: Services, owner: str, principal: Principal | None) -> list[Package]:
    key = catalog_key(services, owner, principal)
    names: dict[str, None] = {}
    for ecosystem in ECOSYSTEMS:
        for upload in services.catalog.list(key, ecosystem):
            names.setdefault(upload.name.lower(), None)
    for info in services.catalog.packages.of_channel(owner):
        if key == owner or not info.private:
            names.setdefault(info.name.lower(), None)
    return [p for p in (find_package(services, key, owner, n) for n in names) if p.exists]


async def _packages(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    (owner,) = segments(route, 1)
    principal = can_read(services, request, route, owner)
    return web.json_response([await package_json(services, p) for p in _all_packages(services, owner, principal)])


async def _search(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Packages whose name contains the query, in every channel the caller may read;
    private packages only where the caller has the read role."""
    query = request.query.get("name", "").strip().lower()
    if not query or len(query) > 200:
        raise BadRequest("search needs a name of 1 to 200 characters")
    wanted_type = request.query.get("type")
    platform = request.query.get("platform")
    principal, channels = _readable(services, request, route)
    found: list[dict[str, Any]] = []
    for owner in channels:
        for pkg in _all_packages(services, owner, principal):
            if query not in pkg.name.lower():
                continue
            doc = await package_json(services, pkg)
            if wanted_type and wanted_type not in doc["package_types"]:
                continue
            if platform and platform not in doc["conda_platforms"]:
                continue
            found.append(doc)
            if len(found) >= MAX_SEARCH_RESULTS:
                return web.json_response(found)
    return web.json_response(found)


# --------------------------------------------------------------------------- packages
def _ecosystems_of(public_attrs: dict[str, Any], pkg: Package) -> list[str]:
    types = public_attrs.get("package_types") or []
    chosen = [ECOSYSTEM_OF_TYPE[t] for t in types if isinstance(t, str) and t in ECOSYSTEM_OF_TYPE]
    return chosen or pkg.ecosystems() or list(ECOSYSTEMS)


def _attrs(payload: dict[str, Any]) -> dict[str, Any]:
    attrs = payload.get("public_attrs") or {}
    if not isinstance(attrs, dict):
        raise BadRequest("public_attrs must be an object")
    values = {k: attrs.get(k) for k in ("summary", "description", "home") if isinstance(attrs.get(k), str)}
    lic = attrs.get("license")
    if isinstance(lic, dict):
        lic = lic.get("name")
    if isinstance(lic, str):
        values["license"] = lic
    if isinstance(attrs.get("home_page"), str) and "home" not in values:
        values["home"] = attrs["home_page"]
    return values


async def save_package(services: Services, principal: Principal, pkg: Package, payload: dict[str, Any]) -> list[PackageInfo]:
    """Create or change a package's settings from an API payload: ``public`` and ``public_attrs``."""
    public = payload.get("public")
    if public is not None and not isinstance(public, bool):
        raise BadRequest("public must be true or false")
    attrs = payload.get("public_attrs") if isinstance(payload.get("public_attrs"), dict) else {}
    values = _attrs(payload)
    saved = []
    for ecosystem in _ecosystems_of(attrs or {}, pkg):
        name = key_name(ecosystem, pkg.name)
        info = services.catalog.packages.get(pkg.owner, ecosystem, name) or PackageInfo(pkg.owner, ecosystem, name)
        if public is not None:
            info = PackageInfo(**{**_fields(info), "private": not public})
        saved.append(await services.catalog.packages.put(info.with_metadata(values)))
    change = "private" if public is False else ("public" if public else "metadata")
    audit(f"package-{change}", principal, pkg.owner, pkg.name)
    labels.indexes_changed(services, pkg.owner)
    return saved


def _fields(info: PackageInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__dataclass_fields__}


async def _package(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name = segments(route, 2)
    if request.method in ("GET", "HEAD"):
        principal = can_read(services, request, route, owner)
        pkg = find_package(services, catalog_key(services, owner, principal), owner, name)
        if not pkg.exists:
            raise NotFound(f"package {owner}/{name} does not exist")
        return web.json_response(await package_json(services, pkg))
    principal = can_write(services, request, route, owner)
    pkg = find_package(services, owner, owner, name)
    if request.method in ("POST", "PATCH"):
        payload = await json_body(request)
        if request.method == "PATCH" and not pkg.exists:
            raise NotFound(f"package {owner}/{name} does not exist")
        await save_package(services, principal, pkg, payload)
        return web.json_response(await package_json(services, find_package(services, owner, owner, name)))
    if request.method == "DELETE":
        await labels.remove_uploads(services, principal, owner, pkg.uploads)
        for info in pkg.infos:
            await services.catalog.packages.delete(owner, info.ecosystem, info.name)
        audit("package-remove", principal, owner, pkg.name)
        return web.json_response({}, status=201)
    raise MethodNotAllowed()


async def _release(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name, version = segments(route, 3)
    if request.method in ("GET", "HEAD"):
        principal = can_read(services, request, route, owner)
        pkg = find_package(services, catalog_key(services, owner, principal), owner, name, version)
        if not pkg.uploads:
            raise NotFound(f"release {owner}/{name}/{version} does not exist")
        return web.json_response(await release_json(services, pkg, version))
    principal = can_write(services, request, route, owner)
    pkg = find_package(services, owner, owner, name, version)
    if request.method in ("POST", "PATCH"):
        payload = await json_body(request)
        given = payload.get("public_attrs")
        attrs: dict[str, Any] = given if isinstance(given, dict) else payload
        notes = {k: str(attrs[k])[:100_000] for k in ("description", "summary") if isinstance(attrs.get(k), str)}
        for ecosystem in pkg.ecosystems() or list(ECOSYSTEMS):
            info = services.catalog.packages.get(owner, ecosystem, key_name(ecosystem, pkg.name))
            if info is None and not pkg.uploads and ecosystem not in pkg.ecosystems() and pkg.ecosystems():
                continue
            info = info or PackageInfo(owner, ecosystem, key_name(ecosystem, pkg.name))
            fresh = {k: v for k, v in notes.items() if not getattr(info, k)}  # -s/-d fill empty package fields
            info = PackageInfo(**{**_fields(info), "releases": {**info.releases, version: notes}})
            await services.catalog.packages.put(info.with_metadata(fresh))
        if notes:
            audit("release-metadata", principal, owner, f"{pkg.name}/{version}")
        return web.json_response(await release_json(services, find_package(services, owner, owner, name, version), version))
    if request.method == "DELETE":
        await labels.remove_uploads(services, principal, owner, pkg.uploads)
        return web.json_response({}, status=201)
    raise MethodNotAllowed()


def find_dist(services: Services, key: str, owner: str, name: str, version: str, basename: str) -> Any:
    pkg = find_package(services, key, owner, name, version)
    for upload in pkg.uploads:
        if basename in (basename_of(upload), upload.path, upload.filename):
            return upload
    raise NotFound(f"file {basename} does not exist for package {name} version {version}")


async def _dist(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name, version, basename = segments(route, 4, rest=True)
    if request.method in ("GET", "HEAD"):
        principal = can_read(services, request, route, owner)
        upload = find_dist(services, catalog_key(services, owner, principal), owner, name, version, basename)
        return web.json_response(dist_json(services, upload, owner))
    if request.method == "DELETE":
        principal = can_write(services, request, route, owner)
        upload = find_dist(services, owner, owner, name, version, basename)
        await labels.remove_uploads(services, principal, owner, [upload])
        return web.json_response(dist_json(services, upload, owner))
    raise MethodNotAllowed()


async def _download(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed()
    owner, name, version, basename = segments(route, 4, rest=True)
    principal = can_read(services, request, route, owner)
    upload = find_dist(services, catalog_key(services, owner, principal), owner, name, version, basename)
    return await services.sources.hosted_file(request, upload.sha256, upload.filename, "application/octet-stream")


__all__ = ["api_handlers", "PACKAGE_TYPE", "save_package"]
