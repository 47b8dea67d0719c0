"""A relocatable store (DESIGN, "Air-gap": copied to another path or host, it serves the same)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> UpstreamServer:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("store-upstream")
    files = [make_wheel(base / "d", "small-pkg", "1.0"), make_wheel(base / "d", "other-pkg", "1.0")]
    write_simple_index(base / "root", files, fmt="json")
    return upstream_factory(base / "root")  # type: ignore[no-any-return]


def _policy(upstream: UpstreamServer, storage: Path) -> tuple[Policy, str, str]:
    policy = Policy(
        {
            "storage": {"path": str(storage)},
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"], "write": ["group:devs"]}},
        }
    )
    return policy, policy.add_token("alice", ["pypi:download"]), policy.add_token("alice", ["api:write"])


def test_a_store_copied_to_another_path_serves_offline(tmp_path: Path, upstream: UpstreamServer) -> None:
    old = tmp_path / "host-a" / "var" / "channelgate"
    policy, token, writer = _policy(upstream, old)
    online = Channelgate(tmp_path / "a", policy).start()
    page = f"/t/{token}/internal/simple/small-pkg/"
    wheel = page + "small_pkg-1.0-py3-none-any.whl"
    hosted = make_wheel(tmp_path / "up", "hosted-pkg", "2.0")
    try:
        assert http("GET", online.url + page)[0] == 200
        assert http("GET", online.url + wheel)[0] == 200
        with open(hosted, "rb") as fh:
            resp = requests.post(
                f"{online.url}/api/repo/internal", data=twine_fields(hosted),
                files={"content": (hosted.name, fh)}, auth=(writer, "x-auth-token"), timeout=60,
            )
        assert resp.status_code == 200, resp.text
    finally:
        online.stop()
    # nothing stored names the store's own location
    for path in old.rglob("*"):
        if path.is_file():
            assert str(old).encode() not in path.read_bytes(), f"{path.relative_to(old)} holds an absolute path"
    new = tmp_path / "host-b" / "srv" / "elsewhere"
    shutil.copytree(old, new)
    shutil.rmtree(old)  # the old path no longer exists: any absolute path left would fail
    policy.data["storage"] = {"path": str(new)}
    policy.data["offline"] = True
    calls = len(upstream.calls)
    offline = Channelgate(tmp_path / "b", policy).start()
    try:
        status, _, body = http("GET", offline.url + page)
        assert status == 200 and b"small_pkg-1.0-py3-none-any.whl" in body
        status, _, body = http("GET", offline.url + wheel)
        assert status == 200 and body == (upstream.root / "files" / "small_pkg-1.0-py3-none-any.whl").read_bytes()
        status, _, body = http("GET", offline.url + f"/t/{token}/internal/simple/hosted-pkg/{hosted.name}")
        assert status == 200 and body == hosted.read_bytes()
        assert http("GET", offline.url + f"/t/{token}/internal/simple/other-pkg/")[0] == 404
        assert len(upstream.calls) == calls
    finally:
        offline.stop()
