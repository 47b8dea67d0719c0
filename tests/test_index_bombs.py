"""Upstream index decompression is bounded (DESIGN "Hostile input and faults": every
decompression, repodata included): a hostile upstream serving a bomb as conda repodata
(.zst) or CRAN PACKAGES.gz gets an error answer, and the server's memory stays bounded
(``server.limits.index_unpacked_mb``)."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import zstandard
from harness import Policy, http

BOMB_MB = 384  # decompressed size of each bomb; the limit below is 8 MiB
LIMIT_MB = 8
HEADROOM = 160 << 20  # peak RSS may grow by this much, far below one bomb


def _gzip_bomb() -> bytes:
    out = io.BytesIO()
    block = b"Package: x\n" * (1 << 16) + b"\n"
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        for _ in range(BOMB_MB * (1 << 20) // len(block)):
            gz.write(block)
    return out.getvalue()


def _zstd_bomb() -> bytes:
    """One JSON string value of BOMB_MB: a streaming parser must hold it to go on."""
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [cobj.compress(b'{"info": {"subdir": "noarch"}, "packages": {"a-1-0.tar.bz2": {"name": "')]
    block = b"x" * (1 << 20)
    parts += [cobj.compress(block) for _ in range(BOMB_MB)]
    parts.append(cobj.compress(b'"}}}'))
    parts.append(cobj.flush())
    return b"".join(parts)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_index_bombs_are_refused_with_bounded_memory(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "up"
    root.mkdir()
    upstream = upstream_factory(root)
    upstream.overrides["/cran/src/contrib/PACKAGES.gz"] = _gzip_bomb()
    upstream.overrides["/conda/noarch/repodata.json.zst"] = _zstd_bomb()
    policy = Policy({
        "server": {"limits": {"index_unpacked_mb": LIMIT_MB}},
        "upstreams": {"cran": {"type": "cran", "url": f"{upstream.url}/cran"},
                      "conda": {"type": "conda", "url": f"{upstream.url}/conda"}},
        "channels": {"r": {"public": True, "upstreams": ["cran"]},
                     "c": {"public": True, "upstreams": ["conda"]}},
    })
    server = channelgate_factory(tmp_path / "cg", policy)
    assert server.proc is not None
    status, _, _ = http("GET", f"{server.url}/r/src/contrib/PACKAGES")  # warm the code paths
    before = _peak_rss(server.proc.pid)

    status, _, body = http("GET", f"{server.url}/r/src/contrib/PACKAGES")
    assert status == 502, body
    assert b"index_unpacked_mb" in body
    assert upstream.calls_to("/cran/src/contrib/PACKAGES.gz") >= 1

    status, _, body = http("GET", f"{server.url}/c/noarch/repodata.json")
    assert upstream.calls_to("/conda/noarch/repodata.json.zst") >= 1
    assert status != 200 or b"a-1-0.tar.bz2" not in body  # the bomb's record is never served
    server.wait_log("exceeds the size limit")

    grown = _peak_rss(server.proc.pid) - before
    assert grown < HEADROOM, f"peak RSS grew by {grown >> 20} MiB decompressing {BOMB_MB} MiB bombs"
