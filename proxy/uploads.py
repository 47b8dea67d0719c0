"""The one upload entry: ``POST /api/repo/<channel>`` (multipart), dispatched by form.

- twine's legacy form (``:action=file_upload``)            -> PyPI
- ``filetype=cran_source_package|cran_binary_package``    -> CRAN (the seed's curl form)
- ``content=@<file>.conda|.tar.bz2`` (optional ``label=``) -> conda

Authorisation (``api:write`` + the write role) happens before the body is read. The file
part is streamed into a temp blob in the store while its digests are computed; ecosystems
validate it and commit it, or it is removed: bad input never leaves anything stored.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from aiohttp import BodyPartReader, web

from .context import ChannelRequest, Services, UploadForm
from .errors import BadRequest, Conflict, PayloadTooLarge
from .metrics import current_facts
from .store.blobs import TempBlob
from .store.catalog import Upload

log = logging.getLogger(__name__)

MAX_FIELD = 1024 * 1024  # long descriptions fit; anything larger is not a form field
FILE_FIELDS = ("content", "file")
IGNORED_FILE_FIELDS = ("gpg_signature", "attestations")


def safe_filename(name: str | None) -> str:
    if not name:
        raise BadRequest("the file part has no file name")
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise BadRequest(f"file name {name!r} is not a plain file name")
    return name


async def read_form(request: web.BaseRequest, services: Services, max_bytes: int) -> UploadForm:
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("expected a multipart/form-data upload")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    fields: dict[str, list[str]] = {}
    form: UploadForm | None = None
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            name = part.name or ""
            if part.filename is not None or name in FILE_FIELDS:
                if name in IGNORED_FILE_FIELDS:
                    await part.release()
                    continue
                if name not in FILE_FIELDS:
                    raise BadRequest(f"unexpected file field {name!r} (send the package as 'content')")
                if form is not None:
                    raise BadRequest("send exactly one file per upload")
                filename = safe_filename(part.filename)
                tmp = services.store.temp("uploads")
                form = UploadForm(fields, filename, tmp, {}, 0)
                while True:
                    chunk = await part.read_chunk(256 * 1024)
                    if not chunk:
                        break
                    tmp.write(chunk)
                    if tmp.size > max_bytes:
                        raise PayloadTooLarge(f"upload larger than the limit of {max_bytes} bytes")
                form.digests = await tmp.finish()
                form.size = tmp.size
            else:
                value = await part.read(decode=True)
                if len(value) > MAX_FIELD:
                    raise BadRequest(f"form field {name!r} is too long")
                try:
                    text = value.decode(part.get_charset("utf-8"))
                except (UnicodeDecodeError, LookupError):
                    raise BadRequest(f"form field {name!r} is not valid text") from None
                fields.setdefault(name, []).append(text)
    except BaseException:
        if form is not None:
            form.blob.discard()
        raise
    if form is None:
        raise BadRequest("the upload has no file: send it in the 'content' field")
    if form.size == 0:
        form.blob.discard()
        raise BadRequest(f"{form.filename} is empty")
    return form


def ecosystem_of_form(form: UploadForm) -> str:
    filetype = form.field("filetype")
    if form.field(":action") is not None:
        if form.field(":action") != "file_upload":
            raise BadRequest(f"unsupported :action {form.field(':action')!r} (only file_upload)")
        return "pypi"
    if filetype is not None:
        if filetype in ("cran_source_package", "cran_binary_package"):
            return "cran"
        if filetype in ("conda", "conda_package"):
            return "conda"
        raise BadRequest(
            f"unknown filetype {filetype!r}: use cran_source_package, cran_binary_package, "
            "or send a .conda/.tar.bz2 file"
        )
    if form.filename.endswith((".conda", ".tar.bz2")):
        return "conda"
    raise BadRequest(
        f"cannot tell what {form.filename} is: twine uploads send :action=file_upload, R uploads send "
        "filetype=cran_source_package or cran_binary_package, conda packages end in .conda or .tar.bz2"
    )


async def publish(
    services: Services,
    blob: TempBlob,
    *,
    channel: str,
    ecosystem: str,
    path: str,
    name: str,
    version: str,
    filename: str,
    meta: Mapping[str, Any],
    uploader: str,
    labels: tuple[str, ...] = ("main",),
    replace: bool = False,
    uploaded_at: float | None = None,
) -> Upload:
    """The one way a validated upload becomes servable, for every ecosystem: refuse a
    duplicate (409, nothing stored), move the temp blob into place atomically, then record
    it in the catalog. Until the catalog row exists, no index links to the blob."""
    if not replace and services.catalog.get(channel, ecosystem, path) is not None:
        raise Conflict("File already exists")
    committed = await blob.commit()
    upload = Upload(
        channel=channel,
        ecosystem=ecosystem,
        path=path,
        name=name,
        version=version,
        filename=filename,
        sha256=committed.sha256,
        md5=committed.md5,
        size=committed.size,
        labels=labels,
        meta=meta,
        uploader=uploader,
        uploaded_at=uploaded_at if uploaded_at is not None else time.time(),
    )
    services.catalog.add(upload, replace=replace)
    services.metrics.uploads.labels(ecosystem).inc()
    return upload


async def handle_upload(request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
    form = await read_form(request, ctx.services, ctx.settings.max_upload_bytes)
    return await accept_upload(request, ctx, form)


async def accept_upload(request: web.BaseRequest, ctx: ChannelRequest, form: UploadForm) -> web.StreamResponse:
    """Validate and publish a parsed upload form: the one path of the API and the web UI
    (same checks, same messages). The temp blob is removed unless it was committed."""
    try:
        ecosystem = ecosystem_of_form(form)
        facts = current_facts()
        if facts is not None:
            facts.ecosystem = ecosystem
        handler = ctx.services.ecosystems.get(ecosystem)
        if handler is None:
            raise BadRequest(f"{ecosystem} uploads are not enabled on this server")
        response = await handler.upload(request, ctx, form)  # type: ignore[arg-type]
        log.info(
            "upload %s to %s/%s by %s", form.filename, ctx.channel.name, ecosystem,
            ctx.principal.user if ctx.principal else "-",
        )
        return response
    finally:
        if form.blob.committed is None:
            form.blob.discard()
