"""Orchestration of the benchmark suite: options, scenarios in order, cleanup, the table.

Each scenario runs in its own temp directory with its own processes (an ExitStack), so a
failure in one never leaks processes or files into the next, and memory figures belong to
one scenario only. Exit status: 0 when every figure was measured (PASS, FAIL, INFO or SKIP
rows), 1 when a measurement broke (ERROR rows), 2 on bad options. FAIL is a result, not an
error: this is a benchmark, and nothing in CI times anything.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import (scen_bundle, scen_files, scen_index, scen_install, scen_replicas, scen_repodata, scen_resolve, scen_s3,
               scen_ui)
from .common import FULL, QUICK, Bench, Figure, Scenario, Sizes, Skip
from .procs import Reaper, Unavailable
from .report import Row, machine_description, markdown_table, text_table, write_json

# name -> (scenario, its figures); in the order they run
SCENARIOS: dict[str, tuple[Scenario, list[Figure]]] = {
    "pypi_page": (scen_index.pypi_page, list(scen_index.PYPI_FIGURES.values())),
    "conda_zst": (scen_index.conda_zst, list(scen_index.CONDA_FIGURES.values())),
    "artifact": (scen_files.artifact, list(scen_files.ARTIFACT_FIGURES.values())),
    "cold": (scen_files.cold_single_flight, list(scen_files.COLD_FIGURES.values())),
    "big_repodata": (scen_repodata.big_repodata, list(scen_repodata.FIGURES.values())),
    "stream": (scen_files.stream, list(scen_files.STREAM_FIGURES.values())),
    "bundle": (scen_bundle.bundle, list(scen_bundle.FIGURES.values())),
    "ui_channel": (scen_ui.ui_channel, list(scen_ui.FIGURES.values())),
    "resolve": (scen_resolve.resolve, list(scen_resolve.FIGURES.values())),
    "s3": (scen_s3.s3, list(scen_s3.FIGURES.values())),
    "replicas": (scen_replicas.replicas, list(scen_replicas.FIGURES.values())),
    "install": (scen_install.install, list(scen_install.FIGURES.values())),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description="channelgate's benchmark suite: every figure as a ratio against a peer measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 s wrk runs (a smoke run, not figures)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these scenarios (repeatable or comma-separated): {', '.join(SCENARIOS)}")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--workdir", type=Path, help="parent of the temp directory (default: the system's temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and logs (the path is printed)")
    parser.add_argument("--wrk-seconds", type=int, help="duration of each wrk run (default 4, --quick 1)")
    parser.add_argument("--wrk-rounds", type=int, help="wrk runs per peer, interleaved; the median counts (default 3, --quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds of throughput/answer-time measurements (default 3, --quick 1)")
    parser.add_argument("--big-records", type=int, help="records of the large upstream repodata (default 465000)")
    parser.add_argument("--bundle-mib", type=int, help="size of the store exported and imported (default 2048)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record a py-spy profile of every channelgate into DIR (collapsed stacks, .txt); "
                             "sampling slows the server: figures from such a run are not figures")
    parser.add_argument("--list", action="store_true", help="print the figure ids of the selected scenarios and exit")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.only = names or list(SCENARIOS)
    return args


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        "wrk_seconds": args.wrk_seconds, "wrk_rounds": args.wrk_rounds, "rounds": args.rounds,
        "big_records": args.big_records,
        "bundle": args.bundle_mib * 1024 * 1024 if args.bundle_mib else None,
    }
    return dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})


class _Terminated(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so every process and temp dir is cleaned up."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def run_scenario(name: str, workdir: Path, sizes: Sizes, say: Callable[[str], None], reaper: Reaper | None,
                 profile: Path | None = None) -> list[Row]:
    scenario, figures = SCENARIOS[name]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        bench = Bench(workdir, sizes, stack, say, reaper, profile)
        try:
            rows = asyncio.run(scenario(bench))
        except (Skip, Unavailable) as exc:
            say(f"SKIP {name}: {exc}")
            rows = [f.unmeasured("SKIP", str(exc)) for f in figures]
        except Exception as exc:  # noqa: BLE001 - a broken measurement goes into the table, not hidden
            say(f"ERROR {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            rows = [f.unmeasured("ERROR", f"{type(exc).__name__}: {exc}") for f in figures]
    have = {r.name for r in rows}
    rows += [f.unmeasured("ERROR", "the scenario returned no row for this figure") for f in figures if f.name not in have]
    order = {f.name: i for i, f in enumerate(figures)}  # the table (and --list) in the figures' order
    return sorted(rows, key=lambda r: order.get(r.name, len(order)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in args.only:
            for figure in SCENARIOS[name][1]:
                print(f"{figure.name}\t{figure.target or 'info'}\t{figure.figure}")
        return 0
    sizes = _sizes(args)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="channelgate-bench-", dir=args.workdir))
    root.chmod(0o755)  # nginx workers (user nobody) read the generated trees
    machine = machine_description()
    say(f"{machine}; work dir {root}")
    rows: list[Row] = []
    reaper = Reaper()
    try:
        for name in args.only:
            say(f"--- {name}")
            workdir = root / name
            workdir.mkdir()
            rows += run_scenario(name, workdir, sizes, say, reaper, args.py_spy.resolve() if args.py_spy else None)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        reaper.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    command = "python -m tests.bench.run" + (" --quick" if args.quick else "") + (
        f" --only {','.join(args.only)}" if args.only != list(SCENARIOS) else "")
    title = "channelgate benchmarks" + (" (--quick: smoke sizes, not figures)" if args.quick else "")
    print()
    print(text_table(rows))
    if args.markdown:
        args.markdown.write_text(markdown_table(rows, title=title, machine=machine, command=command))
    if args.json:
        write_json(args.json, rows, machine)
    say(f"done in {time.monotonic() - started:.0f} s")
    return 1 if any(r.status == "ERROR" for r in rows) else 0
