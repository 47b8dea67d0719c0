"""conda end to end with an upstream channel that offers only CEP-16 sharded repodata
(no ``repodata.json`` nor ``.zst``): channelgate merges it from the shard index and the
shards, py-rattler installs from it through channelgate, package files are fetched from
where the index's ``base_url`` says and verified, and a refresh fetches only the shards
whose hash changed."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from fixtures import conda_pkgs as fx
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs

rattler = pytest.importorskip("rattler")

Spec = fx.PkgSpec
# noarch: files and shards elsewhere than beside the index (CEP-16: relative to the index URL)
NOARCH_LAYOUT = {"base_url": "../../sharded-files/noarch/", "shards_base_url": "../../sharded-shards/"}


@dataclass
class World:
    base: Path
    upstream: UpstreamServer
    server: Channelgate
    token: str
    writer: str
    upstream_pkgs: list[Path]
    noarch_hashes: dict[str, str]
    refresh_hashes: dict[str, str]  # the "refresh" upstream's noarch shards (a test changes them)
    refresh_pkgs: list[Path]

    def channel(self, channel: str = "internal") -> str:
        return f"http://127.0.0.1:{self.server.port}/t/{self.token}/{channel}"

    def get(self, path: str, channel: str = "internal") -> tuple[int, dict[str, str], bytes]:
        return http("GET", self.channel(channel) + path)

    def repodata(self, subdir: str = "noarch", channel: str = "internal") -> Any:
        status, _, body = self.get(f"/{subdir}/repodata.json", channel)
        assert status == 200, body
        return json.loads(body)


def upstream_noarch(pkgs: Path) -> list[Path]:
    return [
        fx.build_package(pkgs, Spec("shard-dep", "1.0", "0")),
        fx.build_package(pkgs, Spec("shard-dep", "2.0", "0")),
        fx.build_package(pkgs, Spec("shard-dep", "2.0", "0"), "tar.bz2"),
        fx.build_package(pkgs, Spec("acme-private", "9.0", "0")),  # a squatter on the private name
        fx.build_package(pkgs, Spec("shard-tampered", "1.0", "0")),
        fx.build_package(pkgs, Spec("shard-other", "0.5", "0")),
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("conda-shards")
    pkgs = base / "pkgs"
    root = base / "upstream"
    noarch = upstream_noarch(pkgs / "noarch")
    linux = [fx.build_package(pkgs / "linux", Spec("shard-tool", "1.5", "h0_0", subdir="linux-64",
                                                   depends=("shard-dep >=2",)))]
    hashes = fx.write_sharded_channel(root / "sharded", noarch, **NOARCH_LAYOUT)
    fx.write_sharded_channel(root / "sharded", linux, subdirs=())  # linux-64: the default layout (./, ./shards/)
    assert not list(root.rglob("repodata.json*"))
    both = [fx.build_package(pkgs / "both", Spec("both-pkg", "1.0", "0"))]
    fx.write_sharded_channel(root / "both", both)  # offers shards and repodata.json
    fx.write_channel(root / "both", both)
    # an upstream a test changes: its own packages, so none of its shards is another upstream's
    refresh_pkgs = [fx.build_package(pkgs / "refresh", Spec(name, version, "0"))
                    for name, version in (("refresh-dep", "1.0"), ("refresh-dep", "2.0"), ("refresh-other", "0.5"))]
    refresh = fx.write_sharded_channel(root / "refresh", refresh_pkgs)["noarch"]
    upstream = upstream_factory(root)
    policy = Policy({
        "cache": {"metadata_ttl": 0},  # revalidate the shard index on every request
        "upstreams": {"sharded": {"type": "conda", "url": f"{upstream.url}/sharded"},
                      "both": {"type": "conda", "url": f"{upstream.url}/both"},
                      "refresh": {"type": "conda", "url": f"{upstream.url}/refresh"}},
        "groups": {"devs": ["alice"], "readers": ["bob"]},
        "channels": {"internal": {"upstreams": ["sharded"], "read": ["group:readers"], "write": ["group:devs"]},
                     "both": {"public": True, "upstreams": ["both"]},
                     "refresh": {"upstreams": ["refresh"], "read": ["group:readers"]}},
    })
    token = policy.add_token("bob", ["conda:download"])
    writer = policy.add_token("alice", ["api:write", "conda:download"])
    server = channelgate_factory(base / "cg", policy)
    for spec in (
        Spec("acme-private", "1.0", "0", depends=("shard-dep >=1",)),
        Spec("acme-app", "0.3", "h1_0", subdir="linux-64", depends=("acme-private", "shard-tool")),
    ):
        path = fx.build_package(pkgs / "private", spec)
        with open(path, "rb") as fh:
            resp = requests.post(f"{server.url}/api/repo/internal",
                                 files={"content": (path.name, fh, "application/octet-stream")},
                                 headers={"Authorization": f"token {writer}"}, timeout=60)
        assert resp.status_code == 201, resp.text
    return World(base, upstream, server, token, writer, noarch, hashes["noarch"], refresh, refresh_pkgs)


def shard_path(digest: str) -> str:
    return f"/sharded-shards/{digest}.msgpack.zst"


def test_merged_repodata_from_a_shard_only_upstream(world: World) -> None:
    doc = world.repodata()
    files = set(doc["packages"]) | set(doc["packages.conda"])
    assert {"shard-dep-1.0-0.conda", "shard-dep-2.0-0.conda", "shard-dep-2.0-0.tar.bz2"} <= files
    assert "acme-private-1.0-0.conda" in files  # the upload
    assert "acme-private-9.0-0.conda" not in files  # dependency-confusion rule: the name is ours
    for pkg in world.upstream_pkgs:
        if pkg.name.startswith("acme-private"):
            continue
        section = "packages.conda" if pkg.name.endswith(".conda") else "packages"
        record = doc[section][pkg.name]
        expected = fx.file_hashes(pkg)
        # CEP-16 raw-byte hashes become repodata's lower-case hex
        assert (record["sha256"], record["md5"], record["size"]) == (expected["sha256"], expected["md5"], expected["size"])
        assert "url" not in record and "channel" not in record
    assert "base_url" not in doc["info"]  # the upstream's layout is not exposed
    linux = world.repodata("linux-64")
    assert set(linux["packages.conda"]) == {"acme-app-0.3-h1_0.conda", "shard-tool-1.5-h0_0.conda"}
    assert world.get("/noarch/acme-private-9.0-0.conda")[0] == 404
    for digest in world.noarch_hashes.values():  # every shard came from where shards_base_url says
        assert world.upstream.calls_to(shard_path(digest)) == 1


def test_full_repodata_is_preferred_when_both_are_offered(world: World) -> None:
    status, _, body = http("GET", f"{world.server.url}/both/noarch/repodata.json")
    assert status == 200 and set(json.loads(body)["packages.conda"]) == {"both-pkg-1.0-0.conda"}
    assert world.upstream.calls_to("/both/noarch/repodata.json.zst") >= 1
    assert world.upstream.calls_to("/both/noarch/repodata_shards.msgpack.zst") == 0
    assert not [c for c in world.upstream.calls if c.path.startswith("/both/noarch/shards/")]


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "repodata"])
async def test_rattler_installs_a_dependency_only_the_sharded_upstream_has(world: World, sharded: bool) -> None:
    target = world.base / f"env-{sharded}"
    gateway = rattler.Gateway(cache_dir=world.base / f"rattler-cache-{sharded}",
                              default_config=rattler.SourceConfig(sharded_enabled=sharded))
    records = await rattler.solve([rattler.Channel(world.channel())], ["acme-app"], gateway=gateway,
                                  platforms=["linux-64", "noarch"], virtual_packages=[])
    await rattler.install(records, target, cache_dir=world.base / f"rattler-pkgs-{sharded}", show_progress=False,
                          platform=rattler.Subdir("linux-64"))
    got = {r.name.normalized: str(r.version) for r in records}
    assert got == {"acme-app": "0.3", "acme-private": "1.0", "shard-tool": "1.5", "shard-dep": "2.0"}
    assert (target / "share/shard-dep/README.txt").read_text().startswith("shard-dep 2.0")
    assert (target / "share/acme-private/README.txt").read_text().startswith("acme-private 1.0")  # not the squatter's
    assert (target / "bin/shard-tool-hello").stat().st_mode & 0o111
    for record in records:
        assert record.url.startswith(world.channel() + "/")  # through channelgate


def test_package_files_come_from_base_url_and_are_verified(world: World) -> None:
    status, _, body = world.get("/noarch/shard-other-0.5-0.conda")
    assert status == 200 and body == next(p for p in world.upstream_pkgs if p.name == "shard-other-0.5-0.conda").read_bytes()
    assert world.upstream.calls_to("/sharded-files/noarch/shard-other-0.5-0.conda") == 1
    status, _, body = world.get("/linux-64/shard-tool-1.5-h0_0.conda")  # default layout: beside the index
    assert status == 200 and world.upstream.calls_to("/sharded/linux-64/shard-tool-1.5-h0_0.conda") >= 1

    path = "/sharded-files/noarch/shard-tampered-1.0-0.conda"
    world.upstream.overrides[path] = b"PK\x03\x04 not the bytes whose sha256 the shard declared"
    try:
        before = stored_blobs(world.server.storage, "cache")
        for attempt in (1, 2):
            status, _, body = world.get("/noarch/shard-tampered-1.0-0.conda")
            assert status == 502, body
            assert world.upstream.calls_to(path) == attempt  # nothing kept: fetched again
        assert stored_blobs(world.server.storage, "cache") == before
    finally:
        del world.upstream.overrides[path]
    status, _, body = world.get("/noarch/shard-tampered-1.0-0.conda")
    assert status == 200 and hashlib.sha256(body).hexdigest() == world.repodata()["packages.conda"][
        "shard-tampered-1.0-0.conda"]["sha256"]


def test_a_private_channel_answers_cache_control_private(world: World) -> None:
    """Issue 8, observation 18: a shared cache in front must never keep a private channel's
    package files or shards (it would replay them to anyone); a public channel's may."""
    import msgpack
    import zstandard

    status, _, index = world.get("/noarch/repodata_shards.msgpack.zst")
    assert status == 200
    shards = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index, max_output_size=1 << 24))["shards"]
    answers = {
        "shard": f"/noarch/shards/{next(iter(shards.values())).hex()}.msgpack.zst",
        "hosted file": "/noarch/acme-private-1.0-0.conda",
        "cached upstream file": "/noarch/shard-other-0.5-0.conda",
        "shard index": "/noarch/repodata_shards.msgpack.zst",
        "repodata": "/noarch/repodata.json",
    }
    for what, path in answers.items():
        for _ in range(2):  # the first answer and the one from the store
            status, headers, _ = world.get(path)
            assert status == 200, (what, status)
            control = headers.get("Cache-Control", "")
            assert "private" in control and "public" not in control, (what, control)
    for _ in range(2):
        status, headers, _ = http("GET", f"{world.server.url}/both/noarch/both-pkg-1.0-0.conda")
        assert status == 200
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"  # public channel: unchanged


def test_refresh_fetches_only_changed_shards(world: World) -> None:
    """A new refresh-dep version changes one shard, and only that shard is fetched again. The
    test changes an upstream of its own ("refresh"), so no other test sees the change."""
    def shard(digest: str) -> str:
        return f"/refresh/noarch/shards/{digest}.msgpack.zst"

    def refreshed() -> Any:
        return world.repodata(channel="refresh")["packages.conda"]

    assert "refresh-dep-2.0-0.conda" in refreshed()
    before = {name: world.upstream.calls_to(shard(d)) for name, d in world.refresh_hashes.items()}
    assert set(before.values()) == {1}
    newer = fx.build_package(world.base / "pkgs" / "refresh", Spec("refresh-dep", "3.0", "0"))
    hashes = fx.write_sharded_channel(world.upstream.root / "refresh", [*world.refresh_pkgs, newer])
    changed = {name for name in hashes["noarch"] if hashes["noarch"][name] != world.refresh_hashes[name]}
    assert changed == {"refresh-dep"}
    deadline = time.monotonic() + 30
    while "refresh-dep-3.0-0.conda" not in refreshed():  # served stale while it rebuilds
        assert time.monotonic() < deadline, "the refreshed index never appeared"
        time.sleep(0.1)
    assert world.upstream.calls_to(shard(hashes["noarch"]["refresh-dep"])) == 1
    for name, digest in world.refresh_hashes.items():  # unchanged shards: not fetched again
        assert world.upstream.calls_to(shard(digest)) == 1, name
    for _ in range(3):  # further requests refetch no shard at all
        assert "refresh-dep-3.0-0.conda" in refreshed()
    assert sum(1 for c in world.upstream.calls if c.path.startswith("/refresh/noarch/shards/")) == len(world.refresh_hashes) + 1
