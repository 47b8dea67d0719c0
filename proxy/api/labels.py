"""Labels (anaconda-client still calls them channels), copies and removals.

    GET    /api/channels                         the channels the caller may read
    GET    /api/channels/<o>                     {label: {num_files, is_locked}}
    GET    /api/channels/<o>/<label>             {name, is_locked, files}
    POST|DELETE /api/channels/<o>/<label>        add/remove the label on files (move): 201; 404 when
                                                 the spec matches no file; 423 on a locked label
    POST   /api/channels/<o>/<label>/copy/<to>   copy a label (201)
    POST|DELETE /api/channels/<o>/<label>/lock   lock/unlock (201): a locked label refuses uploads and moves
    POST|PUT|PATCH /api/copy/package/<o>/<n>/<v>[/<basename>]  copy files between labels and channels,
                                                 checked like an upload to the target

Only conda files carry labels; a PyPI or CRAN file is in its channel's one index.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from ..audit import audit
from ..auth.credentials import Principal
from ..auth.policy import Action, Decision, decide
from ..context import ApiHandler, Services
from ..ecosystems.conda.index import DEFAULT_LABEL
from ..ecosystems.conda.uploads import parse_labels, uploads_changed
from ..errors import BadRequest, Conflict, Locked, MethodNotAllowed, NotFound
from ..routing import Route
from ..store.catalog import Upload
from .common import can_read, can_write, json_body
from .objects import ECOSYSTEMS, basename_of, catalog_key, dist_json, find_package


def handlers() -> dict[str, ApiHandler]:
    return {"channels": _channels, "copy": _copy}


def indexes_changed(services: Services, owner: str) -> None:
    uploads_changed(services, owner)


def check_unlocked(services: Services, owner: str, labels: tuple[str, ...] | list[str]) -> None:
    locked = services.catalog.packages.locked_labels(owner)
    hit = [label for label in labels if label in locked]
    if hit:
        raise Locked(f"label {hit[0]!r} of {owner} is locked (anaconda label --unlock {hit[0]})")


async def remove_uploads(services: Services, principal: Principal, owner: str, uploads: list[Upload]) -> None:
    """Remove files of any ecosystem from a channel (its indexes drop them at once)."""
    for upload in uploads:
        await services.catalog.remove(owner, upload.ecosystem, [upload.path])
        audit("delete", principal, owner, upload.path, ecosystem=upload.ecosystem)
    if uploads:
        indexes_changed(services, owner)


async def _channels(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    parts = route.rest.split("/")[1:]
    if not parts or not parts[0]:
        return _channel_listing(request, route, services)
    owner = parts[0]
    if len(parts) == 1:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed()
        principal = can_read(services, request, route, owner)
        counts: dict[str, int] = {}
        for upload in services.catalog.list(catalog_key(services, owner, principal), "conda"):
            for label in upload.labels:
                counts[label] = counts.get(label, 0) + 1
        locked = services.catalog.packages.locked_labels(owner)
        for label in locked:
            counts.setdefault(label, 0)
        return web.json_response(
            {label: {"num_files": n, "is_locked": label in locked} for label, n in sorted(counts.items())}
        )
    label = parse_labels([parts[1]])[0]
    if len(parts) == 2 and request.method in ("GET", "HEAD"):
        principal = can_read(services, request, route, owner)
        key = catalog_key(services, owner, principal)
        found = [dist_json(services, u, owner) for u in services.catalog.list(key, "conda") if label in u.labels]
        return web.json_response({"name": label, "files": found, "num_files": len(found),
                                  "is_locked": label in services.catalog.packages.locked_labels(owner)})
    principal = can_write(services, request, route, owner)
    if len(parts) == 3 and parts[2] == "lock" and request.method in ("POST", "DELETE"):
        await services.catalog.packages.set_locked(owner, label, request.method == "POST")
        audit("label-lock" if request.method == "POST" else "label-unlock", principal, owner, label)
        return web.json_response({}, status=201)
    if len(parts) == 4 and parts[2] == "copy" and request.method == "POST":
        to_label = parse_labels([parts[3]])[0]
        check_unlocked(services, owner, [to_label])
        for upload in services.catalog.list(owner, "conda"):
            if label in upload.labels and to_label not in upload.labels:
                await services.catalog.set_labels(owner, "conda", upload.path, [*upload.labels, to_label])
        audit("label-copy", principal, owner, f"{label}->{to_label}")
        indexes_changed(services, owner)
        return web.json_response({}, status=201)
    if len(parts) != 2 or request.method not in ("POST", "DELETE"):
        raise NotFound()
    return await _move(request, services, principal, owner, label)


async def _move(request: web.BaseRequest, services: Services, principal: Principal, owner: str,
                label: str) -> web.StreamResponse:
    """Add (POST) or remove (DELETE) a label on the files a spec selects: half of a move."""
    spec = await json_body(request)
    check_unlocked(services, owner, [label])
    package, version, basename = (spec.get(k) for k in ("package", "version", "basename"))
    selected = [
        u for u in services.catalog.list(owner, "conda")
        if (not package or u.name == str(package).lower())
        and (not version or u.version == str(version))
        and (not basename or u.path == str(basename))
        and (request.method == "POST" or label in u.labels)
    ]
    if not selected:
        raise NotFound(f"no file of {owner} matches {'/'.join(str(p) for p in (package, version, basename) if p)}"
                       f"{'' if request.method == 'POST' else f' with label {label}'}")
    for upload in selected:
        check_unlocked(services, owner, [] if request.method == "POST" else list(upload.labels))
        new = set(upload.labels) | {label} if request.method == "POST" else set(upload.labels) - {label}
        await services.catalog.set_labels(owner, "conda", upload.path, sorted(new))
        audit("label-add" if request.method == "POST" else "label-remove", principal, owner, upload.path,
              label=label)
    indexes_changed(services, owner)
    return web.json_response({"files": len(selected)}, status=201)


def _channel_listing(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    """``GET /api/channels``: every channel the caller may read, with the caller's role."""
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed()
    principal, _ = services.guard.identify(request.headers, route.token, request.remote)
    out = []
    for name, channel in sorted(services.settings.channels.items()):
        readable = any(decide(principal, channel, a) is Decision.ALLOW
                       for a in (Action.CONDA_READ, Action.PYPI_READ, Action.CRAN_READ, Action.API_READ))
        if not readable:
            continue
        role = "admin" if decide(principal, channel, Action.ADMIN) is Decision.ALLOW else (
            "write" if decide(principal, channel, Action.WRITE) is Decision.ALLOW else "read")
        out.append({"name": name, "public": channel.public, "role": role})
    return web.json_response(out)


# --------------------------------------------------------------------------- copy
async def _copy(request: web.BaseRequest, route: Route, services: Services) -> web.StreamResponse:
    parts = route.rest.split("/")[1:]
    if len(parts) < 4 or parts[0] != "package" or not all(parts[1:4]):
        raise NotFound()
    if request.method not in ("POST", "PUT", "PATCH"):
        raise MethodNotAllowed()
    owner, name, version = parts[1:4]
    basename = "/".join(parts[4:])
    payload = await json_body(request)
    target = str(payload.get("to_owner") or owner)
    from_label = parse_labels([str(payload.get("from_channel") or DEFAULT_LABEL)])[0]
    to_label = parse_labels([str(payload.get("to_channel") or DEFAULT_LABEL)])[0]
    reader = can_read(services, request, route, owner)
    writer = can_write(services, request, route, target)  # the same right as an upload to the target
    check_unlocked(services, target, [to_label])
    pkg = find_package(services, catalog_key(services, owner, reader), owner, name, version)
    chosen = [u for u in pkg.uploads
              if (not basename or basename in (basename_of(u), u.path, u.filename))
              and (u.ecosystem != "conda" or from_label in u.labels)]
    if not chosen:
        raise NotFound(f"no file of {owner}/{name}/{version} {basename} has label {from_label}")
    copied = [c for c in [await _copy_one(services, writer, u, target, to_label, request.method) for u in chosen] if c]
    indexes_changed(services, target)
    return web.json_response([dist_json(services, u, target) for u in copied])


async def _copy_one(services: Services, principal: Principal, upload: Upload, target: str, to_label: str,
              method: str) -> Upload | None:
    """One file into the target channel (and label). The bytes are shared: the store keys
    them by sha256. POST refuses an existing file (409), PUT replaces it, PATCH skips it."""
    existing = services.catalog.get(target, upload.ecosystem, upload.path)
    if upload.ecosystem == "conda" and existing is not None and existing.sha256 == upload.sha256:
        if to_label in existing.labels:
            if method == "PATCH":
                return None
            raise Conflict(f"{upload.path} already has label {to_label} in {target}")
        await services.catalog.set_labels(target, "conda", upload.path, [*existing.labels, to_label])
        audit("copy", principal, target, upload.path, source=upload.channel, label=to_label)
        return replace(existing, labels=(*existing.labels, to_label))
    if upload.ecosystem != "conda" and target == upload.channel:
        raise BadRequest(f"{upload.filename} is already in {target}: PyPI and CRAN files have no labels")
    if existing is not None and method == "PATCH":
        return None
    if existing is not None and method != "PUT":
        raise Conflict(f"{upload.path} already exists in {target}")
    labels = (to_label,) if upload.ecosystem == "conda" else (DEFAULT_LABEL,)
    copy = replace(upload, channel=target, labels=labels, uploader=principal.user)
    await services.catalog.add(copy, replace=existing is not None)
    audit("copy", principal, target, upload.path, source=upload.channel, label=to_label)
    return copy


__all__ = ["handlers", "remove_uploads", "check_unlocked", "indexes_changed", "ECOSYSTEMS", "Any"]
