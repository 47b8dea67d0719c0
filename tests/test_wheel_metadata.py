"""Metadata for every wheel (issue 15): over an upstream without PEP 658 ``.metadata``
files, channelgate reads each wheel's METADATA with Range requests (the zip's tail, then
the member), caches it and advertises it (PEP 714), so pip resolves without downloading a
wheel."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fixtures.wheels import make_wheel, write_simple_index
from harness import Policy, client_env, http, run, venv_bin


def _world(tmp_path: Path, upstream_factory, channelgate_factory, fmt: str = "html", ranges: bool = True):  # type: ignore[no-untyped-def]
    payload = base64.b64encode(os.urandom(1024 * 1024)).decode()
    wheels = [
        make_wheel(tmp_path / "d", "app", "1.0", requires_dist=["dep>=1"], module_body=f"DATA = '{payload}'\n"),
        make_wheel(tmp_path / "d", "dep", "1.0", module_body=f"DATA = '{payload}'\n"),
        make_wheel(tmp_path / "d", "dep", "0.9"),
    ]
    write_simple_index(tmp_path / "root", wheels, fmt=fmt, metadata_files=False)  # type: ignore[arg-type]
    upstream = upstream_factory(tmp_path / "root")
    if ranges:  # as a real file server does (aiohttp's FileResponse: 206)
        for wheel in wheels:
            upstream.overrides[f"/files/{wheel.name}"] = lambda request, w=wheel: web.FileResponse(tmp_path / "root" / "files" / w.name)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    return wheels, upstream, channelgate_factory(tmp_path / "cg", policy)


def _metadata_of(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))


def _whole_wheel_gets(upstream) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.path for c in upstream.calls if c.path.endswith(".whl") and "Range" not in c.headers]


def test_pip_dry_run_downloads_no_wheel(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    wheels, upstream, server = _world(tmp_path, upstream_factory, channelgate_factory)
    status, _, page = http("GET", f"{server.url}/mirror/simple/dep/")
    assert status == 200 and page.count(b'data-core-metadata="true"') == 2  # advertised per PEP 714
    report = tmp_path / "report.json"
    out = run([venv_bin("python"), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report),
               "--index-url", f"{server.url}/mirror/simple", "app"], env=client_env(tmp_path / "home"), timeout=180)
    assert out.returncode == 0, out.stderr
    installed = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert installed == {"app": "1.0", "dep": "1.0"}
    assert _whole_wheel_gets(upstream) == [], server.log()[-6000:]  # no wheel went through, only ranges of them
    assert [c for c in upstream.calls if c.path.endswith(".whl") and "Range" in c.headers]
    # what pip read is the wheel's own METADATA, cached: a second read asks the upstream nothing
    calls = len(upstream.calls)
    status, headers, body = http("GET", f"{server.url}/mirror/simple/app/{wheels[0].name}.metadata")
    assert status == 200 and body == _metadata_of(wheels[0])
    assert len(upstream.calls) == calls
    assert "Traceback" not in server.log()


def test_uv_resolves_over_served_metadata_and_a_cached_wheel_is_read_locally(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    wheels, upstream, server = _world(tmp_path, upstream_factory, channelgate_factory, fmt="json")
    (tmp_path / "req.in").write_text("app\n")
    out = run([venv_bin("uv"), "pip", "compile", "--no-cache", "--index-url", f"{server.url}/mirror/simple",
               str(tmp_path / "req.in")], env=client_env(tmp_path / "home"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "app==1.0" in out.stdout and "dep==1.0" in out.stdout
    assert _whole_wheel_gets(upstream) == []
    # a wheel already in the cache: its METADATA comes from the stored file, no upstream request
    old = wheels[2]
    status, _, body = http("GET", f"{server.url}/mirror/simple/dep/{old.name}")
    assert status == 200 and body == old.read_bytes()
    calls = len(upstream.calls)
    status, headers, body = http("GET", f"{server.url}/mirror/simple/dep/{old.name}.metadata")
    assert status == 200 and body == _metadata_of(old)
    assert len(upstream.calls) == calls


def test_an_upstream_without_ranges_still_serves_the_advertised_metadata(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    wheels, upstream, server = _world(tmp_path, upstream_factory, channelgate_factory, ranges=False)
    status, _, body = http("GET", f"{server.url}/mirror/simple/app/{wheels[0].name}.metadata")
    assert status == 200 and body == _metadata_of(wheels[0])
    assert _whole_wheel_gets(upstream) == [f"/files/{wheels[0].name}"]  # once, into the cache
    status, _, body = http("GET", f"{server.url}/mirror/simple/app/{wheels[0].name}")
    assert status == 200 and body == wheels[0].read_bytes()
    assert len(_whole_wheel_gets(upstream)) == 1


def _range_gets(upstream, wheel: Path) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.headers["Range"] for c in upstream.calls if c.path == f"/files/{wheel.name}" and "Range" in c.headers]


def test_metadata_in_the_tail_is_one_range_request_and_elsewhere_two(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """A wheel's .dist-info comes last (PEP 427), so the tail read for the central directory
    holds METADATA too: one Range request. A wheel with METADATA first and 1 MiB after it
    needs a second one, for the member."""
    wheels, upstream, server = _world(tmp_path, upstream_factory, channelgate_factory)
    app = wheels[0]  # METADATA after 1.3 MiB of module: within the last bytes
    status, _, body = http("GET", f"{server.url}/mirror/simple/app/{app.name}.metadata")
    assert status == 200 and body == _metadata_of(app)
    assert len(_range_gets(upstream, app)) == 1, _range_gets(upstream, app)
    # a wheel with its members reordered: METADATA first, 1.3 MiB of module after it
    built = make_wheel(tmp_path / "late", "late", "1.0", module_body=f"DATA = '{base64.b64encode(os.urandom(1 << 20)).decode()}'\n")
    reordered = tmp_path / "d" / built.name
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(reordered, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist(), key=lambda n: not n.endswith("/METADATA")):
            dst.writestr(name, src.read(name))
    write_simple_index(tmp_path / "root", [*wheels, reordered], fmt="html", metadata_files=False)
    reordered = tmp_path / "root" / "files" / built.name
    upstream.overrides[f"/files/{reordered.name}"] = lambda request: web.FileResponse(reordered)
    status, _, body = http("GET", f"{server.url}/mirror/simple/late/{reordered.name}.metadata")
    assert status == 200 and body == _metadata_of(reordered)
    assert len(_range_gets(upstream, reordered)) == 2, _range_gets(upstream, reordered)
    assert _whole_wheel_gets(upstream) == []


@pytest.mark.parametrize("pep658", [True, False], ids=["upstream-metadata-file", "read-from-the-wheel"])
def test_a_metadata_file_is_answered_from_memory_with_its_sha256_as_etag(
    tmp_path: Path, upstream_factory, channelgate_factory, pep658: bool  # type: ignore[no-untyped-def]
) -> None:
    """A PEP 658 file is a few KiB: served from memory (no FileResponse, whose open, stat and
    close each take a trip to a thread), with the store's ETag (the sha256, the same on every
    replica), byte ranges and conditional requests as for any stored blob."""
    wheel = make_wheel(tmp_path / "d", "app", "1.0", requires_dist=["dep>=1"])
    write_simple_index(tmp_path / "root", [wheel], fmt="html", metadata_files=pep658)
    upstream = upstream_factory(tmp_path / "root")
    upstream.overrides[f"/files/{wheel.name}"] = lambda request: web.FileResponse(tmp_path / "root" / "files" / wheel.name)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)
    url = f"{server.url}/mirror/simple/app/{wheel.name}.metadata"
    for _ in range(2):  # cold (just stored), then warm
        status, headers, body = http("GET", url)
        assert status == 200 and body == _metadata_of(wheel)
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        assert headers["ETag"] == etag and headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Type"].startswith("text/plain")
    status, headers, part = http("GET", url, headers={"Range": "bytes=0-9"})
    assert status == 206 and part == body[:10] and headers["Content-Range"] == f"bytes 0-9/{len(body)}"
    status, _, _ = http("GET", url, headers={"If-None-Match": etag})
    assert status == 304


def test_an_upstream_that_ignores_range_is_never_downloaded_to_read_metadata_ahead(tmp_path: Path, upstream_factory, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """An upstream that answers a Range request with 200 and the whole file (RFC 9110 §14.2
    allows it): the fetch ahead's tail read is cut off at once (the upstream never gets to
    send the 15 MB wheel), that origin is not asked for ranges again, and nothing is
    downloaded ahead. A client that asks for an advertised ``.metadata`` gets it out of the
    wheel downloaded once into the cache (what it would have downloaded itself without the
    advertisement), with no Range request first."""
    payload = base64.b64encode(os.urandom(14 << 20)).decode()  # incompressible: a 15 MB wheel
    big = make_wheel(tmp_path / "d", "big", "1.0", requires_dist=["other"], module_body=f"DATA = '{payload}'\n")
    other = make_wheel(tmp_path / "d", "other", "1.0")
    write_simple_index(tmp_path / "root", [big, other], fmt="html", metadata_files=False)
    upstream = upstream_factory(tmp_path / "root")
    served: list[dict[str, Any]] = []  # one per request for a wheel: Range asked, bytes written, finished
    ended: queue.Queue[dict[str, Any]] = queue.Queue()  # each, once its handler returns

    async def whole_file(request: web.Request, path: Path) -> web.StreamResponse:  # ignores Range, streams
        record: dict[str, Any] = {"range": request.headers.get("Range"), "written": 0, "finished": False}
        served.append(record)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(path.stat().st_size)})
        try:
            await resp.prepare(request)
            with open(path, "rb") as fh:
                while chunk := fh.read(64 * 1024):
                    await resp.write(chunk)
                    record["written"] += len(chunk)
            await resp.write_eof()
            record["finished"] = True
        except ConnectionError:
            pass  # the client went away
        finally:
            ended.put(record)
        return resp

    for wheel in (big, other):
        upstream.overrides[f"/files/{wheel.name}"] = lambda request, w=wheel: whole_file(request, tmp_path / "root" / "files" / w.name)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)
    size = big.stat().st_size
    assert size > 14 << 20

    status, _, page = http("GET", f"{server.url}/mirror/simple/big/")
    assert status == 200 and page.count(b'data-core-metadata="true"') == 1
    first = ended.get(timeout=60)  # the fetch ahead's tail read, met by a 200
    assert first["range"].startswith("bytes=-") and not first["finished"]
    assert first["written"] < size // 2, first  # cut off: never the whole wheel
    # the same origin is not asked for ranges again: another page's fetch ahead asks nothing,
    # and the client's own .metadata request downloads the wheel once, with no Range first
    status, _, _ = http("GET", f"{server.url}/mirror/simple/other/")
    assert status == 200
    status, _, body = http("GET", f"{server.url}/mirror/simple/other/{other.name}.metadata")
    assert status == 200 and body == _metadata_of(other)
    assert [c.headers.get("Range") for c in upstream.calls if c.path == f"/files/{other.name}"] == [None]
    status, _, body = http("GET", f"{server.url}/mirror/simple/big/{big.name}.metadata")
    assert status == 200 and body == _metadata_of(big)
    big_calls = [c.headers.get("Range") for c in upstream.calls if c.path == f"/files/{big.name}"]
    assert len(big_calls) == 2 and big_calls[1] is None, big_calls  # the cut-off tail read, then one download
    assert served[-1]["finished"]
    assert "Traceback" not in server.wait_log("upstream pypi ignores Range (200 for")
