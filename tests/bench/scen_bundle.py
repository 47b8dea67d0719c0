"""Air-gap bundles: ``channelgate export`` and ``import`` of a large store (issue 10).

A synthetic store of incompressible, content-addressed cached artifacts (mostly 8 MiB
files, plus many small ones, as a package cache has), ``Sizes.bundle`` bytes in all
(2 GiB in a full run). Each command runs as its own process; its memory growth is its peak
RSS (VmHWM) minus the RSS (VmRSS) it had once every module was imported, so the figure is
what the bundle's size costs. Throughput is compared with GNU ``tar`` doing the same job on
the same files (``tar -cf`` of the store's tree, ``tar -xf`` of the bundle): export hashes
only what its name does not vouch for; import hashes, verifies and makes every member
durable before publishing, so its target is against ``tar -xf`` followed by ``sync -f``
(the same end state: the files on disk), and the row against plain ``tar -xf`` (page cache
only) is INFO.
Every timed command starts after a sync(2), so none pays for writing back what the one
before it left dirty (the generated store, tar's output, the bundle): without it, whichever
ran second was throttled by the kernel's writeback of the first's gigabytes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import Channelgate, Policy

from .common import Bench, Figure, MiB, below, ratio_at_least
from .report import Row

FIGURES = {
    "export_rss": Figure("bundle.export_rss_growth", "export of a large store: RSS growth", "MiB", "< 64 MiB", below(64)),
    "import_rss": Figure("bundle.import_rss_growth", "import of that bundle: RSS growth", "MiB", "< 64 MiB", below(64)),
    "export_rate": Figure("bundle.export_vs_tar", "export throughput vs tar -cf on the same files", "MiB/s",
                          ">= 0.5x", ratio_at_least(0.5)),
    # import ends with every file durable (one syncfs before publishing), tar -xf with the
    # files in the page cache: that row measures the disk as much as us, so it is INFO, and
    # the target is on the row whose peer ends in the same state (tar -xf, then sync -f:
    # the same syncfs(2) of the same file system)
    "import_rate": Figure("bundle.import_vs_tar", "import (verify + publish, durable) throughput vs tar -xf (page cache only)",
                          "MiB/s"),
    "import_rate_durable": Figure("bundle.import_vs_tar_sync", "import (verify + publish, durable) throughput vs tar -xf && sync -f",
                                  "MiB/s", ">= 0.5x", ratio_at_least(0.5)),
}
BIG = 8 * MiB
SMALL = 16 * 1024

_MEASURE = """
import sys, time
from proxy.cli import main
import proxy.airgap.export, proxy.airgap.importing, proxy.airgap.commands  # noqa: F401 (imported before the baseline)
base = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))  # KiB
start = time.monotonic()
code = main(sys.argv[1:])
elapsed = time.monotonic() - start
# VmHWM, not ru_maxrss: Linux carries the parent's peak across fork+exec into ru_maxrss, so
# a bench process that had just built the 465k-record repodata made every command look 1.5 GiB
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))  # KiB
print(f"RSS_GROWTH_KIB {peak - base}", file=sys.stderr)
print(f"ELAPSED_S {elapsed}", file=sys.stderr)
sys.exit(code)
"""


def _store(root: Path, total: int) -> int:
    """Fill ``root/cache/sha256`` with random content-addressed files; returns the bytes written."""
    written = 0
    big = max(1, int(total * 0.9) // BIG)
    sizes = [BIG] * big + [SMALL] * max(1, (total - big * BIG) // SMALL)
    for size in sizes:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        path = root / "cache" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += size
    return written


def _cg(args: list[str]) -> tuple[float, float]:
    """(seconds, RSS growth in MiB) of one channelgate command, interpreter start-up excluded."""
    os.sync()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"channelgate {args[0]} failed: {done.stderr[-2000:]}")
    figures = dict(line.split()[:2] for line in done.stderr.splitlines() if line.startswith(("RSS_GROWTH_KIB", "ELAPSED_S")))
    return float(figures["ELAPSED_S"]), int(figures["RSS_GROWTH_KIB"]) / 1024


def _tar(args: list[str], cwd: Path, *, durable: bool = False) -> float:
    """Seconds of one tar command; ``durable``: then ``sync -f`` of its file system (what
    import does before publishing), inside the timed span."""
    os.sync()
    start = time.monotonic()
    subprocess.run(["tar", *args], cwd=cwd, check=True, capture_output=True, timeout=3600)
    if durable:
        subprocess.run(["sync", "-f", "."], cwd=cwd, check=True, capture_output=True, timeout=3600)
    return time.monotonic() - start


def _config(workdir: Path, storage: Path) -> str:
    gate = Channelgate(workdir, Policy({"storage": {"path": str(storage)}, "channels": {"c": {"public": True}}}))
    gate.write_policy()
    return str(gate.config)


async def bundle(bench: Bench) -> list[Row]:
    size = bench.sizes.bundle
    store_a = bench.dir("a") / "store"
    with bench.timed(f"generated a {size // MiB} MiB store"):
        total = _store(store_a, size)
    out = bench.dir("out")
    tar_export = _tar(["-cf", str(out / "peer.tar"), "cache"], store_a)
    (out / "peer.tar").unlink()
    export_s, export_rss = _cg(["export", "--config", _config(bench.dir("cfg-a"), store_a), "--out", str(out / "b.tar")])
    peer_dir = bench.dir("peer-extract")
    tar_import = _tar(["-xf", str(out / "b.tar")], peer_dir)
    shutil.rmtree(peer_dir)
    peer_dir = bench.dir("peer-extract-durable")
    tar_durable = _tar(["-xf", str(out / "b.tar")], peer_dir, durable=True)
    shutil.rmtree(peer_dir)
    import_s, import_rss = _cg(["import", "--config", _config(bench.dir("cfg-b"), bench.dir("b") / "store"),
                                str(out / "b.tar")])
    rate = lambda seconds: total / MiB / seconds  # noqa: E731
    note = f"{total / MiB:.0f} MiB store"
    return [
        FIGURES["export_rss"].row(export_rss, note=note),
        FIGURES["import_rss"].row(import_rss, note=note),
        FIGURES["export_rate"].row(rate(export_s), rate(tar_export), peer_name="tar -cf",
                                   ratio=tar_export / export_s, note=note),
        FIGURES["import_rate"].row(rate(import_s), rate(tar_import), peer_name="tar -xf",
                                   ratio=tar_import / import_s, note=note),
        FIGURES["import_rate_durable"].row(rate(import_s), rate(tar_durable), peer_name="tar -xf && sync -f",
                                           ratio=tar_durable / import_s, note=note),
    ]
