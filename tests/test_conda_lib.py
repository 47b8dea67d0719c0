"""Unit tests for the pure conda library: upload validation, version order, repodata
(parse/render/zst/bz2/current/channeldata) and CEP-16 shards (checked with py-rattler)."""
from __future__ import annotations

import bz2
import hashlib
import itertools
import json
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson
import pytest
import zstandard
from aiohttp import web
from fixtures import conda_pkgs as fx
from fixtures.conda_reference import (
    decode_body,
    encode,
    iter_repodata_json,
    render_current_repodata,
    render_repodata_json,
    select_current,
)

from proxy.ecosystems.conda.cep16 import (
    build_shard,
    build_shards,
    package_name_of,
    parse_shard,
    parse_shard_index,
    render_shard_index,
    shard_filename,
)
from proxy.ecosystems.conda.channeldata import render_channeldata
from proxy.ecosystems.conda.package import CondaPackage, inspect_package
from proxy.ecosystems.conda.parse import parse_repodata
from proxy.ecosystems.conda.sections import CondaRecord
from proxy.ecosystems.conda.shard_upstreams import StoredShard, repodata_from_shards
from proxy.ecosystems.conda.subdir_index import UpstreamSubdir
from proxy.ecosystems.conda.version import InvalidVersion, VersionOrder
from proxy.errors import BadRequest, InvalidInput
from proxy.responses import http_status
from proxy.settings import UpstreamSettings

rattler = pytest.importorskip("rattler")


def inspect(path: Path, filename: str | None = None) -> CondaPackage:
    data = path.read_bytes()
    return inspect_package(
        path, filename or path.name,
        sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(), size=len(data),
    )


def records_of(packages: list[CondaPackage]) -> list[CondaRecord]:
    return [p.as_record() for p in packages]


unzstd, unpack = fx.unzstd, fx.unpack


SPECS = [
    fx.PkgSpec("foo", "1.0", "h1_0", 0, "linux-64", depends=("bar >=1",)),
    fx.PkgSpec("foo", "1.10", "h1_0", 0, "linux-64", depends=("bar >=1",)),
    fx.PkgSpec("foo", "1.10", "h1_1", 1, "linux-64", depends=("bar >=1",)),
    fx.PkgSpec("foo", "1.10", "h2_1", 1, "linux-64", depends=("bar >=1",)),
    fx.PkgSpec("foo", "1.9", "h1_5", 5, "linux-64", depends=("bar >=1",)),
    fx.PkgSpec("foo", "1.11.0.dev1", "h1_0", 0, "linux-64"),
    fx.PkgSpec("bar", "1.2", "0", 0, "noarch"),
    fx.PkgSpec("bar", "2.0a1", "0", 0, "noarch"),
    fx.PkgSpec("bar", "1.2", "1", 1, "noarch"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every spec in both formats."""
    out = tmp_path_factory.mktemp("pkgs")
    return [fx.build_package(out, spec, fmt) for spec in SPECS for fmt in ("conda", "tar.bz2")]


@pytest.fixture(scope="module")
def inspected(built: list[Path]) -> list[CondaPackage]:
    return [inspect(p) for p in built]


# --------------------------------------------------------------------------- package validation


@pytest.mark.parametrize("fmt", ["conda", "tar.bz2"])
def test_inspect_real_package(tmp_path: Path, fmt: fx.PackageFormat) -> None:
    spec = fx.PkgSpec("hello-tool", "2.3.1", "h0abc_2", 2, "linux-64", depends=("libzip >=1.0",),
                      constrains=("hello-extra <3",), extra_index={"url": "https://leak", "fn": "x", "channel": "y"})
    path = fx.build_package(tmp_path, spec, fmt)
    pkg = inspect(path)
    assert (pkg.name, pkg.version, pkg.build, pkg.build_number, pkg.subdir) == (
        "hello-tool", "2.3.1", "h0abc_2", 2, "linux-64")
    assert pkg.filename == f"hello-tool-2.3.1-h0abc_2.{fmt}"
    data = path.read_bytes()
    assert pkg.record["sha256"] == hashlib.sha256(data).hexdigest()
    assert pkg.record["md5"] == hashlib.md5(data).hexdigest()
    assert pkg.record["size"] == len(data)
    assert pkg.record["depends"] == ["libzip >=1.0"]
    assert pkg.record["constrains"] == ["hello-extra <3"]
    for key in ("url", "fn", "channel"):
        assert key not in pkg.record  # install/fetch keys never reach repodata
    # the record is index.json + hashes, as an independent reader sees it
    expected = fx.repodata_record(path)
    for key in ("url", "fn", "channel"):
        expected.pop(key)
    assert pkg.record == expected
    assert orjson.loads(pkg.record_bytes) == pkg.record


@pytest.mark.parametrize("kind", fx.MALFORMED_KINDS)
def test_malformed_package_rejected(tmp_path: Path, kind: str) -> None:
    bad = fx.make_malformed(tmp_path, kind)
    with pytest.raises(BadRequest) as err:
        inspect(bad.path, bad.filename)
    assert bad.message in err.value.message
    assert err.value.message.startswith(bad.filename)  # names the file
    assert http_status(err.value) == 400


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "1.0-1"}, "'version' must not contain '-'"),
        ({"version": "1..0"}, "'version' is invalid"),
        ({"build_number": -1}, "'build_number'"),
        ({"build_number": "3"}, "'build_number'"),
        ({"depends": "bar"}, "'depends' must be a list of strings"),
        ({"constrains": [1]}, "'constrains' must be a list of strings"),
        ({"subdir": "Linux 64"}, "'subdir' is invalid"),
        ({"name": "bad name"}, "'name' is invalid"),
        ({"timestamp": "yesterday"}, "'timestamp'"),
    ],
)
def test_invalid_index_fields_rejected(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    spec = fx.PkgSpec("broken", "1.0", "0")
    index = {**spec.index_json(), **change}
    payload = fx.payload_files(spec)
    info = [(n, json.dumps(index).encode() if n == "info/index.json" else d, m)
            for n, d, m in fx.info_files(spec, payload)]
    stem = f"{index['name']}-{index['version']}-{index['build']}"
    path = fx.write_conda(tmp_path / "upload.conda", stem, fx.make_tar(info), fx.make_tar(payload))
    with pytest.raises(BadRequest, match=message):
        inspect(path, f"{stem}.conda")


def test_upload_name_must_match_inner_components(tmp_path: Path) -> None:
    good = fx.build_package(tmp_path, fx.PkgSpec("foo", "1.0", "0"), "conda")
    with pytest.raises(BadRequest, match="info-foo-2.0-0.tar.zst is missing"):
        inspect(good, "foo-2.0-0.conda")
    with pytest.raises(BadRequest, match="invalid package file name"):
        inspect(good, "../foo-1.0-0.conda")


def test_hard_link_outside_archive_rejected(tmp_path: Path) -> None:
    spec = fx.PkgSpec("linky", "1.0", "0")
    payload = fx.payload_files(spec)
    pkg_tar = fx.make_tar(payload, links=[("lib/evil", "../../etc/passwd", tarfile.LNKTYPE)])
    path = fx.write_conda(tmp_path / spec.filename("conda"), spec.stem,
                          fx.make_tar(fx.info_files(spec, payload)), pkg_tar)
    with pytest.raises(BadRequest, match=r"links outside its folder"):
        inspect(path)


def test_relative_symlink_allowed(tmp_path: Path) -> None:
    spec = fx.PkgSpec("linky", "1.0", "0")
    payload = fx.payload_files(spec)
    pkg_tar = fx.make_tar(payload, links=[("bin/linky", "linky-hello", tarfile.SYMTYPE)])
    path = fx.write_conda(tmp_path / spec.filename("conda"), spec.stem,
                          fx.make_tar(fx.info_files(spec, payload)), pkg_tar)
    assert inspect(path).name == "linky"


# --------------------------------------------------------------------------- version order


ORDERED = [  # conda's VersionOrder docstring chain, oldest first
    "0.4", "0.4.1.rc", "0.4.1", "0.5a1", "0.5b3", "0.5C1", "0.5", "0.9.6", "0.960923",
    "1.0", "1.1dev1", "1.1_", "1.1a1", "1.1.0dev1", "1.1.a1", "1.1.0rc1", "1.1.0",
    "1.1.0post1", "1.1post1", "1996.07.12", "1!0.4.1", "1!3.1.1.6", "2!0.4.1",
]


def test_version_order_matches_conda_doc_chain() -> None:
    for older, newer in itertools.pairwise(ORDERED):
        assert VersionOrder(older) < VersionOrder(newer), (older, newer)
    assert VersionOrder("0.4") == VersionOrder("0.4.0")
    assert VersionOrder("0.4.1.rc") == VersionOrder("0.4.1.RC")
    assert hash(VersionOrder("1.1")) == hash(VersionOrder("1.1.0.0"))


def test_version_order_agrees_with_rattler() -> None:
    corpus = ORDERED + ["3.9", "3.10", "3.10.0a0", "1.0.1_", "1.0.1a", "1.2.3+local.1", "1.2.3+local.2", "1.2.3",
                        "1.2.3+1", "1.0-1", "2023.1.1", "1.0.0.dev", "1.0dev", "1.0.0_post", "10", "0.0.0"]
    for a, b in itertools.product(corpus, corpus):
        mine = (VersionOrder(a) < VersionOrder(b), VersionOrder(a) == VersionOrder(b))
        theirs = (rattler.Version(a) < rattler.Version(b), rattler.Version(a) == rattler.Version(b))
        assert mine == theirs, (a, b)


@pytest.mark.parametrize("bad", ["", "1..0", "1!2!3", "a!1", "1+2+3", "+1", "1.0 beta", "1.0#"])
def test_invalid_versions(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        VersionOrder(bad)


# --------------------------------------------------------------------------- repodata


def test_parse_repodata_keeps_every_record(tmp_path: Path, built: list[Path]) -> None:
    root = fx.write_channel(tmp_path / "ch", built)
    body = (root / "linux-64" / "repodata.json").read_bytes()  # pretty-printed, sorted keys
    doc = json.loads(body)
    rd = parse_repodata(body)
    assert rd.info == {"subdir": "linux-64"}
    assert {fn: orjson.loads(raw) for fn, raw in rd.packages.items()} == doc["packages"]
    assert {fn: orjson.loads(raw) for fn, raw in rd.packages_conda.items()} == doc["packages.conda"]
    assert all(name == "foo" for name in rd.names().values())
    assert all(b"\n" not in raw and b": " not in raw for _, _, raw in rd.iter_records())  # compact bytes
    assert len(rd) == len(doc["packages"]) + len(doc["packages.conda"])
    # noarch/ exists and parses even when it is the only other subdir
    assert len(parse_repodata((root / "noarch" / "repodata.json").read_bytes())) == 6


def test_parse_repodata_skips_bad_records_and_reads_extras() -> None:
    body = b"""{ "info" : {"subdir":"osx-arm64","base_url":"https://files.example/x/"} ,
      "packages":{},
      "packages.conda": {
        "ok-1-0.conda": {"name":"ok","version":"1","build":"0","build_number":0,"depends":[],
                         "url":"https://upstream.example/secret/ok-1-0.conda","channel":"https://upstream.example"},
        "noname-1-0.conda": {"version":"1"},
        "../evil-1-0.conda": {"name":"evil","version":"1"},
        "list-1-0.conda": [1,2],
        "x.whl": {"name":"x"}
      },
      "removed": ["old-1-0.tar.bz2", 3],
      "repodata_version": 2, "v3": {"whl": {}} }"""
    rd = parse_repodata(body)
    assert list(rd.records) == ["ok-1-0.conda"]
    assert orjson.loads(rd.records["ok-1-0.conda"][1]) == {  # links to the upstream are dropped
        "name": "ok", "version": "1", "build": "0", "build_number": 0, "depends": []}
    assert rd.removed == ("old-1-0.tar.bz2",)
    assert rd.repodata_version == 2
    assert rd.base_url == "https://files.example/x/"
    assert parse_repodata(b"{}").records == {}


@pytest.mark.parametrize("body", [b"[]", b"{", b'{"packages": {"a.conda": }}', b'{"info": 1,}', b"\xff\xfe"])
def test_parse_repodata_rejects_garbage(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_repodata(body)


def test_render_repodata_concatenates_records(inspected: list[CondaPackage]) -> None:
    recs = records_of([p for p in inspected if p.subdir == "linux-64"])
    body = render_repodata_json("linux-64", recs, removed=["gone-1-0.tar.bz2"])
    doc = orjson.loads(body)
    assert doc["info"] == {"subdir": "linux-64"}
    assert doc["repodata_version"] == 1
    assert doc["removed"] == ["gone-1-0.tar.bz2"]
    assert set(doc["packages"]) == {fn for fn, _, _ in recs if fn.endswith(".tar.bz2")}
    assert set(doc["packages.conda"]) == {fn for fn, _, _ in recs if fn.endswith(".conda")}
    for fn, _, raw in recs:
        section = "packages.conda" if fn.endswith(".conda") else "packages"
        assert doc[section][fn] == orjson.loads(raw)
        assert raw in body  # the record's own bytes, not a re-serialisation
    # order of the merged selection is kept; a repeated file name keeps the first record
    shadow = (recs[0][0], recs[0][1], b'{"name":"foo","shadowed":true}')
    again = orjson.loads(render_repodata_json("linux-64", [recs[0], shadow, *recs[1:]]))
    section = "packages.conda" if recs[0][0].endswith(".conda") else "packages"
    assert "shadowed" not in again[section][recs[0][0]]
    # sections are sorted by file name (rattler pairs .tar.bz2/.conda twins assuming it)
    assert list(doc["packages.conda"]) == sorted(fn for fn, _, _ in recs if fn.endswith(".conda"))
    assert list(doc["packages"]) == sorted(fn for fn, _, _ in recs if fn.endswith(".tar.bz2"))
    # and it round-trips through the parser
    assert {fn: raw for fn, _, raw in parse_repodata(body).iter_records()} == {fn: raw for fn, _, raw in recs}


def test_large_repodata_round_trip() -> None:
    """Many records: chunked rendering stays one valid document and parses back."""
    recs: list[CondaRecord] = []
    for i in range(6000):
        name = f"pkg{i % 700}"
        fn = f"{name}-1.{i}-h{i:x}_0.{'conda' if i % 3 else 'tar.bz2'}"
        record = {"name": name, "version": f"1.{i}", "build": f"h{i:x}_0", "build_number": 0,
                  "depends": [f"dep{j} >=1.{j}" for j in range(12)], "sha256": f"{i:064x}", "md5": f"{i:032x}",
                  "size": i, "subdir": "linux-64"}
        recs.append((fn, name, orjson.dumps(record)))
    chunks = list(iter_repodata_json("linux-64", recs))
    assert len(chunks) > 3
    body = b"".join(chunks)
    assert len(orjson.loads(body)["packages.conda"]) == 4000
    assert {fn: raw for fn, _, raw in parse_repodata(body).iter_records()} == {fn: raw for fn, _, raw in recs}
    shard_set = build_shards(recs, subdir="linux-64")
    assert len(shard_set.by_name) == 700
    assert sum(len(parse_shard(b)) for b in shard_set.shards.values()) == 6000


def test_empty_repodata_is_valid() -> None:
    doc = orjson.loads(render_repodata_json("noarch", []))
    assert doc == {"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}, "removed": [],
                   "repodata_version": 1}


def test_zst_and_bz2_decode_to_the_same_document(inspected: list[CondaPackage]) -> None:
    body = render_repodata_json("linux-64", records_of(inspected))
    zst = encode(body, "zstd")
    bz = encode(body, "bz2")
    assert zst[:4] == b"\x28\xb5\x2f\xfd" and bz[:3] == b"BZh"
    assert unzstd(zst) == body
    assert bz2.decompress(bz) == body
    assert decode_body(zst, "zstd") == body == decode_body(bz, "bz2") == decode_body(body, "identity")
    assert json.loads(unzstd(zst)) == json.loads(body)
    with pytest.raises(BadRequest, match="size limit"):
        decode_body(zst, "zstd", limit=100)
    with pytest.raises(BadRequest, match="truncated"):
        decode_body(bz[: len(bz) // 2], "bz2")


def test_current_repodata_picks_newest(inspected: list[CondaPackage]) -> None:
    recs = records_of(inspected)
    current = select_current(recs)
    kept = sorted(fn for fn, _, _ in current)
    # foo: 1.11.0.dev1 < 1.11 but > 1.10, so the dev build is newest; bar: 2.0a1 > 1.2
    assert kept == sorted([
        "foo-1.11.0.dev1-h1_0.conda", "foo-1.11.0.dev1-h1_0.tar.bz2",
        "bar-2.0a1-0.conda", "bar-2.0a1-0.tar.bz2",
    ])
    without_dev = [r for r in recs if "dev" not in r[0] and "2.0a1" not in r[0]]
    kept = sorted(fn for fn, _, _ in select_current(without_dev))
    # 1.10 > 1.9 (numeric), then build_number 1 beats 0; both variants of 1.10 build 1 stay
    assert kept == sorted([
        "foo-1.10-h1_1.conda", "foo-1.10-h1_1.tar.bz2", "foo-1.10-h2_1.conda", "foo-1.10-h2_1.tar.bz2",
        "bar-1.2-1.conda", "bar-1.2-1.tar.bz2",
    ])
    doc = orjson.loads(render_current_repodata("linux-64", without_dev))
    assert sorted([*doc["packages"], *doc["packages.conda"]]) == kept


def test_channeldata(inspected: list[CondaPackage]) -> None:
    by_subdir: dict[str, list[CondaRecord]] = {}
    for p in inspected:
        by_subdir.setdefault(p.subdir, []).append((p.filename, p.name, p.record_bytes))
    by_subdir["osx-64"] = []
    doc = orjson.loads(render_channeldata(by_subdir))
    assert doc["channeldata_version"] == 1
    assert doc["subdirs"] == ["linux-64", "noarch", "osx-64"]
    assert doc["packages"]["foo"]["version"] == "1.11.0.dev1"
    assert doc["packages"]["foo"]["subdirs"] == ["linux-64"]
    assert doc["packages"]["bar"]["version"] == "2.0a1"
    assert doc["packages"]["bar"]["timestamp"] == 1_700_000_000  # ms -> s
    assert doc["packages"]["bar"]["license"] == "MIT"


# --------------------------------------------------------------------------- CEP-16 shards


def test_shards_agree_with_repodata(inspected: list[CondaPackage]) -> None:
    recs = records_of([p for p in inspected if p.subdir == "linux-64"])
    shard_set = build_shards(recs, subdir="linux-64", removed=["foo-0.1-0.tar.bz2", "zzz-1-0.conda"])
    index = unpack(shard_set.index)
    assert index["version"] == 1
    assert index["info"]["subdir"] == "linux-64"
    assert index["info"]["base_url"] == "./"
    assert index["info"]["shards_base_url"] == "./shards/"
    assert index["info"]["created_at"].endswith("Z")
    assert set(index["shards"]) == {"foo"}
    digest = index["shards"]["foo"]
    assert isinstance(digest, bytes) and len(digest) == 32
    body = shard_set.shards[digest.hex()]
    assert hashlib.sha256(body).digest() == digest  # the hash is over the compressed bytes
    shard = unpack(body)
    assert set(shard) == {"packages", "packages.conda", "removed"}
    assert shard["removed"] == ["foo-0.1-0.tar.bz2"]
    repodata = orjson.loads(render_repodata_json("linux-64", recs))
    for section in ("packages", "packages.conda"):
        assert set(shard[section]) == set(repodata[section])
        for fn, record in shard[section].items():
            assert isinstance(record["sha256"], bytes) and len(record["sha256"]) == 32
            assert isinstance(record["md5"], bytes) and len(record["md5"]) == 16
            as_json = {**record, "sha256": record["sha256"].hex(), "md5": record["md5"].hex()}
            assert as_json == repodata[section][fn]


def test_shards_are_deterministic_and_content_addressed(inspected: list[CondaPackage]) -> None:
    recs = records_of(inspected)
    one = build_shard([r for r in recs if r[1] == "bar"])
    two = build_shard(list(reversed([r for r in recs if r[1] == "bar"])))
    assert one == two
    assert one[0] == hashlib.sha256(one[1]).hexdigest()


def test_parse_our_shards_back(inspected: list[CondaPackage]) -> None:
    recs = records_of(inspected)
    shard_set = build_shards(recs, subdir="noarch")
    index = parse_shard_index(shard_set.index)
    assert index.shards == shard_set.by_name
    url = "https://up.example/ch/noarch/repodata_shards.msgpack.zst"
    digest = index.shards["bar"]
    assert index.shard_url(url, "bar") == f"https://up.example/ch/noarch/shards/{digest}.msgpack.zst"
    assert index.package_base_url(url) == "https://up.example/ch/noarch/"
    shard = parse_shard(shard_set.shards[digest], expected_sha256=digest)
    assert {fn: orjson.loads(raw) for fn, _, raw in shard} == {
        fn: orjson.loads(raw) for fn, name, raw in recs if name == "bar"}
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        parse_shard(shard_set.shards[digest], expected_sha256="0" * 64)
    with pytest.raises(InvalidInput):
        parse_shard(b"not zstd")
    with pytest.raises(InvalidInput):
        parse_shard_index(zstandard.ZstdCompressor().compress(msgpack.packb([1, 2])))


async def test_parse_rattler_index_shards(tmp_path: Path, built: list[Path]) -> None:
    """An upstream that offers CEP-16 shards (written by rattler's indexer) parses into records."""
    from rattler.index import index_fs

    root = tmp_path / "ch"
    for pkg in built:
        sub = fx.read_index_json(pkg)["subdir"]
        (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pkg, root / sub / pkg.name)
    await index_fs(root, write_shards=True)
    index = parse_shard_index((root / "linux-64" / "repodata_shards.msgpack.zst").read_bytes())
    assert set(index.shards) == {"foo"}
    shard_path = root / "linux-64" / "shards" / shard_filename(index.shards["foo"])
    shard = parse_shard(shard_path.read_bytes(), expected_sha256=index.shards["foo"])
    theirs = {fn: orjson.loads(raw) for fn, _, raw in shard}
    ours = {p.name: fx.repodata_record(p) for p in built if p.name.startswith("foo-")}
    assert set(theirs) == set(ours)
    for fn, record in theirs.items():
        for key in ("name", "version", "build", "build_number", "depends", "sha256", "md5", "size", "subdir"):
            assert record[key] == ours[fn][key], (fn, key)


def test_repodata_from_upstream_shards(tmp_path: Path, built: list[Path]) -> None:
    """A shard-only upstream becomes the same sorted sections a repodata.json gives."""
    root = tmp_path / "ch"
    hashes = fx.write_sharded_channel(root, built, base_url="../files/", shards_base_url="../shards/")
    sub = "linux-64"
    index_url = f"https://up.example/ch/{sub}/repodata_shards.msgpack.zst"
    index = parse_shard_index((root / sub / "repodata_shards.msgpack.zst").read_bytes())
    assert index.shards == hashes[sub]
    assert index.shard_url(index_url, "foo") == f"https://up.example/ch/shards/{hashes[sub]['foo']}.msgpack.zst"
    stored = [StoredShard(name, sha, str(root / "shards" / shard_filename(sha))) for name, sha in index.shards.items()]
    repodata = repodata_from_shards(index, stored, tmp_path)
    expected = {p.name: fx.repodata_record(p) for p in built if fx.read_index_json(p)["subdir"] == sub}
    assert {fn: orjson.loads(raw) for fn, (_, raw) in repodata.records.items()} == expected  # hashes in hex
    for section in repodata.sections.values():
        keys = [section.key(s) for s in range(len(section))]
        assert keys == sorted(keys)
    assert repodata.base_url == "../files/"  # CEP-16: relative to the index URL, resolved by file_url
    upstream = UpstreamSubdir(UpstreamSettings(name="up", type="conda", url="https://up.example/ch"), index_url, "d",
                              repodata)
    assert upstream.file_url("foo-1.0-0.conda") == "https://up.example/ch/files/foo-1.0-0.conda"
    bad = stored[0]
    (tmp_path / "bad").write_bytes(b"not the shard")
    kept = set(tmp_path.glob("conda-records-*"))  # the sections of ``repodata``, alive
    with pytest.raises(BadRequest, match="sha256"):
        repodata_from_shards(index, [StoredShard(bad.name, bad.sha256, str(tmp_path / "bad"))], tmp_path)
    assert set(tmp_path.glob("conda-records-*")) == kept  # nothing left behind by the failed build

    # shards come in name order; "a" < "a-1" but "a-2.0-0.conda" > "a-1-1.0-0.conda": sorted by the permutation
    odd = [fx.build_package(tmp_path / "odd", fx.PkgSpec(name, version, "0")) for name, version in (("a", "2.0"), ("a-1", "1.0"))]
    fx.write_sharded_channel(tmp_path / "odd-ch", odd)
    odd_index = parse_shard_index((tmp_path / "odd-ch" / "noarch" / "repodata_shards.msgpack.zst").read_bytes())
    odd_stored = [StoredShard(n, sha, str(tmp_path / "odd-ch" / "noarch" / "shards" / shard_filename(sha)))
                  for n, sha in odd_index.shards.items()]
    sorted_repodata = repodata_from_shards(odd_index, odd_stored, tmp_path)
    section = sorted_repodata.sections[".conda"]
    assert [section.key(s) for s in range(len(section))] == [b"a-1-1.0-0.conda", b"a-2.0-0.conda"]
    assert sorted_repodata.lookup("a-2.0-0.conda") is not None and sorted_repodata.lookup("a-2.0-0.conda")[0] == "a"


def test_package_name_of() -> None:
    assert package_name_of("foo-bar-1.0-h1_0.conda") == "foo-bar"
    assert package_name_of("x-1-0.tar.bz2") == "x"
    assert package_name_of("nodash.conda") is None


def test_shard_index_layout_options() -> None:
    body = render_shard_index({"a": "11" * 32}, subdir="noarch", base_url="../files/", shards_base_url="s/")
    doc = unpack(body)
    assert doc["shards"] == {"a": b"\x11" * 32}
    assert doc["info"]["base_url"] == "../files/" and doc["info"]["shards_base_url"] == "s/"


# --------------------------------------------------------------------------- rattler end to end

ServerFactory = Callable[[web.Application], Awaitable[Any]]


async def _serve(aiohttp_server: ServerFactory, root: Path) -> tuple[str, list[str]]:
    log: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        log.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/ch/", root)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/ch", log


def _write_ours(root: Path, built: list[Path], inspected: list[CondaPackage], *, shards: bool) -> None:
    by_subdir: dict[str, list[CondaRecord]] = {"noarch": []}
    for path, pkg in zip(built, inspected):
        (root / pkg.subdir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / pkg.subdir / pkg.filename)
        by_subdir.setdefault(pkg.subdir, []).append((pkg.filename, pkg.name, pkg.record_bytes))
    for sub, recs in by_subdir.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        body = render_repodata_json(sub, recs)
        (root / sub / "repodata.json").write_bytes(body)
        (root / sub / "repodata.json.zst").write_bytes(encode(body, "zstd"))
        if shards:
            shard_set = build_shards(recs, subdir=sub)
            (root / sub / "repodata_shards.msgpack.zst").write_bytes(shard_set.index)
            (root / sub / "shards").mkdir()
            for digest, shard in shard_set.shards.items():
                (root / sub / "shards" / shard_filename(digest)).write_bytes(shard)


@pytest.mark.parametrize("sharded", [True, False])
async def test_rattler_reads_our_indexes(
    tmp_path: Path, aiohttp_server: ServerFactory, built: list[Path], inspected: list[CondaPackage], sharded: bool
) -> None:
    root = tmp_path / "ch"
    _write_ours(root, built, inspected, shards=sharded)
    url, log = await _serve(aiohttp_server, root)
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache",
                              default_config=rattler.SourceConfig(sharded_enabled=sharded))
    result = await gateway.query([rattler.Channel(url)], ["linux-64", "noarch"], ["foo"], recursive=True)
    got = {r.file_name: r for records in result for r in records}
    # foo and, via its depends, bar; from repodata.json rattler drops a .tar.bz2 that has a .conda twin
    expected = [p for p in inspected if sharded or p.filename.endswith(".conda")]
    assert set(got) == {p.filename for p in expected}
    for pkg in expected:
        rec = got[pkg.filename]
        assert rec.sha256.hex() == pkg.record["sha256"]
        assert rec.md5.hex() == pkg.record["md5"]
        assert rec.size == pkg.record["size"]
        assert rec.url == f"{url}/{pkg.subdir}/{pkg.filename}"
        assert str(rec.version) == pkg.version and rec.build_number == pkg.build_number
    if sharded:
        assert "/ch/linux-64/repodata_shards.msgpack.zst" in log
        assert "/ch/noarch/repodata_shards.msgpack.zst" in log
        assert sum("/shards/" in p for p in log) == 2  # one shard per name: foo, bar
        assert not any("repodata.json" in p for p in log)
    else:
        assert "/ch/linux-64/repodata.json.zst" in log and not any("shards" in p for p in log)
