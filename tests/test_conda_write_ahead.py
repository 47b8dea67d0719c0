"""The merged repodata.json.zst written while the upstream is parsed (write_ahead.py): the
same bytes as the usual write, a zstd frame one-shot decoders read (content size in the
header, RFC 8878), and a fallback whenever the early section turns out not to be final."""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from proxy.ecosystems.conda.merge_plan import build_plan, local_section, positions_of
from proxy.ecosystems.conda.parse import parse_repodata_file
from proxy.ecosystems.conda.sections import EXTENSIONS, Repodata
from proxy.ecosystems.conda.write_ahead import DeferredSizeFrame, write_ahead

LOCAL = [("own-1.0-0.conda", "own", b'{"name":"own","version":"1.0"}'),
         ("own-1.0-0.tar.bz2", "own", b'{"name":"own","version":"1.0"}')]
BLOCKED = frozenset({"own", "blocked"})


def _doc(order: str) -> bytes:
    tar = {f"p{i:03d}-1-0.tar.bz2": {"name": f"p{i:03d}", "i": i} for i in range(0, 300, 3)}
    tar["blocked-1-0.tar.bz2"] = {"name": "blocked"}
    tar["own-2.0-0.tar.bz2"] = {"name": "own"}  # blocked by the upload's name
    conda = {f"p{i:03d}-1-0.conda": {"name": f"p{i:03d}", "i": i} for i in range(300, 0, -2)}
    if order == "late-tar":  # packages.conda lists a .tar.bz2 too: the early section is not final
        conda["late-1-0.tar.bz2"] = {"name": "late"}
    sections = [("packages", tar), ("packages.conda", conda)]
    if order == "conda-first":
        sections.reverse()
    return orjson.dumps({"info": {"subdir": "linux-64"}, **dict(sections), "removed": ["gone-1-0.conda"]})


def _plan(rd: Repodata) -> Any:
    local = {ext: local_section(LOCAL, ext) for ext in EXTENSIONS}
    ids = rd.name_ids(BLOCKED)
    return build_plan({ext: [local[ext][0], rd.sections[ext]] for ext in EXTENSIONS},
                      {ext: [local[ext][1], rd.name_table] for ext in EXTENSIONS},
                      {ext: [[], positions_of(rd.sections[ext], ids)] for ext in EXTENSIONS},
                      info={"subdir": "linux-64"}, removed=list(rd.removed))


@pytest.mark.parametrize("order", ["usual", "late-tar", "conda-first"])
def test_written_ahead_is_the_usual_document(tmp_path: Path, order: str) -> None:
    source = tmp_path / "repodata.json.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(_doc(order)))
    box: queue.Queue[Any] = queue.Queue()
    local = {ext: local_section(LOCAL, ext)[0] for ext in EXTENSIONS}
    out: list[Path | None] = []
    writer = threading.Thread(target=lambda: out.append(write_ahead(box, local, BLOCKED, "linux-64", tmp_path)))
    writer.start()
    told: list[str] = []

    def tell(ext: str, section: Any, names: list[str]) -> None:
        told.append(ext)
        box.put(("section", ext, section, names))

    rd = parse_repodata_file(source, "zstd", tmp_path, on_section=tell)
    plan = _plan(rd)
    box.put(("plan", plan))
    writer.join(60)
    assert told == ([".conda", ".tar.bz2"] if order == "conda-first" else [".tar.bz2", ".conda"])
    usual = plan.render()
    assert b'"own-2.0-0.tar.bz2"' not in usual and b'"blocked-1-0.tar.bz2"' not in usual
    if order == "usual":
        assert out[0] is not None
        assert zstandard.ZstdDecompressor().decompress(out[0].read_bytes()) == usual  # one-shot: needs the size
    else:  # the early section was not final, or not the first: the build writes as usual
        assert out == [None]
        assert b'"late-1-0.tar.bz2"' in usual or order == "conda-first"
    assert not list(tmp_path.glob("*.part")) or out[0] is not None  # nothing left when given up


def test_deferred_size_frame_header(tmp_path: Path) -> None:
    frame = DeferredSizeFrame(tmp_path / "x.zst")
    data = b"".join(b"%d," % i for i in range(200_000))
    for i in range(0, len(data), 65536):
        frame.write(data[i:i + 65536])
    frame.finish()
    body = (tmp_path / "x.zst").read_bytes()
    params = zstandard.get_frame_parameters(body)
    assert params.content_size == len(data)
    assert zstandard.ZstdDecompressor().decompress(body) == data
    frame = DeferredSizeFrame(tmp_path / "y.zst")
    frame.write(b"abc")
    frame.discard()
    assert not (tmp_path / "y.zst").exists()


def test_gives_up_when_the_upstream_drops_out(tmp_path: Path) -> None:
    """The parse told of a section, then failed later: the plan holds the uploads alone."""
    source = tmp_path / "repodata.json.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(_doc("usual")))
    box: queue.Queue[Any] = queue.Queue()
    parse_repodata_file(source, "zstd", tmp_path, on_section=lambda e, s, n: box.put(("section", e, s, n)))
    local = {ext: local_section(LOCAL, ext) for ext in EXTENSIONS}
    box.put(("plan", build_plan({ext: [local[ext][0]] for ext in EXTENSIONS}, {ext: [local[ext][1]] for ext in EXTENSIONS},
                                {ext: [[]] for ext in EXTENSIONS}, info={"subdir": "linux-64"}, removed=[])))
    assert write_ahead(box, {ext: local[ext][0] for ext in EXTENSIONS}, BLOCKED, "linux-64", tmp_path) is None
    assert not list(tmp_path.glob("*.part"))
