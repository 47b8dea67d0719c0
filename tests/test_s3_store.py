"""The S3 store backend beyond the shared contract (tests/test_store_contract.py): multipart
uploads of large blobs, what another replica sees, and the strict ``storage`` settings.
Runs against moto's S3 server (real HTTP S3), started by conftest's ``s3_endpoint``."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import botocore.session
import pytest

from proxy.errors import ConfigError
from proxy.settings import parse_settings
from proxy.storage_settings import S3Settings
from proxy.store.s3 import S3Store

PART = 5 * 1024 * 1024  # S3's smallest part


def _client(settings: S3Settings):  # type: ignore[no-untyped-def]
    return botocore.session.get_session().create_client(
        "s3", region_name=settings.region, endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id, aws_secret_access_key=settings.secret_access_key)


async def test_a_large_blob_goes_up_in_parts_and_appears_only_when_whole(tmp_path: Path, s3_settings: S3Settings) -> None:
    """Above the part size a blob is a multipart upload; until CompleteMultipartUpload the
    object is absent for every replica, after it the whole bytes are there for another replica."""
    writer = S3Store(tmp_path / "a", s3_settings, part_size=PART)
    reader = S3Store(tmp_path / "b", s3_settings, part_size=PART)
    writer.open(), reader.open()
    data = os.urandom(2 * PART + 12345)
    sha = hashlib.sha256(data).hexdigest()
    try:
        async with writer.temp("cache") as tmp:
            tmp.write(data)
            assert await reader.stat("cache", sha) is None
            await tmp.commit({"sha256": sha})
        head = _client(s3_settings).head_object(Bucket=s3_settings.bucket, Key=writer.key("cache", sha))
        assert head["ContentLength"] == len(data)
        assert head["ETag"].strip('"').endswith("-3")  # S3's ETag of a 3-part upload
        assert await reader.stat("cache", sha) == len(data)
        got = b"".join([c async for c in reader.stream("cache", sha, PART - 10, PART + 10)])
        assert got == data[PART - 10:PART + 10]
        assert reader.local("cache", sha) is None  # the request path never downloads a copy
        local = reader.find("cache", sha)  # a command's copy (export): downloaded
        assert local is not None and local.read_bytes() == data and local.is_relative_to(tmp_path / "b")
        listed = _client(s3_settings).list_multipart_uploads(Bucket=s3_settings.bucket)
        assert listed.get("Uploads", []) == []  # nothing left half-done
    finally:
        await writer.close(), await reader.close()


async def test_a_rejected_blob_never_reaches_the_bucket(tmp_path: Path, s3_settings: S3Settings) -> None:
    from proxy.store.blobs import DigestMismatch

    store = S3Store(tmp_path / "a", s3_settings, part_size=PART)
    store.open()
    try:
        async with store.temp("uploads") as tmp:
            tmp.write(os.urandom(PART + 1))
            with pytest.raises(DigestMismatch):
                await tmp.commit({"sha256": "0" * 64})
        listed = _client(s3_settings).list_objects_v2(Bucket=s3_settings.bucket)
        assert listed.get("KeyCount") == 0
    finally:
        await store.close()


def test_refs_and_origin_are_shared_between_replicas(tmp_path: Path, s3_settings: S3Settings) -> None:
    first, second = S3Store(tmp_path / "a", s3_settings), S3Store(tmp_path / "b", s3_settings)
    first.set_origin("a" * 64, "pypi-org")
    assert second.origin("a" * 64) == "pypi-org"
    keys = [o["Key"] for o in _client(s3_settings).list_objects_v2(Bucket=s3_settings.bucket)["Contents"]]
    assert keys == [f"cg/cache/origin/{'a' * 64}"]  # under the prefix


def test_storage_s3_settings_are_read() -> None:
    settings = parse_settings("""
storage:
  backend: s3
  path: /srv/cg
  s3: {endpoint_url: "http://minio:9000/", bucket: channelgate, prefix: "cg/", region: eu-west-1}
""")
    assert settings.storage_backend == "s3" and settings.storage_path == Path("/srv/cg")
    assert settings.s3 == S3Settings(bucket="channelgate", endpoint_url="http://minio:9000", prefix="cg/",
                                     region="eu-west-1")
    assert parse_settings("storage: {path: /x}").storage_backend == "filesystem"
    redirecting = parse_settings("storage: {backend: s3, s3: {bucket: b-1, redirect: true, redirect_expires: 600}}")
    assert redirecting.s3 is not None and redirecting.s3.redirect and redirecting.s3.redirect_expires == 600
    assert parse_settings("storage: {backend: s3, s3: {bucket: b-1, redirect: true}}").s3 == S3Settings(
        bucket="b-1", redirect=True, redirect_expires=300)


@pytest.mark.parametrize(("storage", "named"), [
    ("{backend: s3}", "storage.s3"),
    ("{backend: gcs}", "storage.backend"),
    ("{backend: s3, s3: {bucket: Bad_Bucket}}", "storage.s3.bucket"),
    ("{backend: s3, s3: {bucket: ok-bucket, endpoint_url: 'minio:9000'}}", "storage.s3.endpoint_url"),
    ("{backend: s3, s3: {bucket: ok-bucket, prefix: '/abs/'}}", "storage.s3.prefix"),
    ("{backend: s3, s3: {bucket: ok-bucket, access_key_id: AK}}", "storage.s3"),
    ("{backend: s3, s3: {bucket: ok-bucket, secret: x}}", "storage.s3.secret"),
    ("{s3: {bucket: ok-bucket}}", "storage.s3"),
    ("{backend: s3, s3: {bucket: ok-bucket, redirect: 'yes'}}", "storage.s3.redirect"),
    ("{backend: s3, s3: {bucket: ok-bucket, redirect: true, redirect_expires: 5}}", "storage.s3.redirect_expires"),
    ("{backend: s3, s3: {bucket: ok-bucket, redirect: true, redirect_expires: 864000}}", "storage.s3.redirect_expires"),
    ("{backend: s3, s3: {bucket: ok-bucket, redirect: true, redirect_expires: '5m'}}", "storage.s3.redirect_expires"),
    ("{backend: s3, s3: {bucket: ok-bucket, redirect_expires: 60}}", "storage.s3.redirect_expires"),
])
def test_bad_storage_settings_are_named(storage: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(f"storage: {storage}\n")
    assert named in str(info.value)


def test_a_server_on_s3_keeps_uploads_in_the_bucket_and_serves_them_from_it(
        tmp_path: Path, s3_settings: S3Settings, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """``storage.backend: s3``: twine's upload lands in the bucket; with this replica's local
    copy gone, pip still installs it (streamed from the bucket)."""
    import sys

    from fixtures.wheels import make_wheel
    from harness import Policy, channel_url, client_env, run, venv_bin

    policy = Policy({"channels": {"internal": {"read": ["user:alice"], "write": ["user:alice"]}}, "users": ["alice"]})
    token = policy.add_token("alice", ["api:write", "pypi:download"])
    policy.data["storage"] = {"path": str(tmp_path / "cg" / "storage"), "backend": "s3", "s3": {
        "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
        "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}
    server = channelgate_factory(tmp_path / "cg", policy)
    wheel = make_wheel(tmp_path / "dists", "s3-lib", "1.0", module_body="ORIGIN = 's3'\n")
    up = run([venv_bin("twine"), "upload", "--disable-progress-bar", "--non-interactive",
              "--repository-url", f"{server.url}/api/repo/internal", "-u", token, "-p", "x-auth-token", str(wheel)],
             env=client_env(tmp_path / "home-twine"))
    assert up.returncode == 0, up.stdout + up.stderr
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    body = _client(s3_settings).get_object(Bucket=s3_settings.bucket, Key=f"cg/uploads/sha256/{sha[:2]}/{sha}")["Body"]
    assert body.read() == wheel.read_bytes()
    local = server.storage / "uploads" / "sha256" / sha[:2] / sha
    local.unlink()  # this replica's copy: the bucket is the store
    target = tmp_path / "target"
    got = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
               channel_url(server, "leading", token) + "/simple", "--target", str(target), "s3-lib"],
              env=client_env(tmp_path / "home-pip"))
    assert got.returncode == 0, got.stdout + got.stderr
    assert (target / "s3_lib" / "__init__.py").read_text() == "ORIGIN = 's3'\n"
    assert not local.exists()  # streamed from the bucket: no local copy first (test_s3_serving.py)


async def test_a_stream_is_one_presigned_get_of_just_the_span_asked(tmp_path: Path, s3_settings: S3Settings) -> None:
    """The serving path (``stream``) reads the object by one GET of a presigned URL (SigV4
    query authentication: s3_get.py's own session, not botocore's GetObject), asking the
    bucket for only the span wanted; an absent object is NotFound, a span past the end is empty."""
    from dataclasses import replace

    from s3_relay import S3Relay

    from proxy.errors import NotFound

    assert s3_settings.endpoint_url is not None
    relay = S3Relay(s3_settings.endpoint_url).start()
    store = S3Store(tmp_path / "a", replace(s3_settings, endpoint_url=relay.url))
    store.open()
    data = os.urandom(3 * 1024 * 1024 + 7)
    sha = hashlib.sha256(data).hexdigest()
    try:
        async with store.temp("cache") as tmp:
            tmp.write(data)
            await tmp.commit({"sha256": sha})
        got = b"".join([c async for c in store.stream("cache", sha, 1000, 2_000_000)])
        assert got == data[1000:2_000_000]
        gets = relay.gets(sha)
        assert len(gets) == 1 and gets[0].range == "bytes=1000-1999999"
        assert "X-Amz-Signature=" in gets[0].query and "X-Amz-Expires=" in gets[0].query
        assert b"".join([c async for c in store.stream("cache", sha)]) == data
        assert relay.gets(sha)[-1].range is None  # the whole object: no Range at all
        assert [c async for c in store.stream("cache", sha, len(data))] == []
        with pytest.raises(NotFound):
            [c async for c in store.stream("cache", "0" * 64)]
    finally:
        await store.close()
        relay.stop()


async def test_a_stream_goes_through_the_proxy_the_environment_names(
        tmp_path: Path, s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` reaches the bucket's reads on the serving path as it reaches botocore's
    requests (here the relay, a real HTTP server, plays the forward proxy)."""
    from s3_relay import S3Relay

    assert s3_settings.endpoint_url is not None
    relay = S3Relay(s3_settings.endpoint_url).start()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", relay.url)
    store = S3Store(tmp_path / "a", s3_settings)
    store.open()
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    try:
        async with store.temp("cache") as tmp:
            tmp.write(data)
            await tmp.commit({"sha256": sha})
        assert b"".join([c async for c in store.stream("cache", sha, 10)]) == data[10:]
        assert [s.range for s in relay.gets(sha)] == ["bytes=10-"]
    finally:
        await store.close()
        relay.stop()
