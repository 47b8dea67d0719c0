"""Artifacts: warm throughput against nginx, one cold artifact for many clients at once
(single flight + streaming), and the memory a cold 1 GiB stream costs the server.

Artifacts are PyPI files (a random "wheel" on a PEP 503 page with its ``#sha256=``), served
through the authenticated channel URL; nginx serves the upstream's own copy of the file.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass

from .common import (
    Bench,
    Figure,
    MiB,
    below,
    bench_policy,
    channel_url,
    median,
    ratio_at_least,
)
from .data import Artifact, big_artifact
from .load import BenchError, client_session, download, fetch_ok, parallel_curl
from .procs import Upstream, proc_status, start_nginx, start_upstream, whole_and_ranged
from .scen_index import paired
from .report import Row

ARTIFACT_FIGURES = {
    "nginx": Figure("artifact.vs_nginx", "warm artifact, 8 parallel downloads: aggregate throughput vs nginx (1 worker)",
                    "MiB/s", ">= 0.9x", ratio_at_least(0.9)),
    "nginx_auto": Figure("artifact.vs_nginx_auto", "warm artifact, 8 parallel downloads: vs nginx worker_processes auto",
                         "MiB/s"),
}
COLD_FIGURES = {
    "gets": Figure("cold.upstream_gets", "cold artifact, 64 concurrent clients: whole-file upstream GETs", "count", "== 1",
                   lambda ours, peer, ratio: ours == 1),
    "bodies": Figure("cold.correct_bodies", "cold artifact, 64 concurrent clients: correct bodies", "clients",
                     "all clients", lambda ours, peer, ratio: peer is not None and ours == peer),
    "ttfb": Figure("cold.ttfb", "cold artifact: slowest client's first byte vs upstream download finished",
                   "s", "every TTFB < upstream finish", lambda ours, peer, ratio: peer is not None and ours < peer),
}
STREAM_FIGURES = {
    "rss": Figure("stream.rss_growth", "cold artifact streamed through: server RSS growth", "MiB", "< 64 MiB", below(64)),
}


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n < 1024 * MiB else f"{n / 1024 / MiB:.0f} GiB"


async def _verified(url: str, art: Artifact, what: str) -> None:
    async with client_session(1) as session:
        result = await download(session, url)
    if result.status != 200 or result.sha256 != art.sha256:
        raise BenchError(f"{what}: HTTP {result.status}, {result.size} bytes, sha256 ok: {result.sha256 == art.sha256} {result.error}")


@dataclass(frozen=True)
class World:
    art: Artifact
    url: str  # the file through channelgate's authenticated channel URL
    pid: int  # channelgate's
    upstream: Upstream


def _world(bench: Bench, project: str, size: int, *, throttle: float | None = None) -> World:
    """Generate the artifact, start the upstream and a fresh channelgate; warm the project page."""
    root = bench.dir("upstream")
    with bench.timed(f"generated a {_size(size)} artifact"):
        art = big_artifact(root, project, size)
    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log",
                        throttle={art.url_path: throttle} if throttle else None)
    policy, reader, _ = bench_policy({"pypi": {"type": "pypi", "url": f"{up.url}/simple"}})
    server = bench.channelgate("cg", policy)
    page_url = f"{channel_url(server.url, reader)}/simple/{project}/"
    if art.filename not in fetch_ok(page_url, "channelgate project page").decode():
        raise BenchError("the project page does not list the artifact")
    assert server.proc is not None
    return World(art, page_url + art.filename, server.proc.pid, up)


async def artifact(bench: Bench) -> list[Row]:
    s = bench.sizes
    world = _world(bench, "bench-big", s.artifact)
    art, url = world.art, world.url
    with bench.timed("cold fetch through channelgate (verified)"):
        await _verified(url, art, "channelgate cold fetch")
    await _verified(url, art, "channelgate warm fetch")
    root = bench.workdir / "upstream"
    nginx1 = start_nginx(bench.stack, bench.workdir, root, workers="1")
    nginx_auto = start_nginx(bench.stack, bench.workdir, root, workers="auto")
    urls = {"ours": url, "nginx": nginx1.url + art.url_path, "nginx_auto": nginx_auto.url + art.url_path}
    # The cold fetch has just written 256 MiB that the kernel flushes to disk in the next
    # seconds (and the generator wrote nginx's copy): flush both now, then read each file once
    # (page cache warm for every peer), so no round competes with writeback.
    await asyncio.to_thread(os.sync)
    for target in urls.values():
        await parallel_curl(target, clients=1, size=art.size)
    through: dict[str, list[float]] = {name: [] for name in urls}
    # one 8 x 256 MiB round moves by 1.5x on a shared host: more rounds than the other rows (~3 s each)
    rounds = max(s.rounds, 5) if s.rounds > 1 else s.rounds
    for round_ in range(rounds):
        # every other round in reverse order (ours, nginx, auto; auto, nginx, ours): no peer
        # always runs first, and channelgate and nginx (1 worker) stay back to back
        for name, target in (urls.items() if round_ % 2 == 0 else reversed(urls.items())):
            wall = await parallel_curl(target, clients=s.parallel, size=art.size)
            through[name].append(s.parallel * art.size / wall / MiB)
            bench.say(f"{name}: {s.parallel} x {_size(art.size)} in {wall:.2f} s")
    got = {name: median(v) for name, v in through.items()}
    note = (f"{s.parallel} curl processes x {_size(art.size)}, {rounds} round(s); ratio: the median of the "
            "per-round ratios (ours and peer: the medians of their rates)")
    return [
        ARTIFACT_FIGURES["nginx"].row(got["ours"], got["nginx"], peer_name="nginx", note=note,
                                      ratio=paired(through, "ours", "nginx")),
        ARTIFACT_FIGURES["nginx_auto"].row(got["ours"], got["nginx_auto"], peer_name="nginx auto"),
    ]


async def cold_single_flight(bench: Bench) -> list[Row]:
    s = bench.sizes
    rate = s.cold / s.cold_seconds
    world = _world(bench, "bench-cold", s.cold, throttle=rate)
    art, url, up = world.art, world.url, world.upstream
    async with client_session(s.cold_clients) as session:
        start = time.monotonic()
        results = await asyncio.gather(*(download(session, url) for _ in range(s.cold_clients)))
    report = up.report()
    gets, ranged = whole_and_ranged(report, art.url_path)
    finished = report["finished"].get(art.url_path) or []
    if not finished:
        raise BenchError("the upstream never finished sending the artifact")
    upstream_done = finished[0] - start
    correct = sum(1 for r in results if r.status == 200 and r.size == art.size and r.sha256 == art.sha256)
    firsts = [r.first_byte - start for r in results if r.first_byte is not None]
    errors = sorted({f"{r.status} {r.error}".strip() for r in results if r.status != 200 or r.error})
    if not firsts:
        raise BenchError(f"no client got a byte: {errors}")
    early = sum(1 for t in firsts if t < upstream_done)
    last_done = max(r.done for r in results if r.done is not None) - start
    ttfb_note = (f"TTFB min {min(firsts):.3f} s / median {median(firsts):.3f} s / max {max(firsts):.3f} s; "
                 f"{early}/{s.cold_clients} clients had their first byte before the upstream finished at "
                 f"{upstream_done:.3f} s (throttled to {rate / MiB:.0f} MiB/s, {_size(art.size)}); "
                 f"last client done at {last_done:.2f} s")
    ttfb_max = max(firsts) if len(firsts) == s.cold_clients else float("inf")
    return [
        COLD_FIGURES["gets"].row(gets, note=f"GETs of {art.url_path} seen by the upstream; besides, {ranged} ranged "
                                            "GET(s) of its METADATA, read ahead when the page was rendered"),
        COLD_FIGURES["bodies"].row(correct, s.cold_clients, peer_name="clients",
                                   note="; ".join(errors) if errors else "status 200, size and sha256 checked per client"),
        COLD_FIGURES["ttfb"].row(ttfb_max, upstream_done, peer_name="upstream done", note=ttfb_note),
    ]


class _RssSampler:
    """Samples a process's VmRSS every few ms in a thread (VmHWM alone can hide a peak that
    stays under an earlier one)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            self._stop.wait(0.005)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def stream(bench: Bench) -> list[Row]:
    s = bench.sizes
    world = _world(bench, "bench-huge", s.stream)
    art, url, pid = world.art, world.url, world.pid
    before = proc_status(pid)
    with _RssSampler(pid) as sampler:
        async with client_session(1) as session:
            start = time.monotonic()
            result = await download(session, url)
            wall = time.monotonic() - start
    after = proc_status(pid)
    if result.status != 200 or result.sha256 != art.sha256:
        raise BenchError(f"the streamed artifact is wrong: HTTP {result.status}, {result.size} bytes {result.error}")
    peak = max(sampler.peak, after["VmHWM"] if after["VmHWM"] > before["VmHWM"] else 0)
    growth = (peak - before["VmRSS"]) / MiB
    note = (f"{_size(art.size)} cold through channelgate at {art.size / wall / MiB:.0f} MiB/s, sha256 checked; "
            f"VmRSS before {before['VmRSS'] / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, VmHWM after {after['VmHWM'] / MiB:.1f} MiB")
    return [STREAM_FIGURES["rss"].row(growth, note=note)]
