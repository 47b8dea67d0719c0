"""Two replicas sharing one store (a filesystem on this host), one PostgreSQL catalog and one
Redis (issue 13, DESIGN "Scale-out on existing engines"):

- a cold artifact asked of both replicas at once (half the clients on each): upstream GETs
  (the Redis lease makes it one) and correct bodies;
- the time from an upload's answer on replica A until replica B's merged index lists it,
  against the same time on A itself (the peer: what the upload costs without a second replica).
"""
from __future__ import annotations

import asyncio
import shutil
import time

import orjson

from tests.pg_cluster import PgCluster, missing_tools
from tests.redis_server import RedisServer

from .common import Bench, Figure, MiB, bench_policy, channel_url, median, unzstd, upload_conda
from .data import big_artifact, conda_packages
from .load import BenchError, client_session, download, fetch
from .procs import Unavailable, start_upstream
from .report import Row

FIGURES = {
    "gets": Figure("replicas.cold_upstream_gets", "cold artifact, clients split over 2 replicas: whole-file upstream GETs",
                   "count", "== 1", lambda ours, peer, ratio: ours == 1),
    "bodies": Figure("replicas.cold_correct_bodies", "cold artifact over 2 replicas: correct bodies", "clients",
                     "all clients", lambda ours, peer, ratio: peer is not None and ours == peer),
    "visible": Figure("replicas.upload_visible_ms", "upload through replica A: until replica B's index lists it",
                      "ms", "< 1000 ms", lambda ours, peer, ratio: ours < 1000),
}


def _redis(bench: Bench) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(binary, bench.dir("redis")).start()
    bench.stack.callback(server.stop)
    return server


def _postgres(bench: Bench) -> str:
    """A throwaway PostgreSQL cluster (tests/pg_cluster.py); the URL of a fresh database."""
    reason = missing_tools()
    if reason is not None:
        raise Unavailable(reason)
    cluster = PgCluster().start()
    bench.stack.callback(cluster.stop)
    return cluster.new_database()


async def _listed(url: str, name: str) -> bool:
    status, _, body = await asyncio.to_thread(fetch, url)
    if status != 200:
        raise BenchError(f"repodata: HTTP {status}")
    doc = orjson.loads(unzstd(body))
    return any(r.get("name") == name for part in ("packages", "packages.conda") for r in doc.get(part, {}).values())


async def _until_listed(url: str, name: str, timeout: float = 30) -> float:
    """Seconds until ``url`` (a repodata.json.zst) lists ``name``, asking back to back."""
    start = time.monotonic()
    while not await _listed(url, name):
        if time.monotonic() - start > timeout:
            raise BenchError(f"{name} never appeared in {url.rsplit('/t/', 1)[0]}'s index")
    return time.monotonic() - start


async def replicas(bench: Bench) -> list[Row]:
    s = bench.sizes
    redis = _redis(bench)
    root = bench.dir("upstream")
    art = big_artifact(root, "bench-cold2", s.cold)
    up = start_upstream(bench.stack, root, bench.workdir / "upstream.log",
                        throttle={art.url_path: s.cold / s.cold_seconds})
    policy, reader, writer = bench_policy({"pypi": {"type": "pypi", "url": f"{up.url}/simple"}})
    policy.data["storage"] = {"path": str(bench.dir("shared"))}
    policy.data["cache"] = {"backend": "redis", "redis_url": redis.url}
    policy.data["database"] = {"url": _postgres(bench)}
    a, b = bench.channelgate("a", policy), bench.channelgate("b", policy)
    urls = [f"{channel_url(r.url, reader)}/simple/bench-cold2/{art.filename}" for r in (a, b)]
    for url in urls:  # each replica knows the file's URL and hash before the rush
        status, _, _ = await asyncio.to_thread(fetch, url.rsplit("/", 1)[0] + "/")
        if status != 200:
            raise BenchError(f"project page: HTTP {status}")
    async with client_session(s.cold_clients) as session:
        results = await asyncio.gather(*(download(session, urls[i % 2]) for i in range(s.cold_clients)))
    gets, ranged = up.gets(art.url_path)
    correct = sum(1 for r in results if r.status == 200 and r.size == art.size and r.sha256 == art.sha256)
    errors = sorted({f"{r.status} {r.error}".strip() for r in results if r.status != 200 or r.error})

    index = {r: f"{channel_url(r.url, reader)}/noarch/repodata.json.zst" for r in (a, b)}
    for url in index.values():  # both replicas have built their merged index before any upload
        await _listed(url, "-")
    uploads = 2 * s.rounds  # 2 in a --quick run, 6 in a full one
    names = [f"bench-visible-{i}" for i in range(uploads * 2)]
    packages = conda_packages(bench.dir("pkgs"), names, subdir="noarch")
    other, same = [], []
    for i in range(uploads):
        await upload_conda(a.url, writer, packages[2 * i])
        other.append(await _until_listed(index[b], names[2 * i]))
        await upload_conda(a.url, writer, packages[2 * i + 1])
        same.append(await _until_listed(index[a], names[2 * i + 1]))
    ms_other, ms_same = median(other) * 1000, median(same) * 1000
    return [
        FIGURES["gets"].row(gets, note=f"GETs of {art.url_path} seen by the upstream ({art.size / MiB:.0f} MiB, "
                                       f"{s.cold_clients} clients, half on each replica); besides, {ranged} "
                                       "ranged GET(s) of its METADATA, read ahead when the page was rendered"),
        FIGURES["bodies"].row(correct, s.cold_clients, peer_name="clients",
                              note="; ".join(errors) if errors else "status 200, size and sha256 checked per client"),
        FIGURES["visible"].row(ms_other, ms_same, peer_name="same replica",
                               note=f"median of {uploads} conda uploads, from the upload's answer to the first "
                                    f"repodata.json.zst that lists it (max {max(other) * 1000:.0f} ms)"),
    ]
