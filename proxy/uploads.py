"""The one upload entry: ``POST /api/repo/<channel>`` (multipart), dispatched by form.

- twine's legacy form (``:action=file_upload``)            -> PyPI
- ``filetype=cran_source_package|cran_binary_package``    -> CRAN (the seed's curl form)
- ``content=@<file>.conda|.tar.bz2`` (optional ``label=``) -> conda

Authorisation (``api:write`` + the write role) happens before the body is read. The file
part is streamed into a temp blob in the store while its digests are computed; ecosystems
validate it and commit it, or it is removed: bad input never leaves anything stored.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EofStream

from .audit import audit
from .context import ChannelRequest, Services, UploadForm
from .errors import BadRequest, Conflict, PayloadTooLarge, NotFound
from .metrics import current_facts
from .store.blobs import TempBlob
from .store.catalog import Upload

log = logging.getLogger(__name__)

MAX_FIELD = 1024 * 1024  # long descriptions fit; anything larger is not a form field
FILE_FIELDS = ("content", "file")
IGNORED_FILE_FIELDS = ("gpg_signature", "attestations")
CHUNK = 256 * 1024
T = TypeVar("T")


class UploadChecks:
    """The small, bounded pool that runs CPU-heavy upload validation
    (``server.limits.validation_workers`` threads), apart from the default pool that file
    responses use: downloads never wait behind uploads. Each check's own work is bounded by
    the archive limits (``proxy.archives.Budget``)."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload-check")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        name = getattr(fn, "__name__", "check")

        def job() -> T:
            log.info("upload check %s started", name)
            return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def safe_filename(name: str | None) -> str:
    if not name:
        raise BadRequest("the file part has no file name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BadRequest(f"file name {ascii(name)[1:-1][:200]!r} contains control characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BadRequest(f"file name {name[:200]!r} is not a plain file name")
    return name


def _multipart_error(exc: Exception) -> BadRequest:
    """aiohttp's multipart errors, as a 400 that names the problem (never echoing headers)."""
    text = str(exc)
    if isinstance(exc, HttpProcessingError):
        return BadRequest("malformed multipart body: a part has an invalid header")
    if "boundary" in text:
        return BadRequest("malformed multipart body: the boundary is missing, too long or not found in the body")
    if "EOF" in text or isinstance(exc, (EOFError, EofStream)):
        return BadRequest("malformed multipart body: it ends early (no closing boundary)")
    return BadRequest("malformed multipart body")


class _FormReader:
    """One multipart form, bounded: ``server.limits.form_fields`` parts,
    ``form_text_mb`` of text in total (each field at most 1 MiB), one file of at most
    ``server.max_upload_mb`` streamed into a temp blob."""

    def __init__(self, services: Services, file_fields: tuple[str, ...], strip_dirs: bool) -> None:
        self.services = services
        self.limits = services.settings.limits
        self.max_bytes = services.settings.max_upload_bytes
        self.file_fields = file_fields
        self.strip_dirs = strip_dirs
        self.fields: dict[str, list[str]] = {}
        self.parts = 0
        self.text_bytes = 0
        self.form: UploadForm | None = None

    async def part(self, part: BodyPartReader) -> None:
        self.parts += 1
        if self.parts > self.limits.form_fields:
            raise BadRequest(f"the form has more than {self.limits.form_fields} fields (server.limits.form_fields)")
        name = part.name or ""
        for header in ("Content-Encoding", "Content-Transfer-Encoding"):
            if part.headers.get(header, "identity").lower() not in ("identity", "binary", "7bit", "8bit"):
                raise BadRequest(f"form part {name[:100]!r} has a {header}; send parts unencoded")
        if part.filename is None and name not in self.file_fields:
            await self.text(part, name)
        elif name in IGNORED_FILE_FIELDS:  # signatures, attestations: small, read and dropped
            size = 0
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > MAX_FIELD:
                    raise PayloadTooLarge(f"form part {name!r} is larger than {MAX_FIELD} bytes")
        elif name not in self.file_fields:
            raise BadRequest(f"unexpected file field {name!r} (send the package as {self.file_fields[0]!r})")
        elif self.form is not None:
            raise BadRequest("send exactly one file per upload")
        else:
            await self.file(part)

    async def text(self, part: BodyPartReader, name: str) -> None:
        value = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            value += chunk
            self.text_bytes += len(chunk)
            if len(value) > MAX_FIELD:
                raise BadRequest(f"form field {name[:100]!r} is too long (more than {MAX_FIELD} bytes)")
            if self.text_bytes > self.limits.form_text_bytes:
                raise PayloadTooLarge(
                    f"the form's text fields exceed {self.limits.form_text_bytes // (1024 * 1024)} MiB"
                    " (server.limits.form_text_mb)"
                )
        try:
            text = bytes(value).decode(part.get_charset("utf-8"))
        except (UnicodeDecodeError, LookupError):
            raise BadRequest(f"form field {name[:100]!r} is not valid text") from None
        self.fields.setdefault(name, []).append(text)

    async def file(self, part: BodyPartReader) -> None:
        raw = part.filename or ""
        filename = safe_filename(raw.rsplit("/", 1)[-1] if self.strip_dirs else raw)
        tmp = self.services.store.temp("uploads")
        self.form = UploadForm(self.fields, filename, tmp, {}, 0)
        while chunk := await part.read_chunk(CHUNK):
            tmp.write(chunk)
            if tmp.size > self.max_bytes:
                raise PayloadTooLarge(f"upload larger than the limit of {self.max_bytes} bytes (server.max_upload_mb)")
        self.form.digests = await tmp.finish()
        self.form.size = tmp.size


async def read_form(
    request: web.BaseRequest, services: Services, *, file_fields: tuple[str, ...] = FILE_FIELDS,
    strip_dirs: bool = False,
) -> UploadForm:
    """The one multipart reader (the form POST and anaconda-client's storage POST): text
    fields and exactly one file part (named one of ``file_fields``), bounded by
    ``server.limits``; a malformed body is a 400 and leaves no temp file."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("expected a multipart/form-data upload")
    reader = _FormReader(services, file_fields, strip_dirs)
    try:
        body = await request.multipart()
        while (part := await body.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            await reader.part(part)
    except BaseException as exc:
        if reader.form is not None:
            reader.form.blob.discard()
        if isinstance(exc, (ValueError, AssertionError, EOFError, EofStream, HttpProcessingError)):
            raise _multipart_error(exc) from None
        raise
    form = reader.form
    if form is None:
        raise BadRequest(f"the upload has no file: send it in the {file_fields[0]!r} field")
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
    index_fields: Mapping[str, Any],
    uploader: str,
    labels: tuple[str, ...] = ("main",),
    replace: bool = False,
    uploaded_at: float | None = None,
    same_release: Callable[[Upload], bool] | None = None,
) -> Upload:
    """The one way a validated upload becomes servable, for every ecosystem: refuse a
    duplicate (409, nothing stored), move the temp blob into place atomically, then record
    it in the catalog. Until the catalog row exists, no index links to the blob.

    A duplicate is the same path, or (``same_release``) an upload of this channel and
    ecosystem that is the same release file however its name is spelled. With ``replace``
    those are removed in the same step the new row is added."""
    variants = _duplicates(services, channel, ecosystem, path, same_release)
    if variants and not replace:
        raise Conflict(_conflict_message(variants[0], path))
    committed = await blob.commit()
    # checked again with no await before the catalog write: of two spellings raced in, one wins
    variants = _duplicates(services, channel, ecosystem, path, same_release)
    if variants and not replace:
        raise Conflict(_conflict_message(variants[0], path))
    stale = [u.path for u in variants if u.path != path]
    if stale:
        await services.catalog.remove(channel, ecosystem, stale)
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
        index_fields=index_fields,
        uploader=uploader,
        uploaded_at=uploaded_at if uploaded_at is not None else time.time(),
    )
    await services.catalog.add(upload, replace=replace)
    services.metrics.uploads.labels(ecosystem).inc()
    return upload


def _duplicates(
    services: Services, channel: str, ecosystem: str, path: str, same_release: Callable[[Upload], bool] | None
) -> list[Upload]:
    exact = services.catalog.get(channel, ecosystem, path)
    found = [exact] if exact is not None else []
    if same_release is not None:
        found += [u for u in services.catalog.list(channel, ecosystem) if u.path != path and same_release(u)]
    return found


def _conflict_message(existing: Upload, path: str) -> str:
    if existing.path == path:
        return "File already exists"
    return f"File already exists: {path} is the same release file as {existing.path}"


async def handle_upload(request: web.BaseRequest, ctx: ChannelRequest) -> web.StreamResponse:
    form = await read_form(request, ctx.services)
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
        response = await handler.upload(request, ctx, form)
        audit("upload", ctx.principal, ctx.channel.name, form.filename, ecosystem=ecosystem)
        return response
    finally:
        if form.blob.committed is None:
            form.blob.discard()


def hosted_path(ecosystem: str, rest: str) -> str | None:
    """The catalog path of a file URL under a channel prefix (what a DELETE names)."""
    parts = rest.split("/")
    if ecosystem == "pypi":  # simple/<project>/<file>
        return parts[2] if len(parts) == 3 and parts[2] else None
    if ecosystem == "cran":  # src/contrib/<file>, bin/<os>/contrib/<R x.y>/<file>
        return rest if parts[-1] else None
    if parts[0] == "label":  # conda: [label/<label>/]<subdir>/<file>
        parts = parts[2:]
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


async def delete_hosted(ctx: ChannelRequest) -> web.StreamResponse:
    """``DELETE`` on an uploaded file's URL (the write role, like an upload): the file leaves
    the channel's indexes at once; upstream files cannot be deleted here."""
    ecosystem = ctx.route.ecosystem
    path = hosted_path(ecosystem, ctx.route.rest)
    upload = ctx.services.catalog.get(ctx.channel.name, ecosystem, path) if path else None
    if upload is None:
        raise NotFound("no uploaded file at this URL (files from upstreams cannot be deleted)")
    await ctx.services.catalog.remove(ctx.channel.name, ecosystem, [upload.path])
    audit("delete", ctx.principal, ctx.channel.name, upload.path, ecosystem=ecosystem)
    return web.json_response({"ok": True, "deleted": upload.path, "ecosystem": ecosystem})
