"""Cold resolves (issue 15): a tree of projects with large wheels, resolved by uv and pip
through a fresh channelgate, against the same clients going direct to the upstream (nginx,
which honours Range requests as PyPI's file host does). Ratios of wall times measured side
by side in one run; never a timed test.

- ``resolve.uv_nometa``: ``uv pip compile --no-cache`` over an index without PEP 658 files
  (channelgate reads METADATA out of the wheels by ranges and serves it; uv direct reads
  each wheel by ranges);
- ``resolve.uv_meta``: the same over an index with ``.metadata`` files;
- ``resolve.pip_report``: ``pip install --dry-run --report`` without PEP 658 files (pip
  direct downloads every wheel; through channelgate it reads the served metadata).

nginx on 127.0.0.1 answers in a fraction of a millisecond, which no registry does: going
direct is then almost all client start-up, and every hop through the proxy weighs in full.
The ``*_rtt`` rows are extra, informational: the same three runs against the fake upstream
(tests/bench/upstream.py, which serves Range and HEAD like a file host) holding every
answer ``RTT`` seconds, a round trip to a remote registry, for direct and proxy alike.
"""
from __future__ import annotations

import base64
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.wheels import make_wheel, write_simple_index
from tests.harness import client_env, venv_bin

from .common import Bench, Figure, MiB, bench_policy, channel_url, median, ratio_at_most
from .load import BenchError
from .procs import start_nginx, start_upstream
from .report import Row

FIGURES = {
    "uv_nometa": Figure("resolve.uv_nometa", "cold uv pip compile, wheels without PEP 658 files: vs direct",
                        "s", "<= 1.5x", ratio_at_most(1.5)),
    "uv_meta": Figure("resolve.uv_meta", "cold uv pip compile, wheels with PEP 658 files: vs direct",
                      "s", "<= 1.5x", ratio_at_most(1.5)),
    "pip_report": Figure("resolve.pip_report", "cold pip install --dry-run --report, no PEP 658 files: vs direct",
                         "s", "< 1x", lambda ours, peer, ratio: ratio is not None and ratio < 1),
    "uv_nometa_rtt": Figure("resolve.uv_nometa_rtt",
                            "cold uv pip compile, no PEP 658 files, upstream answers after 20 ms: vs direct", "s"),
    "uv_meta_rtt": Figure("resolve.uv_meta_rtt",
                          "cold uv pip compile, PEP 658 files, upstream answers after 20 ms: vs direct", "s"),
    "pip_report_rtt": Figure("resolve.pip_report_rtt",
                             "cold pip install --dry-run --report, no PEP 658 files, upstream after 20 ms: vs direct", "s"),
}
RTT = 0.020  # seconds the *_rtt rows' upstream holds every answer


def _tree(root: Path, projects: int, size: int, *, metadata: bool) -> None:
    """``bench-r00`` requires every other project; each wheel holds ``size`` incompressible bytes."""
    rng = random.Random(15)
    names = [f"bench-r{i:02d}" for i in range(projects)]
    wheels = []
    for i, name in enumerate(names):
        body = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        requires = names[1:] if i == 0 else []
        wheels.append(make_wheel(root.parent / f"{root.name}-dists", name, "1.0", requires_dist=requires,
                                 module_body=f"DATA = '{body}'\n"))
    write_simple_index(root, wheels, fmt="html", metadata_files=metadata)


def _run(cmd: list[str], home: Path) -> float:
    env = client_env(home)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    took = time.monotonic() - start
    report = home / "out.txt"
    answer = proc.stdout + (report.read_text(errors="replace") if report.exists() else "")
    if proc.returncode != 0 or "bench-r01" not in answer:
        raise BenchError(f"{cmd[0]} failed: {proc.stderr[-800:]}")
    return took


def _uv(index: str, home: Path) -> float:
    req = home / "req.in"
    home.mkdir(parents=True, exist_ok=True)
    req.write_text("bench-r00\n")
    return _run([venv_bin("uv"), "pip", "compile", "--no-cache", "--index-url", index, str(req)], home)


def _pip(index: str, home: Path) -> float:
    home.mkdir(parents=True, exist_ok=True)
    return _run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-cache-dir",
                 "--report", str(home / "out.txt"), "--index-url", index, "bench-r00"], home)


async def resolve(bench: Bench) -> list[Row]:
    s = bench.sizes
    roots = {"nometa": bench.dir("up-nometa"), "meta": bench.dir("up-meta")}
    with bench.timed(f"generated 2 x {s.resolve_projects} wheels of {s.resolve_wheel // MiB} MiB"):
        for kind, root in roots.items():
            _tree(root, s.resolve_projects, s.resolve_wheel, metadata=kind == "meta")
    upstreams = {kind: start_nginx(bench.stack, bench.dir(f"nginx-{kind}"), root).url for kind, root in roots.items()}
    for kind, root in roots.items():  # every file by FileResponse (Range, HEAD), whatever its size
        upstreams[f"{kind}-rtt"] = start_upstream(bench.stack, root, bench.dir(f"rtt-{kind}") / "upstream.log",
                                                  delay=RTT, big=0).url
    cases = {"uv_nometa": ("nometa", _uv), "uv_meta": ("meta", _uv), "pip_report": ("nometa", _pip),
             "uv_nometa_rtt": ("nometa-rtt", _uv), "uv_meta_rtt": ("meta-rtt", _uv), "pip_report_rtt": ("nometa-rtt", _pip)}
    rows = []
    for case, (kind, client) in cases.items():
        ours, direct = [], []
        for r in range(s.rounds):
            direct.append(client(f"{upstreams[kind]}/simple", bench.dir(f"home-{case}-direct-{r}")))
            policy, reader, _ = bench_policy({"pypi": {"type": "pypi", "url": f"{upstreams[kind]}/simple"}})
            server = bench.channelgate(f"cg-{case}-{r}", policy)  # a fresh, cold server per run
            ours.append(client(f"{channel_url(server.url, reader)}/simple", bench.dir(f"home-{case}-cg-{r}")))
            bench.say(f"{case}: channelgate {ours[-1]:.2f} s, direct {direct[-1]:.2f} s")
        upstream = f"the fake upstream holding each answer {RTT * 1000:.0f} ms" if kind.endswith("-rtt") else "nginx"
        rows.append(FIGURES[case].row(median(ours), median(direct), peer_name="direct",
                                      note=f"{s.resolve_projects} projects x {s.resolve_wheel // MiB} MiB wheels from "
                                           f"{upstream}, median of {s.rounds} round(s), fresh server and client "
                                           "cache each"))
    return rows
