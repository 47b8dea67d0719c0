"""Pages with forms: sign-in, sign-out, tokens, upload, package privacy (DESIGN "Web UI").

Every form carries the session's CSRF token and every POST is refused without it (before
anything is checked or stored). Sign-ins are throttled after failures (session.SignInLimiter).
Uploads go through ``uploads.accept_upload``, the API's own path: same checks, same messages.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiohttp import web
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from ..auth.policy import Action, Decision, decide
from ..context import ChannelRequest, UploadForm
from ..errors import BadRequest, ChannelgateError, Forbidden, NotFound
from ..routing import Route
from ..uploads import accept_upload, read_form
from .session import CSRF_FIELD

if TYPE_CHECKING:
    from .ui import Page, WebUI

from .ui import form_value, redirect, require_method

CSRF_REFUSED = "the form has expired or did not come from this site (CSRF check failed): reload the page and try again"
UPLOAD_KINDS = {
    "auto": "Tell from the file name",
    "conda": "conda package (.conda, .tar.bz2)",
    "python": "Python wheel or sdist",
    "cran_source_package": "R source package (.tar.gz)",
    "cran_binary_package": "R binary package (.zip, .tgz)",
}
_R_FILE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*_[0-9][0-9.-]*\.(tar\.gz|zip|tgz)$")


class CsrfRefused(ChannelgateError):
    status = 403
    default_message = CSRF_REFUSED


async def _post_form(page: "Page") -> dict[str, str]:
    """A urlencoded POST body (small; bounded by the server's client_max_size), CSRF-checked."""
    data = await page.request.post()
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    if not page.csrf_ok(form.get(CSRF_FIELD)):
        raise CsrfRefused()
    return form


# --------------------------------------------------------------------------- sign-in / out
async def login(ui: "WebUI", page: "Page") -> web.StreamResponse:
    require_method(page, "GET", "POST")
    if page.request.method == "GET":
        return ui.render(page, "login.html", title="Sign in", error="", username="",
                         next_page=_next_page(page.request.query.get("next", "")))
    form = await _post_form(page)
    token, username = form_value(form, "token").strip(), form_value(form, "username").strip()[:200]
    keys = [f"addr:{page.request.remote or '-'}"] + ([f"user:{username}"] if username else [])
    wait = ui.limiter.retry_after(keys)
    if wait:
        response = ui.render(page, "login.html", status=429, title="Sign in", username=username,
                             error=f"Too many failed sign-ins. Try again in {wait} seconds.",
                             next_page=_next_page(form_value(form, "next")))
        response.headers["Retry-After"] = str(wait)
        return response
    principal = ui.services.guard.verify(token) if token else None
    if principal is None:
        ui.limiter.failed(keys)
        message = ("That token is not valid (unknown, revoked or expired)." if token
                   else "Password sign-in is not available on this server: sign in with a token.")
        return ui.render(page, "login.html", status=401, title="Sign in", error=message, username=username,
                         next_page=_next_page(form_value(form, "next")))
    ui.limiter.succeeded(keys[1:])
    page.session.clear()  # a new session (and CSRF token) at every sign-in: no fixation
    page.session["token"] = token
    page.flash(f"Signed in as {principal.user} (token {principal.token_name}).")
    return redirect(_next_page(form_value(form, "next")))


def _next_page(value: str) -> str:
    """Only a local UI address (never an open redirect)."""
    return value if value.startswith("/ui/") and "//" not in value and "\\" not in value else "/ui/"


async def logout(ui: "WebUI", page: "Page") -> web.StreamResponse:
    require_method(page, "GET", "POST")
    if page.request.method == "GET":
        return ui.render(page, "logout.html", title="Sign out")
    await _post_form(page)
    page.session.invalidate()  # the cookie is cleared
    return redirect("/ui/")


# --------------------------------------------------------------------------- upload
async def upload(ui: "WebUI", page: "Page") -> web.StreamResponse:
    require_method(page, "GET", "POST")
    settings = ui.services.settings
    writable = [name for name in sorted(settings.channels)
                if decide(page.principal, settings.channels[name], Action.WRITE) is Decision.ALLOW]
    if page.request.method == "GET":
        return ui.render(page, "upload.html", title="Upload", channels=writable, kinds=UPLOAD_KINDS,
                         error="", signed_in=page.principal is not None)
    if page.principal is None or not writable:  # refused before the body is read, as in the API
        raise Forbidden("this token may not upload to any channel" if page.principal else "sign in to upload")
    form = await read_form(page.request, ui.services)
    try:
        if not page.csrf_ok(form.field(CSRF_FIELD)):
            raise CsrfRefused()
        name = form.field("channel") or ""
        policy = settings.channels.get(name)
        if decide(page.principal, policy, Action.WRITE) is not Decision.ALLOW or policy is None:
            raise Forbidden("this token may not upload to this channel")
        _fill_fields(form)
        ctx = ChannelRequest(Route("channel", None, name, "", f"/api/repo/{name}"), policy, page.principal, ui.services)
        await accept_upload(page.request, ctx, form)
    except ChannelgateError as exc:
        status = 403 if exc.status == 401 else exc.status
        return ui.render(page, "upload.html", status=status, title="Upload", channels=writable, kinds=UPLOAD_KINDS,
                         error=exc.message, signed_in=True)
    finally:
        if form.blob.committed is None:
            form.blob.discard()
    page.flash(f"Uploaded {form.filename} to {name}.")
    return redirect(f"/ui/c/{name}")


def _fill_fields(form: UploadForm) -> None:
    """The fields the API's forms carry that a person should not have to type: twine's
    ``:action``/``name``/``version`` (from the file name, which the API then checks against
    the file's own metadata) and R's ``filetype``."""
    kind = form.field("kind") or "auto"
    if kind not in UPLOAD_KINDS:
        raise BadRequest(f"unknown package kind {kind!r}")
    filename = form.filename
    if kind == "auto":
        if filename.endswith((".conda", ".tar.bz2")):
            kind = "conda"
        elif _R_FILE.match(filename):
            kind = "cran_binary_package" if filename.endswith((".zip", ".tgz")) else "cran_source_package"
        else:
            kind = "python"
    if kind == "conda":
        form.fields["filetype"] = ["conda"]
    elif kind.startswith("cran_"):
        form.fields["filetype"] = [kind]
    else:
        try:
            if filename.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename) as exc:
            raise BadRequest(f"invalid distribution file name {filename!r}: {exc}") from None
        form.fields.update({":action": ["file_upload"], "name": [str(name)], "version": [str(version)]})
        form.fields.pop("filetype", None)


# --------------------------------------------------------------------------- tokens, privacy
async def tokens(ui: "WebUI", page: "Page") -> web.StreamResponse:
    require_method(page, "GET")
    if page.principal is None:
        return redirect("/ui/login?next=/ui/tokens")
    return ui.render(page, "tokens.html", title="Your tokens", tokens=[], made=None, error="", can_make=False,
                     scopes=(), default_days=30)


async def privacy(ui: "WebUI", page: "Page", channel: str, ecosystem: str, name: str) -> web.StreamResponse:
    raise NotFound("package privacy is not available on this server yet")
