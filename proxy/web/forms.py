"""Pages with forms: sign-in, sign-out, tokens, upload, package privacy (DESIGN "Web UI").

Every form carries the session's CSRF token and every POST is refused without it (before
anything is checked or stored). Sign-in and tokens use the accounts layer the API uses
(auth.guard.Guard, auth.accounts): same checks, same brake on failed sign-ins.
Uploads go through ``uploads.accept_upload``, the API's own path: same checks, same messages.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from urllib.parse import quote
from typing import TYPE_CHECKING, Any, Mapping, cast

from aiohttp import web
from multidict import MultiDictProxy
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from ..api.accounts import revoke_token
from ..api.anaconda import save_package
from ..api.objects import find_package
from ..audit import audit
from ..auth.accounts import DAY, TokenRequest, make_token
from ..auth.policy import Action, Decision, decide
from ..context import ChannelRequest, UploadForm
from ..errors import BadRequest, ChannelgateError, Forbidden, NotFound, TooManyRequests, Unauthorized
from ..responses import http_status
from ..routing import Route
from ..settings import SCOPES
from ..token_settings import Scope
from ..uploads import accept_upload, read_form
from .session import CSRF_FIELD

if TYPE_CHECKING:
    from .ui import Page, WebUI

from .ui import form_value, redirect, require_method

TYPE_OF_ECOSYSTEM = {"conda": "conda", "pypi": "pypi", "cran": "r"}  # anaconda.org package types
CSRF_REFUSED = "the form has expired or did not come from this site (CSRF check failed): reload the page and try again"
UPLOAD_KINDS = {
    "auto": "Tell from the file name",
    "conda": "conda package (.conda, .tar.bz2)",
    "python": "Python wheel or sdist",
    "cran_source_package": "R source package (.tar.gz)",
    "cran_binary_package": "R binary package (.zip, .tgz)",
}
_R_FILE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*_[0-9][0-9.-]*\.(tar\.gz|zip|tgz)$")


class CsrfRefused(Forbidden):
    default_message = CSRF_REFUSED


async def _post_form(page: "Page") -> dict[str, Any]:
    """A urlencoded POST body (small; bounded by the server's client_max_size), CSRF-checked.
    Single values by name; ``_all`` holds the multidict for repeated fields."""
    data = await page.request.post()
    form: dict[str, Any] = {k: v for k, v in data.items() if isinstance(v, str)}
    if not page.csrf_ok(form.get(CSRF_FIELD)):
        raise CsrfRefused()
    form["_all"] = data
    return form


# --------------------------------------------------------------------------- sign-in / out
async def login(ui: "WebUI", page: "Page") -> web.StreamResponse:
    """A token, or a user name and password, checked by the API's own Guard (its brake on
    failed sign-ins included: past the limit, 429 before anything is checked)."""
    require_method(page, "GET", "POST")
    if page.request.method == "GET":
        return ui.render(page, "login.html", title="Sign in", error="", username="",
                         next_page=_next_page(page.request.query.get("next", "")))
    form = await _post_form(page)
    token, username = form_value(form, "token").strip(), form_value(form, "username").strip()[:200]
    password = form_value(form, "password")
    guard, settings, remote = ui.services.guard, ui.services.settings, page.request.remote
    try:
        if token:
            principal, _ = guard.identify({}, token, remote)
            if principal is None:
                raise Unauthorized("That token is not valid (unknown, revoked or expired).")
        elif username and password:
            principal = await guard.password(username, password, remote)
        else:
            raise Unauthorized("Enter a token, or a user name and password.")
    except (Unauthorized, TooManyRequests) as exc:
        response = ui.render(page, "login.html", status=http_status(exc), title="Sign in", error=_sign_in_error(exc),
                             username=username, next_page=_next_page(form_value(form, "next")))
        if "Retry-After" in exc.headers:
            response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    page.session.clear()  # a new session (and CSRF token) at every sign-in: no fixation
    if token:
        page.session["token"] = token
    else:
        page.session["user"] = principal.user
        page.session["pw"] = password_stamp(settings.passwords.get(principal.user, ""))
    page.flash(f"Signed in as {principal.user}" + (f" (token {principal.token_name})." if token else "."))
    return redirect(_next_page(form_value(form, "next")))


def _sign_in_error(exc: ChannelgateError) -> str:
    if isinstance(exc, TooManyRequests):
        wait = exc.headers.get("Retry-After", "")
        return f"Too many failed sign-ins. Try again in {wait} seconds." if wait else "Too many failed sign-ins."
    return "Wrong user name or password." if exc.message == "wrong user name or password" else exc.message


def password_stamp(stored_hash: str) -> str:
    """What a password session remembers of the password: a digest of its stored hash, so
    changing the password (and reloading) ends the sessions it opened."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:32] if stored_hash else ""


def _next_page(value: str) -> str:
    """Only a local UI address (never an open redirect), in printable ASCII: it becomes a
    ``Location`` header, where a control character (CR, LF, NUL) would break the header
    (RFC 9110 §5.5; aiohttp refuses to send it, which was a 500)."""
    if not (value.isascii() and value.isprintable() and len(value) <= 2000):
        return "/ui/"
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
        status = 403 if http_status(exc) == 401 else http_status(exc)
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
    """Your tokens: make one (its secret shown once, on this answer only), list, revoke;
    the API's accounts functions (``anaconda auth --create/--list/--remove``)."""
    require_method(page, "GET", "POST")
    if page.principal is None:
        return redirect("/ui/login?next=/ui/tokens")
    made: dict[str, str] | None = None
    error, status = "", 200
    if page.request.method == "POST":
        form = await _post_form(page)
        try:
            if form_value(form, "action") == "revoke":
                await revoke_token(ui.services, page.principal, form_value(form, "name"))
                page.flash(f"Token {form_value(form, 'name')} revoked.")
                return redirect("/ui/tokens")
            made = await _make_token(ui, page, form)
        except ChannelgateError as exc:
            error, status = exc.message, (403 if http_status(exc) == 401 else http_status(exc))
    settings = ui.services.settings
    mine = ui.services.guard.tokens.of_user(page.principal.user)
    rows = [{"name": t.name, "scopes": t.scopes, "expires": iso_day(t.expires_at)} for t in mine if not t.expired()]
    scopes = sorted(SCOPES) if Scope.ALL.value in page.principal.scopes else sorted(page.principal.scopes)
    return ui.render(page, "tokens.html", status=status, title="Your tokens", tokens=rows, made=made, error=error,
                     can_make=True, scopes=scopes, default_days=settings.accounts.token_days)


async def _make_token(ui: "WebUI", page: "Page", form: Mapping[str, Any]) -> dict[str, str]:
    assert page.principal is not None
    data = cast("MultiDictProxy[Any]", form.get("_all"))
    scopes = tuple(v for v in data.getall("scope", []) if isinstance(v, str)) if data is not None else ()
    try:
        days = float(form_value(form, "days") or ui.services.settings.accounts.token_days)
    except ValueError:
        raise BadRequest("expiry must be a number of days") from None
    request = TokenRequest(name=form_value(form, "name"), scopes=scopes, max_age=days * DAY,
                           hostname="web UI", remote_addr=page.request.remote or "")
    secret, token = await make_token(ui.services.guard.tokens, ui.services.settings.accounts, page.principal, request)
    audit("token-create", page.principal, "", token.name, scopes=" ".join(token.scopes))
    return {"name": token.name, "secret": secret}


def iso_day(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


async def privacy(ui: "WebUI", page: "Page", channel: str, ecosystem: str, name: str) -> web.StreamResponse:
    """Make a package private or public again (the admin role), through the API's own
    ``save_package`` (``anaconda package --private``, ``PATCH /api/package``)."""
    require_method(page, "POST")
    form = await _post_form(page)
    from .pages import HIDDEN
    from .packages import package_view

    policy = ui.services.settings.channels.get(channel)
    if policy is None or ecosystem not in ui.readable(page.principal, policy):
        raise NotFound(HIDDEN)
    try:
        view = await package_view(ui.services, ui.view(page.principal, policy, ecosystem), ecosystem, name)
    except NotFound:
        raise NotFound(HIDDEN) from None
    if page.principal is None or decide(page.principal, policy, Action.ADMIN) is not Decision.ALLOW:
        raise Forbidden("changing a package's privacy needs the admin role on this channel")
    private = form_value(form, "private") == "1"
    pkg = find_package(ui.services, channel, channel, view.name)
    await save_package(ui.services, page.principal, pkg,
                       {"public": not private, "public_attrs": {"package_types": [TYPE_OF_ECOSYSTEM[ecosystem]]}})
    page.flash(f"{view.name} is now {'private: only readers of ' + channel + ' see it' if private else 'public'}.")
    return redirect(f"/ui/c/{quote(channel, safe='')}/{ecosystem}/{quote(view.name, safe='')}")
