"""Range and HEAD on cold files (issue 15): uv reads a wheel's METADATA with Range requests
when the index offers no PEP 658 ``.metadata``. Through channelgate, a cold wheel must not
make it wait for the whole download: HEAD answers the length with ``Accept-Ranges``, a
Range beyond the bytes written is one upstream Range request relayed as 206, and the full
download goes on once, for the cache."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from fixtures.wheels import make_wheel, write_simple_index
from harness import Policy, client_env, http, run, stored_blobs, venv_bin

from proxy.metrics import Metrics
from proxy.settings import UpstreamSettings
from proxy.upstream import Upstream

HELD = 64 * 1024  # what the upstream sends of a whole-file GET before the test lets it go on


def _hold_whole_gets(upstream, gate: threading.Event):  # type: ignore[no-untyped-def]
    """A whole-file GET sends HELD bytes then waits for ``gate``; a Range GET is answered
    at once (aiohttp's FileResponse: 206)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        path = upstream.root / request.path.lstrip("/")
        if "Range" in request.headers:
            return web.FileResponse(path)
        data = path.read_bytes()
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:HELD])
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 120)
        await resp.write(data[HELD:])
        await resp.write_eof()
        return resp

    return handler


def test_uv_resolves_cold_wheels_by_range_without_waiting_for_them(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    payload = base64.b64encode(os.urandom(2 * 1024 * 1024)).decode()
    wheels = [
        make_wheel(tmp_path / "d", "app", "1.0", requires_dist=["dep>=1"], module_body=f"DATA = '{payload}'\n"),
        make_wheel(tmp_path / "d", "dep", "1.0", module_body=f"DATA = '{payload}'\n"),
    ]
    write_simple_index(tmp_path / "root", wheels, fmt="html", metadata_files=False)  # no PEP 658 files
    for page in (tmp_path / "root" / "simple").glob("*/index.html"):  # no hashes: channelgate offers no METADATA
        page.write_text(re.sub(r"#sha256=[0-9a-f]+", "", page.read_text()))
    upstream = upstream_factory(tmp_path / "root")
    gate = threading.Event()
    for wheel in wheels:
        upstream.overrides[f"/files/{wheel.name}"] = _hold_whole_gets(upstream, gate)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)
    try:
        (tmp_path / "req.in").write_text("app\n")
        env = client_env(tmp_path / "home")
        out = run([venv_bin("uv"), "pip", "compile", "--no-cache", "--index-url", f"{server.url}/mirror/simple",
                   str(tmp_path / "req.in")], env=env, timeout=120)
        # resolved while every whole-file download was still held by the upstream
        assert out.returncode == 0, out.stderr
        assert "app==1.0" in out.stdout and "dep==1.0" in out.stdout
        assert not gate.is_set()
        for wheel in wheels:
            ranged = [c for c in upstream.calls if c.path.endswith(wheel.name) and "Range" in c.headers]
            whole = [c for c in upstream.calls if c.path.endswith(wheel.name) and "Range" not in c.headers]
            assert ranged, f"no upstream Range request for {wheel.name}"
            assert len(whole) == 1, "the full download for the cache starts once"
        # what uv received: 206s with a few bytes, never the whole file
        for wheel in wheels:
            server.wait_log(f'"GET /mirror/simple/{wheel.name.split("-")[0]}/{wheel.name}" 206')
        wheel_lines = [line for line in server.log().splitlines() if '"GET /mirror/' in line and '.whl"' in line]
        assert all('.whl" 206' in line for line in wheel_lines), wheel_lines
    finally:
        gate.set()
    # the held downloads complete once, verified, into the cache
    for wheel in wheels:
        status, _, body = http("GET", f"{server.url}/mirror/simple/{wheel.name.split('-')[0]}/{wheel.name}")
        assert status == 200 and body == wheel.read_bytes()
    assert all(len([c for c in upstream.calls if c.path.endswith(w.name) and "Range" not in c.headers]) == 1
               for w in wheels)
    cached = stored_blobs(server.storage, "cache")
    assert {hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels} <= cached  # verified by their own digest
    assert "Traceback" not in server.log()


def test_range_within_written_bytes_and_head_on_a_cold_file(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    payload = base64.b64encode(os.urandom(1024 * 1024)).decode()
    wheel = make_wheel(tmp_path / "d", "big", "1.0", module_body=f"DATA = '{payload}'\n")
    write_simple_index(tmp_path / "root", [wheel], fmt="html", metadata_files=False)
    upstream = upstream_factory(tmp_path / "root")
    gate = threading.Event()
    upstream.overrides[f"/files/{wheel.name}"] = _hold_whole_gets(upstream, gate)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)
    data = wheel.read_bytes()
    url = f"{server.url}/mirror/simple/big/{wheel.name}"
    try:
        status, headers, body = http("HEAD", url)
        assert status == 200 and headers["Content-Length"] == str(len(data)) and headers["Accept-Ranges"] == "bytes"
        status, headers, body = http("GET", url, headers={"Range": "bytes=100-1099"})  # within the bytes written
        assert status == 206 and body == data[100:1100]
        assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
        before = len(upstream.calls)
        status, headers, body = http("GET", url, headers={"Range": "bytes=-2000"})  # beyond them: from the upstream
        assert status == 206 and body == data[-2000:]
        assert [c.headers.get("Range") for c in upstream.calls[before:]] == [f"bytes={len(data) - 2000}-{len(data) - 1}"]
        assert not gate.is_set()
    finally:
        gate.set()


async def test_upstream_answers_are_acknowledged_at_once() -> None:
    """Every upstream answer puts its connection in quick-ACK mode (Linux TCP_QUICKACK) once
    its headers are in, also on a kept-alive connection, where Linux has switched to delayed
    ACKs: a corking upstream (nginx tcp_nopush) would otherwise hold a body's last segment
    for the 40 ms delayed-ACK timer (upstream.ack_at_once)."""
    if not hasattr(socket, "TCP_QUICKACK"):
        pytest.skip("TCP_QUICKACK is Linux's")
    go_on = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 2
        await resp.prepare(request)
        await resp.write(b"x")
        await go_on.wait()  # the rest only once the client has looked at its socket
        await resp.write(b"y")
        return resp

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up = UpstreamSettings("up", "pypi", f"http://127.0.0.1:{port}")
    modes = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            upstream = Upstream(session, Metrics())
            for name in ("first", "second", "third"):  # one kept-alive connection (limit=1)
                async with upstream.stream(up, f"{up.url}/{name}", what=name, hashed=False) as body:
                    sock = body.resp.connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
                    modes.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
                    go_on.set()
                    assert b"".join([chunk async for chunk in body]) == b"xy"
                go_on.clear()
    finally:
        go_on.set()
        await runner.cleanup()
    assert modes == [1, 1, 1]
