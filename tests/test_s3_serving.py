"""Serving blobs from an S3 store (issue 13 part 1): a replica that never saw a blob streams it
from the bucket with HTTP semantics intact, without blocking its loop; ``storage.s3.redirect``
sends clients to the bucket with a presigned URL; readiness checks the bucket.

The bucket is moto's S3 server behind tests/s3_relay.py (a real HTTP relay that records
which GetObject requests it saw and can hold one, playing a slow object store)."""
from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, channel_url, client_env, http, run
from s3_relay import S3Relay
from proxy.storage_settings import S3Settings


@pytest.fixture
def relay(s3_settings: S3Settings) -> Iterator[S3Relay]:
    assert s3_settings.endpoint_url is not None
    server = S3Relay(s3_settings.endpoint_url).start()
    yield server
    server.stop()


def s3_storage(path: Path, settings: S3Settings, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "backend": "s3", "s3": {
        "endpoint_url": endpoint, "bucket": settings.bucket, "prefix": settings.prefix, "region": settings.region,
        "access_key_id": "testing", "secret_access_key": "testing", **extra}}


def hosted_world(tmp_path: Path, settings: S3Settings, relay: S3Relay, **s3: Any) -> tuple[Channelgate, str, Policy]:
    policy = Policy({"channels": {"internal": {"read": ["user:alice"], "write": ["user:alice"]}},
                     "users": ["alice", "mallory"]})
    token = policy.add_token("alice", ["api:write", "pypi:download", "conda:download", "cran:download"])
    policy.data["storage"] = s3_storage(tmp_path / "cg" / "storage", settings, relay.url, **s3)
    return Channelgate(tmp_path / "cg", policy).start(), token, policy


def upload(server: Channelgate, token: str, wheel: Path) -> str:
    with open(wheel, "rb") as fh:
        resp = requests.post(f"{server.url}/api/repo/internal", data=twine_fields(wheel),
                             files={"content": (wheel.name, fh)}, auth=(token, "x-auth-token"), timeout=60)
    assert resp.status_code == 200, resp.text
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def forget_local_copies(server: Channelgate) -> None:
    """This replica's own copies gone: it is now a replica that never saw these blobs."""
    for area in ("uploads", "cache"):
        for blob in (server.storage / area / "sha256").rglob("*"):
            if blob.is_file():
                blob.unlink()


def big_wheel(dest: Path, name: str, size: int) -> Path:
    """A wheel of about ``size`` bytes (random bytes do not compress)."""
    body = f"DATA = {os.urandom(size).hex()!r}\n"
    return make_wheel(dest, name, "1.0", module_body=body)


def test_a_replica_without_a_copy_streams_an_upload_from_the_bucket(
        tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    """Range -> 206 (GetObject with Range), suffix ranges, 416, HEAD, ETag and If-None-Match
    -> 304, Content-Length: all from the bucket, and no local copy made first."""
    server, token, _ = hosted_world(tmp_path, s3_settings, relay)
    try:
        wheel = big_wheel(tmp_path / "d", "ranged", 300_000)
        data = wheel.read_bytes()
        sha = upload(server, token, wheel)
        forget_local_copies(server)
        url = f"{channel_url(server, 'leading', token)}/simple/ranged/{wheel.name}"

        status, headers, body = http("GET", url)
        assert status == 200 and body == data
        assert headers["Content-Length"] == str(len(data)) and headers["Accept-Ranges"] == "bytes"
        assert headers["Cache-Control"] == "private"  # a private channel's file: no shared cache may keep it
        etag = headers["ETag"]
        assert etag == f'"{sha}"'  # the content's hash: the same answer on every replica
        assert relay.gets(sha), "the body came from the bucket"

        status, headers, body = http("GET", url, headers={"Range": "bytes=1000-1999"})
        assert status == 206 and body == data[1000:2000]
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        assert relay.gets(sha)[-1].range == "bytes=1000-1999"  # one ranged GetObject, not the whole blob

        status, headers, body = http("GET", url, headers={"Range": "bytes=-100"})
        assert status == 206 and body == data[-100:]
        status, headers, _ = http("GET", url, headers={"Range": f"bytes={len(data)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
        status, headers, body = http("GET", url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert status == 200 and body == data  # If-Range names another version: the whole blob

        gets = len(relay.gets(sha))
        status, headers, body = http("HEAD", url)
        assert status == 200 and body == b"" and headers["Content-Length"] == str(len(data))
        status, headers, body = http("GET", url, headers={"If-None-Match": etag})
        assert status == 304 and body == b"" and headers["ETag"] == etag
        assert len(relay.gets(sha)) == gets  # HEAD and 304 read no body from the bucket

        assert not list((server.storage / "uploads" / "sha256").rglob("*.whl")) and \
            not [p for p in (server.storage / "uploads" / "sha256").rglob("*") if p.is_file()]
    finally:
        server.stop()


def test_a_second_process_serves_cached_artifacts_from_the_bucket(
        tmp_path: Path, s3_settings: S3Settings, relay: S3Relay, upstream_factory) -> None:  # type: ignore[no-untyped-def]
    """Two processes, two store roots, one bucket: what the first cached, the second serves
    (with ranges) without asking the upstream again."""
    wheel = make_wheel(tmp_path / "up" / "dists", "shared-dep", "2.0", module_body="SHARED = True\n")
    write_simple_index(tmp_path / "up", [wheel], fmt="json")
    upstream: UpstreamServer = upstream_factory(tmp_path / "up")
    servers = []
    try:
        for name in ("one", "two"):
            policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                             "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
            policy.data["storage"] = s3_storage(tmp_path / name / "storage", s3_settings, relay.url)
            servers.append(Channelgate(tmp_path / name, policy).start())
        first, second = servers
        got = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
                   f"{first.url}/mirror/simple", "--target", str(tmp_path / "t1"), "shared-dep"],
                  env=client_env(tmp_path / "home1"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert upstream.calls_to(wheel.name) == 1
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert not (second.storage / "cache" / "sha256" / sha[:2] / sha).exists()

        page = requests.get(f"{second.url}/mirror/simple/shared-dep/", timeout=30)
        assert page.status_code == 200 and wheel.name in page.text
        url = f"{second.url}/mirror/simple/shared-dep/{wheel.name}"
        status, headers, body = http("GET", url)
        assert status == 200 and body == wheel.read_bytes()
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        status, headers, body = http("GET", url, headers={"Range": "bytes=10-19"})
        assert status == 206 and body == wheel.read_bytes()[10:20]
        assert upstream.calls_to(wheel.name) == 1  # the second process asked the bucket, not the upstream
        assert len(relay.gets(sha)) >= 2
        assert not (second.storage / "cache" / "sha256" / sha[:2] / sha).exists()
    finally:
        for server in servers:
            server.stop()


def test_the_loop_answers_others_while_a_blob_streams_from_a_slow_bucket(
        tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    """The relay holds the GetObject after its first chunk; while it holds, another request
    is answered (a synchronous read of the bucket would block the loop until release)."""
    server, token, _ = hosted_world(tmp_path, s3_settings, relay)
    try:
        wheel = big_wheel(tmp_path / "d", "slow-blob", 2_000_000)
        sha = upload(server, token, wheel)
        forget_local_copies(server)
        relay.hold(sha)
        result: dict[str, Any] = {}

        def download() -> None:
            resp = requests.get(f"{channel_url(server, 'leading', token)}/simple/slow-blob/{wheel.name}", timeout=120)
            result["status"], result["body"] = resp.status_code, resp.content

        worker = threading.Thread(target=download)
        worker.start()
        assert relay.holding.wait(60), "the download never reached the bucket"
        status, _, body = http("GET", f"{server.url}/api/health")  # a guard timeout (60 s), not a measurement
        assert status == 200 and b"ok" in body
        assert "body" not in result  # answered while the large body was still held at the bucket
        relay.release()
        worker.join(120)
        assert result["status"] == 200 and result["body"] == wheel.read_bytes()
    finally:
        relay.release()
        server.stop()


def test_a_client_leaving_mid_stream_from_the_bucket_leaves_no_traceback(
        tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    """A client that hangs up while its file streams from the bucket ends only its own
    download: nothing logged as an error, and the next download of that file is whole."""
    server, token, _ = hosted_world(tmp_path, s3_settings, relay)
    try:
        wheel = big_wheel(tmp_path / "d", "left-blob", 2_000_000)
        sha = upload(server, token, wheel)
        forget_local_copies(server)
        url = f"{channel_url(server, 'leading', token)}/simple/left-blob/{wheel.name}"
        relay.hold(sha)
        with requests.get(url, stream=True, timeout=60) as resp:
            assert resp.status_code == 200
            assert relay.holding.wait(60), "the download never reached the bucket"
            assert resp.raw.read(1000) == wheel.read_bytes()[:1000]
        relay.release()  # the server now writes the rest to a closed connection
        status, _, body = http("GET", url)
        assert status == 200 and body == wheel.read_bytes()
        assert len(relay.gets(sha)) == 2
        assert "Traceback" not in server.log() and " ERROR " not in server.log()
    finally:
        relay.release()
        server.stop()


# --------------------------------------------------------------------------- storage.s3.redirect
def test_redirect_sends_pip_to_the_bucket_and_never_an_unauthorised_caller(
        tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    """``redirect: true``: pip installs an upload whose bytes come from the bucket (the relay
    sees pip's GetObject; channelgate answers 307 with a presigned URL); indexes are still
    channelgate's; HEAD is answered here; no credentials or the wrong ones get no URL."""
    server, token, policy = hosted_world(tmp_path, s3_settings, relay, redirect=True, redirect_expires=120)
    try:
        wheel = make_wheel(tmp_path / "d", "redirected", "1.0", module_body="WHERE = 'bucket'\n")
        sha = upload(server, token, wheel)
        target = tmp_path / "target"
        got = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
                   channel_url(server, "leading", token) + "/simple", "--target", str(target), "redirected"],
                  env=client_env(tmp_path / "home-pip"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert (target / "redirected" / "__init__.py").read_text() == "WHERE = 'bucket'\n"
        assert any(s.user_agent.startswith("pip/") for s in relay.gets(sha)), "pip read the bytes from the bucket"
        log = server.wait_log(f'/simple/redirected/{wheel.name}" 307')
        assert f'/simple/redirected/{wheel.name}" 200' not in log  # not one byte of it through channelgate

        url = f"{channel_url(server, 'leading', token)}/simple/redirected/{wheel.name}"
        resp = requests.get(url, allow_redirects=False, timeout=30)
        assert resp.status_code == 307 and resp.headers["Cache-Control"] == "no-store"
        location = resp.headers["Location"]
        assert location.startswith(f"{relay.url}/{s3_settings.bucket}/cg/uploads/sha256/") and "X-Amz-Expires=120" in location
        assert token not in location
        assert requests.get(location, timeout=30).content == wheel.read_bytes()  # the URL alone is enough
        head = requests.head(url, allow_redirects=False, timeout=30)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(wheel.read_bytes()))

        mallory = policy.add_token("mallory", ["pypi:download"])
        server.reload()
        for bad in (f"{server.url}/api/repo/internal/simple/redirected/{wheel.name}",  # no credentials
                    f"{channel_url(server, 'leading', 'not-a-token')}/simple/redirected/{wheel.name}",
                    f"{channel_url(server, 'leading', mallory)}/simple/redirected/{wheel.name}"):  # no read role
            denied = requests.get(bad, allow_redirects=False, timeout=30)
            assert denied.status_code in (401, 403, 404) and "Location" not in denied.headers
            assert s3_settings.bucket not in denied.text
    finally:
        server.stop()


async def test_redirect_sends_rattler_to_the_bucket(tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    rattler = pytest.importorskip("rattler")
    from fixtures import conda_pkgs as fx

    server, token, _ = hosted_world(tmp_path, s3_settings, relay, redirect=True)
    try:
        pkg = fx.build_package(tmp_path / "pkgs", fx.PkgSpec("bucket-tool", "1.0", "0"))
        with open(pkg, "rb") as fh:
            resp = requests.post(f"{server.url}/api/repo/internal", files={"content": (pkg.name, fh)},
                                 headers={"Authorization": f"token {token}"}, timeout=60)
        assert resp.status_code == 201, resp.text
        sha = hashlib.sha256(pkg.read_bytes()).hexdigest()
        target = tmp_path / "env"
        gateway = rattler.Gateway(cache_dir=tmp_path / "rattler-cache")
        records = await rattler.solve([rattler.Channel(channel_url(server, "alias", token))], ["bucket-tool"],
                                      gateway=gateway, platforms=["linux-64", "noarch"], virtual_packages=[])
        await rattler.install(records, target, cache_dir=tmp_path / "rattler-pkgs", show_progress=False,
                              platform=rattler.Subdir("linux-64"))
        assert (target / "share/bucket-tool/README.txt").read_text().startswith("bucket-tool 1.0")
        assert len(relay.gets(sha)) == 1, "rattler read the package from the bucket"
        server.wait_log(f'/internal/noarch/{pkg.name}" 307')
    finally:
        server.stop()


def test_redirect_sends_r_to_the_bucket(tmp_path: Path, s3_settings: S3Settings, relay: S3Relay) -> None:
    """R's install.packages (libcurl) follows the 307: the source tarball comes from the bucket."""
    from conftest import require_tool
    from fixtures.cran_pkgs import build_source_package

    require_tool("R")
    rscript = require_tool("Rscript")
    server, token, _ = hosted_world(tmp_path, s3_settings, relay, redirect=True)
    try:
        pkg = build_source_package(tmp_path / "rpkgs", "bucketr", "1.0")
        with open(pkg.path, "rb") as fh:
            resp = requests.post(f"{server.url}/api/repo/internal", data={"filetype": "cran_source_package"},
                                 files={"content": (pkg.filename, fh)}, headers={"X-Auth": token}, timeout=60)
        assert resp.status_code in (200, 201), resp.text
        sha = hashlib.sha256(pkg.path.read_bytes()).hexdigest()
        lib = tmp_path / "rlib"
        lib.mkdir()
        code = (f'options(repos = c(CG = "{channel_url(server, "alias", token)}")); '
                f'install.packages("bucketr", lib = "{lib}", type = "source"); '
                f'cat(as.character(packageVersion("bucketr", lib.loc = "{lib}")))')
        got = run([rscript, "--vanilla", "-e", code], env=client_env(tmp_path / "home-r"), timeout=300)
        assert got.returncode == 0 and got.stdout.endswith("1.0"), got.stdout + got.stderr
        assert len(relay.gets(sha)) == 1, "R read the tarball from the bucket"
        server.wait_log(f'/src/contrib/{pkg.filename}" 307')
    finally:
        server.stop()


# --------------------------------------------------------------------------- readiness
def test_readiness_names_the_bucket_when_the_object_store_is_down_or_the_bucket_missing(
        tmp_path: Path, s3_settings: S3Settings) -> None:
    from moto.server import ThreadedMotoServer

    from harness import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    import botocore.session

    botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing").create_bucket(Bucket=s3_settings.bucket)
    policy = Policy({"channels": {"internal": {"read": ["user:alice"]}}, "users": ["alice"]})
    policy.data["storage"] = s3_storage(tmp_path / "cg" / "storage", s3_settings, endpoint)
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        status, _, body = http("GET", f"{server.url}/api/ready")
        assert status == 200 and b'"s3": "ok"' in body
        moto.stop()
        status, _, body = http("GET", f"{server.url}/api/ready")
        assert status == 503
        assert f"bucket '{s3_settings.bucket}' at {endpoint}".encode() in body
        assert http("GET", f"{server.url}/api/health")[0] == 200  # alive: left running, taken out of traffic
        server.stop()
        other = Policy({"channels": {"internal": {"read": ["user:alice"]}}, "users": ["alice"]})
        other.data["storage"] = s3_storage(tmp_path / "cg2" / "storage",
                                           S3Settings(bucket="no-such-bucket", prefix="cg/"), s3_settings.endpoint_url or "")
        server = Channelgate(tmp_path / "cg2", other).start()
        status, _, body = http("GET", f"{server.url}/api/ready")
        assert status == 503 and b"bucket 'no-such-bucket'" in body and b"does not exist" in body
    finally:
        server.stop()
