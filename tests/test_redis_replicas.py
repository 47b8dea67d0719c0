"""cache.backend: redis — replicas share freshness through one Redis (DESIGN, "Scale")."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, http
from redis_server import RedisServer, redis_server  # noqa: F401 - the fixture


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def test_replicas_share_fresh_index_entries_through_redis(tmp_path: Path, upstream_factory, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    write_simple_index(tmp_path / "root", [make_wheel(tmp_path / "d", "shared-pkg", "1.0")])
    upstream = upstream_factory(tmp_path / "root")
    policy = Policy(
        {
            "storage": {"path": str(tmp_path / "shared-storage")},
            "cache": {"backend": "redis", "redis_url": redis_url, "metadata_ttl": 600},
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"]}},
        }
    )
    token = policy.add_token("alice", ["pypi:download"])
    first = Channelgate(tmp_path / "replica-1", policy).start()
    second = Channelgate(tmp_path / "replica-2", policy).start()
    try:
        path = f"/t/{token}/internal/simple/shared-pkg/"
        status, _, body = http("GET", first.url + path)
        assert status == 200 and b"shared_pkg-1.0-py3-none-any.whl" in body
        assert upstream.calls_to("/simple/shared-pkg/") == 1
        # the other replica finds the entry fresh in Redis: no second upstream request
        status, _, body2 = http("GET", second.url + path)
        assert status == 200 and body2 == body
        assert upstream.calls_to("/simple/shared-pkg/") == 1
        # and the negative cache is shared too
        assert http("GET", first.url + f"/t/{token}/internal/simple/nothing-here/")[0] == 404
        assert http("GET", second.url + f"/t/{token}/internal/simple/nothing-here/")[0] == 404
        assert upstream.calls_to("/simple/nothing-here/") == 1
    finally:
        first.stop()
        second.stop()
