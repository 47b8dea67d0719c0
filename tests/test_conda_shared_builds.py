"""Merged conda indexes shared across channels (issue 15 part 5): channels whose inputs are
the same (one upstream document, the same filters, no uploads of their own) are served one
build, counted by ``channelgate_index_builds_total``; a channel with uploads gets its own,
and its uploads never reach another channel's index. Real server, real upstream."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard
from fixtures import conda_pkgs as fx
from harness import Channelgate, Policy, UpstreamServer, channel_url, http
from prometheus_client.parser import text_string_to_metric_families

MIRRORS = tuple(f"mirror-{i}" for i in range(1, 6))


@pytest.fixture
def world(tmp_path: Path, upstream_factory: Any) -> Any:
    pkgs = tmp_path / "pkgs"
    forge = [fx.build_package(pkgs, fx.PkgSpec(f"forge-{n}", "1.0", "h0_0", subdir="linux-64")) for n in "abc"]
    fx.write_channel(tmp_path / "upstream" / "forge", forge)
    upstream: UpstreamServer = upstream_factory(tmp_path / "upstream")
    policy = Policy({
        "upstreams": {"forge": {"type": "conda", "url": f"{upstream.url}/forge"},
                      "filtered": {"type": "conda", "url": f"{upstream.url}/forge", "filter": {"exclude": ["forge-c"]}}},
        "groups": {"readers": ["bob"], "devs": ["alice"]},
        "channels": {
            **{name: {"upstreams": ["forge"], "read": ["group:readers"], "write": ["group:devs"]} for name in MIRRORS},
            "other-filter": {"upstreams": ["filtered"], "read": ["group:readers"]},
        },
    })
    tokens = {"reader": policy.add_token("bob", ["conda:download"]),
              "writer": policy.add_token("alice", ["api:write", "conda:download"])}
    server = Channelgate(tmp_path / "cg", policy).start()
    yield server, tokens, pkgs
    server.stop()


def builds(server: Channelgate) -> float:
    status, _, body = http("GET", f"{server.url}/metrics")
    assert status == 200
    return sum(s.value for family in text_string_to_metric_families(body.decode()) for s in family.samples
               if s.name == "channelgate_index_builds_total" and s.labels.get("ecosystem") == "conda")


def zst_index(server: Channelgate, token: str, channel: str) -> tuple[bytes, str]:
    status, headers, body = http("GET", channel_url(server, "alias", token, channel) + "/linux-64/repodata.json.zst")
    assert status == 200, body
    return zstandard.ZstdDecompressor().decompress(body), headers["ETag"]


def files(doc: bytes) -> set[str]:
    parsed = json.loads(doc)
    return set(parsed["packages"]) | set(parsed["packages.conda"])


def test_channels_with_the_same_inputs_share_one_build(world: Any) -> None:
    server, tokens, pkgs = world
    before = builds(server)
    with ThreadPoolExecutor(len(MIRRORS)) as pool:  # asked at once, as in the benchmark
        answers = list(pool.map(lambda c: zst_index(server, tokens["reader"], c), MIRRORS))
    assert builds(server) - before == 1  # one build served all five channels
    docs = {doc for doc, _ in answers}
    assert len(docs) == 1 and {etag for _, etag in answers} == {answers[0][1]}
    assert files(answers[0][0]) == {f"forge-{n}-1.0-h0_0.conda" for n in "abc"}

    # another filter is another document: a build of its own
    doc, _ = zst_index(server, tokens["reader"], "other-filter")
    assert files(doc) == {"forge-a-1.0-h0_0.conda", "forge-b-1.0-h0_0.conda"}
    assert builds(server) - before == 2

    # an upload makes its channel's inputs its own: one more build, and only that channel lists it
    private = fx.build_package(pkgs / "private", fx.PkgSpec("private-tool", "1.0", "h0_0", subdir="linux-64"))
    with open(private, "rb") as fh:
        resp = requests.post(f"{server.url}/api/repo/mirror-1", files={"content": (private.name, fh)},
                             headers={"Authorization": f"token {tokens['writer']}"}, timeout=60)
    assert resp.status_code == 201, resp.text
    mine, _ = zst_index(server, tokens["reader"], "mirror-1")
    assert private.name in files(mine)
    for channel in MIRRORS[1:]:
        theirs, _ = zst_index(server, tokens["reader"], channel)
        assert private.name not in files(theirs) and theirs == answers[0][0]
    assert builds(server) - before == 3
