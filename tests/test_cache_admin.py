"""``channelgate cache`` (issue 10, part 6): size per upstream and channel, prune by age or to
a size (never uploads, never what an imported bundle brought), verify by re-hashing."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http, stored_blobs
from proxy.cli import main

WHEELS = ("old_pkg-1.0-py3-none-any.whl", "new_pkg-1.0-py3-none-any.whl")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> UpstreamServer:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("cache-admin")
    files = [make_wheel(base / "d", "old-pkg", "1.0", module_body="X = 1\n" * 500),
             make_wheel(base / "d", "new-pkg", "1.0")]
    write_simple_index(base / "root", files, fmt="json")
    return upstream_factory(base / "root")  # type: ignore[no-any-return]


def _site(tmp_path: Path, upstream: UpstreamServer) -> tuple[Channelgate, Path, str]:
    """A store holding both wheels (cached) and one upload; the server stopped."""
    policy = Policy({
        "storage": {"path": str(tmp_path / "store")},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
        "users": ["alice"],
        "channels": {"internal": {"upstreams": ["pypi"], "read": ["user:alice"], "write": ["user:alice"]}},
    })
    token = policy.add_token("alice", ["all"])
    server = Channelgate(tmp_path / "cg", policy).start()
    hosted = make_wheel(tmp_path / "up", "hosted-pkg", "1.0")
    try:
        for wheel in WHEELS:
            project = wheel.split("-")[0].replace("_", "-")
            assert http("GET", f"{server.url}/t/{token}/internal/simple/{project}/{wheel}")[0] == 200
        with open(hosted, "rb") as fh:
            assert requests.post(f"{server.url}/api/repo/internal", data=twine_fields(hosted),
                                 files={"content": (hosted.name, fh)}, auth=(token, "x-auth-token"),
                                 timeout=60).status_code == 200
    finally:
        server.stop()
    return server, hosted, token


def _blob_of(upstream: UpstreamServer, storage: Path, wheel: str) -> Path:
    import hashlib

    sha = hashlib.sha256((upstream.root / "files" / wheel).read_bytes()).hexdigest()
    return storage / "cache" / "sha256" / sha[:2] / sha


def test_cache_shows_size_per_upstream_and_channel(tmp_path: Path, upstream: UpstreamServer, capsys) -> None:  # type: ignore[no-untyped-def]
    server, hosted, _ = _site(tmp_path, upstream)
    from proxy.airgap.cache_admin import usage
    from proxy.settings import load_settings

    found = usage(load_settings(server.config))
    wheels = sum((upstream.root / "files" / w).stat().st_size for w in WHEELS)
    assert found.upstream_artifacts == {"pypi": wheels}
    assert found.upstream_indexes["pypi"] > 0
    assert found.channel_uploads == {"internal": hosted.stat().st_size}
    assert found.channels["internal"] == wheels + found.upstream_indexes["pypi"] + hosted.stat().st_size
    assert main(["cache", "--config", str(server.config)]) == 0
    out = capsys.readouterr().out
    assert "pypi" in out and "internal" in out


def test_prune_by_age_and_size_keeps_uploads_and_imported_files(tmp_path: Path, upstream: UpstreamServer, capsys) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = _site(tmp_path / "a", upstream)
    storage = server.storage
    old, new = (_blob_of(upstream, storage, w) for w in WHEELS)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    uploads = stored_blobs(storage, "uploads")
    assert main(["cache", "prune", "--config", str(server.config), "--older-than", "5"]) == 0
    assert not old.exists() and new.exists() and stored_blobs(storage, "uploads") == uploads
    assert "removed 1 cached artifact(s)" in capsys.readouterr().out
    # an air-gapped site: what a bundle brought is never pruned, even to size 0
    bundle = tmp_path / "site.tar"
    assert main(["export", "--config", str(server.config), "--out", str(bundle)]) == 0
    policy_b = Policy(dict(server.policy.data, storage={"path": str(tmp_path / "b" / "store")}, offline=True))
    site_b = Channelgate(tmp_path / "b", policy_b)
    site_b.write_policy()
    assert main(["import", "--config", str(site_b.config), str(bundle)]) == 0
    before = stored_blobs(site_b.storage, "cache")
    assert before and main(["cache", "prune", "--config", str(site_b.config), "--max-size", "0"]) == 0
    assert stored_blobs(site_b.storage, "cache") == before
    # on the connected site, --max-size removes the oldest until the rest fits
    assert main(["cache", "prune", "--config", str(server.config), "--max-size", "0"]) == 0
    assert not stored_blobs(storage, "cache") and stored_blobs(storage, "uploads") == uploads


def test_prune_goes_by_last_use_stamped_at_most_once_an_hour(tmp_path: Path, upstream: UpstreamServer, capsys) -> None:  # type: ignore[no-untyped-def]
    server, _, token = _site(tmp_path, upstream)
    storage = server.storage
    old, new = (_blob_of(upstream, storage, w) for w in WHEELS)
    now = time.time()
    os.utime(old, (now - 6 * 86400,) * 2)  # fetched 6 days ago, never served since
    os.utime(new, (now - 10 * 86400,) * 2)  # fetched 10 days ago ...
    stamp = storage / "cache" / "used" / new.name
    server.start()
    try:  # ... and served today (a cache hit)
        assert http("GET", f"{server.url}/t/{token}/internal/simple/new-pkg/{WHEELS[1]}")[0] == 200
        assert stamp.is_file() and stamp.stat().st_mtime > now - 60
        assert not (storage / "cache" / "used" / old.name).exists()
        half_an_hour_ago = time.time() - 1800
        os.utime(stamp, (half_an_hour_ago, half_an_hour_ago))
        assert http("GET", f"{server.url}/t/{token}/internal/simple/new-pkg/{WHEELS[1]}")[0] == 200
        assert stamp.stat().st_mtime == half_an_hour_ago  # stamped once an hour at most, not per request
    finally:
        server.stop()
    # down to a size: the least recently used goes first, though it was fetched later
    assert main(["cache", "prune", "--config", str(server.config), "--max-size", str(new.stat().st_size)]) == 0
    assert not old.exists() and new.exists()
    assert "removed 1 cached artifact(s)" in capsys.readouterr().out
    # by age: served 5+ days ago counts as unused; the stamp goes with the artifact
    os.utime(stamp, (now - 5.5 * 86400,) * 2)
    assert main(["cache", "prune", "--config", str(server.config), "--older-than", "5"]) == 0
    assert not new.exists() and not stamp.exists()


def test_verify_reports_every_mismatch(tmp_path: Path, upstream: UpstreamServer, capsys) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = _site(tmp_path, upstream)
    assert main(["cache", "--config", str(server.config), "verify"]) == 0
    assert "0 mismatch(es)" in capsys.readouterr().out
    rotten = _blob_of(upstream, server.storage, WHEELS[1])
    rotten.write_bytes(b"bit rot")
    assert main(["cache", "verify", "--config", str(server.config)]) == 1
    out = capsys.readouterr().out
    assert "1 mismatch(es)" in out and f"MISMATCH {rotten.relative_to(server.storage).as_posix()}" in out


def test_cache_and_prune_go_through_the_store_on_s3(tmp_path: Path, s3_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    """``storage.backend: s3``: the bucket's blobs are what ``cache`` counts and ``prune``
    removes (with their provenance), not this replica's local copies."""
    import asyncio

    from proxy.store.s3 import S3Store

    policy = Policy({"channels": {"c": {"public": True}}})
    policy.data["storage"] = {"path": str(tmp_path / "cg" / "storage"), "backend": "s3", "s3": {
        "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
        "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}
    gate = Channelgate(tmp_path / "cg", policy)
    gate.write_policy()
    store = S3Store(tmp_path / "replica", s3_settings)  # another replica wrote them
    store.open()
    blobs = [asyncio.run(store.put_bytes("cache", f"artifact {n}".encode() * 100)) for n in range(2)]
    for blob in blobs:
        store.set_origin(blob.sha256, "pypi")
    upload = asyncio.run(store.put_bytes("uploads", b"hosted"))
    from proxy.airgap.cache_admin import usage
    from proxy.settings import load_settings

    assert usage(load_settings(gate.config)).upstream_artifacts == {"pypi": sum(b.size for b in blobs)}
    assert main(["cache", "prune", "--config", str(gate.config), "--max-size", str(blobs[1].size)]) == 0
    assert "removed 1 cached artifact(s)" in capsys.readouterr().out
    left = {b.sha256 for b in store.blobs("cache")}
    assert len(left) == 1 and left <= {b.sha256 for b in blobs}
    gone = next(b.sha256 for b in blobs if b.sha256 not in left)
    assert store.origin(gone) is None
    assert [b.sha256 for b in store.blobs("uploads")] == [upload.sha256]


def test_verify_on_s3_hashes_the_buckets_objects_and_names_missing_ones(
    tmp_path: Path, upstream: UpstreamServer, s3_settings, capsys  # type: ignore[no-untyped-def]
) -> None:
    """``storage.backend: s3``: verify streams and hashes every object in the bucket (this
    replica's intact local copy does not hide a rotten object), and names each blob that a
    catalog row or an imported bundle needs but the bucket lacks; exit 1."""
    import hashlib

    import botocore.session

    server, hosted, _ = _site(tmp_path / "a", upstream)
    bundle = tmp_path / "site.tar"
    assert main(["export", "--config", str(server.config), "--out", str(bundle)]) == 0
    policy = Policy(dict(server.policy.data, offline=True, storage={
        "path": str(tmp_path / "b" / "storage"), "backend": "s3", "s3": {
            "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
            "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}))
    site_b = Channelgate(tmp_path / "b", policy)
    site_b.write_policy()
    assert main(["import", "--config", str(site_b.config), str(bundle)]) == 0
    capsys.readouterr()
    assert main(["cache", "verify", "--config", str(site_b.config)]) == 0
    out = capsys.readouterr().out
    assert "0 mismatch(es), 0 missing" in out
    assert int(out.split("verified ")[1].split()[0]) >= 6  # 3 bucket blobs + 3 local copies at least

    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=s3_settings.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing")
    rotten, gone = (hashlib.sha256((upstream.root / "files" / w).read_bytes()).hexdigest() for w in WHEELS)
    upload = hashlib.sha256(hosted.read_bytes()).hexdigest()
    key = lambda area, sha: f"{s3_settings.prefix}{area}/sha256/{sha[:2]}/{sha}"  # noqa: E731
    client.put_object(Bucket=s3_settings.bucket, Key=key("cache", rotten), Body=b"bit rot in the bucket")
    client.delete_object(Bucket=s3_settings.bucket, Key=key("cache", gone))
    client.delete_object(Bucket=s3_settings.bucket, Key=key("uploads", upload))
    assert (tmp_path / "b" / "storage" / "cache" / "sha256" / rotten[:2] / rotten).is_file()  # the local copy is intact

    assert main(["cache", "verify", "--config", str(site_b.config)]) == 1
    out = capsys.readouterr().out
    assert "1 mismatch(es), 2 missing" in out, out
    assert f"MISMATCH cache/sha256/{rotten[:2]}/{rotten} in the bucket: holds sha256 " \
           f"{hashlib.sha256(b'bit rot in the bucket').hexdigest()}" in out
    assert f"MISSING cache/sha256/{gone[:2]}/{gone}: an imported bundle needs it" in out
    assert f"MISSING uploads/sha256/{upload[:2]}/{upload}: catalog row internal/pypi/" in out


def test_prune_keeps_what_imported_bundles_brought_in_flat_memory(tmp_path: Path) -> None:
    """A site that imported large bundles: prune reads their manifests into an on-disk table
    (cache_admin.PruneTable), not a set in memory, and still keeps every cached file any of
    them lists, whatever else it removes. 61,000 listed files held as a set of their
    sha256s cost 8.6 MiB of Python memory at peak; the table costs 0.2 MiB (batches of rows)."""
    import asyncio
    import hashlib
    import tracemalloc

    from proxy.airgap.cache_admin import prune
    from proxy.airgap.manifest import ManifestWriter
    from proxy.settings import parse_settings
    from proxy.store.s3 import open_store

    settings = parse_settings(f"storage: {{path: {tmp_path / 'store'}}}\n")
    store = open_store(settings)
    blobs = [asyncio.run(store.put_bytes("cache", f"cached file {i}\n".encode() * 100)).sha256 for i in range(6)]
    brought = {blobs[0], blobs[2], blobs[5]}  # the others were fetched on this site: prunable
    for n, (first, count) in enumerate(((0, 60_000), (60_000, 1_000))):  # two imported bundles
        manifest = tmp_path / f"manifest-{n}.json"
        writer = ManifestWriter(manifest, ["internal"], None)
        for i in range(first, first + count):  # listed, but not cached on this site (any more)
            fake = hashlib.sha256(str(i).encode()).hexdigest()
            writer.member(f"cache/sha256/{fake[:2]}/{fake}", fake, 1)
        for sha in sorted(brought)[n::2]:
            writer.member(f"cache/sha256/{sha[:2]}/{sha}", sha, 1)
        writer.known(iter([]))
        writer.close()
        assert asyncio.run(store.keep_imported(hashlib.sha256(manifest.read_bytes()).hexdigest(), manifest))
    store.release()
    tracemalloc.start()
    try:
        removed, _ = prune(settings, older_than_days=None, max_size=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    left = {p.name for p in (tmp_path / "store" / "cache" / "sha256").glob("*/*")}
    assert left == brought and removed == 3
    assert peak < 2 << 20, f"prune held {peak / (1 << 20):.1f} MiB"
