"""The benchmark's load checks (tests/bench/load.py): only whole 200 answers count.

A peer that answers a redirect, a 304 or an error page is fast, and wrk counts a 3xx as a
success; these checks are what keep such a peer's rate out of a figure. Real servers on
real sockets (aiohttp's test server), real wrk.
"""
from __future__ import annotations

import asyncio
import itertools

import pytest
from aiohttp import web
from conftest import require_tool

from tests.bench.load import BenchError, answer_size, fetch, wrk

PAGE = b"x" * 5000


async def _server(aiohttp_server, redirect_every: int = 0):  # type: ignore[no-untyped-def]
    count = itertools.count(1)

    async def page(request: web.Request) -> web.StreamResponse:
        if request.path == "/moved" or (redirect_every and next(count) % redirect_every == 0):
            return web.Response(status=308, headers={"Location": "/page"})
        if request.headers.get("Accept") != "text/html":
            return web.Response(status=406, text="not acceptable")
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return await aiohttp_server(app)


async def test_answer_size_is_a_whole_200_answer_to_wrks_request(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    server = await _server(aiohttp_server)
    url = str(server.make_url("/page"))
    size = await asyncio.to_thread(answer_size, url, {"Accept": "text/html"})
    status, headers, body = await asyncio.to_thread(fetch, url, {"Accept": "text/html"})
    assert status == 200 and body == PAGE
    assert len(PAGE) < size < len(PAGE) + 400  # status line and headers on top of the body
    with pytest.raises(BenchError, match="HTTP 406"):  # no Accept: not the page
        await asyncio.to_thread(answer_size, url)
    with pytest.raises(BenchError, match="HTTP 308"):
        await asyncio.to_thread(answer_size, str(server.make_url("/moved")), {"Accept": "text/html"})


async def test_fetch_follows_no_redirect(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    server = await _server(aiohttp_server)
    status, headers, _ = await asyncio.to_thread(fetch, str(server.make_url("/moved")), {"Accept": "text/html"})
    assert status == 308 and headers["Location"] == "/page"


async def test_wrk_counts_only_whole_answers(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    require_tool("wrk")
    good = await _server(aiohttp_server)
    url = str(good.make_url("/page"))
    size = await asyncio.to_thread(answer_size, url, {"Accept": "text/html"})
    result = await asyncio.to_thread(wrk, url, seconds=1, connections=4, threads=1, headers={"Accept": "text/html"},
                                     answer=(size, size))
    assert result.requests > 0 and result.requests * size <= result.bytes_read

    # one answer in five is a redirect: wrk calls every one a success, the byte check does not
    mixed = await _server(aiohttp_server, redirect_every=5)
    with pytest.raises(BenchError, match="not that many whole 200 answers"):
        await asyncio.to_thread(wrk, str(mixed.make_url("/page")), seconds=1, connections=4, threads=1,
                                headers={"Accept": "text/html"}, answer=(size, size))
