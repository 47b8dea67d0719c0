"""The benchmark suite's own correctness check (it is not a timing test: nothing here compares
a number with a target). ``python -m tests.bench.run --quick`` must start every peer, measure
every figure on tiny sizes, and produce a table with one row per figure and real, non-zero
numbers; it must also leave no temp directory behind.

Runs in the normal suite (no ``bench`` marker; tests/bench itself is not collected).
Needs wrk, nginx and curl (CI installs them) and proxpi + gunicorn (test extras); without
proxpi its row is a SKIP, which is accepted locally and refused under CI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool
from harness import REPO_ROOT

MEASURED = ("PASS", "FAIL", "INFO")


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "PROXPI_"))}
    return subprocess.run(
        [sys.executable, "-m", "tests.bench.run", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.timeout(240)
def test_quick_run_measures_every_figure(tmp_path: Path) -> None:
    for tool in ("wrk", "nginx", "curl"):
        require_tool(tool)
    listed = _bench("--list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    figures = [line.split("\t")[0] for line in listed.stdout.splitlines() if line.strip()]
    assert len(figures) >= 16 and len(set(figures)) == len(figures)

    workdir = tmp_path / "work"
    markdown, rows_json = tmp_path / "bench.md", tmp_path / "bench.json"
    result = _bench("--quick", "--workdir", str(workdir), "--markdown", str(markdown), "--json", str(rows_json),
                    timeout=220)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    rows = {row["name"]: row for row in json.loads(rows_json.read_text())["rows"]}
    assert list(rows) == figures, output[-3000:]
    problems = []
    for name, row in rows.items():
        if row["status"] == "SKIP":
            if os.environ.get("CI"):
                problems.append(f"{name} skipped under CI: {row['note']}")
            elif not row["note"]:
                problems.append(f"{name} skipped without a reason")
            continue
        if row["status"] not in MEASURED:
            problems.append(f"{name}: {row['status']} {row['note']}")
            continue
        if not isinstance(row["ours"], (int, float)) or row["ours"] <= 0:
            problems.append(f"{name}: ours = {row['ours']!r}")
        if row["peer"] is not None and row["peer"] <= 0:
            problems.append(f"{name}: peer = {row['peer']!r}")
        if row["peer"] is not None and not row["ratio"]:
            problems.append(f"{name}: no ratio")
    assert not problems, "\n".join(problems) + "\n" + output[-3000:]

    # the printed table and the Markdown file carry every figure
    table = markdown.read_text()
    assert table.count("\n| ") == len(figures) + 1  # header + one line per figure
    for row in rows.values():
        assert row["figure"] in table and row["figure"] in result.stdout
    assert "nproc=" in table

    # nothing left behind: the temp directory under --workdir is gone, no process survives
    assert not any(workdir.iterdir()), list(workdir.iterdir())
    assert _processes_mentioning(str(workdir)) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if text in args:
            found.append(args)
    return found


def test_bad_scenario_name_is_refused() -> None:
    result = _bench("--only", "nonesuch", timeout=60)
    assert result.returncode == 2 and "unknown scenario" in result.stderr


@pytest.mark.timeout(120)
def test_timeline_shows_the_client_requests_and_the_upstream_requests_they_caused() -> None:
    """``python -m tests.bench.timeline`` (the per-request diagnostic of a cold resolve): the
    direct run's requests from nginx's log, then each request channelgate answered and each
    upstream request it made, on one clock."""
    require_tool("nginx")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    result = subprocess.run([sys.executable, "-m", "tests.bench.timeline", "--projects", "2"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=110, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    direct, _, through = result.stdout.partition("--- through channelgate")
    assert "GET /simple/bench-r01/" in direct and "bench_r01-1.0-py3-none-any.whl.metadata" in direct
    client = [line for line in through.splitlines() if "  client  " in line]
    upstream = [line for line in through.splitlines() if "  upstream  " in line]
    assert any("GET bench-r00/ 200 cache=miss" in line for line in client), through
    assert any("bench-r01/bench_r01-1.0-py3-none-any.whl.metadata 200" in line for line in client), through
    assert any("GET simple/bench-r01/ 200" in line for line in upstream), through
