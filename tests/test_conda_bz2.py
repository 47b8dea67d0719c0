"""repodata.json.bz2 off the client's time (issue 15): bzip2 runs on a thread of its own,
started by the first request for it and after every later build; a client never waits on it
longer than the handler's bound. Driven in-process (create_app + aiohttp's test client) so
bzip2 can be held at a gate: what a client gets while it runs is then deterministic."""
from __future__ import annotations

import asyncio
import bz2
import threading
from pathlib import Path
from typing import Any

import pytest
from fixtures import conda_pkgs as fx

from proxy.app import create_app
from proxy.auth.credentials import generate_token, hash_token
from proxy.ecosystems.conda import handlers, subdir_index
from proxy.settings import parse_settings


class Gate:
    """Holds every bzip2 run until ``open``; ``finished`` is set as each one ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()
        self.runs = 0

    def wrap(self, real: Any) -> Any:
        def gated(source: Path, target: Path, tmp_dir: Path) -> None:
            self.runs += 1
            assert self.release.wait(60), "bzip2 gate never opened"
            real(source, target, tmp_dir)
            self.finished.set()
        return gated

    async def open_and_wait(self) -> None:
        self.release.set()
        assert await asyncio.to_thread(self.finished.wait, 60)
        self.finished.clear()


async def _upload(client: Any, token: str, path: Path) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("content", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
    resp = await client.post("/api/repo/c", data=form, headers={"Authorization": f"token {token}"})
    assert resp.status == 201, await resp.text()


async def test_bz2_is_compressed_in_the_background_and_never_waited_for(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    monkeypatch.setattr(subdir_index, "_bzip2", gate.wrap(subdir_index._bzip2))
    monkeypatch.setattr(handlers, "SLOW_RENDERING_WAIT", 0.2)
    token = generate_token()
    settings = parse_settings(
        f"storage: {{path: {tmp_path / 'storage'}}}\n"
        "groups: {devs: [alice]}\n"
        "channels: {c: {public: true, write: [group:devs]}}\n"
        f"tokens: [{{name: t, user: alice, sha256: 'sha256:{hash_token(token)}', scopes: [all]}}]\n"
    )
    client = await aiohttp_client(create_app(settings))
    first, second = (fx.build_package(tmp_path / "pkgs", fx.PkgSpec(n, "1.0", "h0_0", subdir="linux-64"))
                     for n in ("bz-first", "bz-second"))
    try:
        await _upload(client, token, first)
        # nothing made yet: a GET waits its bound and gets a 503 naming the alternatives; a HEAD
        # (rattler's probe) does not wait at all
        resp = await client.get("/c/linux-64/repodata.json.bz2")
        assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        assert "repodata.json.zst" in (await resp.json())["error"]
        assert (await client.head("/c/linux-64/repodata.json.bz2")).status == 503
        assert gate.runs == 1  # one compression, shared by both requests
        plain = await (await client.get("/c/linux-64/repodata.json")).read()
        assert (await client.get("/c/linux-64/repodata.json.zst")).status == 200  # never held up
        await gate.open_and_wait()
        resp = await client.get("/c/linux-64/repodata.json.bz2")
        assert resp.status == 200
        old_bz2, old_etag = await resp.read(), resp.headers["ETag"]
        assert bz2.decompress(old_bz2) == plain and b"bz-first" in plain
        assert (await client.head("/c/linux-64/repodata.json.bz2")).status == 200

        # an upload: the new index is built, its .bz2 starts at once (a client asked for one
        # before); meanwhile the previous .bz2 is served, not a 503 and not a wait
        gate.release.clear()
        await _upload(client, token, second)
        plain = await (await client.get("/c/linux-64/repodata.json")).read()
        assert b"bz-second" in plain
        resp = await client.get("/c/linux-64/repodata.json.bz2")
        assert resp.status == 200 and resp.headers["ETag"] == old_etag and await resp.read() == old_bz2
        resp = await client.get("/c/linux-64/repodata.json.bz2", headers={"If-None-Match": old_etag})
        assert resp.status == 304
        await gate.open_and_wait()
        resp = await client.get("/c/linux-64/repodata.json.bz2")
        assert resp.status == 200 and resp.headers["ETag"] != old_etag
        assert bz2.decompress(await resp.read()) == plain
        assert gate.runs == 2  # made once after the upload's build, without being asked again
    finally:
        gate.release.set()
