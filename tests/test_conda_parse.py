"""conda library: the streaming repodata parser and the merge plan (split from test_conda_lib.py)."""
from __future__ import annotations

import bz2
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from fixtures import conda_pkgs as fx
from fixtures.conda_reference import render_current_repodata, render_repodata_json

from proxy.ecosystems.conda.parse import parse_repodata
from proxy.ecosystems.conda.sections import CondaRecord, is_package_filename
from proxy.errors import BadRequest

rattler = pytest.importorskip("rattler")



unzstd, unpack = fx.unzstd, fx.unpack





# --------------------------------------------------------------------------- streaming parser, merge plan


def _doc_records(count: int, seed: int, *, names: int = 40) -> dict[str, dict[str, Any]]:
    """``count`` records over ``names`` names: a mix of both extensions, nested values."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for i in range(count):
        name = f"p{rng.randrange(names)}"
        fn = f"{name}-1.{i}-h{rng.getrandbits(20):05x}_0.{'conda' if rng.random() < 0.6 else 'tar.bz2'}"
        out[fn] = {"name": name, "version": f"1.{i}", "build": "h_0", "build_number": rng.randrange(3),
                   "depends": [f"dep{j} >=1" for j in range(rng.randrange(5))], "sha256": f"{i:064x}",
                   "md5": f"{i:032x}", "size": i, "subdir": "linux-64", "note": "a }, \"tricky\": {} string"}
    return out


def _expected(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a parse must keep: package records with a string name, minus upstream links."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("packages", "packages.conda"):
        for fn, record in doc.get(section, {}).items():
            if isinstance(record, dict) and isinstance(record.get("name"), str) and is_package_filename(fn):
                out[fn] = {k: v for k, v in record.items() if k not in ("url", "channel")}
    return out


def _parsed(rd: Any) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    for section in rd.sections.values():
        keys = [section.key(s) for s in range(len(section))]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # sorted, one entry per file name
    for fn, name, raw in rd.iter_records():
        record = orjson.loads(raw)
        assert record["name"] == name and b"\n" not in raw
        got[fn] = record
    return got



@pytest.mark.parametrize("layout", ["compact-sorted", "compact-unsorted", "pretty", "spaced"])
def test_streaming_parser_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Tiny windows force hundreds of cuts; every layout parses to the same records."""
    from proxy.ecosystems.conda import parse as parse_mod
    from proxy.ecosystems.conda import sections as sections_mod
    monkeypatch.setattr(parse_mod, "WINDOW", 700)
    monkeypatch.setattr(parse_mod, "READ_CHUNK", 300)
    monkeypatch.setattr(sections_mod, "READ_CHUNK", 900)
    records = _doc_records(600, seed=len(layout))
    items = sorted(records.items()) if layout == "compact-sorted" else list(records.items())
    doc: dict[str, Any] = {
        "removed": ["gone-1-0.conda"],
        "packages.conda": {fn: r for fn, r in items if fn.endswith(".conda")},
        "info": {"subdir": "linux-64"},
        "packages": {fn: r for fn, r in items if fn.endswith(".tar.bz2")},
        "repodata_version": 1,
    }
    # the odd ones: links to the upstream, nested objects, a record larger than the window,
    # entries that are not package records, and a .conda file listed under "packages"
    doc["packages.conda"]["linked-1-0.conda"] = {"name": "linked", "url": "https://up/x", "channel": "https://up"}
    doc["packages.conda"]["nested-1-0.conda"] = {"name": "nested", "extra": {"a": {"b": [1, {"c": "}}"}]}}}
    doc["packages.conda"]["huge-1-0.conda"] = {"name": "huge", "depends": [f"d{i} >=1" for i in range(9000)]}
    doc["packages.conda"]["noname-1-0.conda"] = {"version": "1"}
    doc["packages.conda"]["list-1-0.conda"] = [1, 2]
    doc["packages"]["../evil-1-0.tar.bz2"] = {"name": "evil"}
    doc["packages"]["moved-1-0.conda"] = {"name": "moved"}
    if layout == "pretty":
        body = json.dumps(doc, indent=2).encode()
    elif layout == "spaced":
        body = json.dumps(doc).encode()  # ", " and ": " separators, one line
    else:
        body = orjson.dumps(doc)
    expected = _expected(doc)
    expected["moved-1-0.conda"] = {"name": "moved"}
    rd = parse_repodata(body)
    assert _parsed(rd) == expected
    assert rd.removed == ("gone-1-0.conda",) and rd.info == {"subdir": "linux-64"}
    assert rd.lookup("linked-1-0.conda") == ("linked", b'{"name":"linked"}')
    for encoding, data in (("identity", body), ("zstd", zstandard.ZstdCompressor().compress(body)),
                           ("bz2", bz2.compress(body))):
        path = tmp_path / f"repodata.{encoding}"
        path.write_bytes(data)
        on_disk = parse_mod.parse_repodata_file(path, encoding, tmp_path)  # type: ignore[arg-type]
        assert _parsed(on_disk) == expected
        for section in on_disk.sections.values():  # kept in document order, read in sorted order
            keys = [key for _, key, _ in section.entries()]
            assert keys == sorted(keys)
            n = len(section)
            for lo, hi in ((0, n), (1, n - 1), (n // 3, n // 2), (2, 3)):
                runs = list(section.index_runs(lo, hi))  # maximal runs of consecutive entries
                assert [i for a, b in runs for i in range(a, b)] == [section.index(s) for s in range(lo, hi)]
                assert all(a2 != b1 for (_, b1), (a2, _) in zip(runs, runs[1:]))


def test_streaming_parser_duplicates_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.ecosystems.conda import parse as parse_mod
    monkeypatch.setattr(parse_mod, "WINDOW", 200)
    monkeypatch.setattr(parse_mod, "READ_CHUNK", 100)
    entries = ",".join(f'"a-{i}-0.conda":{{"name":"a","i":{i}}}' for i in range(50))
    body = ('{"packages.conda":{' + entries + ',"a-3-0.conda":{"name":"a","i":"last"}}}').encode()
    rd = parse_repodata(body)
    assert len(rd) == 50 and orjson.loads(rd.records["a-3-0.conda"][1]) == {"name": "a", "i": "last"}  # JSON: last wins
    with pytest.raises(BadRequest, match="size limit"):
        parse_repodata(body, limit=100)
    for bad in (body[:-1], body + b"x", body.replace(b'"i":7', b'"i":7,')):
        with pytest.raises(BadRequest):
            parse_repodata(bad)
    path = tmp_path / "bad.zst"
    path.write_bytes(b"not zstd at all")
    with pytest.raises(BadRequest):
        parse_mod.parse_repodata_file(path, "zstd", tmp_path)
    assert not list(tmp_path.glob("conda-records-*"))  # nothing left behind


@pytest.mark.parametrize("case", ["disjoint", "overlapping", "duplicate"])
def test_unsorted_upstream_sorted_by_its_runs(case: str) -> None:
    """Names in random order, each name's files together and sorted (conda-forge-shaped but
    unsorted): sections.py sorts the runs, not every key; overlapping runs and repeated keys
    fall back to a full sort. Every case reads back in file-name order, last duplicate winning."""
    from proxy.ecosystems.conda import sections as sections_mod
    rng = random.Random(case)
    names = [f"n{i:03d}" for i in range(60)]
    rng.shuffle(names)
    entries = [(f"{n}-1.{v}-h0_0.conda", {"name": n, "v": v}) for n in names for v in range(6)]
    if case == "overlapping":  # name "n005-1.2": its files sort between two of n005's own
        entries += [(f"n005-1.2-{v}-h0_0.conda", {"name": "n005-1.2", "v": v}) for v in range(6)]
    if case == "duplicate":
        entries.append(("n007-1.3-h0_0.conda", {"name": "n007", "v": "last"}))
    body = b'{"packages.conda":{' + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in entries) + b"}}"
    calls: list[bool] = []
    real = sections_mod._order_by_runs

    def spy(keys: Any, nids: Any) -> Any:
        order = real(keys, nids)
        calls.append(order is not None)
        return order

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sections_mod, "_order_by_runs", spy)
        rd = parse_repodata(body)
    assert calls == [case == "disjoint"]  # the cheap path only when it is right
    assert _parsed(rd) == dict(entries)  # sorted, one entry per file name, the last one wins


def _reference(local: list[CondaRecord], upstreams: list[list[CondaRecord]], local_names: frozenset[str],
               allow: frozenset[str]) -> bytes:
    """The merge rule over in-memory records, laid out as merge_plan.layout does: the uploads
    sorted by file name, then each upstream's records in the order it listed them."""
    from proxy.merge import merge
    merged = merge(sorted(local), upstreams, name=lambda r: r[1].lower(), key=lambda r: r[0], allow=allow,
                   local_names=local_names)
    return render_repodata_json("linux-64", merged, sort_keys=False)


@pytest.mark.parametrize("kept", ["most", "few", "most, small windows"])
def test_a_merged_section_lists_uploads_then_each_upstream_in_its_own_order(kept: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """merge_plan.layout: the uploads (sorted), then the upstream's entries in the order it
    listed them (as a JSON parser reads them: a repeated key's last copy wins), less those the
    merge leaves out: a blocked name, a file name an upload took."""
    from proxy.ecosystems.conda import parse
    from proxy.ecosystems.conda.merge_plan import build_plan, merge_sources, positions_of
    from proxy.ecosystems.conda.sections import EXTENSIONS

    if "windows" in kept:  # the two copies of a key in different windows (sections.py drops the first)
        monkeypatch.setattr(parse, "WINDOW", 256)
        monkeypatch.setattr(parse, "READ_CHUNK", 256)
    names = [f"n{i:03d}" for i in range(40)]
    random.Random(kept).shuffle(names)
    pad = "x" * 300  # the copies below lie several windows apart
    listed = [(f"{n}-1.{v}-h0_0.conda", {"name": n, "v": v, "pad": pad}) for n in names for v in range(3)]
    listed.insert(0, ("n005-1.1-h0_0.conda", {"name": "n005", "v": "early copy"}))  # repeated below
    assert [k for k, _ in listed].index("n005-1.1-h0_0.conda", 1) > 30
    body = b'{"packages.conda":{' + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in listed) + b"}}"
    upstream = parse_repodata(body)
    section = upstream.sections[".conda"]
    assert section.perm is not None  # not sorted: kept as listed
    if "windows" in kept:  # both copies stored, the first one left out of the sorted order
        assert len(section.perm) == len(section.klens) - 1
    local = [("zz-1-0.conda", "zz", b'{"name":"zz"}'), ("n010-1.2-h0_0.conda", "mine", b'{"name":"mine"}'),
             ("aa-1-0.conda", "aa", b'{"name":"aa"}')]
    blocked = set(names) - {"n030", "n031"} if kept == "few" else {"n020"}
    cut = {ext: positions_of(upstream.sections[ext], upstream.name_ids(blocked)) for ext in EXTENSIONS}
    sources, tables, excluded = merge_sources(local, [(upstream, cut)])
    plan = build_plan(sources, tables, excluded, info={"subdir": "linux-64"}, removed=[])
    pairs = dict(json.loads(plan.render(), object_pairs_hook=list))["packages.conda"]  # (key, record pairs)
    read = dict(listed)  # as a JSON parser reads the upstream: the last copy of a key wins
    if "windows" in kept:  # where the last copy stands
        read = {k: v for k, v in reversed(dict(reversed(listed)).items())}
    expected = [k for k, v in read.items() if v["name"] not in blocked and k != "n010-1.2-h0_0.conda"]
    assert [k for k, _ in pairs] == ["aa-1-0.conda", "n010-1.2-h0_0.conda", "zz-1-0.conda", *expected]
    records = {k: dict(v) for k, v in pairs}
    assert records["n010-1.2-h0_0.conda"] == {"name": "mine"}  # the upload's record
    if kept != "few":
        assert records["n005-1.1-h0_0.conda"] == {"name": "n005", "v": 1, "pad": pad}  # the later copy
    assert plan.size() == len(plan.render())


def test_merge_plan_matches_the_merge_rule(tmp_path: Path) -> None:
    """Sorted-section merging (galloping, exclusions) renders exactly what the shared merge
    rule and the in-memory renderer produce, through every writer."""
    from proxy.ecosystems.conda.merge_plan import build_plan, merge_sources, positions_of
    from proxy.ecosystems.conda.sections import EXTENSIONS

    first = _doc_records(400, seed=1, names=30)
    second = {**_doc_records(300, seed=2, names=30), **{fn: {**r, "from": 2} for fn, r in list(first.items())[:50]}}
    ups = [parse_repodata(orjson.dumps({"packages": {f: r for f, r in d.items() if f.endswith(".tar.bz2")},
                                        "packages.conda": {f: r for f, r in d.items() if f.endswith(".conda")}}))
           for d in (first, second)]
    shadow = next(fn for fn in first if fn.endswith(".conda"))
    local = [(shadow, "p999", b'{"name":"p999","mine":true}'), ("p3-9-0.conda", "p3", b'{"name":"p3"}'),
             ("zz-1-0.tar.bz2", "zz", b'{"name":"zz"}')]
    local_names, allow = frozenset({"p999", "p3", "zz", "p7"}), frozenset({"p7"})
    blocked = set(local_names - allow)
    sources, tables, excluded = merge_sources(
        local, [(up, {ext: positions_of(up.sections[ext], up.name_ids(blocked)) for ext in EXTENSIONS}) for up in ups])
    plan = build_plan(sources, tables, excluded, info={"subdir": "linux-64"}, removed=[])
    listed = [[(fn, r["name"], orjson.dumps(r)) for fn, r in d.items()] for d in (first, second)]
    expected = _reference(local, listed, local_names, allow)
    assert plan.render() == expected
    assert plan.size() == len(expected)
    plan.write(tmp_path / "r.json", tmp_path / "r.json.zst", tmp_path)
    plan.write_json(tmp_path / "r2.json", tmp_path)
    assert (tmp_path / "r.json").read_bytes() == expected == (tmp_path / "r2.json").read_bytes()
    assert unzstd((tmp_path / "r.json.zst").read_bytes()) == expected  # one-shot: the frame has its size
    doc = orjson.loads(expected)
    assert doc["packages.conda"][shadow] == {"name": "p999", "mine": True}  # an upload wins its file name
    assert not any(r["name"] == "p3" for s in ("packages", "packages.conda") for r in doc[s].values()
                   if r != {"name": "p3"})  # a private name blocks every upstream version
    assert any(r["name"] == "p7" for r in doc["packages.conda"].values())  # upstream_allow
    # current_repodata: the same selection as the in-memory implementation
    from proxy.ecosystems.conda.current import current_subset
    merged_records = [(fn, rec["name"], orjson.dumps(rec)) for s in ("packages", "packages.conda")
                      for fn, rec in doc[s].items()]
    assert orjson.loads(current_subset(plan).render()) == orjson.loads(render_current_repodata("linux-64", merged_records))


def test_plan_shards_incremental_equals_full(tmp_path: Path) -> None:
    from proxy.ecosystems.conda.cep16 import ShardPack, build_plan_shards
    from proxy.ecosystems.conda.merge_plan import build_plan, merge_sources, positions_of
    from proxy.ecosystems.conda.sections import EXTENSIONS

    up = parse_repodata(orjson.dumps({"packages.conda": {f: r for f, r in _doc_records(300, seed=5).items()}}))

    def plan_for(local: list[CondaRecord]) -> Any:
        blocked = up.name_ids({r[1] for r in local})
        sources, tables, excluded = merge_sources(
            local, [(up, {ext: positions_of(up.sections[ext], blocked) for ext in EXTENSIONS})])
        return build_plan(sources, tables, excluded, info={"subdir": "noarch"}, removed=[])

    before = build_plan_shards(plan_for([]), subdir="noarch", pack=ShardPack(tmp_path), basis=None)
    local = [("p4-7-0.conda", "p4", b'{"name":"p4","version":"7","sha256":"' + b"ab" * 32 + b'"}'),
             ("new-1-0.conda", "new", b'{"name":"new","version":"1"}')]
    after = plan_for(local)
    incremental = build_plan_shards(after, subdir="noarch", pack=before.shards, basis=None,  # type: ignore[arg-type]
                                    previous=before, changed=frozenset({"p4", "new"}))
    full = build_plan_shards(after, subdir="noarch", pack=ShardPack(tmp_path), basis=None)
    assert incremental.by_name == full.by_name and "new" in full.by_name
    assert incremental.by_name["p5"] == before.by_name["p5"]  # untouched names keep their shard
    shard = unpack(incremental.shards[incremental.by_name["p4"]])
    assert list(shard["packages.conda"]) == ["p4-7-0.conda"]  # the upload hides every upstream p4


def test_readahead_decodes_on_a_thread_and_reports_a_broken_stream(tmp_path: Path) -> None:
    """The zstd document is decoded on its own thread: the bytes arrive whole and in order,
    a corrupt frame surfaces as the parse's BadRequest, and closing early stops the thread."""
    import threading

    from proxy.ecosystems.conda import parse as parse_mod
    from proxy.ecosystems.conda.readahead import ReadAhead

    body = orjson.dumps({"packages.conda": {fn: r for fn, r in _doc_records(3000, 7).items()}})
    packed = zstandard.ZstdCompressor().compress(body)
    path = tmp_path / "repodata.json.zst"
    path.write_bytes(packed)
    with parse_mod.open_body(path, "zstd") as stream:
        assert isinstance(stream, ReadAhead)
        buf = bytearray(1000)
        got = bytearray()
        while n := stream.readinto(memoryview(buf)):  # type: ignore[attr-defined]
            got += buf[:n]
    assert bytes(got) == body
    assert not [t for t in threading.enumerate() if t.name == "conda-readahead"]
    broken = tmp_path / "broken.json.zst"
    broken.write_bytes(packed[:40] + bytes(len(packed) - 40))
    with pytest.raises(BadRequest, match="not valid zstd"):
        parse_mod.parse_repodata_file(broken, "zstd", tmp_path)
    assert not [t for t in threading.enumerate() if t.name == "conda-readahead"]
    reader = ReadAhead(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True), chunk=64, depth=1)  # noqa: SIM115
    assert reader.read(10) == body[:10]
    reader.close()  # the producer is blocked on a full queue: it stops
    assert not [t for t in threading.enumerate() if t.name == "conda-readahead"]
