"""Fault tests (issue 8; DESIGN, "Hostile input and faults"), through a real server and a
real upstream that misbehaves on purpose:

- a trickling upstream (one byte a second, under its read timeout): every upstream request
  has a total deadline, then the stale copy is served or the client gets a 504;
- a temp file that vanishes mid-fill: every client waiting on that download ends with an
  error at once, and nothing is kept;
- kill -9 of the server mid-fill: after a restart nothing partial is served, and the file
  comes back whole;
- a client that aborts a GET on a cold file: no traceback, no ``500`` access line, and the
  shared download still completes.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs

TIMEOUT = 2  # the slow upstream's `timeout`: above the trickle's one-second gaps, so only a total deadline ends it
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=90)  # a hang fails the test instead of stalling the suite
SPLIT = 5 * 1024 * 1024  # past the size below which files are verified before any byte is sent


def trickle(length: int = 10_000) -> Callable[[web.Request], Any]:
    """An upstream answer that announces ``length`` bytes and sends one a second."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = length
        await resp.prepare(request)
        try:
            for _ in range(120):
                await resp.write(b"x")
                await asyncio.sleep(1)  # the fault under test: a byte a second
        except (ConnectionError, RuntimeError):
            pass  # channelgate gave up on us: what the test expects
        return resp

    return handler


def held(data: bytes, gate: threading.Event, split: int) -> Callable[[web.Request], Any]:
    """An upstream answer that sends ``data[:split]``, then waits for ``gate``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:split])
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 120)
        try:
            await resp.write(data[split:])
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the server went away (kill -9)
        return resp

    return handler


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> UpstreamServer:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("faults-upstream")
    payload = base64.b64encode(os.urandom(9 * 1024 * 1024)).decode()  # incompressible, > SPLIT
    files = [
        make_wheel(base / "d", "big-pkg", "1.0", module_body=f"DATA = '{payload}'\n"),
        make_wheel(base / "d", "small-pkg", "1.0"),
        make_wheel(base / "d", "stale-pkg", "1.0"),
    ]
    write_simple_index(base / "root", files, fmt="json")
    return upstream_factory(base / "root")  # type: ignore[no-any-return]


@pytest.fixture
def server(tmp_path: Path, upstream: UpstreamServer) -> Iterator[tuple[Channelgate, str]]:
    policy = Policy({
        "cache": {"metadata_ttl": 0},  # every request revalidates (in the background when a copy exists)
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple", "timeout": TIMEOUT}},
        "groups": {"devs": ["alice"]},
        "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"]}},
    })
    token = policy.add_token("alice", ["pypi:download"])
    cg = Channelgate(tmp_path / "cg", policy).start()
    yield cg, token
    cg.stop()
    upstream.overrides.clear()


def wheel_path(upstream: UpstreamServer, name: str) -> Path:
    return next((upstream.root / "files").glob(f"{name}-1.0-*.whl"))


def tmp_parts(cg: Channelgate) -> list[Path]:
    return sorted((cg.storage / "tmp").rglob("cache-*.part"))


def wait_for_part(cg: Channelgate, size: int) -> Path:
    """The temp file of the download in progress, once it holds ``size`` bytes."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = [p for p in tmp_parts(cg) if p.exists() and p.stat().st_size >= size]
        if parts:
            return parts[0]
        time.sleep(0.05)  # polling the store for the download's own progress
    raise TimeoutError("the download never reached the store")


# --------------------------------------------------------------------------- observation 9
def test_trickling_upstream_cold_index_is_a_504(server: tuple[Channelgate, str], upstream: UpstreamServer) -> None:
    cg, token = server
    upstream.overrides["/simple/small-pkg/"] = trickle()
    status, _, body = http("GET", f"{cg.url}/t/{token}/internal/simple/small-pkg/")
    assert status == 504 and b"timed out" in body
    assert "missed its deadline" in cg.log()


def test_trickling_upstream_stale_index_is_served(server: tuple[Channelgate, str], upstream: UpstreamServer) -> None:
    cg, token = server
    url = f"{cg.url}/t/{token}/internal/simple/stale-pkg/"
    status, _, fresh = http("GET", url)
    assert status == 200 and b"stale_pkg-1.0" in fresh
    upstream.overrides["/simple/stale-pkg/"] = trickle()
    status, _, body = http("GET", url)  # stale-while-revalidate: the copy at once
    assert status == 200 and body == fresh
    # the revalidation meets its deadline, and the stale copy keeps being served (stale-if-error)
    cg.wait_log("serving a stale copy of", timeout=60)
    status, _, body = http("GET", url)
    assert status == 200 and body == fresh


def test_trickling_upstream_file_is_a_504_and_nothing_is_kept(server: tuple[Channelgate, str], upstream: UpstreamServer) -> None:
    cg, token = server
    wheel = wheel_path(upstream, "small_pkg")
    upstream.overrides[f"/files/{wheel.name}"] = trickle(wheel.stat().st_size)  # the size its index declares
    status, _, body = http("GET", f"{cg.url}/t/{token}/internal/simple/small-pkg/{wheel.name}")
    assert status == 504 and b"timed out" in body
    assert stored_blobs(cg.storage, "cache") == set() and tmp_parts(cg) == []


# --------------------------------------------------------------------------- observation 10
@pytest.mark.parametrize("size", ["small", "big"])
async def test_vanished_temp_file_ends_every_waiter_at_once(
    server: tuple[Channelgate, str], upstream: UpstreamServer, size: str
) -> None:
    """small: the clients wait for the verified file; big: they are already streaming."""
    cg, token = server
    wheel = wheel_path(upstream, f"{size}_pkg")
    data = wheel.read_bytes()
    split = SPLIT if size == "big" else len(data) // 2
    gate = threading.Event()
    upstream.overrides[f"/files/{wheel.name}"] = held(data, gate, split)
    url = f"{cg.url}/t/{token}/internal/simple/{size}-pkg/{wheel.name}"

    async def client(session: aiohttp.ClientSession) -> str:
        try:
            async with session.get(url) as resp:
                body = await resp.read()
                if body == data:
                    return "complete"
                return f"{resp.status} named" if b"could not be stored" in body else f"{resp.status} {body[:200]!r}"
        except aiohttp.ClientPayloadError:
            return "cut"  # headers were sent: the connection is cut, never a wrong body

    try:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            clients = [asyncio.create_task(client(session)) for _ in range(4)]
            part = await asyncio.to_thread(wait_for_part, cg, split)
            part.unlink()  # the fault: the temp file vanishes mid-fill
            gate.set()
            results = await asyncio.gather(*clients)
    finally:
        gate.set()
    assert results == ["cut" if size == "big" else "500 named"] * 4
    assert "could not store" in cg.log()
    assert stored_blobs(cg.storage, "cache") == set() and tmp_parts(cg) == []
    del upstream.overrides[f"/files/{wheel.name}"]
    status, _, body = http("GET", url)  # the failure is not remembered: the next client gets the file
    assert status == 200 and body == data


# --------------------------------------------------------------------------- kill -9 mid-fill
def test_kill_9_mid_fill_leaves_nothing_partial(server: tuple[Channelgate, str], upstream: UpstreamServer) -> None:
    cg, token = server
    wheel = wheel_path(upstream, "big_pkg")
    data = wheel.read_bytes()
    gate = threading.Event()
    upstream.overrides[f"/files/{wheel.name}"] = held(data, gate, SPLIT)
    path = f"/t/{token}/internal/simple/big-pkg/{wheel.name}"
    received: list[bytes] = []

    def reader() -> None:
        with socket.create_connection(("127.0.0.1", cg.port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while chunk := sock.recv(65536):
                received.append(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for_part(cg, SPLIT)
        assert cg.proc is not None
        cg.proc.send_signal(signal.SIGKILL)  # mid-fill, while a client is streaming
        cg.proc.wait(30)
        thread.join(30)
        assert not thread.is_alive()
        got = b"".join(received)
        assert len(got) < len(data)  # the client saw an incomplete body, never a complete one
        cg.start()  # same storage
        assert tmp_parts(cg) == [] and stored_blobs(cg.storage, "cache") == set()
    finally:
        gate.set()
    del upstream.overrides[f"/files/{wheel.name}"]
    status, _, body = http("GET", cg.url + path)
    assert status == 200 and body == data
    assert stored_blobs(cg.storage, "cache") == {hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- observation 20
def test_aborted_get_on_a_cold_file_logs_no_error(server: tuple[Channelgate, str], upstream: UpstreamServer) -> None:
    cg, token = server
    wheel = wheel_path(upstream, "big_pkg")
    data = wheel.read_bytes()
    gate = threading.Event()
    upstream.overrides[f"/files/{wheel.name}"] = held(data, gate, SPLIT)
    path = f"/internal/simple/big-pkg/{wheel.name}"
    try:
        with socket.create_connection(("127.0.0.1", cg.port)) as sock:
            sock.sendall(f"GET /t/{token}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # streaming has begun
        # the client is gone; the upstream sends the rest
    finally:
        gate.set()
    digest = hashlib.sha256(data).hexdigest()
    deadline = time.monotonic() + 60
    while digest not in stored_blobs(cg.storage, "cache") and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the store: the shared download finishes without its client
    assert digest in stored_blobs(cg.storage, "cache")
    log = cg.wait_log(f'"GET /t/<redacted>{path}"')
    line = next(line for line in log.splitlines() if f'"GET /t/<redacted>{path}"' in line)
    assert '" 200 ' in line, line
    assert "Traceback" not in log and " ERROR " not in log, log


def test_every_upstream_has_a_safe_deadline_and_bad_values_are_refused() -> None:
    from proxy.errors import ConfigError
    from proxy.settings import parse_settings

    default = parse_settings("upstreams: {p: {type: pypi, url: 'https://pypi.org/simple'}}\n").upstreams["p"]
    assert (default.timeout, default.min_rate) == (30.0, 16 * 1024)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key, shown in (("timeout", "30"), ("min_rate", "16384")):
        assert any(r.startswith(f"| `upstreams.<name>.{key}`") and r.rstrip().endswith(f"| `{shown}` |")
                   for r in readme.splitlines()), key
    bad = "upstreams:\n  p: {type: pypi, url: 'https://x.example', timeout: 0, min_rate: -1}\n  q: {type: pypi, url: 'https://y.example', timeout: 99999, min_rate: 1.5}\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(bad)
    found = "\n".join(caught.value.problems)
    for text in ("upstreams.p.timeout: must be a number of seconds between 0 and 3600",
                 "upstreams.p.min_rate: must be a positive number", "upstreams.q.timeout: must be a number of seconds",
                 "upstreams.q.min_rate: must be int"):
        assert text in found, found


def endless(sent: list[int]) -> Callable[[web.Request], Any]:
    """An upstream answer with no length that never ends (chunked), counting what it sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        await resp.prepare(request)
        chunk = os.urandom(64 * 1024)
        try:
            while sent[0] < 1 << 30:  # a safety stop for the test itself: 1 GiB
                await resp.write(chunk)
                sent[0] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # channelgate stopped reading: what the test expects
        return resp

    return handler


@pytest.mark.parametrize("declared", [True, False], ids=["size-declared", "no-size"])
def test_an_endless_file_stops_at_its_declared_size_or_the_limit(tmp_path: Path, upstream: UpstreamServer, declared: bool) -> None:
    """A hashed file whose upstream never stops sending: the download stops as soon as it
    exceeds the size the index declares (PEP 700), or, with none declared (a PEP 503 page),
    ``server.limits.artifact_fetch_mb``; the client gets a 502 naming the reason and nothing
    is kept. Without a bound it filled the disk: the deadline grows with the bytes received."""
    wheel = wheel_path(upstream, "small_pkg")
    policy = Policy({
        "server": {"limits": {"artifact_fetch_mb": 2}},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple", "timeout": 30}},
        "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}},
    })
    cg = Channelgate(tmp_path / "cg", policy).start()
    sent = [0]
    try:
        upstream.overrides[f"/files/{wheel.name}"] = endless(sent)
        if not declared:
            sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
            page = f'<html><body><a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a></body></html>'
            upstream.overrides["/simple/small-pkg/"] = lambda r: web.Response(body=page.encode(), content_type="text/html")
        status, _, body = http("GET", f"{cg.url}/mirror/simple/small-pkg/{wheel.name}")
        reason = (f"than the {wheel.stat().st_size} bytes its index declares" if declared
                  else "larger than server.limits.artifact_fetch_mb (2 MiB)")
        assert status == 502 and reason.encode() in body, (status, body[:300])
        assert stored_blobs(cg.storage, "cache") == set() and tmp_parts(cg) == []
        assert sent[0] < 1 << 30  # stopped long before the upstream's own safety stop
    finally:
        upstream.overrides.clear()
        cg.stop()
