"""The web UI under ``/ui/`` (DESIGN "Web UI"): one object per app, called by the Gateway.

channelgate serves on aiohttp's low-level ``web.Server`` (no Application, router or
middleware chain: cli.py), so this module routes ``/ui/...`` itself, loads and saves the
aiohttp-session cookie around each request, and renders jinja2 templates from
``proxy/web/templates`` (autoescaped). aiohttp-jinja2 finds its Environment through
``request.config_dict``, which only an Application's requests have, so the Environment
is held here instead. Stable addresses: ``/ui/``, ``/ui/login``, ``/ui/logout``,
``/ui/c/<channel>``, ``/ui/c/<channel>/<ecosystem>/<name>``, ``/ui/search?q=``,
``/ui/tokens``, ``/ui/upload``; assets under ``/ui/static/`` (no CDN: works air-gapped).
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

import jinja2
from aiohttp import web
from aiohttp_session import Session

from ..auth.credentials import Principal
from ..auth.guard import PASSWORD_SCOPES
from ..auth.policy import READ_ACTION, Action, Decision, decide, sees_private
from ..context import Services
from ..errors import ChannelgateError, MethodNotAllowed, NotFound
from ..responses import etag_for, http_status, not_modified
from ..settings import ChannelPolicy
from ..store.catalog import public_view
from .names import ECOSYSTEMS, Names
from .session import CSRF_FIELD, Sessions, csrf_ok, csrf_token, session_key

log = logging.getLogger(__name__)

# Pages differ per session: never cached by anything shared; no scripts at all.
PAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
Handler = Callable[["WebUI", "Page"], Awaitable[web.StreamResponse]]


@dataclass
class Page:
    """One UI request: the request, its session, who is signed in, the path segments."""

    request: web.BaseRequest
    session: Session
    principal: Principal | None
    segments: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def csrf(self) -> str:
        return csrf_token(self.session)

    def csrf_ok(self, presented: str | None) -> bool:
        return csrf_ok(self.session, presented)

    def flash(self, message: str) -> None:
        self.session["flash"] = [*self.session.get("flash", []), message][-5:]


class WebUI:
    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.sessions = Sessions(session_key(settings.session_key, services.store))
        self.names = Names(services)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("proxy.web", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["size"] = human_size
        self.env.filters["q"] = lambda s: quote(str(s), safe="")
        self._static: dict[str, tuple[bytes, str, str]] = {}
        from . import forms, pages  # the handlers (they import this module's Page)

        self.routes: dict[str, Handler] = {
            "": pages.home, "search": pages.search, "c": pages.channel_or_package,
            "login": forms.login, "logout": forms.logout, "tokens": forms.tokens, "upload": forms.upload,
        }

    # ------------------------------------------------------------------ dispatch
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/ui":
            return redirect("/ui/")
        if path.startswith("/ui/static/"):
            return self._asset(request, path[len("/ui/static/"):])
        session = await self.sessions.load(request)
        page = Page(request, session, self._principal(session), path[len("/ui/"):].split("/"))
        try:
            handler = self.routes.get(page.segments[0])
            if handler is None:
                raise NotFound()
            response = await handler(self, page)
        except ChannelgateError as exc:
            response = self.error(page, exc)
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        await self.sessions.save(request, response, session)
        return response

    def _principal(self, session: Session) -> Principal | None:
        """Who the session stands for, checked again on every request: a revoked or expired
        token, a changed password or a policy reload without the user ends the sign-in."""
        settings = self.services.settings
        token, user = session.get("token"), session.get("user")
        principal: Principal | None = None
        if isinstance(token, str):
            principal = self.services.guard.verify(token)
        elif isinstance(user, str) and user in settings.users:
            from .forms import password_stamp

            stamp = password_stamp(settings.passwords.get(user, ""))
            if stamp and hmac.compare_digest(stamp, str(session.get("pw", ""))):
                principal = Principal(user=user, token_name="password", scopes=PASSWORD_SCOPES,
                                      groups=settings.memberships.get(user, frozenset()))
        if principal is None and (token or user):
            for key in ("token", "user", "pw"):
                session.pop(key, None)
        return principal

    # ------------------------------------------------------------------ rendering
    def render(self, page: Page, template: str, status: int = 200, **context: Any) -> web.Response:
        flashes = page.session.pop("flash", []) if page.session.get("flash") else []
        body = self.env.get_template(template).render(
            user=page.principal.user if page.principal else None,
            token_name=page.principal.token_name if page.principal else None,
            csrf=page.csrf, csrf_field=CSRF_FIELD, flashes=flashes, path=page.request.path, **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def error(self, page: Page, exc: ChannelgateError) -> web.Response:
        status = http_status(exc)
        if status >= 500:
            log.warning("web UI error %d on %s: %s", status, page.request.method, exc.message)
        status = 403 if status == 401 else status  # no Basic challenge: a browser would prompt
        return self.render(page, "error.html", status=status, title=str(status), status_code=status, message=exc.message)

    def _asset(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        asset = self._static.get(name)
        if asset is None:
            suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
            resource = resources.files("proxy.web").joinpath("static", name)
            if "/" in name or suffix not in STATIC_TYPES or not resource.is_file():
                return web.Response(status=404, text="not found")
            body = resource.read_bytes()
            asset = self._static[name] = (body, STATIC_TYPES[suffix], etag_for(body))
        body, content_type, etag = asset
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if not_modified(request, etag):  # type: ignore[arg-type]
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, "Content-Type": content_type})

    # ------------------------------------------------------------------ authorisation
    def readable(self, principal: Principal | None, channel: ChannelPolicy | None) -> tuple[str, ...]:
        """The ecosystems of ``channel`` this principal may read: the API's own decision."""
        if channel is None:
            return ()
        return tuple(eco for eco in ECOSYSTEMS if eco in self.services.ecosystems
                     and decide(principal, channel, READ_ACTION[eco]) is Decision.ALLOW)

    def channels(self, principal: Principal | None) -> list[tuple[ChannelPolicy, tuple[str, ...]]]:
        out = []
        for name in sorted(self.services.settings.channels):
            channel = self.services.settings.channels[name]
            ecos = self.readable(principal, channel)
            if ecos:
                out.append((channel, ecos))
        return out


    def view(self, principal: Principal | None, channel: ChannelPolicy, ecosystem: str) -> ChannelPolicy:
        """The channel as this reader's own client requests of ``ecosystem`` see it: on a public
        channel with private packages, a reader without the read role (or the ecosystem's
        scope) reads its public view, exactly as in the Gateway (package privacy)."""
        packages = self.services.catalog.packages
        if channel.public and packages.has_private(channel.name) \
                and not sees_private(principal, channel, READ_ACTION[ecosystem]):
            return replace(channel, name=public_view(channel.name))
        return channel

    def views(self, principal: Principal | None, channel: ChannelPolicy,
              ecosystems: Sequence[str]) -> list[tuple[str, ChannelPolicy]]:
        return [(eco, self.view(principal, channel, eco)) for eco in ecosystems]

    def privacy(self, channel: ChannelPolicy, principal: Principal | None, ecosystem: str,
                name: str) -> dict[str, bool] | None:
        """Whether the package is private, and whether this reader may change that (the
        admin role); None on a channel that is not public, where privacy changes nothing."""
        if not channel.public:
            return None
        info = self.services.catalog.packages.get(channel.name, ecosystem, name)
        return {"private": bool(info and info.private),
                "can_change": decide(principal, channel, Action.ADMIN) is Decision.ALLOW}

    def base_url(self, request: web.BaseRequest) -> str:
        """Where clients reach this server: ``server.public_url``, else the address the
        browser used (only shown back to that browser)."""
        return self.services.settings.public_url or f"{request.scheme}://{request.host}"


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **PAGE_HEADERS})


def require_method(page: Page, *methods: str) -> None:
    if page.request.method not in methods:
        raise MethodNotAllowed()


def human_size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def form_value(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
