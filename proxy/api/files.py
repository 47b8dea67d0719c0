"""``anaconda upload``: stage, storage POST, commit, for conda packages, wheels and sdists,
and R packages (anaconda-client's ``conda``, ``pypi`` and ``r`` package types).

    POST /api/stage/<o>/<n>/<v>/<basename>    200 {post_url, form_data, dist_id}
    POST <post_url> (S3-style multipart)      201; errors as S3 XML (the client parses them)
    POST /api/commit/<o>/<n>/<v>/<basename>   200 {url, ...}

The post_url carries the caller's own token as ``/t/<TOKEN>/`` (anaconda-client posts the
file without its API headers). The file then takes the path of every other upload of its
ecosystem: conda's ``store_conda_upload``, and for wheels, sdists and R packages the same
``accept_upload`` that twine's and R's form POSTs go through (same checks, same messages).
"""
from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from ..audit import audit
from ..auth.credentials import Principal, token_from_headers
from ..context import ApiHandler, ChannelRequest, Services, UploadForm
from ..ecosystems.conda.index import SUBDIR_RE, normalize
from ..ecosystems.conda.package import CondaPackage
from ..ecosystems.conda.sections import is_package_filename
from ..ecosystems.conda.uploads import parse_labels, store_conda_upload, upload_summary
from ..errors import BadRequest, ChannelgateError, Conflict, MethodNotAllowed
from ..responses import http_status
from ..routing import Route
from ..uploads import accept_upload, read_form
from .common import can_write, json_body, segments
from .labels import check_unlocked
from .objects import ECOSYSTEM_OF_TYPE, dist_json, find_package

CRAN_FILETYPE = {"source": "cran_source_package", "package": "cran_binary_package"}


def handlers() -> dict[str, ApiHandler]:
    return {"stage": _stage, "upload": _post_file, "commit": _commit}


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


def _check_conda_basename(basename: str) -> tuple[str, str]:
    subdir, _, filename = basename.partition("/")
    if not SUBDIR_RE.match(subdir) or not is_package_filename(filename):
        raise BadRequest(f"basename must be <subdir>/<package file>, got {basename[:200]!r}")
    return subdir, filename


def _ecosystem(payload_type: Any, basename: str) -> str:
    if payload_type is None:
        return "conda" if "/" in basename else "pypi"
    ecosystem = ECOSYSTEM_OF_TYPE.get(str(payload_type))
    if ecosystem is None:
        raise BadRequest(f"package type {payload_type!r} is not hosted here (conda, pypi and r are)")
    return ecosystem


async def _stage(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 1 of an anaconda-client upload: where to send the file."""
    if request.method != "POST":
        raise MethodNotAllowed()
    owner, name, version, basename = segments(route, 4, rest=True)
    can_write(services, request, route, owner)
    payload = await json_body(request)
    ecosystem = _ecosystem(payload.get("distribution_type"), basename)
    form_data = {"distribution_type": ecosystem}
    if ecosystem == "conda":
        _check_conda_basename(basename)
        channels = payload.get("channels") or []
        labels = parse_labels([c for c in channels if isinstance(c, str)] if isinstance(channels, list) else [str(channels)])
        check_unlocked(services, owner, labels)
        form_data["labels"] = ",".join(labels)
    elif "/" in basename:
        raise BadRequest(f"a {ecosystem} file name has no '/': {basename[:200]!r}")
    if ecosystem == "cran":
        attrs = payload.get("attrs")
        attrs = attrs if isinstance(attrs, dict) else {}
        form_data["filetype"] = CRAN_FILETYPE.get(str(attrs.get("type", "source")), "cran_source_package")
    if any(basename in (u.path, u.filename) for u in find_package(services, owner, owner, name, version).uploads):
        raise Conflict(f"file {basename} already exists for package {name} version {version}")
    token = route.token or token_from_headers(request.headers)
    assert token is not None  # can_write authenticated it
    post_url = (
        f"{_origin(services, request)}/t/{token}/api/upload/"
        f"{quote(owner)}/{quote(name)}/{quote(version)}/{quote(basename)}"
    )
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


def _check_digests(form: UploadForm) -> dict[str, str]:
    fields = {name: values[0] for name, values in form.fields.items() if values}
    md5_b64 = fields.get("Content-MD5")
    if md5_b64 and md5_b64 != base64.b64encode(bytes.fromhex(form.digests["md5"])).decode():
        raise BadRequest("the Content-MD5 digest does not match the file")
    declared = fields.get("sha256")
    if declared and declared.lower() != form.digests["sha256"]:
        raise BadRequest("the sha256 digest does not match the file")
    return fields


async def _post_file(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 2: the storage POST (S3-style multipart: form fields, then ``file``)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed()
        owner, name, version, basename = segments(route, 4, rest=True)
        principal = can_write(services, request, route, owner)
        form = await read_form(request, services, file_fields=("file",), strip_dirs=True)
        try:
            fields = _check_digests(form)
            ecosystem = fields.get("distribution_type", "conda")
            if ecosystem == "conda":
                return await _post_conda(services, principal, owner, name, version, basename, form, fields)
            if ecosystem not in ("pypi", "cran") or form.filename != basename:
                raise BadRequest(f"the file is {form.filename!r}, not the staged {basename!r}")
            # the twine or R form, as those clients would send it: the same checks follow
            form.fields.update({":action": ["file_upload"], "name": [name], "version": [version]}
                               if ecosystem == "pypi" else {"filetype": [fields.get("filetype", "")]})
            ctx = ChannelRequest(route, services.settings.channels[owner], principal, services)
            await accept_upload(request, ctx, form)
            return web.json_response({"ok": True, "basename": basename}, status=201)
        finally:
            if form.blob.committed is None:
                form.blob.discard()
    except ChannelgateError as exc:
        return _s3_error(exc)


async def _post_conda(services: Services, principal: Principal, owner: str, name: str, version: str,
                      basename: str, form: UploadForm, fields: dict[str, str]) -> web.StreamResponse:
    subdir, filename = _check_conda_basename(basename)

    def check(pkg: CondaPackage) -> None:  # the package must be what the URL says
        if pkg.subdir != subdir or normalize(pkg.name) != normalize(name) or pkg.version != version:
            raise BadRequest(
                f"the file is {pkg.subdir}/{pkg.filename} ({pkg.name} {pkg.version}), not {basename} ({name} {version})"
            )

    labels = parse_labels([fields.get("labels", "")])
    check_unlocked(services, owner, labels)
    async with form.blob:
        pkg, upload = await store_conda_upload(
            services, owner, principal.user, form.blob, filename, form.digests, labels, check=check,
        )
    audit("upload", principal, owner, upload.path, ecosystem="conda", labels=",".join(labels))
    return web.json_response(upload_summary(pkg, upload), status=201)


async def _commit(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """Step 3: the file was stored by the storage POST; confirm it."""
    if request.method != "POST":
        raise MethodNotAllowed()
    owner, name, version, basename = segments(route, 4, rest=True)
    can_write(services, request, route, owner)
    await json_body(request)
    from .anaconda import find_dist  # the one lookup of a file by its anaconda.org basename

    upload = find_dist(services, owner, owner, name, version, basename)
    result = dist_json(services, upload, owner)
    result["url"] = f"{_origin(services, request)}/{owner}/{upload.path}"
    return web.json_response(result)
