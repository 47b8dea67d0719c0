"""PyPI end to end: twine, pip and uv against a real channelgate in front of a real upstream."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fixtures.wheels import (
    make_mismatched_wheel,
    make_not_a_zip_wheel,
    make_wheel,
    twine_fields,
    write_simple_index,
)
from harness import Channelgate, Policy, UpstreamServer, channel_url, client_env, http, run, stored_blobs, venv_bin


@dataclass
class World:
    base: Path
    upstream: UpstreamServer
    server: Channelgate
    tokens: dict[str, str]
    dists: Path

    def index(self, form: str, token: str) -> str:
        """pip's index URL; ``path`` is the token in the leading path form."""
        return channel_url(self.server, {"path": "leading"}.get(form, form), token) + "/simple"


def twine_upload(world: World, path: Path, token: str) -> subprocess.CompletedProcess[str]:
    env = client_env(world.base / "home-twine")
    return run(
        [
            venv_bin("twine"), "upload", "--disable-progress-bar", "--non-interactive",
            "--repository-url", f"{world.server.url}/api/repo/internal",
            "-u", token, "-p", "x-auth-token", str(path),
        ],
        env=env,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("pypi")
    dists = base / "dists"
    up = dists / "upstream"
    upstream_files = [
        make_wheel(up, "upstream-dep", "1.0", module_body="VERSION = '1.0'\n"),
        make_wheel(up, "upstream-dep", "2.0", module_body="VERSION = '2.0'\n"),
        # a squatter publishes the private name at a higher version
        make_wheel(up, "acme-lib", "9.0", module_body="ORIGIN = 'squatter'\n"),
        make_wheel(up, "shared-lib", "2.0", module_body="ORIGIN = 'upstream'\n"),
        make_wheel(up, "tampered", "1.0"),
    ]
    write_simple_index(base / "upstream", upstream_files, fmt="json")
    upstream = upstream_factory(base / "upstream")
    policy = Policy(
        {
            "cache": {"metadata_ttl": 0},  # revalidate on every request: exercises stale serving
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"], "readers": ["bob"]},
            "users": ["mallory"],
            "channels": {
                "internal": {
                    "upstreams": ["pypi"],
                    "upstream_allow": ["Shared_Lib"],
                    "read": ["group:readers"],
                    "write": ["group:devs"],
                },
            },
        }
    )
    tokens = {
        "writer": policy.add_token("alice", ["api:write", "pypi:download"]),
        "reader": policy.add_token("bob", ["pypi:download"]),
        "norole": policy.add_token("mallory", ["all"]),
    }
    server = channelgate_factory(base / "cg", policy)
    world = World(base, upstream, server, tokens, dists)
    for path in (
        make_wheel(dists / "private", "acme-lib", "1.0", requires_dist=["upstream-dep>=1.0"], module_body="ORIGIN = 'private'\n"),
        make_wheel(dists / "private", "shared-lib", "1.0", module_body="ORIGIN = 'private'\n"),
    ):
        result = twine_upload(world, path, tokens["writer"])
        assert result.returncode == 0, result.stdout + result.stderr
    return world


def installed(target: Path) -> dict[str, str]:
    """{distribution name: version} from the dist-info folders pip/uv wrote."""
    out = {}
    for info in target.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        out[name] = version
    return out


def pip_install(world: World, index_url: str, target: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    env = client_env(target.parent / f"home-{target.name}")
    return run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--trusted-host", "127.0.0.1",
         "--index-url", index_url, "--target", str(target), *packages],
        env=env,
    )


def uv_install(world: World, index_url: str, target: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    env = client_env(target.parent / f"home-{target.name}")
    return run(
        [venv_bin("uv"), "pip", "install", "--no-cache", "--python", sys.executable,
         "--index-url", index_url, "--target", str(target), *packages],
        env=env,
    )


INSTALLERS = {"pip": pip_install, "uv": uv_install}


# ------------------------------------------------------------------ twine
def test_twine_upload_rules(world: World) -> None:
    new = make_wheel(world.dists / "twine", "twine-demo", "0.1")
    wrong = twine_upload(world, new, "cgt-" + "x" * 43)
    assert wrong.returncode != 0 and "401" in wrong.stdout + wrong.stderr
    reader = twine_upload(world, new, world.tokens["reader"])
    assert reader.returncode != 0 and "403" in reader.stdout + reader.stderr
    ok = twine_upload(world, new, world.tokens["writer"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    dup = twine_upload(world, new, world.tokens["writer"])
    assert dup.returncode != 0
    assert "409" in dup.stdout + dup.stderr and "File already exists" in dup.stdout + dup.stderr
    status, _, body = http("GET", f"{world.server.url}/t/{world.tokens['reader']}/internal/simple/twine-demo/")
    assert status == 200 and b"twine_demo-0.1-py3-none-any.whl" in body


# ------------------------------------------------------------------ installs
@pytest.mark.parametrize("client", ["pip", "uv"])
@pytest.mark.parametrize("form", ["basic", "path"])
def test_install_private_with_upstream_dependency(world: World, client: str, form: str) -> None:
    target = world.base / f"target-{client}-{form}"
    result = INSTALLERS[client](world, world.index(form, world.tokens["reader"]), target, "acme-lib")
    assert result.returncode == 0, result.stdout + result.stderr
    versions = installed(target)
    # the squatter's acme-lib 9.0 is never chosen: the private name blocks every upstream version
    assert versions["acme_lib"] == "1.0"
    assert (target / "acme_lib" / "__init__.py").read_text() == "ORIGIN = 'private'\n"
    assert versions["upstream_dep"] == "2.0"


def test_squatter_versions_are_not_offered(world: World) -> None:
    status, headers, body = http(
        "GET", world.index("path", world.tokens["reader"]) + "/acme-lib/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.pypi.simple.v1+json")
    doc = json.loads(body)
    assert doc["versions"] == ["1.0"]
    assert [f["filename"] for f in doc["files"]] == ["acme_lib-1.0-py3-none-any.whl"]
    assert all(not f["url"].startswith("http") for f in doc["files"])  # links point at channelgate


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_upstream_allow_sees_upstream_versions(world: World, client: str) -> None:
    target = world.base / f"target-allow-{client}"
    result = INSTALLERS[client](world, world.index("alias", world.tokens["reader"]), target, "shared-lib")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed(target)["shared_lib"] == "2.0"
    assert (target / "shared_lib" / "__init__.py").read_text() == "ORIGIN = 'upstream'\n"


def test_metadata_files_for_uploads_and_upstream(world: World) -> None:
    page = world.index("path", world.tokens["reader"])
    status, _, body = http("GET", page + "/acme-lib/acme_lib-1.0-py3-none-any.whl.metadata")
    assert status == 200 and b"Name: acme-lib" in body and b"Requires-Dist: upstream-dep>=1.0" in body
    status, _, body = http("GET", page + "/upstream-dep/upstream_dep-1.0-py3-none-any.whl.metadata")
    assert status == 200 and b"Version: 1.0" in body


def test_etag_and_not_modified(world: World) -> None:
    url = world.index("path", world.tokens["reader"]) + "/acme-lib/"
    status, headers, _ = http("GET", url)
    assert status == 200 and headers["Vary"] == "Accept" and headers["ETag"]
    status, _, body = http("GET", url, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_non_canonical_name_redirects(world: World) -> None:
    status, _, body = http("GET", world.index("path", world.tokens["reader"]) + "/Acme_Lib/")
    assert status == 200 and b"acme_lib-1.0" in body  # urllib followed the 301 to /acme-lib/


# ------------------------------------------------------------------ integrity
def test_hash_mismatch_is_502_and_not_cached(world: World) -> None:
    path = "/files/tampered-1.0-py3-none-any.whl"
    bad = b"PK\x03\x04 these are not the bytes the index declared"
    world.upstream.overrides[path] = bad
    try:
        url = world.index("path", world.tokens["reader"]) + "/tampered/tampered-1.0-py3-none-any.whl"
        for attempt in (1, 2):
            status, _, body = http("GET", url)
            assert status == 502, body
            assert b"does not match" in body
            assert world.upstream.calls_to(path) == attempt  # a bad file is never served from the cache
        # neither the bad bytes nor anything under the declared hash are kept (other blobs may be
        # stored meanwhile: earlier tests' metadata files are written behind, proxy/write_behind.py)
        world.server.writes_done()
        declared = hashlib.sha256((world.upstream.root / path.lstrip("/")).read_bytes()).hexdigest()
        assert stored_blobs(world.server.storage, "cache").isdisjoint({hashlib.sha256(bad).hexdigest(), declared})
        assert not list((world.server.storage / "tmp").rglob("cache-*"))  # no partial download left
    finally:
        del world.upstream.overrides[path]


# ------------------------------------------------------------------ authorisation
def test_private_and_missing_channels_look_the_same(world: World) -> None:
    base = world.server.url
    private = http("GET", f"{base}/api/repo/internal/simple/acme-lib/")
    missing = http("GET", f"{base}/api/repo/no-such-channel/simple/acme-lib/")
    assert private[0] == missing[0] == 401
    assert private[1]["WWW-Authenticate"] == missing[1]["WWW-Authenticate"] == 'Basic realm="channelgate"'
    assert private[2] == missing[2]
    # a valid token without a role gets 403 on both, again indistinguishable
    norole = world.tokens["norole"]
    private = http("GET", f"{base}/t/{norole}/internal/simple/acme-lib/")
    missing = http("GET", f"{base}/t/{norole}/no-such-channel/simple/acme-lib/")
    assert private[0] == missing[0] == 403 and private[2] == missing[2]


@pytest.mark.parametrize(
    "headers_for",
    [
        lambda t: {"X-Auth": t},
        lambda t: {"Authorization": f"token {t}"},
        lambda t: {"Authorization": f"Bearer {t}"},
        lambda t: {"Authorization": "Basic " + __import__("base64").b64encode(f"__token__:{t}".encode()).decode()},
        lambda t: {"Authorization": "Basic " + __import__("base64").b64encode(f"{t}:x-auth-token".encode()).decode()},
    ],
    ids=["x-auth", "token", "bearer", "basic-password", "basic-user"],
)
def test_every_header_form_authenticates(world: World, headers_for) -> None:  # type: ignore[no-untyped-def]
    url = f"{world.server.url}/api/repo/internal/simple/acme-lib/"
    assert http("GET", url, headers=headers_for(world.tokens["reader"]))[0] == 200
    assert http("GET", url, headers=headers_for("cgt-notavalidtoken"))[0] == 401


# ------------------------------------------------------------------ bad uploads
def _post(world: World, path: Path, fields: dict[str, str], token: str) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(
            f"{world.server.url}/api/repo/internal",
            data=fields,
            files={"content": (path.name, fh, "application/octet-stream")},
            auth=(token, "x-auth-token"),
            timeout=60,
        )


@pytest.mark.parametrize("case", ["digest", "metadata-mismatch", "not-a-zip", "missing-fields", "name-mismatch"])
def test_bad_uploads_are_400_and_store_nothing(world: World, case: str) -> None:
    d = world.dists / f"bad-{case}"
    if case == "digest":
        path = make_wheel(d, "bad-digest", "1.0")
        fields = twine_fields(path, sha256_digest="0" * 64)
        expect = "sha256"
    elif case == "metadata-mismatch":
        path = make_mismatched_wheel(d, "bad-meta", "1.0", metadata_version="2.0")
        fields = twine_fields(path, version="1.0")
        expect = "Version"
    elif case == "not-a-zip":
        path = make_not_a_zip_wheel(d, "bad-zip", "1.0")
        fields = {":action": "file_upload", "name": "bad-zip", "version": "1.0", "filetype": "bdist_wheel"}
        expect = "zip"
    elif case == "missing-fields":
        path = make_wheel(d, "bad-fields", "1.0")
        fields = {":action": "file_upload"}
        expect = "name"
    else:
        path = make_wheel(d, "bad-name", "1.0")
        fields = twine_fields(path, name="other-name")
        expect = "does not match"
    before = stored_blobs(world.server.storage, "uploads")
    resp = _post(world, path, fields, world.tokens["writer"])
    assert resp.status_code == 400, resp.text
    assert expect in resp.json()["error"]
    assert stored_blobs(world.server.storage, "uploads") == before
    assert not list((world.server.storage / "tmp").rglob("uploads-*"))  # no partial upload left
    project = path.name.split("-")[0].replace("_", "-")
    status, _, _ = http("GET", f"{world.server.url}/t/{world.tokens['reader']}/internal/simple/{project}/")
    assert status == 404


# ------------------------------------------------------------------ cache survives the upstream
@pytest.mark.parametrize("client", ["pip", "uv"])
def test_install_from_cache_when_upstream_is_down(world: World, client: str) -> None:
    first = world.base / f"warm-{client}"
    assert INSTALLERS[client](world, world.index("path", world.tokens["reader"]), first, "acme-lib").returncode == 0
    world.upstream.stop()
    try:
        fresh = world.base / f"cold-client-{client}"
        result = INSTALLERS[client](world, world.index("basic", world.tokens["reader"]), fresh, "acme-lib")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(fresh) == {"acme_lib": "1.0", "upstream_dep": "2.0"}
    finally:
        world.upstream.restart()


def test_no_token_in_logs(world: World) -> None:
    # a wrong token in the path and headers must not be logged either
    http("GET", f"{world.server.url}/t/cgt-WrongTokenInPath123/internal/simple/")
    http("GET", f"{world.server.url}/api/repo/t/notacgttoken42/internal/simple/")
    http("GET", f"{world.server.url}/internal/simple/", headers={"X-Auth": "cgt-WrongHeaderToken"})
    http("GET", f"{world.server.url}/t/cgt-WrongTokenInPath123/internal/simple/last-request-marker/")
    log = world.server.wait_log("/internal/simple/last-request-marker/")
    assert "GET /t/<redacted>/internal/simple/last-request-marker/" in log  # logged, masked
    for secret in [*world.tokens.values(), "cgt-WrongTokenInPath123", "notacgttoken42", "cgt-WrongHeaderToken"]:
        assert secret not in log
