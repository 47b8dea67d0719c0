"""A light install (issue 15 part 3): ``pip install .`` into a fresh venv, as the quick start
does, and the venv's size on disk against an empty venv made the same way.

The source is copied first (``proxy/``, ``pyproject.toml``, ``README.md``), so the build leaves
nothing in the checkout. pip uses its own configuration and cache (a warm cache makes the
install quick; it does not change what is installed). Optional extras (``rdata``'s numpy,
pandas and xarray, ``s3``, ``postgres``, ``ui``...) are not part of it: the row is what every
install carries.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import REPO_ROOT

from .common import Bench, Figure, at_most
from .load import BenchError
from .report import Row

MB = 1024 * 1024
FIGURES = {
    "size": Figure("install.venv_size", "pip install . into a fresh venv: its size on disk vs an empty venv",
                   "MiB", "<= 120 MiB", at_most(120.0)),
}
SOURCES = ("proxy", "pyproject.toml", "README.md")


async def _run(*cmd: str | Path) -> None:
    proc = await asyncio.create_subprocess_exec(*map(str, cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {out.decode(errors='replace')[-1500:]}")


def disk_usage(path: Path) -> int:
    """Bytes of disk the tree takes, as ``du`` counts them (allocated blocks, each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


async def install(bench: Bench) -> list[Row]:
    source = bench.dir("source")
    for name in SOURCES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, source / name)
    python = sys.executable  # a venv made from a venv's python is based on the same interpreter
    empty, venv = bench.workdir / "empty-venv", bench.workdir / "venv"
    await _run(python, "-m", "venv", empty)
    await _run(python, "-m", "venv", venv)
    start = time.monotonic()
    await _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source)
    took = time.monotonic() - start
    await _run(venv / "bin" / "python", "-c", "import proxy.cli")  # what was installed imports
    ours, peer = disk_usage(venv) / MB, disk_usage(empty) / MB
    bench.say(f"pip install . took {took:.1f} s; venv {ours:.0f} MiB, empty venv {peer:.0f} MiB")
    return [FIGURES["size"].row(ours, peer, peer_name="empty venv",
                                note=f"python -m venv, then pip install . ({took:.0f} s here, pip's cache as it was); "
                                     f"{ours - peer:.0f} MiB added to the empty venv")]
