"""Upstream index decompression is bounded (DESIGN "Hostile input and faults": every
decompression, repodata included): a hostile upstream serving a bomb as conda repodata
(.zst) or CRAN PACKAGES.gz gets an error answer, and the server's memory stays bounded
(``server.limits.index_unpacked_mb``)."""
from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

import zstandard
from aiohttp import web
from fixtures import conda_pkgs as fx
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


def _page(*filenames: str, pad: int = 0) -> bytes:
    links = "".join(f'<a href="../../files/{f}#sha256={"0" * 64}">{f}</a>' for f in filenames)
    return f"<!DOCTYPE html><html><body>{links}<!--{'x' * pad}--></body></html>".encode()


async def _chunked(request: web.Request) -> web.StreamResponse:
    """Three MiB with no Content-Length: only counting the bytes can stop it."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for _ in range(3):
            await resp.write(b"\0" * (1 << 20))
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the server hung up at the cap
    return resp


def test_index_documents_over_the_fetch_cap_are_refused(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """``server.limits.index_fetch_mb`` bounds an upstream index document as fetched: a
    declared (Content-Length) or streamed (chunked) size over it is a 502 naming the limit,
    and a document that grew over it after being cached leaves the stale copy served."""
    root = tmp_path / "up"
    root.mkdir()
    upstream = upstream_factory(root)
    page = {"body": _page("grows-1.0-py3-none-any.whl")}
    upstream.overrides["/pypi/simple/grows/"] = lambda r: web.Response(body=page["body"], content_type="text/html")
    upstream.overrides["/pypi/simple/huge/"] = lambda r: web.Response(
        body=_page("huge-1.0-py3-none-any.whl", pad=2 << 20), content_type="text/html")
    upstream.overrides["/conda/noarch/repodata.json.zst"] = _chunked
    policy = Policy({
        "server": {"limits": {"index_fetch_mb": 1}},
        "cache": {"metadata_ttl": 1},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/pypi/simple"},
                      "conda": {"type": "conda", "url": f"{upstream.url}/conda"}},
        "channels": {"p": {"public": True, "upstreams": ["pypi"]}, "c": {"public": True, "upstreams": ["conda"]}},
    })
    server = channelgate_factory(tmp_path / "cg", policy)

    status, _, body = http("GET", f"{server.url}/p/simple/huge/")
    assert status == 502 and b"index_fetch_mb" in body, body
    status, _, body = http("GET", f"{server.url}/c/noarch/repodata.json")
    assert status == 502 and b"index_fetch_mb" in body, body
    assert upstream.calls_to("/conda/noarch/repodata.json.zst") == 1

    status, _, body = http("GET", f"{server.url}/p/simple/grows/")
    assert status == 200 and b"grows-1.0-py3-none-any.whl" in body
    page["body"] = _page("grows-1.0-py3-none-any.whl", "grows-2.0-py3-none-any.whl", pad=2 << 20)
    time.sleep(1.2)  # metadata_ttl (1 s) passes: time itself is what this waits for
    calls = upstream.calls_to("/pypi/simple/grows/")
    status, _, body = http("GET", f"{server.url}/p/simple/grows/")  # stale-while-revalidate
    assert status == 200 and b"grows-2.0" not in body
    server.wait_log("serving a stale copy")
    assert upstream.calls_to("/pypi/simple/grows/") == calls + 1
    status, _, body = http("GET", f"{server.url}/p/simple/grows/")
    assert status == 200 and b"grows-1.0-py3-none-any.whl" in body and b"grows-2.0" not in body


def test_sharded_repodata_is_bounded_in_all(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """CEP-16 shards decompress under ``server.limits.index_unpacked_mb`` in all, not only
    each on its own: three shards of ~600 KiB each pass a 1 MiB limit one by one, together
    they do not; nothing of them is served."""
    pkgs = [fx.build_package(tmp_path / "pkgs", fx.PkgSpec(f"fat{i}", "1.0", "0", extra_index={"filler": "x" * 600_000}))
            for i in range(3)]
    fx.write_sharded_channel(tmp_path / "up" / "sharded", pkgs)
    upstream = upstream_factory(tmp_path / "up")
    policy = Policy({
        "server": {"limits": {"index_unpacked_mb": 1}},
        "upstreams": {"sharded": {"type": "conda", "url": f"{upstream.url}/sharded"}},
        "channels": {"c": {"public": True, "upstreams": ["sharded"]}},
    })
    server = channelgate_factory(tmp_path / "cg", policy)
    status, _, body = http("GET", f"{server.url}/c/noarch/repodata.json")
    assert status == 502 and b"fat0" not in body, body
    assert upstream.calls_to("/sharded/noarch/repodata_shards.msgpack.zst") == 1
    server.wait_log("exceeds the size limit")
