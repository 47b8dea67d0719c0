"""Write-behind (issue 15, the cold resolve rows; proxy/write_behind.py): a fetched project
page, a PEP 658 file and METADATA read out of a wheel answer their clients from memory, and
are stored (temp file, fsync, rename) afterwards. The answer never waits for the store; the
stored copy is whole once written; until then the held copy answers (one upstream fetch); a
write that dies midway, or a kill -9 at any moment, leaves nothing that can be served."""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs
from proxy import cache as cache_module
from proxy.app import create_app
from proxy.context import Services
from proxy.keys import SERVICES
from proxy.settings import parse_settings
from proxy.write_behind import WriteBehind

Client = Any  # aiohttp.test_utils.TestClient


# ------------------------------------------------------------------ the helper itself
async def test_writes_wait_for_a_quiet_moment_run_in_order_and_drain_writes_everything() -> None:
    behind: WriteBehind[str, int] = WriteBehind("thing", quiet=0.05, latest=5.0)
    written: list[tuple[str, int]] = []
    first_write = asyncio.Event()

    def writer(key: str, value: int) -> Callable[[], Awaitable[None]]:
        async def write() -> None:
            assert behind.get(key) is not None  # held while its write runs
            written.append((key, value))
            first_write.set()
        return write

    done = behind.start("a", 1, writer("a", 1), size=10)
    behind.start("b", 2, writer("b", 2), size=10)
    behind.start("a", 3, writer("a", 3), size=10)  # a later copy of a key: written after the first
    assert (behind.get("a"), behind.get("b"), written) == (3, 2, [])
    await first_write.wait()  # the first write starts only once starts stop coming (quiet)
    await done
    await behind.drain()
    assert written == [("a", 1), ("b", 2), ("a", 3)]
    assert behind.get("a") is None and len(behind) == 0

    behind.start("c", 4, writer("c", 4))
    await behind.drain()  # no quiet wait at shutdown
    assert written[-1] == ("c", 4) and behind.get("c") is None


async def test_held_bytes_over_the_limit_start_the_writes_at_once() -> None:
    behind: WriteBehind[str, bytes] = WriteBehind("thing", quiet=3600, latest=3600, held_bytes=100)
    written: list[str] = []

    async def write() -> None:
        written.append("x")

    behind.start("small", b"x", write, size=10)
    await asyncio.sleep(0.05)
    assert written == []  # held: the server has not been quiet for an hour
    await asyncio.wait_for(behind.start("big", b"y" * 100, write, size=100), 10)
    assert written == ["x", "x"]


async def test_a_failed_write_is_logged_and_lets_the_value_go(caplog: pytest.LogCaptureFixture) -> None:
    behind: WriteBehind[str, int] = WriteBehind("thing", quiet=0)

    async def write() -> None:
        raise OSError("no space left on device")

    await behind.start("k", 1, write)
    assert behind.get("k") is None
    assert "could not store the thing k" in caplog.text


# ------------------------------------------------------------------ in process: the answer before the store
def _world(tmp_path: Path, *, pep658: bool) -> tuple[Path, Path]:
    wheel = make_wheel(tmp_path / "d", "app", "1.0", requires_dist=["dep>=1"])
    write_simple_index(tmp_path / "root", [wheel, make_wheel(tmp_path / "d", "dep", "1.0")], fmt="html",
                       metadata_files=pep658)
    return tmp_path / "root", wheel


def _settings(storage: Path, upstream_url: str, *, offline: bool = False) -> str:
    return (f"storage: {{path: '{storage}'}}\n"
            f"offline: {'true' if offline else 'false'}\n"
            f"upstreams: {{pypi: {{type: pypi, url: '{upstream_url}/simple'}}}}\n"
            "channels: {open: {public: true, upstreams: [pypi]}}\n")


async def _upstream(aiohttp_server, root: Path) -> tuple[UpstreamServer, str]:  # type: ignore[no-untyped-def]
    upstream = UpstreamServer(root)
    server = await aiohttp_server(upstream.app())
    return upstream, str(server.make_url("")).rstrip("/")


async def _start(aiohttp_client, url: str, storage: Path, **kw: bool) -> tuple[Client, Services]:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(parse_settings(_settings(storage, url, **kw))))
    return client, client.app[SERVICES]


def _docs(storage: Path) -> list[Path]:
    return sorted((storage / "meta" / "docs").glob("*.json"))


async def test_a_cold_page_is_answered_before_its_copy_is_stored_then_stored_whole(
    aiohttp_client, aiohttp_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    root, wheel = _world(tmp_path, pep658=True)
    (upstream, url), storage = await _upstream(aiohttp_server, root), tmp_path / "storage"
    client, services = await _start(aiohttp_client, url, storage)
    cache = services.index_cache
    gate, writing = threading.Event(), threading.Event()
    write = cache._write

    def held_write(*args: Any) -> None:  # the store write, on its thread, held until the gate opens
        writing.set()
        assert gate.wait(30)
        write(*args)

    cache._write = held_write  # type: ignore[method-assign]
    try:
        for _ in range(2):  # cold, then from the held copy
            resp = await client.get("/open/simple/app/", headers={"Accept": "text/html"})
            assert resp.status == 200 and wheel.name in await resp.text()
        assert upstream.calls_to("/simple/app/") == 1  # single flight: the held copy answered
        assert _docs(storage) == []  # answered, and nothing stored yet
        await asyncio.to_thread(writing.wait, 30)  # the write runs behind the answers
    finally:
        gate.set()
    await cache._behind.drain()
    page = (root / "simple" / "app" / "index.html").read_bytes()
    descriptors = [json.loads(p.read_bytes()) for p in _docs(storage)]
    mine = [d for d in descriptors if d["url"].endswith("/simple/app/")]
    assert len(mine) == 1 and mine[0]["digest"] == hashlib.sha256(page).hexdigest()
    assert (storage / "meta" / "bodies" / mine[0]["digest"][:2] / mine[0]["digest"]).read_bytes() == page
    await client.close()
    # the stored copy is whole: a server that never contacts the upstream serves it
    client, _ = await _start(aiohttp_client, url, storage, offline=True)
    resp = await client.get("/open/simple/app/", headers={"Accept": "text/html"})
    assert resp.status == 200 and wheel.name in await resp.text()


async def test_a_large_repodata_is_parsed_and_answered_while_its_copy_is_stored(
    aiohttp_client, aiohttp_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """conda (index.py): an upstream repodata.json.zst of several MB is parsed from memory
    while the store writes it (beyond the 1 MiB pages are held to), then stored whole."""
    import zstandard

    rng = random.Random(15)
    records = {f"pkg{i:05d}-1.0-h{i:07x}_0.conda": {
        "name": f"pkg{i:05d}", "version": "1.0", "build": f"h{i:07x}_0", "build_number": 0, "depends": [],
        "sha256": f"{rng.getrandbits(256):064x}", "md5": f"{rng.getrandbits(128):032x}", "size": i,
        "subdir": "linux-64"} for i in range(30_000)}
    body = zstandard.ZstdCompressor(level=1).compress(json.dumps(
        {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": records}).encode())
    assert len(body) > cache_module.WRITE_BEHIND_MAX
    (tmp_path / "root" / "forge" / "linux-64").mkdir(parents=True)
    (tmp_path / "root" / "forge" / "linux-64" / "repodata.json.zst").write_bytes(body)
    upstream = UpstreamServer(tmp_path / "root")
    url = str((await aiohttp_server(upstream.app())).make_url("")).rstrip("/")
    storage = tmp_path / "storage"
    conda = (f"storage: {{path: '{storage}'}}\n"
             f"upstreams: {{forge: {{type: conda, url: '{url}/forge'}}}}\n"
             "channels: {open: {public: true, upstreams: [forge]}}\n")
    client = await aiohttp_client(create_app(parse_settings(conda)))
    cache = client.app[SERVICES].index_cache
    gate, writing = threading.Event(), threading.Event()
    write = cache._write

    def held_write(*args: Any) -> None:
        writing.set()
        assert gate.wait(30)
        write(*args)

    cache._write = held_write  # type: ignore[method-assign]
    try:
        resp = await client.get("/open/linux-64/repodata.json.zst")
        merged = json.loads(zstandard.ZstdDecompressor().decompress(await resp.read()))
        assert resp.status == 200 and merged["packages.conda"] == records
        assert _docs(storage) == []  # parsed and answered, nothing stored yet
        await asyncio.to_thread(writing.wait, 30)
    finally:
        gate.set()
    await cache._behind.drain()
    digest = hashlib.sha256(body).hexdigest()
    assert [json.loads(p.read_bytes())["digest"] for p in _docs(storage)] == [digest]
    assert (storage / "meta" / "bodies" / digest[:2] / digest).read_bytes() == body
    assert upstream.calls_to("/forge/linux-64/repodata.json.zst") == 1
    await client.close()


@pytest.mark.parametrize("pep658", [True, False], ids=["upstream-metadata-file", "read-from-the-wheel"])
async def test_a_metadata_file_is_answered_before_it_is_stored_then_stored_whole(
    aiohttp_client, aiohttp_server, tmp_path: Path, pep658: bool  # type: ignore[no-untyped-def]
) -> None:
    root, wheel = _world(tmp_path, pep658=pep658)
    (upstream, url), storage = await _upstream(aiohttp_server, root), tmp_path / "storage"
    upstream.overrides[f"/files/{wheel.name}"] = lambda request: web.FileResponse(root / "files" / wheel.name)
    client, services = await _start(aiohttp_client, url, storage)
    store, gate = services.store, asyncio.Event()
    publish, put_bytes = store.publish, store.put_bytes  # type: ignore[attr-defined]

    async def held_publish(tmp: Any) -> Path:
        await gate.wait()
        return await publish(tmp)  # type: ignore[no-any-return]

    async def held_put_bytes(area: Any, data: bytes) -> Any:
        await gate.wait()
        return await put_bytes(area, data)

    store.publish, store.put_bytes = held_publish, held_put_bytes  # type: ignore[attr-defined, method-assign]
    path = f"/open/simple/app/{wheel.name}.metadata"
    for _ in range(2):  # fetched (or joined a fetch ahead), then from the held copy
        resp = await client.get(path)
        body = await resp.read()
        assert resp.status == 200 and body.startswith(b"Metadata-Version") and b"Name: app" in body
        assert resp.headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    sha256 = hashlib.sha256(body).hexdigest()
    assert sha256 not in stored_blobs(storage, "cache")  # answered, not stored yet
    resp = await client.get(path, headers={"Range": "bytes=0-9"})  # served like a stored blob
    assert resp.status == 206 and await resp.read() == body[:10]
    gate.set()
    await services.artifacts._behind.drain()
    assert (storage / "cache" / "sha256" / sha256[:2] / sha256).read_bytes() == body
    if pep658:
        assert upstream.calls_to(f"/files/{wheel.name}.metadata") == 1
    else:
        assert await store.ref(f"wheel-metadata:sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}") == sha256
        assert not [c for c in upstream.calls if c.path.endswith(".whl") and "Range" not in c.headers]
    await client.close()
    client, _ = await _start(aiohttp_client, url, storage, offline=True)
    resp = await client.get(path)
    assert resp.status == 200 and await resp.read() == body


async def test_a_write_that_dies_midway_leaves_nothing_to_serve(
    aiohttp_client, aiohttp_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The temp file is written and synced, then the writer dies before the rename (what a
    kill -9 or a full disk does): the client had its answer, and the store holds no copy a
    server could serve; the next server fetches the page again."""
    root, wheel = _world(tmp_path, pep658=True)
    (upstream, url), storage = await _upstream(aiohttp_server, root), tmp_path / "storage"
    write = cache_module.atomic_write

    def dies_before_rename(path: Path, data: bytes, tmp_dir: Path) -> None:
        (tmp_dir / "w-dying.part").write_bytes(data[: len(data) // 2])
        raise OSError("killed before the rename")

    monkeypatch.setattr(cache_module, "atomic_write", dies_before_rename)
    client, services = await _start(aiohttp_client, url, storage)
    resp = await client.get("/open/simple/app/", headers={"Accept": "text/html"})
    assert resp.status == 200 and wheel.name in await resp.text()
    await services.index_cache._behind.drain()
    assert _docs(storage) == [] and not list((storage / "meta" / "bodies").rglob("*"))
    await client.close()
    monkeypatch.setattr(cache_module, "atomic_write", write)
    client, _ = await _start(aiohttp_client, url, storage, offline=True)
    resp = await client.get("/open/simple/app/", headers={"Accept": "text/html"})
    assert resp.status == 404  # nothing servable was left
    await client.close()
    client, _ = await _start(aiohttp_client, url, storage)
    resp = await client.get("/open/simple/app/", headers={"Accept": "text/html"})
    assert resp.status == 200 and wheel.name in await resp.text()
    assert upstream.calls_to("/simple/app/") == 2


# ------------------------------------------------------------------ a real process, killed
def test_kill_9_right_after_cold_answers_leaves_only_whole_copies(
    tmp_path: Path, upstream_factory  # type: ignore[no-untyped-def]
) -> None:
    """kill -9 while copies are held or being written: after a restart every stored page
    descriptor names a body that is there and whole, every cached blob matches its name, and
    the offline server serves each page whole or not at all."""
    names = [f"proj{i}" for i in range(6)]
    wheels = [make_wheel(tmp_path / "d", name, "1.0") for name in names]
    write_simple_index(tmp_path / "root", wheels, fmt="html", metadata_files=True)
    upstream = upstream_factory(tmp_path / "root")
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"open": {"public": True, "upstreams": ["pypi"]}}})
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        pages = {}
        for name in names:
            status, _, pages[name] = http("GET", f"{server.url}/open/simple/{name}/", headers={"Accept": "text/html"})
            assert status == 200
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        for path in (server.storage / "meta" / "docs").glob("*.json"):
            digest = json.loads(path.read_bytes())["digest"]
            body = server.storage / "meta" / "bodies" / digest[:2] / digest
            assert hashlib.sha256(body.read_bytes()).hexdigest() == digest
        for sha256 in stored_blobs(server.storage, "cache"):
            blob = server.storage / "cache" / "sha256" / sha256[:2] / sha256
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256
        policy.data["offline"] = True
        server.start()
        for name in names:
            status, _, body = http("GET", f"{server.url}/open/simple/{name}/", headers={"Accept": "text/html"})
            assert (status, body) == (200, pages[name]) or status == 404
    finally:
        server.stop()
