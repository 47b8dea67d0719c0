"""repodata.json.bz2 with a real client (issue 15 part 5): py-rattler against a real
channelgate. bzip2 runs in the background (DESIGN's contract: a client never waits on it
longer than a bound, then gets 503 + Retry-After). rattler prefers ``.zst``; told not to use
it, it probes ``.bz2`` with a HEAD, which never waits: while bzip2 runs that is a 503, taken
as "not offered", and rattler reads ``repodata.json``. Once the server has made the ``.bz2``
(its log says so: the event awaited), rattler downloads and reads the ``.bz2`` itself."""
from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fixtures import conda_pkgs as fx
from harness import Channelgate, Policy, http

rattler = pytest.importorskip("rattler")
from rattler.networking.fetch_repo_data import FetchRepoDataOptions  # noqa: E402

NAMES = ("bz-alpha", "bz-beta")


@pytest.fixture
def server(tmp_path: Path, upstream_factory: Any) -> Any:
    pkgs = [fx.build_package(tmp_path / "pkgs", fx.PkgSpec(n, "1.0", "h0_0", subdir="linux-64")) for n in NAMES]
    fx.write_channel(tmp_path / "upstream" / "forge", pkgs)
    upstream = upstream_factory(tmp_path / "upstream")
    policy = Policy({"upstreams": {"forge": {"type": "conda", "url": f"{upstream.url}/forge"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["forge"]}}})
    cg = Channelgate(tmp_path / "cg", policy).start()
    yield cg
    cg.stop()


async def fetch(cg: Channelgate, cache: Path, **options: bool) -> set[str]:
    """rattler's own fetch of linux-64 repodata: the package names it read."""
    found = await rattler.fetch_repo_data(
        channels=[rattler.Channel(f"{cg.url}/mirror")], platforms=[rattler.Subdir("linux-64")], cache_path=cache,
        callback=None, fetch_options=FetchRepoDataOptions(cache_action="no-cache", **options),
    )
    records = [r for sparse in found for n in NAMES for r in sparse.load_records(rattler.PackageName(n))]
    return {r.name.normalized for r in records}


def requested(cg: Channelgate, since: int) -> list[tuple[str, str, int]]:
    """(method, file, status) of the access lines after the first ``since`` characters of the log."""
    pattern = re.compile(r'"(GET|HEAD) /mirror/linux-64/(repodata\.json[.a-z0-9]*)" (\d{3})')
    return [(m[1], m[2], int(m[3])) for m in pattern.finditer(cg.log()[since:])]


async def test_rattler_reads_bz2_once_made_in_the_background(server: Channelgate, tmp_path: Path) -> None:
    cg = server
    # without .zst: rattler's HEAD probe starts bzip2 and is answered at once with a 503 +
    # Retry-After, which rattler takes as "not offered": it reads repodata.json instead
    assert await fetch(cg, tmp_path / "c1", zstd_enabled=False) == set(NAMES)
    cg.wait_log('GET /mirror/linux-64/repodata.json"')
    seen = requested(cg, 0)
    assert seen[0] == ("HEAD", "repodata.json.bz2", 503) and ("GET", "repodata.json", 200) in seen
    assert not [r for r in seen if r[0] == "GET" and r[1].endswith(".bz2")]
    status, headers, _ = http("HEAD", f"{cg.url}/mirror/linux-64/repodata.json.bz2")
    assert status == 200 or (status == 503 and headers["Retry-After"].isdigit())

    cg.wait_log("rendered linux-64/repodata.json.bz2", timeout=60)  # the event: bzip2 finished
    start = len(cg.log())
    assert await fetch(cg, tmp_path / "c2", zstd_enabled=False) == set(NAMES)
    cg.wait_log('GET /mirror/linux-64/repodata.json.bz2"')
    assert ("GET", "repodata.json.bz2", 200) in requested(cg, start)

    # rattler's default: .zst, even with a .bz2 on offer (it HEADs both); conda asks for
    # .zst, then .json: no client GETs a .bz2 first
    start = len(cg.log())
    assert await fetch(cg, tmp_path / "c0") == set(NAMES)
    cg.wait_log('GET /mirror/linux-64/repodata.json.zst"')
    seen = requested(cg, start)
    assert ("GET", "repodata.json.zst", 200) in seen and ("HEAD", "repodata.json.bz2", 200) in seen
    assert not [r for r in seen if r[0] == "GET" and r[1] != "repodata.json.zst"]

    # the .bz2 rattler read is the whole document: the same as repodata.json
    _, _, plain = http("GET", f"{cg.url}/mirror/linux-64/repodata.json")
    _, _, packed = http("GET", f"{cg.url}/mirror/linux-64/repodata.json.bz2")
    assert json.loads(bz2.decompress(packed)) == json.loads(plain)
