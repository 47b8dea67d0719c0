"""Warm index request rates under wrk (64 connections): the PyPI simple page and conda's
``repodata.json.zst``, against proxpi (same page, same upstream) and nginx serving the very
bytes channelgate answered, statically.

nginx ``worker_processes 1`` is the primary peer (one process each); nginx
``worker_processes auto`` and ``channelgate serve --workers N`` (N = nproc) are extra,
informational rows.
"""
from __future__ import annotations

import asyncio
import os

import orjson

from .common import (
    CHANNEL,
    Bench,
    Figure,
    Skip,
    bench_policy,
    channel_url,
    median,
    ratio_at_least,
    unzstd,
    upload_conda,
)
from .data import conda_packages, conda_repodata, pypi_project
from .load import BenchError, answer_size, fetch, fetch_ok, wrk
from .procs import Unavailable, start_bare, start_nginx, start_proxpi, start_upstream
from .report import Row

PROJECT = "bench-page"
# what pip sends (PEP 691 negotiation): every peer answers JSON to it, as to a real install
PIP_ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"}
WORKERS = max(2, os.cpu_count() or 2)

# the per-request overhead rows (issue 15 part 4): tests/bench/bare.py is aiohttp's web.Application
# answering every GET with the same bytes and headers from memory, no authorisation, routing, logging or metrics
BARE_NOTE = ("ratio: the median of the per-round ratios, each round measuring channelgate and bare aiohttp "
             "back to back (ours and peer: the medians of their rates)")

PYPI_FIGURES = {
    "proxpi": Figure("pypi_page.vs_proxpi", "PyPI simple page, warm, authenticated, 64 conns: rate vs proxpi",
                     "req/s", ">= 3.0x", ratio_at_least(3.0)),
    "proxpi_wide": Figure("pypi_page.workers_vs_proxpi_wide",
                          f"PyPI simple page: channelgate --workers {WORKERS} vs proxpi gunicorn --workers {WORKERS} --threads 8",
                          "req/s"),
    "bare": Figure("pypi_page.vs_bare", "PyPI simple page, warm, authenticated: 1 process vs bare aiohttp serving the same bytes",
                   "req/s", ">= 0.8x", ratio_at_least(0.8)),
    "nginx": Figure("pypi_page.vs_nginx", "PyPI simple page, warm: rate vs nginx (1 worker), same bytes",
                    "req/s", ">= 0.5x", ratio_at_least(0.5)),
    "nginx_auto": Figure("pypi_page.vs_nginx_auto", "PyPI simple page: 1 process vs nginx worker_processes auto",
                         "req/s"),
    "workers": Figure("pypi_page.workers_vs_nginx_auto",
                      f"PyPI simple page: channelgate --workers {WORKERS} vs nginx worker_processes auto", "req/s"),
    "bare_nginx": Figure("pypi_page.bare_aiohttp_vs_nginx",
                   "PyPI simple page: bare aiohttp (same bytes from memory: the framework's ceiling) vs nginx (1 worker)",
                   "req/s"),
}
CONDA_FIGURES = {
    "bare": Figure("conda_zst.vs_bare", "conda repodata.json.zst, warm, authenticated: 1 process vs bare aiohttp serving the same bytes",
                   "req/s", ">= 0.8x", ratio_at_least(0.8)),
    "nginx": Figure("conda_zst.vs_nginx", "conda repodata.json.zst, warm, authenticated, 64 conns: rate vs nginx (1 worker)",
                    "req/s", ">= 0.5x", ratio_at_least(0.5)),
    "nginx_auto": Figure("conda_zst.vs_nginx_auto", "conda repodata.json.zst: 1 process vs nginx worker_processes auto",
                         "req/s"),
    "bare_nginx": Figure("conda_zst.bare_aiohttp_vs_nginx",
                   "conda repodata.json.zst: bare aiohttp (same bytes from memory) vs nginx (1 worker)", "req/s"),
}


async def rates(bench: Bench, urls: dict[str, str], headers: dict[str, str] | None = None) -> dict[str, list[float]]:
    """wrk each URL (rounds interleaved: ours, peer, ..., then in reverse); every round's rate of each
    (``median`` of them is the figure; ``paired`` compares two URLs round by round).
    Every peer gets the very same request, and only whole 200 answers count: each URL's
    answer to wrk's request is taken apart first (``answer_size``), and a run whose bytes are
    not that many answers is an error (load.wrk)."""
    s = bench.sizes
    out: dict[str, list[float]] = {name: [] for name in urls}
    answers: dict[str, tuple[int, int]] = {}
    for name, url in urls.items():
        sizes = [await asyncio.to_thread(answer_size, url, headers) for _ in range(2)]
        answers[name] = (min(sizes), max(sizes))
    for round_ in range(s.wrk_rounds):
        # every other round in reverse order (A B C, C B A, ...): no peer always runs first,
        # and neighbours (channelgate, bare aiohttp) stay back to back
        for name, url in (urls.items() if round_ % 2 == 0 else reversed(urls.items())):
            if s.wrk_warmup:
                await asyncio.to_thread(wrk, url, seconds=s.wrk_warmup, connections=s.connections, headers=headers,
                                        answer=answers[name])
            result = await asyncio.to_thread(wrk, url, seconds=s.wrk_seconds, connections=s.connections,
                                             headers=headers, answer=answers[name])
            bench.say(f"wrk {name}: {result.rps:,.0f} req/s ({result.requests} requests, "
                      f"{result.bytes_read / result.requests:,.0f} bytes each)")
            out[name].append(result.rps)
    return out


def paired(rounds: dict[str, list[float]], ours: str, peer: str) -> float:
    """The median of the per-round ratios ours/peer. Two URLs measured back to back share the
    host's load of that moment, which moves a single rate by up to 2x here: their ratio moves
    far less than the ratio of two medians taken from different moments."""
    return median([a / b for a, b in zip(rounds[ours], rounds[peer])])


async def pypi_page(bench: Bench) -> list[Row]:
    s = bench.sizes
    root = bench.dir("upstream")
    with bench.timed(f"generated {s.page_versions * 2} distributions"):
        files = pypi_project(root, PROJECT, s.page_versions)
    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log")
    policy, reader, _ = bench_policy({"pypi": {"type": "pypi", "url": f"{up.url}/simple"}})
    server = bench.channelgate("cg", policy)
    url = f"{channel_url(server.url, reader)}/simple/{PROJECT}/"
    page = fetch_ok(url, "channelgate project page", PIP_ACCEPT)  # the first request warms the cache
    missing = [f for f in files if f not in page.decode()]
    if missing:
        raise BenchError(f"channelgate's page lacks {len(missing)} files, e.g. {missing[0]}")
    static = bench.dir("static")
    (static / "simple" / PROJECT).mkdir(parents=True, exist_ok=True)
    (static / "simple" / PROJECT / "index.json").write_bytes(page)
    nginx1 = start_nginx(bench.stack, bench.workdir, static, workers="1")
    nginx_auto = start_nginx(bench.stack, bench.workdir, static, workers="auto")
    for peer in (nginx1, nginx_auto):
        if fetch_ok(f"{peer.url}/simple/{PROJECT}/", "nginx page") != page:
            raise BenchError("nginx does not serve the same bytes")
    urls = {"ours": url, "nginx": f"{nginx1.url}/simple/{PROJECT}/", "nginx_auto": f"{nginx_auto.url}/simple/{PROJECT}/"}
    proxpi_reason, proxpi_status = "", "SKIP"
    try:
        for key, (n, threads) in (("proxpi", (1, 2)), ("proxpi_wide", (WORKERS, 8))):
            proxpi = start_proxpi(bench.stack, bench.workdir, f"{up.url}/simple", workers=n, threads=threads)
            proxpi_url = f"{proxpi.url}/index/{PROJECT}/"
            for _ in range(4 * n):  # warm proxpi's index cache in every worker
                body = fetch_ok(proxpi_url, "proxpi project page", PIP_ACCEPT)
            if any(f not in body.decode() for f in files):
                raise BenchError("proxpi's page lacks files")
            urls[key] = proxpi_url
            bench.notes.append(f"proxpi {proxpi.runner}, page {len(body):,} bytes")
    except Unavailable as exc:
        proxpi_reason = str(exc)
        bench.say(f"SKIP proxpi row: {proxpi_reason}")
    except (BenchError, RuntimeError) as exc:  # the other rows stand without proxpi
        proxpi_reason, proxpi_status = f"proxpi: {exc}", "ERROR"
        bench.say(f"ERROR proxpi row: {exc}")
    workers = bench.channelgate("cg-workers", policy, workers=WORKERS)
    wurl = f"{channel_url(workers.url, reader)}/simple/{PROJECT}/"
    for _ in range(4 * WORKERS):  # SO_REUSEPORT spreads connections: warm every worker
        if fetch_ok(wurl, "channelgate --workers page", PIP_ACCEPT) != page:
            raise BenchError("channelgate --workers serves other bytes")
    urls["workers"] = wurl
    urls["bare"] = start_bare(bench.stack, bench.workdir, static / "simple" / PROJECT / "index.json",
                              fetch(url, PIP_ACCEPT)[1]) + f"/simple/{PROJECT}/"
    order = ("ours", "bare", "proxpi", "nginx", "nginx_auto", "workers", "proxpi_wide")  # bare right after ours
    rounds = await rates(bench, {k: urls[k] for k in order if k in urls}, PIP_ACCEPT)
    measured = {name: median(values) for name, values in rounds.items()}
    note = f"PEP 691 JSON page (pip's Accept), {len(page):,} bytes, {len(files)} files"
    rows = [
        PYPI_FIGURES["proxpi"].row(measured["ours"], measured["proxpi"], peer_name="proxpi", note=note + "; " + "; ".join(bench.notes))
        if "proxpi" in measured else PYPI_FIGURES["proxpi"].unmeasured(proxpi_status, proxpi_reason),  # type: ignore[arg-type]
        PYPI_FIGURES["proxpi_wide"].row(measured["workers"], measured["proxpi_wide"], peer_name="proxpi 2x8")
        if "proxpi_wide" in measured else PYPI_FIGURES["proxpi_wide"].unmeasured(proxpi_status, proxpi_reason),  # type: ignore[arg-type]
        PYPI_FIGURES["bare"].row(measured["ours"], measured["bare"], peer_name="bare aiohttp",
                                 ratio=paired(rounds, "ours", "bare"), note=BARE_NOTE),
        PYPI_FIGURES["nginx"].row(measured["ours"], measured["nginx"], peer_name="nginx", note=note),
        PYPI_FIGURES["nginx_auto"].row(measured["ours"], measured["nginx_auto"], peer_name="nginx auto"),
        PYPI_FIGURES["workers"].row(measured["workers"], measured["nginx_auto"], peer_name="nginx auto"),
        PYPI_FIGURES["bare_nginx"].row(measured["bare"], measured["nginx"], peer_name="nginx"),
    ]
    return rows


async def conda_zst(bench: Bench) -> list[Row]:
    s = bench.sizes
    root = bench.dir("upstream")
    with bench.timed(f"generated a repodata of {s.conda_records} records"):
        repodata = conda_repodata(root / "forge", "linux-64", s.conda_records)
    packages = conda_packages(bench.dir("pkgs"), ["bench-upload-a", "bench-upload-b", "bench-upload-c"])
    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log")
    policy, reader, writer = bench_policy({"forge": {"type": "conda", "url": f"{up.url}/forge"}})
    server = bench.channelgate("cg", policy)
    for pkg in packages:
        await upload_conda(server.url, writer, pkg)
    url = f"{channel_url(server.url, reader)}/linux-64/repodata.json.zst"
    status, _, body = fetch(url)
    if status == 404:
        raise Skip(f"the server answered 404 for {CHANNEL}/linux-64/repodata.json.zst (conda handlers not available)")
    if status != 200:
        raise BenchError(f"repodata.json.zst: HTTP {status}: {body[:200]!r}")
    doc = orjson.loads(unzstd(body))
    names = {r.get("name") for part in ("packages", "packages.conda") for r in doc.get(part, {}).values()}
    if not {"bench-upload-a", "bench-upload-b", "bench-upload-c"} <= names:
        raise BenchError("the merged repodata lacks the uploads")
    count = len(doc.get("packages", {})) + len(doc.get("packages.conda", {}))
    static = bench.dir("static")
    (static / "linux-64").mkdir(exist_ok=True)
    (static / "linux-64" / "repodata.json.zst").write_bytes(body)
    nginx1 = start_nginx(bench.stack, bench.workdir, static, workers="1")
    nginx_auto = start_nginx(bench.stack, bench.workdir, static, workers="auto")
    urls = {"ours": url,
            "bare": start_bare(bench.stack, bench.workdir, static / "linux-64" / "repodata.json.zst", fetch(url)[1])
            + "/linux-64/repodata.json.zst",
            "nginx": f"{nginx1.url}/linux-64/repodata.json.zst",
            "nginx_auto": f"{nginx_auto.url}/linux-64/repodata.json.zst"}
    for name in ("nginx", "nginx_auto", "bare"):
        if fetch_ok(urls[name], f"{name} repodata") != body:
            raise BenchError("nginx does not serve the same bytes")
    rounds = await rates(bench, urls)
    measured = {name: median(values) for name, values in rounds.items()}
    note = (f"{count} records ({repodata.records} upstream + {len(packages)} uploads), "
            f"{len(body):,} bytes zst (upstream raw {repodata.raw_size:,})")
    return [
        CONDA_FIGURES["bare"].row(measured["ours"], measured["bare"], peer_name="bare aiohttp",
                                  ratio=paired(rounds, "ours", "bare"), note=BARE_NOTE),
        CONDA_FIGURES["nginx"].row(measured["ours"], measured["nginx"], peer_name="nginx", note=note),
        CONDA_FIGURES["nginx_auto"].row(measured["ours"], measured["nginx_auto"], peer_name="nginx auto"),
        CONDA_FIGURES["bare_nginx"].row(measured["bare"], measured["nginx"], peer_name="nginx"),
    ]
