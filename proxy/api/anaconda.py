"""The anaconda-client (binstar) API under ``/api``: enough of anaconda.org's REST API for
``anaconda upload -u <channel> [--label L] [--force|--skip]``, ``anaconda show``,
``anaconda remove`` and ``anaconda move``/``label`` with the site url ``http://HOST/api``.

Owner = channel. Every call is authorised against that channel (``api:write`` + write role
to change anything; ``api:read`` or ``api:write`` to look). Calls anaconda-client makes
(binstar_client/__init__.py), and what it expects back:

    HEAD /api                                     200 (check_server)
    GET  /api/user[/<owner>]                      200 {"login": ...}
    GET|POST|PATCH|DELETE /api/package/<o>/<n>    200 (DELETE: 201), GET 404 when empty
    GET|POST|PATCH|DELETE /api/release/<o>/<n>/<v>  200 (DELETE: 201)
    GET|DELETE /api/dist/<o>/<n>/<v>/<basename>   200; basename of a conda file = <subdir>/<file>
    POST /api/stage/<o>/<n>/<v>/<basename>        200 {post_url, form_data, dist_id}
    POST <post_url> (S3-style multipart, 'file')  201; errors as S3 XML (the client parses them)
    POST /api/commit/<o>/<n>/<v>/<basename>       200
    GET  /api/channels/<o>[/<label>]; POST|DELETE /api/channels/<o>/<label>  (label moves: 201)

The post_url carries the caller's own token as ``/t/<TOKEN>/`` (anaconda-client posts the
file without its API headers); the file then goes through ``store_conda_upload``, the same
validation and catalog path as ``POST /api/repo/<channel>``.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

from ..auth.credentials import Principal, token_from_headers
from ..auth.policy import Action
from ..context import ApiHandler, Services
from ..ecosystems.conda.index import SUBDIR_RE, normalize
from ..ecosystems.conda.package import CondaPackage
from ..ecosystems.conda.sections import is_package_filename
from ..ecosystems.conda.uploads import parse_labels, store_conda_upload, upload_summary, uploads_changed
from ..ecosystems.conda.version import version_key_or_none
from ..errors import BadRequest, ChannelgateError, Conflict, Forbidden, MethodNotAllowed, NotFound, PayloadTooLarge
from ..responses import http_status
from ..routing import Route
from ..store.catalog import Upload
from ..uploads import read_form

MAX_JSON = 1024 * 1024
Handler = ApiHandler


def api_handlers(services: Services) -> dict[str, Handler]:
    return {
        "": _root,
        "user": _user,
        "package": _package,
        "release": _release,
        "dist": _dist,
        "stage": _stage,
        "upload": _post_file,
        "commit": _commit,
        "channels": _channels,
    }


# --------------------------------------------------------------------------- helpers


def _segments(route: Route, count: int, *, rest: bool = False) -> list[str]:
    """The path segments after ``/api/<head>/``: exactly ``count`` (the last may hold
    slashes when ``rest``), or 404."""
    parts = route.rest.split("/")[1:]
    if rest and len(parts) > count:
        parts = [*parts[: count - 1], "/".join(parts[count - 1 :])]
    if len(parts) != count or not all(parts):
        raise NotFound()
    return parts


def _can_write(services: Services, request: web.BaseRequest, route: Route, owner: str) -> Principal:
    principal = services.guard.authorize(request.headers, route.token, owner, Action.WRITE, request.remote)
    assert principal is not None  # writing is never anonymous
    return principal


def _can_read(services: Services, request: web.BaseRequest, route: Route, owner: str) -> None:
    """``api:read`` on the channel, or ``api:write`` (uploaders look before they write)."""
    try:
        services.guard.authorize(request.headers, route.token, owner, Action.API_READ, request.remote)
    except Forbidden as first:
        try:
            services.guard.authorize(request.headers, route.token, owner, Action.WRITE, request.remote)
        except Forbidden:
            raise first from None


async def _json_body(request: web.BaseRequest) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await request.content.read(MAX_JSON + 1)
    if len(body) > MAX_JSON:
        raise PayloadTooLarge("request body too large")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _origin(services: Services, request: web.BaseRequest) -> str:
    """Where the URLs this API hands out point (post_url carries the caller's token):
    ``server.public_url``, else the address this connection reached. Never the Host
    header, which whoever sends the request controls (DESIGN: forwarded headers are not
    trusted either)."""
    if services.settings.public_url:
        return services.settings.public_url.rstrip("/")
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise BadRequest("this server has no public_url and no address to link to")
    host, port = str(sockname[0]), int(sockname[1])
    return f"{request.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _uploads(services: Services, owner: str, name: str, version: str | None = None) -> list[Upload]:
    wanted = normalize(name)
    return [
        u for u in services.catalog.list(owner, "conda")
        if u.name == wanted and (version is None or u.version == version)
    ]


def _dist_json(upload: Upload, owner: str) -> dict[str, Any]:
    meta = dict(upload.meta)
    subdir = upload.path.split("/", 1)[0]
    return {
        "basename": upload.path,
        "full_name": f"{owner}/{upload.name}/{upload.version}/{upload.path}",
        "owner": owner,
        "version": upload.version,
        "md5": upload.md5,
        "sha256": upload.sha256,
        "size": upload.size,
        "labels": list(upload.labels),
        "type": "conda",
        "distribution_type": "conda",
        "upload_time": _iso(upload.uploaded_at),
        "attrs": {
            "subdir": subdir,
            "platform": meta.get("platform"),
            "arch": meta.get("arch"),
            "build": meta.get("build"),
            "build_number": meta.get("build_number"),
            "depends": meta.get("depends", []),
            "license": meta.get("license"),
            "timestamp": meta.get("timestamp"),
        },
        "dependencies": {"depends": [{"name": d.split(" ")[0], "specs": []} for d in meta.get("depends", [])]},
        "download_url": f"/{owner}/{upload.path}",
    }


def _versions(uploads: list[Upload]) -> list[str]:
    unique = sorted({u.version for u in uploads})

    def order(a: str, b: str) -> int:
        va, vb = version_key_or_none(a), version_key_or_none(b)
        if va is None or vb is None:
            return (a > b) - (a < b)
        return -1 if va < vb else (1 if vb < va else 0)

    return sorted(unique, key=functools.cmp_to_key(order))


# --------------------------------------------------------------------------- endpoints


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
        return web.json_response(_user_json(services, principal.user, "user"))
    (owner,) = _segments(route, 1)
    _can_read(services, request, route, owner)  # a missing channel answers like a private one
    return web.json_response(_user_json(services, owner, "org"))


def _user_json(services: Services, login: str, user_type: str) -> dict[str, Any]:
    """anaconda-client's ``pprint_user`` reads ``login`` and ``created_at``, prints the rest."""
    return {
        "login": login,
        "name": login,
        "user_type": user_type,
        "created_at": _iso(services.settings.storage_path.stat().st_mtime),
    }


async def _package(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name = _segments(route, 2)
    if request.method in ("GET", "HEAD"):
        _can_read(services, request, route, owner)
        uploads = _uploads(services, owner, name)
        if not uploads:
            raise NotFound(f"package {owner}/{name} does not exist")
        versions = _versions(uploads)
        channel = services.settings.channels[owner]
        return web.json_response({
            "name": uploads[0].name,
            "full_name": f"{owner}/{uploads[0].name}",
            "owner": {"login": owner},
            "package_types": ["conda"],
            "public": channel.public,
            "summary": "",
            "versions": versions,
            "latest_version": versions[-1],
            "conda_platforms": sorted({u.path.split("/", 1)[0] for u in uploads}),
            "labels": sorted({label for u in uploads for label in u.labels}),
            "files": [_dist_json(u, owner) for u in uploads],
            "releases": [{"version": v, "distributions": [u.path for u in uploads if u.version == v]} for v in versions],
        })
    _can_write(services, request, route, owner)
    if request.method in ("POST", "PATCH"):
        # packages exist through their files: creating one is a no-op that succeeds
        await _json_body(request)
        return web.json_response({"name": normalize(name), "full_name": f"{owner}/{normalize(name)}", "owner": {"login": owner}})
    if request.method == "DELETE":
        services.catalog.remove(owner, "conda", [u.path for u in _uploads(services, owner, name)])
        uploads_changed(services, owner)
        return web.json_response({}, status=201)
    raise MethodNotAllowed()


async def _release(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name, version = _segments(route, 3)
    if request.method in ("GET", "HEAD"):
        _can_read(services, request, route, owner)
        uploads = _uploads(services, owner, name, version)
        if not uploads:
            raise NotFound(f"release {owner}/{name}/{version} does not exist")
        return web.json_response({
            "name": uploads[0].name,
            "version": version,
            "full_name": f"{owner}/{uploads[0].name}/{version}",
            "distributions": [_dist_json(u, owner) for u in uploads],
        })
    _can_write(services, request, route, owner)
    if request.method in ("POST", "PATCH"):
        await _json_body(request)
        return web.json_response({"name": normalize(name), "version": version, "full_name": f"{owner}/{normalize(name)}/{version}"})
    if request.method == "DELETE":
        services.catalog.remove(owner, "conda", [u.path for u in _uploads(services, owner, name, version)])
        uploads_changed(services, owner)
        return web.json_response({}, status=201)
    raise MethodNotAllowed()


def _find_dist(services: Services, owner: str, name: str, version: str, basename: str) -> Upload:
    upload = services.catalog.get(owner, "conda", basename)
    if upload is None or upload.name != normalize(name) or upload.version != version:
        raise NotFound(f"file {basename} does not exist for package {name} version {version}")
    return upload


async def _dist(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    owner, name, version, basename = _segments(route, 4, rest=True)
    if request.method in ("GET", "HEAD"):
        _can_read(services, request, route, owner)
        return web.json_response(_dist_json(_find_dist(services, owner, name, version, basename), owner))
    if request.method == "DELETE":
        _can_write(services, request, route, owner)
        upload = _find_dist(services, owner, name, version, basename)
        services.catalog.remove(owner, "conda", [upload.path])
        uploads_changed(services, owner)
        return web.json_response(_dist_json(upload, owner))
    raise MethodNotAllowed()


def _check_basename(basename: str) -> tuple[str, str]:
    subdir, _, filename = basename.partition("/")
    if not SUBDIR_RE.match(subdir) or not is_package_filename(filename):
        raise BadRequest(f"basename must be <subdir>/<package file>, got {basename[:200]!r}")
    return subdir, filename


async def _stage(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 1 of an anaconda-client upload: where to send the file."""
    if request.method != "POST":
        raise MethodNotAllowed()
    owner, name, version, basename = _segments(route, 4, rest=True)
    _can_write(services, request, route, owner)
    _check_basename(basename)
    payload = await _json_body(request)
    channels = payload.get("channels") or []
    labels = parse_labels([c for c in channels if isinstance(c, str)] if isinstance(channels, list) else [str(channels)])
    if services.catalog.get(owner, "conda", basename) is not None:
        raise Conflict(f"file {basename} already exists for package {name} version {version}")
    token = route.token or token_from_headers(request.headers)
    assert token is not None  # _can_write authenticated it
    post_url = (
        f"{_origin(services, request)}/t/{token}/api/upload/"
        f"{quote(owner)}/{quote(name)}/{quote(version)}/{quote(basename)}"
    )
    form_data = {"labels": ",".join(labels)}
    sha256 = payload.get("sha256")
    if isinstance(sha256, str) and len(sha256) == 64:
        form_data["sha256"] = sha256.lower()
    return web.json_response({"post_url": post_url, "form_data": form_data, "dist_id": basename, "basename": basename})


def _s3_error(exc: ChannelgateError) -> web.Response:
    """anaconda-client parses a failed storage POST as S3's XML error document."""
    code = "InvalidDigest" if "digest" in exc.message.lower() else type(exc).__name__
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(exc.message)}</Message></Error>"
    )
    return web.Response(status=http_status(exc), text=body, content_type="application/xml", headers=exc.headers)


async def _post_file(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 2: the storage POST (S3-style multipart: form fields, then ``file``)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed()
        owner, name, version, basename = _segments(route, 4, rest=True)
        principal = _can_write(services, request, route, owner)
        subdir, filename = _check_basename(basename)
        form = await read_form(request, services, file_fields=("file",), strip_dirs=True)
        blob, digests = form.blob, form.digests
        async with blob:
            fields = {name: values[0] for name, values in form.fields.items() if values}
            md5_b64 = fields.get("Content-MD5")
            if md5_b64 and md5_b64 != base64.b64encode(bytes.fromhex(digests["md5"])).decode():
                raise BadRequest("the Content-MD5 digest does not match the file")
            declared = fields.get("sha256")
            if declared and declared.lower() != digests["sha256"]:
                raise BadRequest("the sha256 digest does not match the file")

            def check(pkg: CondaPackage) -> None:  # the package must be what the URL says
                if pkg.subdir != subdir or normalize(pkg.name) != normalize(name) or pkg.version != version:
                    raise BadRequest(
                        f"the file is {pkg.subdir}/{pkg.filename} ({pkg.name} {pkg.version}),"
                        f" not {basename} ({name} {version})"
                    )

            pkg, upload = await store_conda_upload(
                services, owner, principal.user, blob, filename, digests,
                parse_labels([fields.get("labels", "")]), check=check,
            )
        return web.json_response(upload_summary(pkg, upload), status=201)
    except ChannelgateError as exc:
        return _s3_error(exc)


async def _commit(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 3: the file was stored by the storage POST; confirm it."""
    if request.method != "POST":
        raise MethodNotAllowed()
    owner, name, version, basename = _segments(route, 4, rest=True)
    _can_write(services, request, route, owner)
    await _json_body(request)
    upload = _find_dist(services, owner, name, version, basename)
    result = _dist_json(upload, owner)
    result["url"] = f"{_origin(services, request)}/{owner}/{upload.path}"
    return web.json_response(result)


async def _channels(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Labels (anaconda-client still calls them channels): list, show, add/remove files, copy."""
    parts = route.rest.split("/")[1:]
    if not parts or not parts[0]:
        raise NotFound()
    owner = parts[0]
    catalog = services.catalog
    if len(parts) == 1:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed()
        _can_read(services, request, route, owner)
        counts: dict[str, int] = {}
        for upload in catalog.list(owner, "conda"):
            for label in upload.labels:
                counts[label] = counts.get(label, 0) + 1
        return web.json_response({label: {"num_files": n} for label, n in sorted(counts.items())})
    label = parse_labels([parts[1]])[0]
    if len(parts) == 2 and request.method in ("GET", "HEAD"):
        _can_read(services, request, route, owner)
        files = [_dist_json(u, owner) for u in catalog.list(owner, "conda") if label in u.labels]
        return web.json_response({"name": label, "files": files, "num_files": len(files)})
    _can_write(services, request, route, owner)
    if len(parts) == 4 and parts[2] == "copy" and request.method == "POST":
        to_label = parse_labels([parts[3]])[0]
        for upload in catalog.list(owner, "conda"):
            if label in upload.labels and to_label not in upload.labels:
                catalog.set_labels(owner, "conda", upload.path, [*upload.labels, to_label])
        uploads_changed(services, owner)
        return web.json_response({}, status=201)
    if len(parts) != 2 or request.method not in ("POST", "DELETE"):
        raise NotFound()
    spec = await _json_body(request)
    selected = [
        u for u in catalog.list(owner, "conda")
        if (not spec.get("package") or u.name == normalize(str(spec["package"])))
        and (not spec.get("version") or u.version == str(spec["version"]))
        and (not spec.get("basename") or u.path == str(spec["basename"]))
    ]
    for upload in selected:
        labels = set(upload.labels)
        labels = labels | {label} if request.method == "POST" else labels - {label}
        catalog.set_labels(owner, "conda", upload.path, sorted(labels))
    uploads_changed(services, owner)
    return web.json_response({"files": len(selected)}, status=201)
