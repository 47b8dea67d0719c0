"""S3 storage (issue 13): a warm artifact served from the bucket through channelgate, and the
``storage.s3.redirect`` mode, each against the same object straight from the emulator.

The emulator is moto's S3 server (``python -m moto.server``, its own process). channelgate
fills the bucket once from the fake upstream; then its local copy is removed, so it serves
as a replica that never saw the blob does: streamed from the bucket (GetObject). The peer is
a presigned GetObject URL of the same object, fetched by the same curl processes. The
redirect row's clients follow channelgate's 307 to such a URL (``curl -L``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import Bench, Figure, MiB, bench_policy, channel_url, median, ratio_at_least
from .data import big_artifact
from .load import BenchError, fetch_ok, parallel_curl
from .procs import Unavailable, free_port, spawn, start_upstream, wait_http
from .report import Row

FIGURES = {
    "warm": Figure("s3.warm_vs_emulator",
                   "warm artifact from S3 (no local copy), 8 parallel downloads: through channelgate vs straight "
                   "from the emulator", "MiB/s", ">= 0.5x", ratio_at_least(0.5)),
    "redirect": Figure("s3.redirect_vs_direct",
                       "storage.s3.redirect: 8 parallel downloads following channelgate's 307 vs straight from "
                       "the emulator", "MiB/s", ">= 0.8x", ratio_at_least(0.8)),
}
BUCKET = "bench"
MAX_SIZE = 64 * MiB  # moto keeps objects in memory


def _emulator(bench: Bench) -> tuple[str, int]:
    try:
        import botocore.session  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"moto[server] is not installed: {exc}") from exc
    port = free_port()
    proc = spawn(bench.stack, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                 bench.workdir / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/moto-api/", proc, bench.workdir / "moto.log")
    _client(endpoint).create_bucket(Bucket=BUCKET)
    return endpoint, proc.pid


def _client(endpoint: str):  # type: ignore[no-untyped-def]
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="bench",
        aws_secret_access_key="bench", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server(bench: Bench, name: str, endpoint: str, upstream_url: str, *, redirect: bool) -> tuple[str, str, int]:
    policy, reader, _ = bench_policy({"pypi": {"type": "pypi", "url": f"{upstream_url}/simple"}})
    s3 = {"endpoint_url": endpoint, "bucket": BUCKET, "access_key_id": "bench", "secret_access_key": "bench"}
    if redirect:
        s3["redirect"] = True  # type: ignore[assignment]
    policy.data["storage"] = {"path": str(bench.dir(name) / "storage"), "backend": "s3", "s3": s3}
    server = bench.channelgate(name, policy)
    assert server.proc is not None
    return server.url, reader, server.proc.pid


async def s3(bench: Bench) -> list[Row]:
    s = bench.sizes
    endpoint, moto_pid = _emulator(bench)
    size = min(s.artifact, MAX_SIZE)
    art = big_artifact(bench.dir("upstream"), "bench-s3", size)
    up = start_upstream(bench.stack, bench.workdir / "upstream", bench.workdir / "upstream.log")
    server_url, reader, cg_pid = _server(bench, "cg", endpoint, up.url, redirect=False)
    page = f"{channel_url(server_url, reader)}/simple/bench-s3/"
    if art.filename not in fetch_ok(page, "channelgate project page").decode():
        raise BenchError("the project page does not list the artifact")
    await parallel_curl(page + art.filename, clients=1, size=size)  # the cold fill: into the bucket
    for blob in (bench.workdir / "cg" / "storage" / "cache" / "sha256").rglob("*"):
        if blob.is_file():
            blob.unlink()  # now a replica that never saw it: served from the bucket
    key = f"cache/sha256/{art.sha256[:2]}/{art.sha256}"
    direct = _client(endpoint).generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key},
                                                      ExpiresIn=3600)
    redirect_url, redirect_reader, _ = _server(bench, "cg-redirect", endpoint, up.url, redirect=True)
    redirect_page = f"{channel_url(redirect_url, redirect_reader)}/simple/bench-s3/"
    fetch_ok(redirect_page, "channelgate (redirect) project page")
    # one unmeasured download each: the S3 client is made on a server's first use
    await parallel_curl(redirect_page + art.filename, clients=1, size=size, follow=True)
    await parallel_curl(page + art.filename, clients=1, size=size)
    urls = {"ours": page + art.filename, "direct": direct, "redirect": redirect_page + art.filename}
    through: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(s.rounds):
        for name, target in urls.items():
            cpu = _cpu(cg_pid), _cpu(moto_pid)
            wall = await parallel_curl(target, clients=s.parallel, size=size, follow=name == "redirect")
            through[name].append(s.parallel * size / wall / MiB)
            bench.say(f"{name}: {s.parallel} x {size // MiB} MiB in {wall:.2f} s (CPU s: channelgate "
                      f"{_cpu(cg_pid) - cpu[0]:.2f}, emulator {_cpu(moto_pid) - cpu[1]:.2f})")
    got = {name: median(v) for name, v in through.items()}
    note = f"{s.parallel} curl processes x {size // MiB} MiB from moto's S3 server, median of {s.rounds} round(s)"
    return [
        FIGURES["warm"].row(got["ours"], got["direct"], peer_name="emulator", note=note),
        FIGURES["redirect"].row(got["redirect"], got["direct"], peer_name="emulator",
                                note=note + "; curl -L follows the 307 to a presigned URL"),
    ]
