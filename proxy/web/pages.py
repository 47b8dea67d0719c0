"""Read-only pages: home, channel, package, search (DESIGN "Web UI").

Authorisation is the API's (``WebUI.readable`` asks ``auth.policy.decide`` per ecosystem):
a channel or package the reader may not see answers exactly like one that does not exist,
and listings, counts and search results are built only from what the reader may read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import NotFound
from .names import ECOSYSTEMS, Entry, clean_query
from .packages import package_view
from .snippets import setup_snippets

if TYPE_CHECKING:
    from .ui import Page, WebUI

PAGE_SIZE = 50
HIDDEN = "No such channel or package, or you may not see it. Signing in may show more."


def _page_number(page: "Page") -> int:
    try:
        return max(1, min(int(page.request.query.get("page", "1")), 1_000_000))
    except ValueError:
        return 1


def _pager(total: int, number: int) -> dict[str, Any]:
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    number = min(number, pages)
    return {"number": number, "pages": pages, "total": total,
            "first": (number - 1) * PAGE_SIZE, "last": min(number * PAGE_SIZE, total)}


async def home(ui: "WebUI", page: "Page") -> web.StreamResponse:
    if len(page.segments) != 1:
        raise NotFound(HIDDEN)
    channels = [{"name": c.name, "public": c.public, "ecosystems": ecos, "upstreams": c.upstreams}
                for c, ecos in ui.channels(page.principal)]
    return ui.render(page, "home.html", title="Channels", channels=channels)


async def channel_or_package(ui: "WebUI", page: "Page") -> web.StreamResponse:
    segs = page.segments
    if len(segs) == 2 and segs[1]:
        return await channel(ui, page, segs[1])
    if len(segs) == 4 and all(segs[1:]):
        return await package(ui, page, segs[1], segs[2], segs[3])
    if len(segs) == 5 and segs[4] == "privacy":
        from .forms import privacy

        return await privacy(ui, page, segs[1], segs[2], segs[3])
    raise NotFound(HIDDEN)


async def channel(ui: "WebUI", page: "Page", name: str) -> web.StreamResponse:
    policy = ui.services.settings.channels.get(name)
    ecos = ui.readable(page.principal, policy)
    if policy is None or not ecos:
        raise NotFound(HIDDEN)
    wanted = page.request.query.get("ecosystem", "")
    shown = (wanted,) if wanted in ecos else ecos
    query = clean_query(page.request.query.get("q", ""))
    index = await ui.names.index(ui.views(page.principal, policy, shown))
    hits = index.search(query)
    pager = _pager(len(hits), _page_number(page))
    rows = [index.row(name, i) for i in hits[pager["first"]:pager["last"]]]
    return ui.render(
        page, "channel.html", title=name, channel=policy, ecosystems=ecos, ecosystem=wanted if wanted in ecos else "",
        q=query, rows=rows, pager=pager, snippets=setup_snippets(ui.base_url(page.request), policy, ecos),
    )


async def package(ui: "WebUI", page: "Page", channel_name: str, ecosystem: str, name: str) -> web.StreamResponse:
    policy = ui.services.settings.channels.get(channel_name)
    if policy is None or ecosystem not in ui.readable(page.principal, policy):
        raise NotFound(HIDDEN)
    seen = ui.view(page.principal, policy, ecosystem)  # a private package is not in a public view
    subdirs = await ui.names.conda_subdirs(seen, name) if ecosystem == "conda" else ()
    try:
        view = await package_view(ui.services, seen, ecosystem, name, subdirs)
    except NotFound:  # the same answer as a package the reader may not see
        raise NotFound(HIDDEN) from None
    return ui.render(
        page, "package.html", title=f"{view.name} · {channel_name}", channel=policy, package=view,
        privacy=ui.privacy(policy, page.principal, ecosystem, view.name),
    )


async def search(ui: "WebUI", page: "Page") -> web.StreamResponse:
    query = clean_query(page.request.query.get("q", ""))
    found: list[tuple[str, Entry]] = []
    if query:
        for policy, ecos in ui.channels(page.principal):
            index = await ui.names.index(ui.views(page.principal, policy, ecos))
            hits = index.search(query)
            found.extend((policy.name, index.entries[i]) for i in hits)
    pager = _pager(len(found), _page_number(page))
    return ui.render(page, "search.html", title="Search", q=query, rows=found[pager["first"]:pager["last"]],
                     pager=pager)


__all__ = ["ECOSYSTEMS", "channel", "channel_or_package", "home", "package", "search"]


