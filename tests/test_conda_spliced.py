"""repodata.json.zst spliced from an upstream section compressed once (issue 15 part 5,
proxy/ecosystems/conda/spliced.py): every merge of a large upstream copies its compressed
chunks instead of compressing the whole document again. The document must stay byte for
byte the merge plan, in one zstd frame with its content size, readable by conda's decoder
(python-zstandard ``stream_reader``, which stops after the first frame) and by rattler.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import zstandard
from fixtures import conda_pkgs as fx
from harness import Channelgate, Policy, http

from proxy.ecosystems.conda import spliced
from proxy.ecosystems.conda.cep16 import build_shards, parse_shard_index, shard_filename
from proxy.ecosystems.conda.merge_plan import build_plan, merge_sources
from proxy.ecosystems.conda.parse import parse_repodata_file
from proxy.ecosystems.conda.sections import EXTENSIONS, CondaRecord, Repodata
from proxy.ecosystems.conda.shard_upstreams import StoredShard, repodata_from_shards
from proxy.errors import BadRequest

FILLER = 30_000  # ~9 MB of records: a few shared chunks per section


def filler_records(count: int, *, seed: int = 7) -> dict[str, dict[str, dict[str, Any]]]:
    """conda-forge-shaped records, names in random order (an unsorted upstream)."""
    rng = random.Random(seed)
    sections: dict[str, dict[str, dict[str, Any]]] = {"packages": {}, "packages.conda": {}}
    names = [f"fill-{i:05d}" for i in range(count // 10)]
    rng.shuffle(names)
    for name in names:
        for k in range(10):
            record = {"build": f"h{rng.getrandbits(28):07x}_0", "build_number": 0, "depends": ["libgcc-ng >=12"],
                      "md5": f"{rng.getrandbits(128):032x}", "name": name, "sha256": f"{rng.getrandbits(256):064x}",
                      "size": rng.randint(1000, 10**7), "subdir": "linux-64", "version": f"1.{k}"}
            ext = "tar.bz2" if k < 4 else "conda"
            sections["packages" if ext == "tar.bz2" else "packages.conda"][
                f"{name}-1.{k}-{record['build']}.{ext}"] = record
    return sections


def upstream_file(tmp_path: Path, count: int = FILLER) -> Repodata:
    doc = {"info": {"subdir": "linux-64"}, **filler_records(count), "removed": ["gone-1.0-0.tar.bz2"],
           "repodata_version": 1}
    path = tmp_path / "repodata.json.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(orjson.dumps(doc)))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return parse_repodata_file(path, "zstd", work)


def upload(name: str) -> list[CondaRecord]:
    record = orjson.dumps({"build": "h0_0", "build_number": 0, "depends": [], "name": name, "version": "1.0"})
    return [(f"{name}-1.0-h0_0.conda", name, record), (f"{name}-1.0-h0_0.tar.bz2", name, record)]


def plan_of(repodata: Repodata, local: list[CondaRecord], blocked: set[str] = frozenset()) -> Any:
    ids = repodata.name_ids({n.lower() for n in blocked})
    cut = {ext: sorted(s for s in range(len(repodata.sections[ext])) if repodata.sections[ext].nid(s) in ids)
           for ext in EXTENSIONS}
    sources, tables, excluded = merge_sources(local, [(repodata, cut)])
    return build_plan(sources, tables, excluded, info={"subdir": "linux-64"}, removed=["gone-1.0-0.tar.bz2"])


def conda_read(body: bytes) -> bytes:
    """How conda decodes repodata.json.zst: python-zstandard's stream_reader, first frame only."""
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
        return reader.read()


def test_spliced_zst_is_the_merge_plan_in_one_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    repodata = upstream_file(tmp_path)
    assert all(s.perm is not None for s in repodata.sections.values())  # unsorted: copied run by run
    # uploads sorting first, in the middle of a chunk and last; one takes an upstream name away
    local = upload("aaa-first") + upload("fill-1500x") + upload("zzz-last") + upload("fill-00042")
    plan = plan_of(repodata, local, blocked={"fill-00042", "aaa-first", "fill-1500x", "zzz-last"})
    expected = plan.render()
    out = tmp_path / "merged.zst"
    assert spliced.write_zst(plan, out, tmp_path)
    body = out.read_bytes()
    assert conda_read(body) == expected  # one frame holds the whole document
    assert zstandard.get_frame_parameters(body).content_size == len(expected)
    assert zstandard.ZstdDecompressor().decompress(body) == expected  # one-shot readers need the size
    doc = json.loads(expected)
    # the upload's, none of the upstream's (the merge rule)
    assert [f for f in doc["packages.conda"] if f.startswith("fill-00042-")] == ["fill-00042-1.0-h0_0.conda"]
    assert "fill-1500x-1.0-h0_0.conda" in doc["packages.conda"] and "fill-01501-1.9" in str(list(doc["packages.conda"]))
    # the uploads first, then the upstream's entries in the order it listed them (merge_plan.layout)
    uploads = sorted(f for f, _, _ in local if f.endswith(".conda"))
    listed = [f for f in filler_records(FILLER)["packages.conda"] if not f.startswith("fill-00042-")]
    assert list(doc["packages.conda"]) == uploads + listed


def test_an_upstream_is_compressed_in_shared_chunks_while_it_is_parsed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """section_files.py: the chunks exist when the parse returns, before any merge, and are
    the section's data as the upstream listed it, chunk by chunk."""
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    repodata = upstream_file(tmp_path)
    for section in repodata.sections.values():
        comp = section.compressed
        assert isinstance(comp, spliced.CompressedSection) and comp.chunks >= 2
        assert section.data.path is not None
        data = section.data.path.read_bytes()
        assert comp.size == len(data) == section.offsets[-1]
        assert b"".join(comp.chunk_bytes(k) for k in range(comp.chunks)) == data
        assert all(len(comp.chunk_bytes(k)) == spliced.CHUNK for k in range(comp.chunks - 1))


def test_a_failed_parse_leaves_no_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    doc = orjson.dumps({"info": {"subdir": "linux-64"}, **filler_records(FILLER)})
    path = tmp_path / "repodata.json.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(doc[:-100]))  # cut short: not a document
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadRequest):
        parse_repodata_file(path, "zstd", work)
    assert not list(work.iterdir())


def test_a_sharded_upstream_is_compressed_while_read_and_merges_copy_its_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CEP-16 upstreams go the same way (shard_upstreams.py): their sections are compressed in
    shared chunks as the shards are read, in shard order, and a merge is spliced from them."""
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    records = [(filename, record["name"], orjson.dumps(record))
               for section in filler_records(FILLER).values() for filename, record in section.items()]
    shard_set = build_shards(records, subdir="linux-64")
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    stored = []
    for name, digest in shard_set.by_name.items():
        path = shard_dir / shard_filename(digest)
        path.write_bytes(shard_set.shards[digest])
        stored.append(StoredShard(name, digest, str(path)))
    repodata = repodata_from_shards(parse_shard_index(shard_set.index), stored, tmp_path)
    for section in repodata.sections.values():
        comp = section.compressed
        assert isinstance(comp, spliced.CompressedSection) and comp.chunks >= 2
        assert section.data.path is not None
        assert b"".join(comp.chunk_bytes(k) for k in range(comp.chunks)) == section.data.path.read_bytes()
    plan = plan_of(repodata, upload("fill-00042"), blocked={"fill-00042"})  # as the server does for an upload's name
    out = tmp_path / "merged.zst"
    assert spliced.write_zst(plan, out, tmp_path)  # spliced, not compressed whole
    body = conda_read(out.read_bytes())
    assert body == plan.render()
    listed = list(json.loads(body)["packages.conda"])
    assert listed[0] == "fill-00042-1.0-h0_0.conda" and len(listed) == 1 + sum(
        1 for f, name, _ in records if f.endswith(".conda") and name != "fill-00042")


def test_every_merge_copies_the_section_compressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    repodata = upstream_file(tmp_path)
    section = repodata.sections[".conda"]
    outputs = []
    for n, name in enumerate(("fill-0030x", "fill-0050x")):  # two channels, an upload each
        plan = plan_of(repodata, upload(name))
        out = tmp_path / f"merged-{n}.zst"
        spliced.write_zst(plan, out, tmp_path)
        assert conda_read(out.read_bytes()) == plan.render()
        outputs.append(out.read_bytes())
    comp = spliced.compressed_section(section)
    assert comp is section.compressed and comp is not None and comp.chunks >= 3
    # a chunk past both uploads (they sort into the first): its blocks appear verbatim in both documents
    k = comp.chunks - 2
    assert k >= 1
    blocks = comp.path.read_bytes()[comp.zoffsets[k]:comp.zoffsets[k + 1]]
    assert all(blocks in body for body in outputs)


def test_small_sections_are_compressed_with_the_document(tmp_path: Path) -> None:
    repodata = upstream_file(tmp_path, 3000)  # below the default MIN_SHARED per section
    assert not spliced.write_spliced(plan_of(repodata, upload("x")), tmp_path / "x.zst", tmp_path, level=1, threads=2)
    assert all(s.compressed is None for s in repodata.sections.values())


@pytest.fixture
def big_world(tmp_path: Path, upstream_factory: Any) -> Any:
    pkgs = tmp_path / "pkgs"
    forge = [fx.build_package(pkgs, fx.PkgSpec("forge-tool", "1.0", "h0_0", subdir="linux-64"))]
    root = fx.write_channel(tmp_path / "upstream" / "forge", forge)
    doc = json.loads((root / "linux-64" / "repodata.json").read_bytes())
    filler = filler_records(2 * FILLER)  # sections above the default MIN_SHARED
    for part in ("packages", "packages.conda"):
        doc[part].update(filler[part])
    body = orjson.dumps(doc)
    (root / "linux-64" / "repodata.json").write_bytes(body)
    (root / "linux-64" / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    upstream = upstream_factory(tmp_path / "upstream")
    policy = Policy({"upstreams": {"forge": {"type": "conda", "url": f"{upstream.url}/forge"}},
                     "groups": {"devs": ["alice"]},
                     "channels": {c: {"public": True, "upstreams": ["forge"], "write": ["group:devs"]}
                                  for c in ("team-a", "team-b")}})
    token = policy.add_token("alice", ["api:write", "conda:download"])
    server = Channelgate(tmp_path / "cg", policy).start()
    yield server, token, pkgs
    server.stop()


async def test_conda_and_rattler_read_spliced_indexes(big_world: Any, tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler")
    from rattler.networking.fetch_repo_data import FetchRepoDataOptions

    server, token, pkgs = big_world
    mine = {}
    for channel in ("team-a", "team-b"):  # each channel's own upload: documents that differ
        pkg = fx.build_package(pkgs / channel, fx.PkgSpec(f"{channel}-tool", "1.0", "h0_0", subdir="linux-64"))
        with open(pkg, "rb") as fh:
            resp = requests.post(f"{server.url}/api/repo/{channel}", files={"content": (pkg.name, fh)},
                                 headers={"Authorization": f"token {token}"}, timeout=60)
        assert resp.status_code == 201, resp.text
        mine[channel] = pkg.name
    for channel in ("team-a", "team-b"):
        status, _, body = http("GET", f"{server.url}/{channel}/linux-64/repodata.json.zst")
        assert status == 200
        status, _, plain = http("GET", f"{server.url}/{channel}/linux-64/repodata.json")
        assert status == 200 and conda_read(body) == plain  # byte for byte the plain rendering
        assert mine[channel] in json.loads(plain)["packages.conda"]
        found = await rattler.fetch_repo_data(
            channels=[rattler.Channel(f"{server.url}/{channel}")], platforms=[rattler.Subdir("linux-64")],
            cache_path=tmp_path / f"rattler-{channel}", callback=None,
            fetch_options=FetchRepoDataOptions(cache_action="no-cache", zstd_enabled=True),
        )
        names = {f"{channel}-tool", "forge-tool", "fill-00300", "fill-04000"}
        records = [r for sparse in found for n in names for r in sparse.load_records(rattler.PackageName(n))]
        assert {r.name.normalized for r in records} == names
    assert server.log().count("(.zst spliced from shared chunks)") == 2


def test_a_merge_keeping_little_of_a_section_does_not_compress_all_of_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spliced, "MIN_SHARED", 1)
    repodata = upstream_file(tmp_path)
    # the merge rule takes all but two names away (as a filter keeping a few names would)
    keep = {"fill-00007", "fill-02000"}
    plan = plan_of(repodata, [], blocked={n for n in repodata.name_table if n not in keep})
    out = tmp_path / "few.zst"
    assert all(isinstance(s.compressed, spliced.CompressedSection) for s in repodata.sections.values())  # parsed
    assert not spliced.write_zst(plan, out, tmp_path)  # yet compressed whole: a few records, not their chunks
    assert conda_read(out.read_bytes()) == plan.render()
    names = {r["name"] for part in ("packages", "packages.conda") for r in json.loads(plan.render())[part].values()}
    assert names == keep
