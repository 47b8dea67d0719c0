"""DESIGN, "Hostile input and faults", on the upstream side (issue 8, observations 1, 2, 4,
9, 10, 20), through a real server and real upstream HTTP servers:

- credentials go only to the upstream's own origin, whatever its index names (absolute
  PyPI links, ``<base href>``, conda ``info.base_url``, CEP-16 ``shards_base_url``);
- another origin is fetched only with a declared hash, and this server never from itself;
- anaconda-client's ``post_url`` never comes from the Host header;
- a trickling upstream meets a total deadline (stale copy, or 504);
- a shared download whose temp file vanishes ends every waiter at once; kill -9 mid-fill
  leaves nothing that can be served;
- HEAD and aborted GETs on a cold file leave no traceback and no ``500`` access line.

"Another origin" is a second UpstreamServer over the same directory: same files, another
port, its own call log.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
import msgpack
import pytest
import zstandard
from aiohttp import web

from fixtures import conda_pkgs as fx
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs

USER, PASSWORD = "mirror-user", "S3cretUpstreamPass"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=90)  # a hang fails the test instead of stalling the suite


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def html_page(*anchors: str, base: str | None = None) -> bytes:
    head = f'<base href="{base}">' if base else ""
    return f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(anchors)}</body></html>".encode()


def json_response(doc: dict[str, Any]) -> Callable[[web.Request], web.Response]:
    body = json.dumps(doc).encode()
    return lambda request: web.Response(body=body, content_type="application/vnd.pypi.simple.v1+json")


@dataclass
class World:
    base: Path
    home: UpstreamServer  # the configured upstream (credentials belong here)
    other: UpstreamServer  # another origin, serving the same files
    server: Channelgate
    token: str
    wheels: dict[str, Path]
    conda: dict[str, Path]

    def get(self, path: str, *, token: bool = True, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        prefix = f"/t/{self.token}" if token else ""
        return http(method, f"{self.server.url}{prefix}{path}")


def _sharded_elsewhere(root: Path, other: str, pkgs: list[Path]) -> None:
    """A CEP-16 channel under root/sharded whose shards and files the index places on
    ``other`` (absolute base URLs, as CEP-16 allows)."""
    fx.write_sharded_channel(root / "sharded", pkgs)
    index_path = root / "sharded" / "noarch" / "repodata_shards.msgpack.zst"
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index_path.read_bytes(), max_output_size=1 << 24))
    index["info"]["base_url"] = f"{other}/sharded/noarch/"
    index["info"]["shards_base_url"] = f"{other}/sharded/noarch/shards/"
    index_path.write_bytes(zstandard.ZstdCompressor().compress(msgpack.packb(index, use_bin_type=True)))


def _repodata_elsewhere(root: Path, other: str, pkgs: list[Path], *, strip_hashes: bool = False) -> None:
    """A conda channel whose repodata (v2, CEP-15) places its files on ``other``."""
    fx.write_channel(root, pkgs)
    for name in ("repodata.json", "repodata.json.zst"):
        (root / "noarch" / name).unlink()
    doc: dict[str, Any] = {"info": {"subdir": "noarch", "base_url": f"{other}/{root.name}/noarch/"},
                           "packages": {}, "packages.conda": {}, "repodata_version": 2}
    for pkg in pkgs:
        record = fx.repodata_record(pkg)
        if strip_hashes:
            record.pop("sha256"), record.pop("md5")
        doc["packages.conda"][pkg.name] = record
    (root / "noarch" / "repodata.json").write_bytes(json.dumps(doc).encode())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> Any:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    wheels = {name: make_wheel(base / "d", name, "1.0")
              for name in ("abs-link", "base-href", "no-hash", "self-link", "size-pkg", "no-size", "no-size-ranged")}
    write_simple_index(root / "pypi", list(wheels.values()), fmt="json")
    home = upstream_factory(root)
    other = upstream_factory(root)
    pkgs = base / "pkgs"
    conda = {
        "sharded": fx.build_package(pkgs / "s", fx.PkgSpec("far-shard", "1.0", "0")),
        "based": fx.build_package(pkgs / "b", fx.PkgSpec("far-file", "1.0", "0")),
        "bare": fx.build_package(pkgs / "n", fx.PkgSpec("far-bare", "1.0", "0")),
    }
    _sharded_elsewhere(root, other.url, [conda["sharded"]])
    _repodata_elsewhere(root / "based", other.url, [conda["based"]])
    _repodata_elsewhere(root / "bare", other.url, [conda["bare"]], strip_hashes=True)
    files = f"{other.url}/pypi/files"
    home.overrides["/pypi/simple/abs-link/"] = lambda r: web.Response(body=html_page(
        f'<a href="{files}/{wheels["abs-link"].name}#sha256={sha256_of(wheels["abs-link"])}">{wheels["abs-link"].name}</a>'),
        content_type="text/html")
    home.overrides["/pypi/simple/base-href/"] = lambda r: web.Response(body=html_page(
        f'<a href="{wheels["base-href"].name}#sha256={sha256_of(wheels["base-href"])}">{wheels["base-href"].name}</a>',
        base=f"{files}/"), content_type="text/html")
    home.overrides["/pypi/simple/no-hash/"] = json_response({"meta": {"api-version": "1.1"}, "name": "no-hash", "files": [
        {"filename": wheels["no-hash"].name, "url": f"{files}/{wheels['no-hash'].name}", "hashes": {}}]})
    for name in ("no-size", "no-size-ranged"):  # HTML pages: PEP 503 declares no sizes
        wheel = wheels[name]
        home.overrides[f"/pypi/simple/{name}/"] = (lambda w: lambda r: web.Response(body=html_page(
            f'<a href="../../files/{w.name}#sha256={sha256_of(w)}">{w.name}</a>'), content_type="text/html"))(wheel)
    ranged = wheels["no-size-ranged"]  # an upstream file host that honours Range (aiohttp's FileResponse)
    home.overrides[f"/pypi/files/{ranged.name}"] = lambda r: web.FileResponse(ranged)
    policy = Policy({
        "upstreams": {
            "pypi": {"type": "pypi", "url": f"{home.url}/pypi/simple", "username": USER, "password": PASSWORD},
            "sharded": {"type": "conda", "url": f"{home.url}/sharded", "username": USER, "password": PASSWORD},
            "based": {"type": "conda", "url": f"{home.url}/based", "username": USER, "password": PASSWORD},
            "bare": {"type": "conda", "url": f"{home.url}/bare"},
        },
        "groups": {"devs": ["alice"]},
        "channels": {
            "internal": {"upstreams": ["pypi", "sharded", "based"], "read": ["group:devs"]},
            "mirror": {"public": True, "upstreams": ["pypi", "bare"]},
        },
    })
    token = policy.add_token("alice", ["pypi:download", "conda:download"])
    server = Channelgate(base / "cg", policy).start()
    # a link to this very server, known only once it listens
    health = f"{server.url}/api/health"
    home.overrides["/pypi/simple/self-link/"] = json_response({"meta": {"api-version": "1.1"}, "name": "self-link", "files": [
        {"filename": "self_link-1.0-py3-none-any.whl", "url": health, "hashes": {}},
        {"filename": "self_link-1.0.tar.gz", "url": health, "hashes": {"sha256": "0" * 64}}]})
    yield World(base, home, other, server, token, wheels, conda)
    server.stop()


# --------------------------------------------------------------------------- observation 1
def test_credentials_go_only_to_the_upstreams_own_origin(world: World) -> None:
    """Absolute links, <base href>, conda info.base_url and CEP-16 shards_base_url all name
    another origin: everything is fetched and verified there, and not one request there
    carries the upstream's credentials."""
    for project, wheel in (("abs-link", world.wheels["abs-link"]), ("base-href", world.wheels["base-href"])):
        status, _, body = world.get(f"/internal/simple/{project}/{wheel.name}")
        assert status == 200 and body == wheel.read_bytes()
        assert world.other.calls_to(f"/pypi/files/{wheel.name}") == 1
    doc = json.loads(world.get("/internal/noarch/repodata.json")[2])
    assert {"far-shard-1.0-0.conda", "far-file-1.0-0.conda"} <= set(doc["packages.conda"])
    assert [c for c in world.other.calls if c.path.startswith("/sharded/noarch/shards/")]  # shards came from there
    for key in ("sharded", "based"):
        pkg = world.conda[key]
        status, _, body = world.get(f"/internal/noarch/{pkg.name}")
        assert status == 200 and body == pkg.read_bytes()
    assert world.other.calls_to(f"/based/noarch/{world.conda['based'].name}") == 1
    assert world.other.calls_to(f"/sharded/noarch/{world.conda['sharded'].name}") == 1
    # the upstream itself got its credentials on every call; the other origin never did
    assert world.home.calls and all(c.headers.get("Authorization") == BASIC for c in world.home.calls
                                    if not c.path.startswith("/bare/"))
    leaked = [c.path for c in world.other.calls if "Authorization" in c.headers]
    assert world.other.calls and not leaked, leaked


# --------------------------------------------------------------------------- observation 2
def test_another_origin_without_a_hash_is_refused(world: World) -> None:
    wheel = world.wheels["no-hash"]
    status, _, body = world.get(f"/mirror/simple/no-hash/{wheel.name}", token=False)
    assert status == 502 and b"another origin without a hash" in body
    assert world.other.calls_to(f"/pypi/files/{wheel.name}") == 0
    pkg = world.conda["bare"]  # conda: a hash-less record whose base_url is elsewhere
    status, _, body = world.get(f"/mirror/noarch/{pkg.name}", token=False)
    assert status == 502 and b"another origin without a hash" in body
    assert world.other.calls_to(f"/bare/noarch/{pkg.name}") == 0
    assert stored_blobs(world.server.storage, "cache").isdisjoint({sha256_of(wheel), sha256_of(pkg)})


def flushed(world: World, marker: str) -> str:
    """The log once every access line so far is in it (they are flushed in order): waits for
    this request's own access line, not the upstream line that names the same path."""
    world.get(f"/mirror/simple/{marker}-{os.getpid()}/", token=False)
    return world.server.wait_log(f'"GET /mirror/simple/{marker}-{os.getpid()}/"')


def test_an_index_entry_naming_this_server_is_never_fetched(world: World) -> None:
    before = flushed(world, "before").count('"GET /api/health"')
    for filename in ("self_link-1.0-py3-none-any.whl", "self_link-1.0.tar.gz"):  # without and with a hash
        status, _, body = world.get(f"/mirror/simple/self-link/{filename}", token=False)
        assert status == 502 and b"this server itself" in body and b'"status"' not in body
    assert flushed(world, "after").count('"GET /api/health"') == before


def loopback_alias() -> str:
    """A name in /etc/hosts for a loopback address that is neither localhost nor this host's
    name: nothing but resolving it says that it is this machine."""
    known = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    for line in Path("/etc/hosts").read_text().splitlines():
        address, *names = line.split("#", 1)[0].split() or [""]
        for name in names:
            if address.startswith("127.") and name.lower() not in known and not name.lower().endswith(".localhost") \
                    and "localhost" not in name.lower():
                return name
    message = "no loopback alias in /etc/hosts besides localhost and the host name"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_an_index_entry_naming_an_alias_of_this_server_is_never_fetched(world: World) -> None:
    """The spelling does not say it is this server, the resolution does: the upstream client's
    resolver refuses it at connect time (self_reference.OwnAddressResolver)."""
    alias = loopback_alias()
    url = f"http://{alias}:{world.server.port}/api/health"
    world.home.overrides["/pypi/simple/self-alias/"] = json_response({"meta": {"api-version": "1.1"}, "name": "self-alias", "files": [
        {"filename": "self_alias-1.0.tar.gz", "url": url, "hashes": {"sha256": "0" * 64}}]})
    world.home.overrides["/pypi/simple/after-alias/"] = json_response({"meta": {"api-version": "1.1"}, "name": "after-alias",
                                                                       "files": [{"filename": "after_alias-1.0.tar.gz",
                                                                                  "url": f"{world.home.url}/pypi/files/a.tar.gz",
                                                                                  "hashes": {"sha256": "0" * 64}}]})
    before = flushed(world, "alias-before").count('"GET /api/health"')
    status, _, body = world.get("/mirror/simple/self-alias/self_alias-1.0.tar.gz", token=False)
    assert status == 502 and b'"status"' not in body, body
    # the client is told why, not just "unreachable"
    assert json.loads(body) == {"error": f"upstream pypi: {alias} resolves to this server itself; refused to fetch from itself"}
    assert flushed(world, "alias-after").count('"GET /api/health"') == before  # never asked itself
    assert f"refused to connect to {alias}: it resolves to 127." in world.server.wait_log(f"refused to connect to {alias}")
    # a wrong name in an index is not the upstream failing: it is not backed off
    status, _, body = world.get("/mirror/simple/after-alias/", token=False)
    assert status == 200 and world.home.calls_to("/pypi/simple/after-alias/") == 1, body


# --------------------------------------------------------------------------- observation 4
def test_stage_post_url_never_comes_from_the_host_header(tmp_path: Path) -> None:
    policy = Policy({"groups": {"devs": ["alice"]}, "channels": {"internal": {"write": ["group:devs"]}}})
    writer = policy.add_token("alice", ["api:write"])
    stage = "/api/stage/internal/pkg/1.0/noarch/pkg-1.0-0.conda"
    headers = {"Authorization": f"token {writer}", "Host": "evil.example:8443", "Content-Type": "application/json"}
    server = Channelgate(tmp_path / "plain", policy).start()
    try:
        status, _, body = http("POST", server.url + stage, headers=headers, data=b"{}")
        assert status == 200, body
        post_url = json.loads(body)["post_url"]
        assert post_url.startswith(f"{server.url}/t/{writer}/api/upload/internal/") and "evil" not in post_url
    finally:
        server.stop()
    policy.data["server"] = {"public_url": "https://packages.example.org"}
    server = Channelgate(tmp_path / "public", policy).start()
    try:
        status, _, body = http("POST", server.url + stage, headers=headers, data=b"{}")
        assert status == 200, body
        assert json.loads(body)["post_url"].startswith(f"https://packages.example.org/t/{writer}/api/upload/internal/")
    finally:
        server.stop()


# --------------------------------------------------------------------------- observation 20
def test_head_on_a_cold_file_answers_from_the_index(world: World) -> None:
    wheel = world.wheels["size-pkg"]
    status, headers, body = world.get(f"/internal/simple/size-pkg/{wheel.name}", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == wheel.stat().st_size  # PEP 700 size from the index
    assert world.home.calls_to(f"/pypi/files/{wheel.name}") == 0  # no download started
    assert sha256_of(wheel) not in stored_blobs(world.server.storage, "cache")
    world.server.wait_log(f'"HEAD /t/<redacted>/internal/simple/size-pkg/{wheel.name}" 200')


@pytest.mark.parametrize("name", ["no-size", "no-size-ranged"])
def test_head_on_a_cold_file_without_a_declared_size_asks_for_one_byte(world: World, name: str) -> None:
    """An index that declares no size (a PEP 503 HTML page): the HEAD asks the upstream for
    the first byte (its length in Content-Range, or Content-Length from an upstream that
    ignores Range) and starts no download."""
    wheel = world.wheels[name]
    status, headers, body = world.get(f"/internal/simple/{name}/{wheel.name}", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == wheel.stat().st_size and headers["Accept-Ranges"] == "bytes"
    calls = [c for c in world.home.calls if c.path == f"/pypi/files/{wheel.name}"]
    assert [c.headers.get("Range") for c in calls] == ["bytes=0-0"]  # one probe, no download
    assert sha256_of(wheel) not in stored_blobs(world.server.storage, "cache")
    world.server.wait_log(f'"HEAD /t/<redacted>/internal/simple/{name}/{wheel.name}" 200')
