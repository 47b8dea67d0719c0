"""conda end to end: py-rattler (solve + install, sharded and not) and a real
``anaconda upload`` against a real channelgate in front of real upstream channels."""
from __future__ import annotations

import base64
import bz2
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import requests
import zstandard

from fixtures import conda_pkgs as fx
from conftest import require_tool
from harness import Channelgate, Policy, UpstreamServer, channel_url, client_env, http, run, stored_blobs, venv_bin

rattler = pytest.importorskip("rattler")

Spec = fx.PkgSpec


@dataclass
class World:
    base: Path
    upstream: UpstreamServer
    server: Channelgate
    tokens: dict[str, str]
    pkgs: Path

    def channel(self, token: str, channel: str = "internal", form: str = "alias") -> str:
        """The channel URL a client would configure (conda's channel_alias or Anaconda Server form)."""
        return channel_url(self.server, form, token, channel)

    def get(self, path: str, token: str = "", channel: str = "internal", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return http("GET", self.channel(token or self.tokens["reader"], channel) + path, **kwargs)


OWN_CHANNELS = ("empty", "hosted", "upload-rules", "labels", "anaconda-label", "anaconda-rules", "anaconda-move")


def post_package(world: World, path: Path, token: str, *, channel: str = "internal", filename: str | None = None,
                 fields: dict[str, str] | None = None) -> requests.Response:
    """The seed's curl form: ``curl -F content=@file [-F label=L] /api/repo/<channel>``."""
    with open(path, "rb") as fh:
        return requests.post(
            f"{world.server.url}/api/repo/{channel}",
            data=fields or {},
            files={"content": (filename or path.name, fh, "application/octet-stream")},
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("conda")
    pkgs = base / "pkgs"
    up_pkgs = pkgs / "upstream"
    forge = [
        fx.build_package(up_pkgs, Spec("upstream-dep", "1.0", "0")),
        fx.build_package(up_pkgs, Spec("upstream-dep", "2.0", "0")),
        fx.build_package(up_pkgs, Spec("upstream-dep", "2.0", "0"), "tar.bz2"),
        fx.build_package(up_pkgs, Spec("tool", "1.5", "h0_0", subdir="linux-64", depends=("upstream-dep >=2",))),
        # a squatter publishes the private name at a higher version
        fx.build_package(up_pkgs, Spec("acme-lib", "9.0", "0")),
        fx.build_package(up_pkgs, Spec("shared-lib", "2.0", "0")),
        fx.build_package(up_pkgs, Spec("tampered", "1.0", "0")),
        fx.build_package(up_pkgs, Spec("common", "1.0", "0", license="forge")),
    ]
    root = base / "upstream"
    fx.write_channel(root / "conda-forge", forge)
    (root / "conda-forge" / "channeldata.json").write_text(json.dumps({
        "channeldata_version": 1, "subdirs": ["linux-64", "noarch"],
        "packages": {"tool": {"version": "1.5", "subdirs": ["linux-64"], "icon_url": "https://upstream/icon.png"},
                     "acme-lib": {"version": "9.0", "subdirs": ["noarch"]}},
    }))
    second = [
        fx.build_package(pkgs / "second", Spec("common", "1.0", "0", license="second")),  # same file name, other bytes
        fx.build_package(pkgs / "second", Spec("second-only", "0.1", "0")),
    ]
    fx.write_channel(root / "second", second)
    # a CEP-15 upstream: its repodata says the files live elsewhere (info.base_url)
    based = fx.build_package(pkgs / "based", Spec("based-pkg", "1.0", "0"))
    fx.write_channel(root / "based", [])
    (root / "files" / "noarch").mkdir(parents=True)
    shutil.copyfile(based, root / "files" / "noarch" / based.name)
    doc = {"info": {"subdir": "noarch", "base_url": "../../files/noarch/"}, "packages": {},
           "packages.conda": {based.name: fx.repodata_record(based)}, "removed": [], "repodata_version": 2}
    (root / "based" / "noarch" / "repodata.json").write_text(json.dumps(doc))
    (root / "based" / "noarch" / "repodata.json.zst").unlink()
    upstream = upstream_factory(root)
    policy = Policy({
        "cache": {"metadata_ttl": 0},  # revalidate on every request: exercises stale serving
        "upstreams": {
            "conda-forge": {"type": "conda", "url": f"{upstream.url}/conda-forge"},
            "second": {"type": "conda", "url": f"{upstream.url}/second"},
            "based": {"type": "conda", "url": f"{upstream.url}/based"},
        },
        "groups": {"devs": ["alice"], "readers": ["bob"]},
        "users": ["mallory"],
        "channels": {
            "internal": {
                "upstreams": ["conda-forge", "second"],
                "upstream_allow": ["Shared-Lib"],
                "read": ["group:readers"],
                "write": ["group:devs"],
            },
            "mirror": {"public": True, "upstreams": ["conda-forge", "based"]},
            # a test that uploads does so into a channel of its own, so no test sees another's uploads
            **{name: {"read": ["group:readers"], "write": ["group:devs"]} for name in OWN_CHANNELS},
        },
    })
    tokens = {
        "writer": policy.add_token("alice", ["api:write", "conda:download"]),
        "reader": policy.add_token("bob", ["conda:download"]),
        "norole": policy.add_token("mallory", ["all"]),
        "pypi": policy.add_token("bob", ["pypi:download"]),
    }
    server = channelgate_factory(base / "cg", policy)
    world = World(base, upstream, server, tokens, pkgs)
    private = pkgs / "private"
    for spec in (
        Spec("acme-lib", "1.0", "0", depends=("upstream-dep >=1",)),
        Spec("shared-lib", "1.0", "0"),
        Spec("acme-tools", "0.3", "h1_0", subdir="linux-64", depends=("acme-lib", "tool")),
    ):
        resp = post_package(world, fx.build_package(private, spec), tokens["writer"])
        assert resp.status_code == 201, resp.text
    return world


def repodata(world: World, subdir: str = "noarch", suffix: str = "", token: str = "", channel: str = "internal") -> Any:
    status, _, body = http("GET", world.channel(token or world.tokens["reader"], channel) + f"/{subdir}/repodata.json{suffix}")
    assert status == 200, body
    if suffix == ".zst":
        body = zstandard.ZstdDecompressor().decompress(body)
    elif suffix == ".bz2":
        body = bz2.decompress(body)
    return json.loads(body)


def upload_temp_files(world: World) -> list[Path]:
    """Partial uploads left behind (metadata refreshes in flight write their own temp files)."""
    return list((world.server.storage / "tmp").rglob("uploads-*"))


def files_of(doc: Any) -> set[str]:
    return set(doc["packages"]) | set(doc["packages.conda"])


# --------------------------------------------------------------------------- indexes
def test_merged_repodata_applies_the_merge_rule(world: World) -> None:
    doc = repodata(world)
    names = files_of(doc)
    assert "acme-lib-1.0-0.conda" in names
    assert "acme-lib-9.0-0.conda" not in names  # the private name blocks the squatter
    assert {"shared-lib-1.0-0.conda", "shared-lib-2.0-0.conda"} <= names  # upstream_allow
    assert {"upstream-dep-1.0-0.conda", "upstream-dep-2.0-0.conda", "upstream-dep-2.0-0.tar.bz2"} <= names
    assert "second-only-0.1-0.conda" in names  # the second upstream contributes too
    assert doc["packages.conda"]["common-1.0-0.conda"]["license"] == "forge"  # first upstream wins a file name
    for section in ("packages", "packages.conda"):
        for record in doc[section].values():
            assert "url" not in record and "channel" not in record  # links point at channelgate
            assert len(record["sha256"]) == 64 and record["md5"] and record["size"] > 0
    linux = repodata(world, "linux-64")
    assert set(linux["packages.conda"]) == {"acme-tools-0.3-h1_0.conda", "tool-1.5-h0_0.conda"}


@pytest.mark.parametrize("suffix", [".zst", ".bz2"])
def test_compressed_repodata_is_the_same_document(world: World, suffix: str) -> None:
    assert repodata(world, suffix=suffix) == repodata(world)


def test_current_repodata_and_channeldata(world: World) -> None:
    status, _, body = world.get("/noarch/current_repodata.json")
    assert status == 200
    current = json.loads(body)
    assert "upstream-dep-2.0-0.conda" in current["packages.conda"] and "upstream-dep-2.0-0.tar.bz2" in current["packages"]
    assert "upstream-dep-1.0-0.conda" not in current["packages.conda"]
    status, _, body = world.get("/channeldata.json")
    assert status == 200
    channeldata = json.loads(body)
    assert channeldata["packages"]["acme-lib"]["version"] == "1.0"  # ours, not the squatter's entry
    assert channeldata["packages"]["tool"]["version"] == "1.5" and "icon_url" not in channeldata["packages"]["tool"]
    assert {"linux-64", "noarch"} <= set(channeldata["subdirs"])


def test_missing_subdir_is_404_but_noarch_always_exists(world: World) -> None:
    assert world.get("/osx-arm64/repodata.json")[0] == 404
    status, _, body = http("GET", world.channel(world.tokens["reader"], "empty") + "/noarch/repodata.json")
    assert status == 200 and files_of(json.loads(body)) == set()
    assert world.get("/noarch/no-such-file-1.0-0.conda")[0] == 404
    assert world.get("/Not_A_Subdir/repodata.json")[0] == 404


def test_etag_and_not_modified(world: World) -> None:
    for path in ("/noarch/repodata.json", "/noarch/repodata.json.zst", "/noarch/repodata_shards.msgpack.zst"):
        status, headers, _ = world.get(path)
        assert status == 200 and headers["ETag"] and "max-age" in headers["Cache-Control"]
        status, _, body = world.get(path, headers={"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b""


def test_shards_agree_with_repodata(world: World) -> None:
    status, headers, body = world.get("/noarch/repodata_shards.msgpack.zst")
    assert status == 200
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(body), raw=False)
    assert index["version"] == 1 and index["info"]["base_url"] == "./" and index["info"]["shards_base_url"] == "./shards/"
    doc = repodata(world)
    assert set(index["shards"]) == {r["name"] for s in ("packages", "packages.conda") for r in doc[s].values()}
    digest = index["shards"]["acme-lib"].hex()
    status, headers, shard_body = world.get(f"/noarch/shards/{digest}.msgpack.zst")
    assert status == 200 and "immutable" in headers["Cache-Control"]
    assert hashlib.sha256(shard_body).hexdigest() == digest
    shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(shard_body), raw=False)
    assert list(shard["packages.conda"]) == ["acme-lib-1.0-0.conda"]
    assert shard["packages.conda"]["acme-lib-1.0-0.conda"]["sha256"].hex() == doc["packages.conda"]["acme-lib-1.0-0.conda"]["sha256"]
    assert world.get(f"/noarch/shards/{'0' * 64}.msgpack.zst")[0] == 404


# --------------------------------------------------------------------------- rattler
async def rattler_install(world: World, channel_url: str, specs: list[str], target: Path, *, sharded: bool) -> dict[str, Any]:
    gateway = rattler.Gateway(cache_dir=target.parent / f"{target.name}-cache",
                              default_config=rattler.SourceConfig(sharded_enabled=sharded))
    records = await rattler.solve([rattler.Channel(channel_url)], specs, gateway=gateway,
                                  platforms=["linux-64", "noarch"], virtual_packages=[])
    await rattler.install(records, target, cache_dir=target.parent / f"{target.name}-pkgs", show_progress=False,
                          platform=rattler.Subdir("linux-64"))
    return {r.name.normalized: r for r in records}


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "repodata"])
@pytest.mark.parametrize("form", ["alias", "server", "leading"])
async def test_rattler_installs_private_with_upstream_dependencies(world: World, sharded: bool, form: str) -> None:
    target = world.base / f"env-{form}-{sharded}"
    got = await rattler_install(world, world.channel(world.tokens["reader"], form=form), ["acme-tools"], target,
                                sharded=sharded)
    assert {n: str(r.version) for n, r in got.items()} == {
        "acme-tools": "0.3", "acme-lib": "1.0", "tool": "1.5", "upstream-dep": "2.0"}
    assert (target / "share/acme-lib/README.txt").read_text().startswith("acme-lib 1.0")  # ours, not the squatter's
    assert (target / "share/upstream-dep/README.txt").read_text().startswith("upstream-dep 2.0")
    assert (target / "bin/tool-hello").stat().st_mode & 0o111
    for record in got.values():
        assert record.url.startswith(world.channel(world.tokens["reader"], form=form) + "/")  # through channelgate
    if sharded:  # rattler really took the CEP-16 path (it falls back to repodata.json silently)
        log = world.server.wait_log("/internal/linux-64/shards/")  # access lines are written in batches
        assert "/internal/linux-64/repodata_shards.msgpack.zst" in log


async def test_rattler_hosted_only_channel(world: World) -> None:
    """A channel with uploads only (no upstream, no linux-64 packages): both formats install."""
    for fmt in ("conda", "tar.bz2"):
        spec = Spec("hosted-only", "1.0" if fmt == "conda" else "1.1", "0")
        resp = post_package(world, fx.build_package(world.pkgs / "hosted", spec, fmt), world.tokens["writer"],
                            channel="hosted")
        assert resp.status_code == 201, resp.text
    for sharded in (True, False):
        target = world.base / f"env-hosted-{sharded}"
        got = await rattler_install(world, world.channel(world.tokens["reader"], "hosted"), ["hosted-only"], target,
                                    sharded=sharded)
        assert str(got["hosted-only"].version) == "1.1" and got["hosted-only"].url.endswith(".tar.bz2")
        assert (target / "share/hosted-only/README.txt").read_text().startswith("hosted-only 1.1")


async def test_upstream_allow_sees_upstream_versions(world: World) -> None:
    target = world.base / "env-allow"
    got = await rattler_install(world, world.channel(world.tokens["reader"]), ["shared-lib"], target, sharded=True)
    assert str(got["shared-lib"].version) == "2.0"


async def test_public_mirror_reads_anonymously(world: World) -> None:
    target = world.base / "env-mirror"
    url = f"{world.server.url}/mirror"
    got = await rattler_install(world, url, ["tool"], target, sharded=False)
    assert str(got["tool"].version) == "1.5" and str(got["upstream-dep"].version) == "2.0"
    # on the mirror nothing is private: the squatter's acme-lib is what upstream offers
    status, _, body = http("GET", f"{url}/noarch/repodata.json")
    assert status == 200 and "acme-lib-9.0-0.conda" in json.loads(body)["packages.conda"]


def test_upstream_base_url_is_followed_but_not_exposed(world: World) -> None:
    """CEP-15: an upstream's info.base_url tells channelgate where its files are; clients
    still download from channelgate."""
    status, _, body = http("GET", f"{world.server.url}/mirror/noarch/repodata.json")
    doc = json.loads(body)
    assert status == 200 and "based-pkg-1.0-0.conda" in doc["packages.conda"] and "base_url" not in doc["info"]
    status, _, body = http("GET", f"{world.server.url}/mirror/noarch/based-pkg-1.0-0.conda")
    assert status == 200 and body == (world.pkgs / "based" / "based-pkg-1.0-0.conda").read_bytes()
    assert world.upstream.calls_to("/files/noarch/based-pkg-1.0-0.conda") == 1


def test_upstream_artifacts_are_cached_once(world: World) -> None:
    path = "/conda-forge/noarch/upstream-dep-1.0-0.conda"
    url = "/noarch/upstream-dep-1.0-0.conda"
    before = world.upstream.calls_to(path)
    first = world.get(url)
    second = world.get(url)
    assert first[0] == second[0] == 200 and first[2] == second[2]
    assert first[2] == (world.pkgs / "upstream" / "upstream-dep-1.0-0.conda").read_bytes()
    assert world.upstream.calls_to(path) - before <= 1  # the second came from the cache


def test_first_upstream_wins_a_file_name(world: World) -> None:
    status, _, body = world.get("/noarch/common-1.0-0.conda")
    assert status == 200 and body == (world.pkgs / "upstream" / "common-1.0-0.conda").read_bytes()


def test_hash_mismatch_is_502_and_not_cached(world: World) -> None:
    path = "/conda-forge/noarch/tampered-1.0-0.conda"
    world.upstream.overrides[path] = b"PK\x03\x04 these are not the bytes the index declared"
    try:
        before = stored_blobs(world.server.storage, "cache")
        for attempt in (1, 2):
            status, _, body = world.get("/noarch/tampered-1.0-0.conda")
            assert status == 502, body
            assert world.upstream.calls_to(path) == attempt  # a bad file is never served from the cache
        assert stored_blobs(world.server.storage, "cache") == before
    finally:
        del world.upstream.overrides[path]


def test_squatter_file_is_not_served(world: World) -> None:
    assert world.get("/noarch/acme-lib-9.0-0.conda")[0] == 404


# --------------------------------------------------------------------------- uploads (curl form)
def test_upload_rules(world: World) -> None:
    ch = "upload-rules"  # its own channel: no other test sees these uploads
    pkg = fx.build_package(world.pkgs / "rules", Spec("rules-demo", "0.1", "0"))
    assert post_package(world, pkg, "cgt-" + "x" * 43, channel=ch).status_code == 401
    assert post_package(world, pkg, world.tokens["reader"], channel=ch).status_code == 403
    ok = post_package(world, pkg, world.tokens["writer"], channel=ch)
    assert ok.status_code == 201, ok.text
    assert ok.json()["basename"] == "noarch/rules-demo-0.1-0.conda" and ok.json()["labels"] == ["main"]
    dup = post_package(world, pkg, world.tokens["writer"], channel=ch)
    assert dup.status_code == 409 and "already exists" in dup.json()["error"]
    assert "rules-demo-0.1-0.conda" in repodata(world, channel=ch)["packages.conda"]
    status, _, body = world.get("/noarch/rules-demo-0.1-0.conda", channel=ch)
    assert status == 200 and body == pkg.read_bytes()


def test_a_curl_upload_describes_the_package_from_about_json(world: World) -> None:
    """anaconda upload reads info/about.json on its side and sends it; a curl upload sends
    only the file, so the server reads about.json itself: same summary, home and license."""
    curl = require_tool("curl")
    ch = "upload-rules"
    pkg = fx.build_package(world.pkgs / "about", Spec("about-demo", "0.1", "0", license="BSD-3-Clause"), "tar.bz2")
    done = subprocess.run(
        [curl, "-sS", "--fail-with-body", "-H", f"Authorization: token {world.tokens['writer']}",
         "-F", f"content=@{pkg}", f"{world.server.url}/api/repo/{ch}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status, _, body = http("GET", f"{world.server.url}/api/package/{ch}/about-demo",
                           headers={"Authorization": f"token {world.tokens['writer']}"})
    assert status == 200, body
    doc = json.loads(body)
    assert (doc["summary"], doc["home"], doc["license"]) == ("about-demo test package", "https://example.org", "BSD-3-Clause")
    # a second build does not overwrite what the package already says
    again = fx.build_package(world.pkgs / "about", Spec("about-demo", "0.2", "0", license="MIT"))
    assert post_package(world, again, world.tokens["writer"], channel=ch).status_code == 201
    doc = json.loads(http("GET", f"{world.server.url}/api/package/{ch}/about-demo",
                          headers={"Authorization": f"token {world.tokens['writer']}"})[2])
    assert doc["license"] == "BSD-3-Clause" and doc["versions"] == ["0.1", "0.2"]


@pytest.mark.parametrize("kind", ["truncated_conda", "wrong_extension", "missing_index_json", "name_mismatch",
                                  "dotdot_member", "absolute_member", "truncated_tar_bz2"])
def test_bad_uploads_are_400_and_store_nothing(world: World, kind: str) -> None:
    bad = fx.make_malformed(world.pkgs / f"bad-{kind}", kind)
    before = stored_blobs(world.server.storage, "uploads")
    # filetype=conda: the file's own name does not say it is a conda package
    resp = post_package(world, bad.path, world.tokens["writer"], filename=bad.filename, fields={"filetype": "conda"})
    assert resp.status_code == 400, resp.text
    assert bad.message in resp.json()["error"]
    assert stored_blobs(world.server.storage, "uploads") == before
    assert not upload_temp_files(world)


def test_labels(world: World) -> None:
    ch = "labels"  # its own channel: no other test sees these uploads
    pkg = fx.build_package(world.pkgs / "labels", Spec("labelled", "2.0", "0"))
    resp = post_package(world, pkg, world.tokens["writer"], fields={"label": "dev"}, channel=ch)
    assert resp.status_code == 201 and resp.json()["labels"] == ["dev"]
    assert "labelled-2.0-0.conda" not in repodata(world, channel=ch)["packages.conda"]
    status, _, body = world.get("/label/dev/noarch/repodata.json", channel=ch)
    assert status == 200 and set(json.loads(body)["packages.conda"]) == {"labelled-2.0-0.conda"}
    assert world.get("/label/dev/noarch/labelled-2.0-0.conda", channel=ch)[0] == 200
    assert world.get("/noarch/labelled-2.0-0.conda", channel=ch)[0] == 404
    assert world.get("/label/nothing-here/noarch/repodata.json", channel=ch)[0] == 200  # an empty label is empty


# --------------------------------------------------------------------------- authorisation
def test_token_forms_and_status_codes(world: World) -> None:
    reader = world.tokens["reader"]
    for form in ("alias", "server", "leading"):
        assert http("GET", world.channel(reader, form=form) + "/noarch/repodata.json")[0] == 200
    url = f"{world.server.url}/api/repo/internal/noarch/repodata.json"
    basic = base64.b64encode(f"{reader}:x-auth-token".encode()).decode()
    for headers in ({"X-Auth": reader}, {"Authorization": f"token {reader}"}, {"Authorization": f"Bearer {reader}"},
                    {"Authorization": f"Basic {basic}"}):
        assert http("GET", url, headers=headers)[0] == 200
    private = http("GET", url)
    missing = http("GET", f"{world.server.url}/api/repo/no-such/noarch/repodata.json")
    assert private[0] == missing[0] == 401 and private[2] == missing[2]
    assert private[1]["WWW-Authenticate"] == 'Basic realm="channelgate"'
    assert http("GET", world.channel(world.tokens["pypi"]) + "/noarch/repodata.json")[0] == 403  # wrong scope
    assert http("GET", world.channel(world.tokens["norole"]) + "/noarch/repodata.json")[0] == 403  # no role


# --------------------------------------------------------------------------- anaconda-client
def anaconda(world: World, home: Path, *args: str) -> Any:
    env = client_env(home)
    env.pop("BINSTAR_API_TOKEN", None)
    env.pop("ANACONDA_API_TOKEN", None)
    return run([venv_bin("anaconda"), *args], env=env, timeout=180)


@pytest.fixture(scope="module")
def anaconda_home(world: World) -> Path:
    home = world.base / "home-anaconda"
    result = anaconda(world, home, "config", "--set", "url", f"{world.server.url}/api")
    assert result.returncode == 0, result.stdout + result.stderr
    return home


def test_anaconda_upload_with_label_and_force(world: World, anaconda_home: Path) -> None:
    ch = "anaconda-label"  # its own channel: no other test sees these uploads
    token = world.tokens["writer"]
    pkg = fx.build_package(world.pkgs / "anaconda", Spec("ana-pkg", "1.2", "h1_0", subdir="linux-64",
                                                       depends=("upstream-dep",)))
    result = anaconda(world, anaconda_home, "-t", token, "upload", "-u", ch, "--label", "staging", str(pkg))
    assert result.returncode == 0, result.stdout + result.stderr
    status, _, body = world.get("/label/staging/linux-64/repodata.json", channel=ch)
    assert status == 200 and "ana-pkg-1.2-h1_0.conda" in json.loads(body)["packages.conda"]
    assert world.get("/linux-64/repodata.json", channel=ch)[0] == 404  # not in main: main has no linux-64 package
    assert world.get("/label/staging/linux-64/ana-pkg-1.2-h1_0.conda", channel=ch)[2] == pkg.read_bytes()

    again = anaconda(world, anaconda_home, "-t", token, "upload", "-u", ch, "--label", "staging", str(pkg))
    assert again.returncode != 0 and "already exists" in again.stdout + again.stderr
    forced = anaconda(world, anaconda_home, "-t", token, "upload", "-u", ch, "--force", str(pkg))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "ana-pkg-1.2-h1_0.conda" in repodata(world, "linux-64", channel=ch)["packages.conda"]  # now in main


def test_anaconda_upload_rules(world: World, anaconda_home: Path) -> None:
    ch = "anaconda-rules"  # its own channel: no other test sees these uploads
    pkg = fx.build_package(world.pkgs / "anaconda-rules", Spec("ana-denied", "0.1", "0"))
    wrong = anaconda(world, anaconda_home, "-t", "cgt-" + "y" * 40, "upload", "-u", ch, str(pkg))
    assert wrong.returncode != 0
    reader = anaconda(world, anaconda_home, "-t", world.tokens["reader"], "upload", "-u", ch, str(pkg))
    assert reader.returncode != 0
    assert "ana-denied-0.1-0.conda" not in repodata(world, channel=ch)["packages.conda"]
    bad = fx.make_malformed(world.pkgs / "anaconda-bad", "dotdot_member")
    before = stored_blobs(world.server.storage, "uploads")
    result = anaconda(world, anaconda_home, "-t", world.tokens["writer"], "upload", "-u", ch, str(bad.path))
    assert result.returncode != 0
    assert stored_blobs(world.server.storage, "uploads") == before


def test_anaconda_move_and_remove(world: World, anaconda_home: Path) -> None:
    ch = "anaconda-move"  # its own channel: no other test sees these uploads
    token = world.tokens["writer"]
    pkg = fx.build_package(world.pkgs / "anaconda-move", Spec("ana-move", "3.0", "0"))
    assert anaconda(world, anaconda_home, "-t", token, "upload", "-u", ch, "--label", "beta",
                    str(pkg)).returncode == 0
    moved = anaconda(world, anaconda_home, "-t", token, "move", "--from-label", "beta", "--to-label", "main",
                     f"{ch}/ana-move/3.0")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "ana-move-3.0-0.conda" in repodata(world, channel=ch)["packages.conda"]
    assert world.get("/label/beta/noarch/repodata.json", channel=ch)[2].find(b"ana-move") == -1
    shown = anaconda(world, anaconda_home, "-t", token, "show", f"{ch}/ana-move")
    assert shown.returncode == 0 and "3.0" in shown.stdout + shown.stderr
    removed = anaconda(world, anaconda_home, "-t", token, "remove", "-f", f"{ch}/ana-move/3.0/noarch/ana-move-3.0-0.conda")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "ana-move-3.0-0.conda" not in repodata(world, channel=ch)["packages.conda"]


def test_no_upload_temp_files_left(world: World) -> None:
    assert not upload_temp_files(world)


# --------------------------------------------------------------------------- the upstream goes away
async def test_install_from_cache_when_upstream_is_down(world: World) -> None:
    warm = world.base / "env-warm"
    await rattler_install(world, world.channel(world.tokens["reader"]), ["acme-tools"], warm, sharded=False)
    world.upstream.stop()
    try:
        for sharded in (True, False):
            cold = world.base / f"env-cold-{sharded}"  # a fresh client: nothing cached on its side
            got = await rattler_install(world, world.channel(world.tokens["reader"]), ["acme-tools"], cold,
                                        sharded=sharded)
            assert {n: str(r.version) for n, r in got.items()} == {
                "acme-tools": "0.3", "acme-lib": "1.0", "tool": "1.5", "upstream-dep": "2.0"}
    finally:
        world.upstream.restart()
