"""A conda-forge-sized upstream: an upstream linux-64 repodata of 465,000 records (~207 MB raw,
served as ``repodata.json.zst`` like conda-forge) merged under a channel's own uploads.

Figures: the first merged ``repodata.json.zst`` (cold: upstream fetch, parse, merge, render),
the warm answer time (nginx serving the same bytes is the reference), the server's peak RSS
(VmHWM) against the raw upstream size, and how long one new upload takes to appear in the
merged index. Runs on a fresh channelgate so VmHWM belongs to this scenario alone. Then
fresh channelgates with five channels over the same upstream, each with an upload of its own,
all asked at once: the slowest first merged answer (the upstream is fetched and parsed once;
each channel's merge is its own). Then five channels with no uploads (the same inputs: one
build serves them all, counted by ``channelgate_index_builds_total``).

Each first-merge figure is the median of ``Sizes.cold_builds`` fresh servers (every value is in the
row's note): one cold build is a few seconds of CPU on two shared cores, and a single one
moves with what the host's other guests take (``/proc/stat`` steal) more than with the code.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import orjson

from tests.harness import Channelgate

from .common import (
    CHANNEL,
    Bench,
    Figure,
    MiB,
    Skip,
    at_most,
    bench_policy,
    channel_url,
    median,
    ratio_at_most,
    unzstd,
    upload_conda,
)
from .data import conda_packages, conda_repodata
from .load import BenchError, client_session, curl_get
from .procs import proc_status, start_nginx, start_upstream
from .report import Row

FIGURES = {
    "first": Figure("big_repodata.first_merged", "big upstream repodata + uploads: first merged repodata.json.zst",
                    "s", "<= 3 s", at_most(3.0)),
    "warm": Figure("big_repodata.warm", "big merged repodata.json.zst: warm answer time (vs nginx, same bytes)",
                   "ms", "<= 50 ms", at_most(50.0)),
    "rss": Figure("big_repodata.peak_rss", "big repodata merge: server peak RSS (VmHWM) vs raw upstream size",
                  "MiB", "<= 1.5x", ratio_at_most(1.5)),
    "shared": Figure("big_repodata.first_merged_5ch",
                     "big upstream shared by 5 channels, asked at once: slowest first merged answer vs 1 channel",
                     "s", "<= 3 s", at_most(3.0)),
    "same": Figure("big_repodata.first_merged_5ch_same",
                   "big upstream shared by 5 channels with the same inputs (no uploads), asked at once: slowest first answer",
                   "s", "<= 3 s", at_most(3.0)),
    "bz2": Figure("big_repodata.bz2_first_answer",
                  "big merged index: first GET of repodata.json.bz2 (bzip2 runs in the background), answer time",
                  "s", "<= 5 s", at_most(5.0)),
    "upload": Figure("big_repodata.upload_visible", "big repodata channel: one conda upload until in the merged index",
                     "s", "<= 1 s", at_most(1.0)),
}
UPLOADS = ["bench-local-a", "bench-local-b"]
LATE = "bench-late-upload"
SHARED = [f"bench-ch{i}" for i in range(1, 6)]
POLL_LIMIT = 120.0


def _contains(body: bytes, needle: bytes) -> bool:
    return needle in unzstd(body)


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[float, int, bytes, str]:
    """(seconds to the complete body, status, body, ETag)."""
    start = time.monotonic()
    async with session.get(url, headers=headers or {}) as resp:
        body = await resp.read()
    return time.monotonic() - start, resp.status, body, resp.headers.get("ETag", "")


async def big_repodata(bench: Bench) -> list[Row]:
    s = bench.sizes
    root = bench.dir("upstream")
    with bench.timed(f"generated an upstream repodata of {s.big_records:,} records"):
        repodata = conda_repodata(root / "forge", "linux-64", s.big_records)
    bench.say(f"upstream linux-64/repodata.json: {repodata.raw_size / 1e6:.1f} MB raw, {repodata.zst_size / 1e6:.1f} MB zst")
    packages = conda_packages(bench.dir("pkgs"), [*UPLOADS, LATE, *(f"{c}-upload" for c in SHARED)])
    shared_packages = packages[len(UPLOADS) + 1:]
    late, packages = packages[len(UPLOADS)], packages[:len(UPLOADS)]
    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log")
    server, url, writer, timed = await _first_merge(bench, "cg", up.url, packages)
    firsts = [timed]
    body, etag, count = await _check_merged(url)
    bench.say(f"first merged repodata.json.zst: {timed[0]:.2f} s (first byte after {timed[1]:.2f} s), "
              f"{len(body) / 1e6:.1f} MB")
    warm, peer, ttfb = await _warm_vs_nginx(bench, url, body)
    assert server.proc is not None
    visible, upload_time, polls = await _upload_visible(server.url, writer, url, etag, late)
    status_now = proc_status(server.proc.pid)
    hwm = status_now["VmHWM"]
    bz2_answer, bz2_status, bz2_ready = await _first_bz2(url.removesuffix(".zst") + ".bz2")
    for n in range(2, s.cold_builds + 1):  # more first merges, each on a fresh server: the median counts
        other, _, _, timed = await _first_merge(bench, f"cg-{n}", up.url, packages)
        other.stop()
        firsts.append(timed)
    first = median([t for t, _ in firsts])
    shared = [await _shared(bench, up.url, shared_packages, n) for n in range(1, s.cold_builds + 1)]
    same = [await _same_inputs(bench, up.url, n) for n in range(1, s.cold_builds + 1)]
    slowest = median([max(t for t, _ in times) for times in shared])
    slowest_same = median([max(t for t, _ in times) for times, _ in same])
    raw = repodata.raw_size
    size_note = (f"{count:,} records merged ({repodata.records:,} upstream + {len(UPLOADS)} uploads); upstream "
                 f"{raw / 1e6:.1f} MB raw / {repodata.zst_size / 1e6:.1f} MB zst; served zst {len(body) / 1e6:.1f} MB")
    return [
        FIGURES["first"].row(first, note=f"{size_note}; median of {len(firsts)} fresh servers, by a curl process each "
                                         f"(s): {_split(firsts)}"),
        FIGURES["warm"].row(median(warm), median(peer), peer_name="nginx",
                            note=f"median of {len(warm)} whole-body GETs by curl; first byte after "
                                 f"{ttfb[0]:.1f} ms (nginx {ttfb[1]:.1f} ms)"),
        FIGURES["rss"].row(hwm / MiB, raw / MiB, peer_name="raw upstream",
                           note=f"VmHWM of the server after all of the above; VmRSS now {status_now['VmRSS'] / MiB:.0f} MiB"),
        FIGURES["shared"].row(slowest, first, peer_name="1 channel",
                              note=f"median of {len(shared)} fresh servers of the slowest channel; first merged "
                                   "repodata.json.zst per channel, a curl process each (s): "
                                   + _rounds(map(_split, shared))),
        FIGURES["same"].row(slowest_same,
                            note=f"median of {len(same)} fresh servers of the slowest channel; "
                                 + _rounds(f"{builds:.0f} index build(s) served all five "
                                           f"(channelgate_index_builds_total), per channel (s): {_split(times)}"
                                           for times, builds in same)),
        FIGURES["bz2"].row(bz2_answer, note=f"HTTP {bz2_status}; the .bz2 was ready {bz2_ready:.1f} s after that "
                                            f"first request (HEAD polled every 0.25 s)"),
        FIGURES["upload"].row(visible, note=f"from the upload's 2xx (the POST itself took {upload_time:.3f} s) "
                                            f"to the first GET whose body lists it; {polls} conditional GETs"),
    ]


async def _first_merge(bench: Bench, name: str, upstream: str,
                       packages: list[Path]) -> tuple[Channelgate, str, str, tuple[float, float]]:
    """A fresh server (its own store) with the uploads: its merged ``repodata.json.zst`` URL,
    the uploader's token, and the first answer's (seconds to the complete body, to its first
    byte), timed by a curl process as the five-channel rows are (_cold_five): the same client
    for every first answer."""
    policy, reader, writer = bench_policy({"forge": {"type": "conda", "url": f"{upstream}/forge"}})
    server = bench.channelgate(name, policy)
    # the fixtures just written (~260 MB) are still being flushed: the first merge's fsync of the
    # upstream document would wait behind them. Flushed first, as the bundle rows do (a sync(2) before)
    await asyncio.to_thread(os.sync)
    for pkg in packages:
        await upload_conda(server.url, writer, pkg)
    url = f"{channel_url(server.url, reader)}/linux-64/repodata.json.zst"
    ((first, first_ttfb),) = await _cold_five([url], {404: f"the server answered 404 for {CHANNEL}/linux-64/"
                                                              "repodata.json.zst (conda handlers not available)"})
    return server, url, writer, (first, first_ttfb)


async def _check_merged(url: str) -> tuple[bytes, str, int]:
    """What was built (the warm answer: the same bytes): its body, ETag and record count."""
    async with client_session(4) as session:
        _, status, body, etag = await _get(session, url)
    if status != 200:
        raise BenchError(f"repodata.json.zst: HTTP {status}: {body[:200]!r}")
    doc = await asyncio.to_thread(lambda: orjson.loads(unzstd(body)))
    count = len(doc.get("packages", {})) + len(doc.get("packages.conda", {}))
    names = {r.get("name") for part in ("packages", "packages.conda") for r in doc.get(part, {}).values()}
    del doc
    if not set(UPLOADS) <= names:
        raise BenchError("the merged repodata lacks the uploads")
    return body, etag, count


async def _warm_vs_nginx(bench: Bench, url: str, body: bytes) -> tuple[list[float], list[float], tuple[float, float]]:
    """Whole-body GETs of the merged document, interleaved with nginx serving the same bytes
    (ms each, and the median first bytes)."""
    static = bench.dir("static")
    (static / "linux-64").mkdir(exist_ok=True)
    (static / "linux-64" / "repodata.json.zst").write_bytes(body)
    nginx = start_nginx(bench.stack, bench.workdir, static, workers="1")
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "nginx": []}
    for _ in range(max(5, bench.sizes.rounds * 3)):  # interleaved, a curl process each (a client that keeps up)
        for name, target in (("ours", url), ("nginx", f"{nginx.url}/linux-64/repodata.json.zst")):
            total, first_byte, code, size = await curl_get(target)
            if code != 200 or size != len(body):
                raise BenchError(f"warm repodata.json.zst from {name}: HTTP {code}, {size} of {len(body)} bytes")
            times[name].append((total * 1000, first_byte * 1000))
    ttfb = median([f for _, f in times["ours"]]), median([f for _, f in times["nginx"]])
    return [t for t, _ in times["ours"]], [t for t, _ in times["nginx"]], ttfb


async def _upload_visible(server_url: str, writer: str, url: str, etag: str, package: Path) -> tuple[float, float, int]:
    """One more upload: seconds from its answer until a GET of the merged index lists it, the
    upload's own time, and the conditional GETs made."""
    late = package.name.encode()  # its file name: a key of the merged index
    upload_time = await upload_conda(server_url, writer, package)
    uploaded = time.monotonic()
    polls = 0
    async with client_session(4) as session:
        while time.monotonic() - uploaded < POLL_LIMIT:
            _, status, new, new_etag = await _get(session, url, {"If-None-Match": etag} if etag else None)
            polls += 1
            if status == 200:
                arrived = time.monotonic()
                if await asyncio.to_thread(_contains, new, late):
                    return arrived - uploaded, upload_time, polls
                etag = new_etag
            elif status != 304:
                raise BenchError(f"repodata.json.zst after the upload: HTTP {status}")
            await asyncio.sleep(0.005)  # poll interval: the server offers no change notification
    raise BenchError(f"the upload did not appear in the merged index within {POLL_LIMIT:.0f} s")


async def _cold_five(urls: list[str], skip: dict[int, str] | None = None) -> list[tuple[float, float]]:
    """The first GETs at once, a curl process each (five clients, as five users would
    be; one Python client reading 5 x 51 MB added 0.6-1.3 s after the server had sent every
    header): (seconds to the complete body, to its first byte) per URL. The server sends
    the headers once the merged index is built. A status in ``skip`` skips the scenario."""
    answers = await asyncio.gather(*(curl_get(url) for url in urls))
    for url, (_, _, code, _) in zip(urls, answers):
        if code in (skip or {}):
            raise Skip((skip or {})[code])
        if code != 200:
            raise BenchError(f"{url.rsplit('/api/repo/', 1)[-1]}: HTTP {code}")
    return [(total, first) for total, first, _, _ in answers]


def _rounds(notes: Iterable[str]) -> str:
    return " ".join(f"[{n}] {note}" for n, note in enumerate(notes, 1))


def _split(times: list[tuple[float, float]]) -> str:
    return (", ".join(f"{t:.2f}" for t, _ in times) + "; first byte (index built) after "
            + ", ".join(f"{f:.2f}" for _, f in times))


async def _shared(bench: Bench, upstream: str, packages: list[Path], n: int) -> list[tuple[float, float]]:
    """Five channels over one upstream on a fresh server, each with its own upload, asked at
    once: each channel's time to its first merged ``repodata.json.zst`` (and to its first byte)."""
    policy, reader, writer = bench_policy({"forge": {"type": "conda", "url": f"{upstream}/forge"}}, tuple(SHARED))
    server = bench.channelgate(f"cg-shared-{n}", policy)
    for channel, pkg in zip(SHARED, packages):
        await upload_conda(server.url, writer, pkg, channel)
    urls = [f"{channel_url(server.url, reader, c)}/linux-64/repodata.json.zst" for c in SHARED]
    await asyncio.to_thread(os.sync)  # the earlier servers' writes flushed first (see big_repodata)
    times = await _cold_five(urls)
    async with client_session(len(SHARED)) as session:  # what was built: each channel's own merge
        for channel, pkg, url in zip(SHARED, packages, urls):
            _, status, body, _ = await _get(session, url)
            if status != 200 or not await asyncio.to_thread(_contains, body, pkg.name.split("-1.0-")[0].encode()):
                raise BenchError(f"{channel}: HTTP {status}, or its merged index lacks its upload")
    server.stop()  # its memory back before the next fresh server
    bench.say("5 channels sharing the upstream (s): " + _split(times))
    return times


async def _same_inputs(bench: Bench, upstream: str, n: int) -> tuple[list[tuple[float, float]], float]:
    """Five channels over one upstream with no uploads (the same inputs, so the same merged
    document) on a fresh server, asked at once: each one's first answer, and the builds made."""
    policy, reader, _ = bench_policy({"forge": {"type": "conda", "url": f"{upstream}/forge"}}, tuple(SHARED))
    server = bench.channelgate(f"cg-same-{n}", policy)
    urls = [f"{channel_url(server.url, reader, c)}/linux-64/repodata.json.zst" for c in SHARED]
    await asyncio.to_thread(os.sync)  # the earlier servers' writes flushed first (see big_repodata)
    times = await _cold_five(urls)
    async with client_session(len(SHARED)) as session:
        answers = [await _get(session, url) for url in urls]
        async with session.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
    if any(status != 200 for _, status, _, _ in answers) or len({body for _, _, body, _ in answers}) != 1:
        raise BenchError("channels with the same inputs answered differently: " + str([a[1] for a in answers]))
    server.stop()
    builds = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith('channelgate_index_builds_total{ecosystem="conda"}'))
    bench.say("5 channels with the same inputs (s): " + _split(times) + f"; {builds:.0f} build(s)")
    return times, builds


async def _first_bz2(url: str) -> tuple[float, int, float]:
    """(answer time, status) of the first GET of ``repodata.json.bz2``, and the seconds until
    it is ready (HEAD answers 200), waited for so the next measurement has the cores."""
    async with client_session(2) as session:
        took, status, body, _ = await _get(session, url)
        if status not in (200, 503):
            raise BenchError(f"repodata.json.bz2: HTTP {status}: {body[:200]!r}")
        start = time.monotonic() - took
        while True:
            async with session.head(url) as resp:
                if resp.status == 200:
                    return took, status, time.monotonic() - start
                if resp.status != 503:
                    raise BenchError(f"HEAD repodata.json.bz2: HTTP {resp.status}")
            if time.monotonic() - start > POLL_LIMIT:
                raise BenchError(f"repodata.json.bz2 was not ready within {POLL_LIMIT:.0f} s")
            await asyncio.sleep(0.25)  # poll interval: the server offers no "ready" notification
