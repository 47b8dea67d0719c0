"""Caching semantics through a real server: single flight with streaming, negative cache,
revalidation, offline serving of a pre-seeded store, upstream credentials, crash leftovers."""
from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs

BIG_FILE = "big_pkg-1.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> UpstreamServer:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("cache-upstream")
    # incompressible payload: the wheel is larger than the size below which channelgate verifies before sending
    payload = base64.b64encode(os.urandom(9 * 1024 * 1024)).decode()
    files = [
        make_wheel(base / "d", "big-pkg", "1.0", module_body=f"DATA = '{payload}'\n"),
        make_wheel(base / "d", "small-pkg", "1.0"),
        make_wheel(base / "d", "other-pkg", "1.0"),
    ]
    write_simple_index(base / "root", files, fmt="html")
    return upstream_factory(base / "root")  # type: ignore[no-any-return]


def make_policy(upstream: UpstreamServer, **extra: object) -> tuple[Policy, str]:
    policy = Policy(
        {
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"]}},
            **extra,
        }
    )
    return policy, policy.add_token("alice", ["pypi:download"])


async def test_one_upstream_fetch_streams_to_every_client(tmp_path: Path, upstream: UpstreamServer) -> None:
    policy, token = make_policy(upstream)
    server = Channelgate(tmp_path / "cg", policy).start()
    path = f"/files/{BIG_FILE}"
    data = (upstream.root / "files" / BIG_FILE).read_bytes()
    gate = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        # send most of the file, then hold the rest until every client has seen bytes
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        split = len(data) - 1024 * 1024
        await resp.write(data[:split])
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 60)
        await resp.write(data[split:])
        await resp.write_eof()
        return resp

    upstream.overrides[path] = slow
    clients = 16
    first_bytes = 0
    all_started = asyncio.Event()
    url = f"{server.url}/t/{token}/internal/simple/big-pkg/{BIG_FILE}"

    async def client(session: aiohttp.ClientSession) -> bytes:
        nonlocal first_bytes
        async with session.get(url) as resp:
            assert resp.status == 200
            body = await resp.content.readany()
            assert body, "no first byte"
            first_bytes += 1
            if first_bytes == clients:
                all_started.set()
            return body + await resp.read()

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
            # every client got its first bytes while the upstream download was still unfinished
            await asyncio.wait_for(all_started.wait(), 60)
            assert not gate.is_set()
            gate.set()
            bodies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert all(body == data for body in bodies)
        assert upstream.calls_to(path) == 1
        # now stored: served without the upstream
        status, _, body = http("GET", url)
        assert status == 200 and body == data and upstream.calls_to(path) == 1
    finally:
        gate.set()
        del upstream.overrides[path]
        server.stop()


def test_negative_cache_and_fresh_pages_spare_the_upstream(tmp_path: Path, upstream: UpstreamServer) -> None:
    policy, token = make_policy(upstream)
    server = Channelgate(tmp_path / "cg", policy).start()
    # the upstream is the module's: count this test's calls only (other tests ask it too)
    ghost, small = upstream.calls_to("/simple/ghost/"), upstream.calls_to("/simple/small-pkg/")
    try:
        for _ in range(3):
            assert http("GET", f"{server.url}/t/{token}/internal/simple/ghost/")[0] == 404
        assert upstream.calls_to("/simple/ghost/") == ghost + 1
        for _ in range(3):
            assert http("GET", f"{server.url}/t/{token}/internal/simple/small-pkg/")[0] == 200
        assert upstream.calls_to("/simple/small-pkg/") == small + 1  # fresh within metadata_ttl
    finally:
        server.stop()


def test_stale_copy_is_revalidated_with_a_conditional_get(tmp_path: Path, upstream: UpstreamServer) -> None:
    policy, token = make_policy(upstream, cache={"metadata_ttl": 0})
    server = Channelgate(tmp_path / "cg", policy).start()
    conditional = threading.Event()

    def watch(request: web.Request) -> None:
        if request.headers.get("If-None-Match"):
            conditional.set()
        return None  # fall through to the normal answer (a 304 here)

    upstream.overrides["/simple/other-pkg/"] = watch
    try:
        url = f"{server.url}/t/{token}/internal/simple/other-pkg/"
        first = http("GET", url)
        second = http("GET", url)  # served from the stored copy at once; revalidated in the background
        assert first[0] == second[0] == 200 and first[2] == second[2]
        assert conditional.wait(10), "no If-None-Match revalidation reached the upstream"
    finally:
        del upstream.overrides["/simple/other-pkg/"]
        server.stop()


def test_offline_serves_a_preseeded_store_and_never_calls_upstream(tmp_path: Path, upstream: UpstreamServer) -> None:
    policy, token = make_policy(upstream)
    storage = tmp_path / "seeded-storage"
    policy.data["storage"] = {"path": str(storage)}
    online = Channelgate(tmp_path / "online", policy).start()
    page = f"/t/{token}/internal/simple/small-pkg/"
    wheel = page + "small_pkg-1.0-py3-none-any.whl"
    try:
        assert http("GET", online.url + page)[0] == 200
        assert http("GET", online.url + wheel)[0] == 200
    finally:
        online.stop()
    # the carried-over store, on a site with no upstream at all
    policy.data["offline"] = True
    offline = Channelgate(tmp_path / "offline", policy).start()
    calls = len(upstream.calls)
    try:
        status, _, body = http("GET", offline.url + page)
        assert status == 200 and b"small_pkg-1.0-py3-none-any.whl" in body
        status, _, body = http("GET", offline.url + wheel)
        assert status == 200 and body == (upstream.root / "files" / "small_pkg-1.0-py3-none-any.whl").read_bytes()
        assert http("GET", offline.url + f"/t/{token}/internal/simple/other-pkg/")[0] == 404
        assert len(upstream.calls) == calls
    finally:
        offline.stop()


def test_upstream_credentials_are_used_and_never_leak(tmp_path: Path, upstream_factory, upstream: UpstreamServer) -> None:  # type: ignore[no-untyped-def]
    secured = upstream_factory(upstream.root)
    expected = "Basic " + base64.b64encode(b"mirror-user:S3cretUpstreamPass").decode()

    def require_auth(request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        return None

    for project in ("small-pkg",):
        secured.overrides[f"/simple/{project}/"] = require_auth
        secured.overrides["/files/small_pkg-1.0-py3-none-any.whl"] = require_auth
    policy, token = make_policy(secured)
    policy.data["upstreams"]["pypi"].update(username="mirror-user", password="S3cretUpstreamPass")
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        status, _, page = http("GET", f"{server.url}/t/{token}/internal/simple/small-pkg/")
        assert status == 200
        assert secured.url.encode() not in page and b"127.0.0.1" not in page  # links point at channelgate
        status, _, _ = http("GET", f"{server.url}/t/{token}/internal/simple/small-pkg/small_pkg-1.0-py3-none-any.whl")
        assert status == 200
        assert "S3cretUpstreamPass" not in server.log()
    finally:
        server.stop()


def test_crash_leftovers_are_removed_at_start_and_nothing_else(tmp_path: Path, upstream: UpstreamServer) -> None:
    """Only the temp directory of a process that is gone is swept (store/scratch.py): a live
    sibling's (its owner lock held, here by a process this test runs) and a directory that is
    no replica's are left alone."""
    policy, _ = make_policy(upstream)
    storage = tmp_path / "storage"
    policy.data["storage"] = {"path": str(storage)}
    tmp = storage / "tmp"
    claim = (
        "import sys, time; from pathlib import Path; from proxy.store.scratch import ScratchSpace\n"
        "space = ScratchSpace(Path(sys.argv[1])); (space.path / 'cache-1.part').write_bytes(b'half');"
        "print(space.path.name, flush=True)\n"
        "if sys.argv[2] == 'live': sys.stdin.read(); space.release()\n"
    )
    dead = subprocess.run([sys.executable, "-c", claim, str(tmp), "dead"], capture_output=True, text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", claim, str(tmp), "live"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    server = None
    try:
        assert live.stdout is not None
        live_dir = tmp / live.stdout.readline().strip()
        dead_dir = tmp / dead.stdout.strip()
        (tmp / "import-staging").mkdir()  # no owner file: not a replica's, not ours to judge
        assert (dead_dir / "cache-1.part").exists() and (live_dir / "cache-1.part").exists()
        server = Channelgate(tmp_path / "cg", policy).start()
        assert not dead_dir.exists()  # its owner exited: the lock was free
        assert (live_dir / "cache-1.part").read_bytes() == b"half"  # a live sibling's write in progress
        assert (tmp / "import-staging").is_dir()
        assert stored_blobs(storage, "cache") == set()
    finally:
        if server is not None:
            server.stop()
        live.communicate("")
    assert not live_dir.exists()  # ScratchSpace.release, as a server does at shutdown:
    assert not [p for p in tmp.iterdir() if p.name.startswith("r-")]


def test_expired_token_is_refused(tmp_path: Path, upstream: UpstreamServer) -> None:
    policy, _ = make_policy(upstream)
    expired = policy.add_token("alice", ["pypi:download"], expires="2020-01-01")
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        status, headers, body = http("GET", f"{server.url}/t/{expired}/internal/simple/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert b"expired" in body
    finally:
        server.stop()


def test_workers_share_the_port_and_see_each_others_uploads(tmp_path: Path, upstream: UpstreamServer) -> None:
    import requests

    from fixtures.wheels import twine_fields

    policy, reader = make_policy(upstream)
    policy.data["channels"]["internal"]["write"] = ["group:devs"]
    writer = policy.add_token("alice", ["api:write", "pypi:download"])
    server = Channelgate(tmp_path / "cg", policy, args=["--workers", "2"]).start()
    try:
        url = f"{server.url}/t/{reader}/internal/simple/worker-pkg/"
        for _ in range(8):  # both workers have a snapshot of the (empty) catalog and cached the 404
            assert http("GET", url)[0] == 404
        wheel = make_wheel(tmp_path / "d", "worker-pkg", "1.0")
        with open(wheel, "rb") as fh:
            resp = requests.post(
                f"{server.url}/api/repo/internal", data=twine_fields(wheel),
                files={"content": (wheel.name, fh)}, auth=(writer, "x-auth-token"), timeout=60,
            )
        assert resp.status_code == 200, resp.text
        # whichever worker answers, the upload is there at once
        for _ in range(16):
            status, _, body = http("GET", url)
            assert status == 200 and b"worker_pkg-1.0-py3-none-any.whl" in body
    finally:
        server.stop()
