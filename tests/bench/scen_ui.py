"""The web UI's channel page over a conda-forge-sized merged upstream (465,000 records,
~20,000 names) and a few uploads, signed in like a person (session cookie).

Figures: the warm render time of a filtered, paged channel page (each request a new
query or page, so no answer is a memo hit; the name index is built once per input set,
its build is the cold figure's business), and the page's request rate under wrk against
the same server's warm PyPI simple page (the cheapest authenticated page it serves), as a
ratio: the UI's cost in units of the server's own fastest page.
"""
from __future__ import annotations

import random
import re
import time

import aiohttp

from .common import CHANNEL, Bench, Figure, below, bench_policy, channel_url, median, upload_conda
from .data import conda_packages, conda_repodata, pypi_project
from .load import BenchError, fetch_ok
from .report import Row
from .scen_index import PIP_ACCEPT, PROJECT, rates

FIGURES = {
    "render": Figure("ui_channel.render", "web UI channel page over the big merged upstream, warm, filtered + paged",
                     "ms", "< 50 ms", below(50.0)),
    "rate": Figure("ui_channel.vs_simple_page", "web UI channel page, warm, 64 conns: rate vs the warm PyPI simple page",
                   "req/s"),
}
UPLOADS = ["bench-ui-a", "bench-ui-b"]


async def _sign_in(session: aiohttp.ClientSession, url: str, token: str) -> str:
    """Sign in through the login form; returns the session cookie's value."""
    async with session.get(f"{url}/ui/login") as resp:
        page = await resp.text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    if found is None:
        raise BenchError("the login page has no CSRF field")
    async with session.post(f"{url}/ui/login", data={"csrf": found.group(1), "token": token},
                            allow_redirects=False) as resp:
        if resp.status != 303:
            raise BenchError(f"sign-in answered {resp.status}")
    cookie = session.cookie_jar.filter_cookies(f"{url}/ui/").get("channelgate_session")  # type: ignore[arg-type]
    if cookie is None:
        raise BenchError("no session cookie after signing in")
    return cookie.value


async def ui_channel(bench: Bench) -> list[Row]:
    s = bench.sizes
    root = bench.dir("upstream")
    with bench.timed(f"generated an upstream repodata of {s.big_records:,} records"):
        repodata = conda_repodata(root / "forge", "linux-64", s.big_records)
        pypi_project(root, PROJECT, s.page_versions)
    from .procs import start_upstream

    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log")
    policy, reader, writer = bench_policy({"forge": {"type": "conda", "url": f"{up.url}/forge"},
                                           "pypi": {"type": "pypi", "url": f"{up.url}/simple"}})
    server = bench.channelgate("cg", policy)
    for pkg in conda_packages(bench.dir("pkgs"), UPLOADS):
        await upload_conda(server.url, writer, pkg)
    simple = f"{channel_url(server.url, reader)}/simple/{PROJECT}/"
    fetch_ok(simple, "simple page", PIP_ACCEPT)
    page_url = f"{server.url}/ui/c/{CHANNEL}"
    async with aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        cookie = await _sign_in(session, server.url, reader)
        start = time.monotonic()
        async with session.get(page_url) as resp:  # cold: merges the upstream, builds the name index
            body = await resp.text()
        cold = time.monotonic() - start
        total = re.search(r"([\d,]+) packages", body)
        if resp.status != 200 or total is None:
            raise BenchError(f"channel page: HTTP {resp.status}")
        names = int(total.group(1).replace(",", ""))
        async with session.get(f"{page_url}?q=bench-ui") as resp:
            listed = await resp.text()
            if not all(u in listed for u in UPLOADS):
                raise BenchError("the channel page does not list the uploads")
        rng = random.Random(7)
        times: list[float] = []
        for i in range(max(20, s.rounds * 10)):  # each a new query or page: no memo hit
            query = f"?q=pkg{rng.randrange(names)}" if i % 2 else f"?page={rng.randrange(1, max(2, names // 50))}"
            start = time.monotonic()
            async with session.get(page_url + query) as resp:
                await resp.read()
            times.append((time.monotonic() - start) * 1000)
            if resp.status != 200:
                raise BenchError(f"channel page {query}: HTTP {resp.status}")
    headers = {"Cookie": f"channelgate_session={cookie}"}
    ui_rate = await rates(bench, {"ui": f"{page_url}?q=lib&page=2"}, headers)
    simple_rate = await rates(bench, {"simple": simple}, PIP_ACCEPT)
    note = (f"{names:,} names from {repodata.records:,} upstream records + {len(UPLOADS)} uploads; "
            f"median of {len(times)} GETs, each a new filter or page (max {max(times):.1f} ms); "
            f"first page (cold: merge + name index) {cold:.2f} s")
    return [
        FIGURES["render"].row(median(times), note=note),
        FIGURES["rate"].row(median(ui_rate["ui"]), median(simple_rate["simple"]), peer_name="simple page",
                            note="GET /ui/c/bench?q=lib&page=2 with a session cookie vs the PEP 691 page, token in the path"),
    ]
