"""cache.backend: redis — replicas share freshness through one Redis (DESIGN, "Scale")."""
from __future__ import annotations

import http.client as httpclient
import re
import time
from collections.abc import Callable
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


def _status_from(server: Channelgate, source: str, path: str, token: str) -> int:
    """A request from another loopback address (127.0.0.0/8 is all local on Linux)."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"X-Auth": token})
        return conn.getresponse().status
    finally:
        conn.close()


def _becomes(expected: int, probe: Callable[[], int]) -> bool:
    """Whether ``probe`` answers ``expected`` within a bounded number of tries (the brake's
    message travels through Redis pub/sub: there is no event to await from outside)."""
    for _ in range(200):
        if probe() == expected:
            return True
        time.sleep(0.05)
    return False


def test_the_sign_in_brake_counts_failures_across_replicas(tmp_path: Path, redis_url: str) -> None:
    """max_failures 3: two wrong tokens at one replica and one at the other brake the address
    on both (per process, neither had reached 3); a valid token from elsewhere still works."""
    policy = Policy({
        "storage": {"path": str(tmp_path / "shared-storage")},
        "cache": {"backend": "redis", "redis_url": redis_url},
        "accounts": {"max_failures": 3, "failure_window": 600},
        "users": ["bob"],
        "channels": {"internal": {"read": ["user:bob"]}},
    })
    good = policy.add_token("bob", ["conda:download"])
    first = Channelgate(tmp_path / "replica-1", policy).start()
    second = Channelgate(tmp_path / "replica-2", policy).start()
    page = "/internal/noarch/repodata.json"
    try:
        assert [_status_from(first, "127.0.0.2", page, f"cgt-wrong{i}") for i in range(2)] == [401, 401]
        assert _status_from(second, "127.0.0.2", page, "cgt-wrong2") == 401
        # the valid token counts as no failure: only the brake can turn these into 429
        assert _becomes(429, lambda: _status_from(second, "127.0.0.2", page, good))
        assert _becomes(429, lambda: _status_from(first, "127.0.0.2", page, good))
        assert _status_from(first, "127.0.0.3", page, good) == 200  # another address is not braked
        assert _status_from(second, "127.0.0.3", page, good) == 200
        import redis

        keys = redis.Redis.from_url(redis_url).keys("channelgate:brake:*")
        assert len(keys) == 1  # one address was counted, under a digest: never the address or a token
        assert re.fullmatch(rb"channelgate:brake:[0-9a-f]{64}", keys[0]) and b"127.0.0.2" not in keys[0]
    finally:
        first.stop()
        second.stop()
