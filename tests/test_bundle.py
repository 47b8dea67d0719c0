"""``channelgate export`` / ``import`` (DESIGN, "Air-gap"): one verified tar, incremental with
--since, published only after everything is verified, idempotent, and refused — with
nothing visible — when tampered, truncated or not a bundle."""
from __future__ import annotations

import asyncio

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> UpstreamServer:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("bundle-upstream")
    files = [make_wheel(base / "d", "small-pkg", "1.0"), make_wheel(base / "d", "later-pkg", "1.0")]
    write_simple_index(base / "root", files, fmt="json")
    return upstream_factory(base / "root")  # type: ignore[no-any-return]


def _policy(upstream: UpstreamServer, storage: Path, **extra: object) -> Policy:
    return Policy({
        "storage": {"path": str(storage)},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
        "users": ["alice"],
        "channels": {"internal": {"upstreams": ["pypi"], "read": ["user:alice"], "write": ["user:alice"]}},
        **extra,
    })


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=300)


def cli_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same command line, run in this process (no server involved: saves a start-up)."""
    from proxy.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def config_for(workdir: Path, policy: Policy) -> str:
    gate = Channelgate(workdir, policy)
    gate.write_policy()
    return str(gate.config)


def snapshot(storage: Path) -> dict[str, tuple[int, int]]:
    """Every visible file of a store (tmp/ excepted) with size and mtime."""
    if not storage.exists():
        return {}
    return {p.relative_to(storage).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in storage.rglob("*") if p.is_file() and "tmp" not in p.relative_to(storage).parts}


@pytest.fixture(scope="module")
def host_a(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer) -> dict[str, object]:
    """A connected site that fetched small-pkg and hosts an upload, and its first bundle."""
    work = tmp_path_factory.mktemp("host-a")
    policy = _policy(upstream, work / "store")
    token = policy.add_token("alice", ["pypi:download", "api:write"])
    server = Channelgate(work / "cg", policy).start()
    hosted = make_wheel(work / "up", "hosted-pkg", "2.0")
    try:
        assert http("GET", f"{server.url}/t/{token}/internal/simple/small-pkg/small_pkg-1.0-py3-none-any.whl")[0] == 200
        with open(hosted, "rb") as fh:
            resp = requests.post(f"{server.url}/api/repo/internal", data=twine_fields(hosted),
                                 files={"content": (hosted.name, fh)}, auth=(token, "x-auth-token"), timeout=60)
        assert resp.status_code == 200, resp.text
    finally:
        server.stop()
    bundle = work / "site.tar"
    done = cli("export", "--config", str(server.config), "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    return {"policy": policy, "token": token, "bundle": bundle, "hosted": hosted, "work": work, "server": server}


def test_import_publishes_a_bundle_that_serves_offline_at_another_path(tmp_path: Path, host_a, upstream) -> None:  # type: ignore[no-untyped-def]
    bundle: Path = host_a["bundle"]
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[-1] == "manifest.json" and "catalog/uploads.jsonl" in names
    manifest = json.loads(Path(f"{bundle}.manifest.json").read_bytes())
    assert set(manifest["members"]) == set(names[:-1])
    policy = _policy(upstream, tmp_path / "b" / "store", offline=True)
    token = policy.add_token("alice", ["pypi:download"])
    done = cli("import", "--config", config_for(tmp_path / "b", policy), str(bundle))
    assert done.returncode == 0, done.stderr
    assert "published" in done.stdout
    calls = len(upstream.calls)
    server = Channelgate(tmp_path / "b", policy).start()
    try:
        base = f"{server.url}/t/{token}/internal/simple"
        status, _, body = http("GET", f"{base}/small-pkg/small_pkg-1.0-py3-none-any.whl")
        assert status == 200 and body == (upstream.root / "files" / "small_pkg-1.0-py3-none-any.whl").read_bytes()
        hosted: Path = host_a["hosted"]
        status, _, body = http("GET", f"{base}/hosted-pkg/{hosted.name}")
        assert status == 200 and body == hosted.read_bytes()
        assert len(upstream.calls) == calls
    finally:
        server.stop()


def test_importing_twice_changes_nothing(tmp_path: Path, host_a, upstream, capsys) -> None:  # type: ignore[no-untyped-def]
    storage = tmp_path / "store"
    config = config_for(tmp_path, _policy(upstream, storage))
    assert cli_here(capsys, "import", "--config", config, str(host_a["bundle"])).returncode == 0
    before = snapshot(storage)
    again = cli_here(capsys, "import", "--config", config, str(host_a["bundle"]))
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert snapshot(storage) == before


def _member_offset(bundle: Path, prefix: str) -> tuple[int, int]:
    with tarfile.open(bundle) as tar:
        for info in tar:
            if info.name.startswith(prefix) and info.size > 100:
                return info.offset_data, info.size
    raise AssertionError(f"no member under {prefix}")


def _bad_bundles(bundle: Path, out: Path) -> dict[str, Path]:
    data = bundle.read_bytes()
    offset, size = _member_offset(bundle, "cache/sha256/")
    tampered = bytearray(data)
    tampered[offset + size // 2] ^= 0xFF
    sneaky = io.BytesIO()
    with tarfile.open(fileobj=sneaky, mode="w") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hey"))
    cases = {"tampered": bytes(tampered), "truncated": data[: len(data) // 2],
             "not a tar": b"PK\x03\x04 this is a zip, not a bundle" * 100, "foreign member": sneaky.getvalue()}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in cases.items():
        paths[name] = out / f"{name.replace(' ', '-')}.tar"
        paths[name].write_bytes(body)
    return paths


def test_a_tampered_truncated_or_foreign_bundle_is_refused_and_nothing_becomes_visible(
    tmp_path: Path, host_a, upstream, capsys  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "store"
    config = config_for(tmp_path, _policy(upstream, storage))
    for case, path in _bad_bundles(host_a["bundle"], tmp_path / "bad").items():
        done = cli_here(capsys, "import", "--config", config, str(path))
        assert done.returncode == 1, (case, done.stdout, done.stderr)
        assert "import refused, nothing was published" in done.stderr, case
        assert snapshot(storage) == {}, case
        assert not any((storage / "tmp").iterdir()), case
    assert not (tmp_path / "outside.txt").exists()


def test_since_writes_only_what_the_earlier_bundle_lacks(tmp_path: Path, host_a, upstream, capsys) -> None:  # type: ignore[no-untyped-def]
    server: Channelgate = host_a["server"]
    server.start()
    try:
        url = f"{server.url}/t/{host_a['token']}/internal/simple/later-pkg/later_pkg-1.0-py3-none-any.whl"
        assert http("GET", url)[0] == 200
    finally:
        server.stop()
    increment = tmp_path / "increment.tar"
    done = cli_here(capsys, "export", "--config", str(server.config), "--out", str(increment),
               "--since", f"{host_a['bundle']}.manifest.json")
    assert done.returncode == 0, done.stderr
    first = json.loads(Path(f"{host_a['bundle']}.manifest.json").read_bytes())["members"]
    later = json.loads(Path(f"{increment}.manifest.json").read_bytes())["members"]
    assert later and not set(later) & {n for n in first if n.startswith(("uploads/", "cache/sha256/"))}
    wheel_sha = next(n for n in later if n.startswith("cache/sha256/"))
    assert len([n for n in later if n.startswith("cache/sha256/")]) == 1, wheel_sha  # the new wheel only
    policy = _policy(upstream, tmp_path / "c" / "store", offline=True)
    token = policy.add_token("alice", ["pypi:download"])
    config = config_for(tmp_path / "c", policy)
    for bundle in (host_a["bundle"], increment):
        assert cli_here(capsys, "import", "--config", config, str(bundle)).returncode == 0
    offline = Channelgate(tmp_path / "c", policy).start()
    try:
        for project, wheel in (("small-pkg", "small_pkg-1.0-py3-none-any.whl"), ("later-pkg", "later_pkg-1.0-py3-none-any.whl")):
            assert http("GET", f"{offline.url}/t/{token}/internal/simple/{project}/{wheel}")[0] == 200
    finally:
        offline.stop()


def test_channel_selects_its_uploads_indexes_and_artifacts(tmp_path: Path, upstream, upstream_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    second = upstream_factory(upstream.root)
    policy = Policy({
        "storage": {"path": str(tmp_path / "store")},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"},
                      "mirror2": {"type": "pypi", "url": f"{second.url}/simple"}},
        "users": ["alice"],
        "channels": {"internal": {"upstreams": ["pypi"], "read": ["user:alice"]},
                     "other": {"upstreams": ["mirror2"], "read": ["user:alice"]}},
    })
    token = policy.add_token("alice", ["pypi:download"])
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        for channel, project in (("internal", "small-pkg"), ("other", "later-pkg")):
            wheel = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
            assert http("GET", f"{server.url}/t/{token}/{channel}/simple/{project}/{wheel}")[0] == 200
    finally:
        server.stop()
    bundle = tmp_path / "other.tar"
    assert cli_here(capsys, "export", "--config", str(server.config), "--out", str(bundle), "--channel", "other").returncode == 0
    members = json.loads(Path(f"{bundle}.manifest.json").read_bytes())["members"]
    import hashlib

    def blob(wheel: str) -> str:
        sha = hashlib.sha256((upstream.root / "files" / wheel).read_bytes()).hexdigest()
        return f"cache/sha256/{sha[:2]}/{sha}"

    assert blob("later_pkg-1.0-py3-none-any.whl") in members
    assert blob("small_pkg-1.0-py3-none-any.whl") not in members
    docs = [n for n in members if n.startswith("meta/docs/")]
    with tarfile.open(bundle) as tar:
        urls = [json.loads(tar.extractfile(n).read())["url"] for n in docs]  # type: ignore[union-attr]
    assert urls and all(u.startswith(second.url) for u in urls)
    refused = cli_here(capsys, "export", "--config", str(server.config), "--out", str(bundle), "--channel", "nope")
    assert refused.returncode == 1 and "no such channel(s) in the policy: nope" in refused.stderr


def _api(server: Channelgate, method: str, path: str, token: str = "", body: object = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    status, _, raw = http(method, f"{server.url}/api{path}", headers=headers,
                          data=json.dumps(body).encode() if body is not None else None)
    return status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw


def _public_policy(upstream: UpstreamServer, storage: Path, **extra: object) -> Policy:
    return Policy({
        "storage": {"path": str(storage)},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
        "users": ["alice", "bob"],
        "channels": {"pub": {"public": True, "upstreams": ["pypi"], "read": ["user:bob"], "write": ["user:alice"]}},
        **extra,
    })


def test_private_package_stays_private_after_import_and_since_carries_changed_settings(
    tmp_path: Path, upstream, capsys  # type: ignore[no-untyped-def]
) -> None:
    from proxy.store.catalog import SqliteCatalog

    policy_a = _public_policy(upstream, tmp_path / "a" / "store")
    alice = policy_a.add_token("alice", ["pypi:download", "api:write", "api:read"])
    host_a = Channelgate(tmp_path / "a", policy_a).start()
    wheels = {n: make_wheel(tmp_path / "up", n, "1.0") for n in ("secret-pkg", "open-pkg")}
    try:
        for wheel in wheels.values():
            with open(wheel, "rb") as fh:
                resp = requests.post(f"{host_a.url}/api/repo/pub", data=twine_fields(wheel),
                                     files={"content": (wheel.name, fh)}, auth=(alice, "x-auth-token"), timeout=60)
            assert resp.status_code == 200, resp.text
        status, doc = _api(host_a, "PATCH", "/package/pub/secret-pkg", alice,
                           {"public": False, "public_attrs": {"summary": "quiet things", "license": "MIT"}})
        assert status == 200 and doc["public"] is False, doc  # type: ignore[index]
        assert _api(host_a, "POST", "/channels/pub/frozen/lock", alice)[0] == 201
    finally:
        host_a.stop()
    bundle = tmp_path / "site.tar"
    assert cli_here(capsys, "export", "--config", str(host_a.config), "--out", str(bundle)).returncode == 0
    assert "catalog/packages.jsonl" in json.loads(Path(f"{bundle}.manifest.json").read_bytes())["members"]
    assert alice.encode() not in bundle.read_bytes()  # accounts are per site: no token travels

    policy_b = _public_policy(upstream, tmp_path / "b" / "store", offline=True)
    bob = policy_b.add_token("bob", ["pypi:download", "api:read"])
    config_b = config_for(tmp_path / "b", policy_b)
    assert cli_here(capsys, "import", "--config", config_b, str(bundle)).returncode == 0
    before = snapshot(tmp_path / "b" / "store")
    again = cli_here(capsys, "import", "--config", config_b, str(bundle))
    assert "nothing changed" in again.stdout and snapshot(tmp_path / "b" / "store") == before
    secret = wheels["secret-pkg"].name
    host_b = Channelgate(tmp_path / "b", policy_b).start()
    try:
        status, _, index = http("GET", f"{host_b.url}/pub/simple/")
        assert status == 200 and b"open-pkg" in index and b"secret-pkg" not in index
        assert http("GET", f"{host_b.url}/pub/simple/secret-pkg/")[0] == 404
        assert http("GET", f"{host_b.url}/pub/simple/secret-pkg/{secret}")[0] == 404
        status, _, body = http("GET", f"{host_b.url}/t/{bob}/pub/simple/secret-pkg/{secret}")
        assert status == 200 and body == wheels["secret-pkg"].read_bytes()
        status, doc = _api(host_b, "GET", "/package/pub/secret-pkg", bob)
        assert status == 200 and doc["public"] is False and doc["summary"] == "quiet things", doc  # type: ignore[index]
        assert doc["license"] == "MIT", doc  # type: ignore[index]
        status, labels = _api(host_b, "GET", "/channels/pub", bob)
        assert status == 200 and labels["frozen"]["is_locked"] is True, labels  # type: ignore[index]

        # on A: public again and unlocked; the increment carries only the changed settings
        catalog = SqliteCatalog.at(tmp_path / "a" / "store")
        try:
            info = catalog.packages.get("pub", "pypi", "secret-pkg")
            assert info is not None
            asyncio.run(catalog.packages.put(dataclasses.replace(info, private=False)))
            asyncio.run(catalog.packages.set_locked("pub", "frozen", False))
        finally:
            catalog.close()
        increment = tmp_path / "increment.tar"
        assert cli_here(capsys, "export", "--config", str(host_a.config), "--out", str(increment),
                        "--since", f"{bundle}.manifest.json").returncode == 0
        assert set(json.loads(Path(f"{increment}.manifest.json").read_bytes())["members"]) == {"catalog/packages.jsonl"}
        assert cli_here(capsys, "import", "--config", config_b, str(increment)).returncode == 0
        status, _, body = http("GET", f"{host_b.url}/pub/simple/secret-pkg/{secret}")  # the running server sees it
        assert status == 200 and body == wheels["secret-pkg"].read_bytes()
        status, labels = _api(host_b, "GET", "/channels/pub", bob)
        assert status == 200 and "frozen" not in labels, labels
    finally:
        host_b.stop()


@pytest.mark.parametrize("line, problem", [
    (b'{"locked_label": {"channel": "elsewhere", "label": "x"}}', "does not carry"),
    (b'{"package": {"channel": "pub", "ecosystem": "pypi", "name": "p"}}', "is not a package row"),
    (b'{"token": "secret"}', "is not a package setting"),
    (b"not json", "is not JSON"),
])
def test_malformed_or_foreign_package_settings_are_refused(line: bytes, problem: str) -> None:
    from proxy.airgap.bundle import BundleError
    from proxy.airgap.package_settings import parse

    good = b'{"locked_label": {"channel": "pub", "label": "frozen"}}'
    assert parse(good, ["pub"]).locked == {"pub": {"frozen"}}
    with pytest.raises(BundleError, match=problem):
        parse(good + b"\n" + line, ["pub"])


def _rewrite(bundle: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """A copy of ``bundle`` whose members went through ``change(members) -> members``
    (a list of (TarInfo, bytes)), written by Python's tarfile."""
    with tarfile.open(bundle) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in change(members):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def _link(members):  # type: ignore[no-untyped-def]
    link = tarfile.TarInfo("cache/refs/" + "0" * 64)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [(link, b"")] + members


def _twice(members):  # type: ignore[no-untyped-def]
    return [members[0]] + members


def _manifest_first(members):  # type: ignore[no-untyped-def]
    return [members[-1]] + members[:-1]


def _version_2(members):  # type: ignore[no-untyped-def]
    """The same bundle with its manifest in the version 2 layout (one indented document)."""
    info, data = members[-1]
    manifest = json.loads(data)
    manifest["version"] = 2
    old = json.dumps(manifest, indent=1).encode()
    info.size = len(old)
    return members[:-1] + [(info, old)]


@pytest.mark.parametrize("change, problem", [
    (_link, "not a regular file"), (_twice, "twice"), (_manifest_first, "not the last member"),
])
def test_a_link_a_member_twice_or_an_early_manifest_is_refused(
    tmp_path: Path, host_a, upstream, capsys, change, problem  # type: ignore[no-untyped-def]
) -> None:
    storage = tmp_path / "store"
    config = config_for(tmp_path, _policy(upstream, storage))
    bad = _rewrite(host_a["bundle"], tmp_path / "bad.tar", change)
    done = cli_here(capsys, "import", "--config", config, str(bad))
    assert done.returncode == 1 and problem in done.stderr, done.stderr
    assert snapshot(storage) == {} and not any((storage / "tmp").iterdir())


def test_a_bundle_with_a_version_2_manifest_still_imports(tmp_path: Path, host_a, upstream, capsys) -> None:  # type: ignore[no-untyped-def]
    old = _rewrite(host_a["bundle"], tmp_path / "old.tar", _version_2)
    storage = tmp_path / "store"
    config = config_for(tmp_path, _policy(upstream, storage))
    done = cli_here(capsys, "import", "--config", config, str(old))
    assert done.returncode == 0, done.stderr
    with tarfile.open(host_a["bundle"]) as tar:
        names = [n for n in tar.getnames() if n.startswith("cache/sha256/")]
    assert names and all((storage / n).is_file() for n in names)


def test_the_manifest_is_one_entry_a_line_and_still_one_json_document(host_a) -> None:  # type: ignore[no-untyped-def]
    """Version 3: written and read as a stream (memory flat however many members)."""
    from proxy.airgap.manifest import ManifestReader

    path = Path(f"{host_a['bundle']}.manifest.json")
    whole = json.loads(path.read_bytes())
    lines = path.read_bytes().splitlines()
    assert whole["version"] == 3 and len(lines) == 5 + len(whole["members"]) + len(whole["known"])
    reader, fh = ManifestReader.open(path)
    with fh:
        entries = list(reader.entries())
    assert {e.name: (e.sha256, e.size) for e in entries if e.member} == {
        n: (m["sha256"], m["size"]) for n, m in whole["members"].items()}
    assert {e.name: e.sha256 for e in entries if not e.member} == whole["known"]


def test_export_reads_an_s3_store_from_the_bucket(tmp_path: Path, s3_settings, upstream, capsys) -> None:  # type: ignore[no-untyped-def]
    """``storage.backend: s3``: export asks the Store, so what another replica put in the
    bucket (artifacts, their provenance, aliases) is in the bundle, and imports elsewhere."""
    import asyncio
    import hashlib

    from proxy.store.s3 import S3Store

    policy = _policy(upstream, tmp_path / "a" / "storage")
    policy.data["storage"] = {"path": str(tmp_path / "a" / "storage"), "backend": "s3", "s3": {
        "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
        "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}
    replica = S3Store(tmp_path / "replica", s3_settings)
    replica.open()
    blob = asyncio.run(replica.put_bytes("cache", b"a cached artifact" * 50))
    replica.set_origin(blob.sha256, "pypi")
    replica.set_ref("md5:0123", blob.sha256)
    bundle = tmp_path / "s3.tar"
    done = cli_here(capsys, "export", "--config", config_for(tmp_path / "a", policy), "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    storage = tmp_path / "b" / "store"
    assert cli_here(capsys, "import", "--config", config_for(tmp_path / "b", _policy(upstream, storage)),
                    str(bundle)).returncode == 0
    sha = blob.sha256
    assert (storage / "cache" / "sha256" / sha[:2] / sha).read_bytes() == b"a cached artifact" * 50
    assert (storage / "cache" / "origin" / sha).read_text() == "pypi"
    assert (storage / "cache" / "refs" / hashlib.sha256(b"md5:0123").hexdigest()).read_text() == sha


def test_import_publishes_into_an_s3_store_and_twice_changes_nothing(tmp_path: Path, host_a, upstream, s3_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    """``storage.backend: s3``: import goes through the Store, so the blobs land in the bucket
    (the shared store every replica serves from), provenance and aliases too."""
    import botocore.session

    policy = _policy(upstream, tmp_path / "b" / "storage", offline=True)
    policy.data["storage"] = {"path": str(tmp_path / "b" / "storage"), "backend": "s3", "s3": {
        "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
        "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}
    config = config_for(tmp_path / "b", policy)
    done = cli_here(capsys, "import", "--config", config, str(host_a["bundle"]))
    assert done.returncode == 0, done.stderr
    with tarfile.open(host_a["bundle"]) as tar:
        blobs = [n for n in tar.getnames() if n.startswith(("uploads/sha256/", "cache/sha256/", "cache/origin/"))]
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=s3_settings.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=s3_settings.bucket).get("Contents", ())}
    assert blobs and {f"{s3_settings.prefix}{n}" for n in blobs} <= listed
    again = cli_here(capsys, "import", "--config", config, str(host_a["bundle"]))
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr


def test_an_import_through_one_replica_is_known_to_another_sharing_the_store(
    tmp_path: Path, host_a, upstream, s3_settings, pg_url: str, capsys  # type: ignore[no-untyped-def]
) -> None:
    """Two replicas on one bucket and one PostgreSQL catalog, each with a storage.path of its
    own: the imported-bundle list is in the bucket, so replica B's prune keeps what A's
    import brought, and B importing the same bundle changes nothing shared."""
    import botocore.session

    def replica(name: str) -> str:
        policy = _policy(upstream, tmp_path / name / "storage", offline=True, database={"url": pg_url})
        policy.data["storage"] = {"path": str(tmp_path / name / "storage"), "backend": "s3", "s3": {
            "endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
            "region": s3_settings.region, "access_key_id": "testing", "secret_access_key": "testing"}}
        return config_for(tmp_path / name, policy)

    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=s3_settings.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket() -> dict[str, tuple[str, object]]:
        listed = client.list_objects_v2(Bucket=s3_settings.bucket).get("Contents", ())
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}

    def rows() -> list[tuple[str, ...]]:
        from proxy.settings import load_settings
        from proxy.store.backends import catalog_reader

        with catalog_reader(load_settings(Path(config_b))) as catalog:
            assert catalog is not None
            return sorted((u.path, u.sha256) for u in catalog.list("internal", "pypi"))

    config_a, config_b = replica("a"), replica("b")
    first = cli_here(capsys, "import", "--config", config_a, str(host_a["bundle"]))
    assert first.returncode == 0 and "published" in first.stdout, first.stdout + first.stderr
    imported = [k for k in bucket() if k.startswith(f"{s3_settings.prefix}airgap/imported/")]
    assert len(imported) == 1
    with tarfile.open(host_a["bundle"]) as tar:
        cached = {f"{s3_settings.prefix}{n}" for n in tar.getnames() if n.startswith("cache/sha256/")}
    assert cached and cached <= set(bucket())
    # replica B never saw the import, yet its prune keeps every file the bundle brought
    assert cli_here(capsys, "cache", "prune", "--config", config_b, "--max-size", "0").returncode == 0
    assert cached <= set(bucket())
    before, catalog_before = bucket(), rows()
    assert catalog_before
    again = cli_here(capsys, "import", "--config", config_b, str(host_a["bundle"]))
    assert again.returncode == 0, again.stderr
    assert "the shared store is unchanged (imported before" in again.stdout, again.stdout
    assert bucket() == before and rows() == catalog_before
    # B got its own copies of the bundle's index documents (per replica with S3); a third
    # import through B changes nothing at all
    assert list((tmp_path / "b" / "storage" / "meta" / "docs").glob("*.json"))
    third = cli_here(capsys, "import", "--config", config_b, str(host_a["bundle"]))
    assert third.returncode == 0 and "nothing changed" in third.stdout, third.stdout
    assert bucket() == before


def test_the_ledger_finds_a_name_recorded_twice_across_its_write_batches(tmp_path: Path) -> None:
    """Import's ledger writes members in batches: a name repeated far apart in a bundle is
    still found, and named (the import refuses the bundle)."""
    from proxy.airgap.manifest import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        names = [f"cache/origin/{n:064x}" for n in range(Ledger.BATCH + 3)]
        assert all(ledger.add(name, "0" * 64, 1) for name in names)
        assert ledger.add(names[-1], "0" * 64, 1) is False  # within the unwritten batch
        assert ledger.add(names[0], "1" * 64, 2) is True  # buffered: found when written
        assert ledger.flush() is False and ledger.duplicate() == names[0]
        assert ledger.get(names[0]) == ("0" * 64, 1, None, 0)
    finally:
        ledger.close()
