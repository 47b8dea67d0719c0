"""What every scenario shares: sizes (full and --quick), the per-scenario context, the
policy of the benchmarked channel, uploads, and the figure specifications.

A scenario declares its figures up front (``Figure``) so that a scenario that is skipped
or breaks still yields one row per figure, with the reason.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import zstandard

from tests.harness import Channelgate, Policy

from .procs import Reaper, start_channelgate
from .report import Check, Row, Status

MiB = 1024 * 1024
CHANNEL = "bench"


@dataclass(frozen=True)
class Sizes:
    wrk_seconds: int  # each wrk run
    wrk_warmup: int  # an unmeasured wrk run before each measured one (0: none)
    connections: int  # wrk -c
    page_versions: int  # PyPI page: versions of the project (a wheel and an sdist each)
    conda_records: int  # upstream records behind the warm repodata.json.zst row
    artifact: int  # the warm artifact
    parallel: int  # parallel downloads of the warm artifact
    cold: int  # the cold artifact all clients ask for at once
    cold_clients: int
    cold_seconds: float  # the fake upstream's time to send the cold artifact (throttled)
    big_records: int  # the large upstream repodata
    stream: int  # the cold artifact streamed through for the RSS figure
    rounds: int  # rounds of throughput and answer-time measurements (median taken)
    bundle: int = 2048 * 1024 * 1024  # the store exported and imported (air-gap bundles)
    wrk_rounds: int = 1  # rounds of wrk runs, interleaved over the peers (median taken)
    resolve_projects: int = 15  # the tree resolved cold by uv and pip (scen_resolve)
    resolve_wheel: int = 24 * 1024 * 1024  # bytes per wheel of that tree
    cold_builds: int = 3  # fresh servers per first-merge figure (scen_repodata, median taken)


FULL = Sizes(
    wrk_seconds=4, wrk_warmup=1, wrk_rounds=3, connections=64, page_versions=100, conda_records=5000,
    artifact=256 * MiB, parallel=8, cold=64 * MiB, cold_clients=64, cold_seconds=2.0,
    big_records=465_000, stream=1024 * MiB, rounds=3,
)
QUICK = Sizes(
    wrk_seconds=1, wrk_warmup=0, connections=64, page_versions=5, conda_records=200,
    artifact=8 * MiB, parallel=8, cold=12 * MiB, cold_clients=64, cold_seconds=1.0,
    big_records=3000, stream=24 * MiB, rounds=1, bundle=24 * MiB, resolve_projects=2, resolve_wheel=MiB // 4,
    cold_builds=2,  # more than one: the repeat path runs in the smoke test too
)


class Skip(Exception):
    """The scenario cannot be measured here (a 404 from a handler not landed yet, a missing
    peer); the reason is printed and goes into the table."""


@dataclass(frozen=True)
class Figure:
    name: str
    figure: str
    unit: str
    target: str = ""
    check: Check | None = None

    def row(self, ours: float | None, peer: float | None = None, *, peer_name: str = "", ratio: float | None = None,
            note: str = "") -> Row:
        row = Row(self.name, self.figure, self.unit, ours, peer, peer_name, ratio, self.target, note=note)
        return row.judge(self.check)

    def unmeasured(self, status: Status, reason: str) -> Row:
        return Row(self.name, self.figure, self.unit, target=self.target, status=status, note=reason)


@dataclass
class Bench:
    """One scenario's world: its own directory and process stack (torn down after it)."""

    workdir: Path
    sizes: Sizes
    stack: contextlib.ExitStack
    say: Callable[[str], None]
    reaper: Reaper | None = None
    profile: Path | None = None  # --py-spy DIR
    notes: list[str] = field(default_factory=list)

    def channelgate(self, name: str, policy: Policy, *, workers: int = 1) -> Channelgate:
        """A fresh channelgate (``python -m proxy serve``) in ``<workdir>/<name>``, stopped with the scenario."""
        return start_channelgate(self.stack, self.dir(name), policy, workers=workers, reaper=self.reaper, profile=self.profile)

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def timed(self, what: str) -> _Timer:
        return _Timer(self, what)


class _Timer:
    def __init__(self, bench: Bench, what: str) -> None:
        self.bench, self.what, self.start = bench, what, 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.bench.say(f"{self.what}: {time.monotonic() - self.start:.1f} s")


Scenario = Callable[[Bench], Coroutine[Any, Any, list[Row]]]


def bench_policy(upstreams: dict[str, dict[str, str]], channels: tuple[str, ...] = (CHANNEL,)) -> tuple[Policy, str, str]:
    """Private channels (``bench`` alone by default) over ``upstreams``; returns (policy, reader
    token, writer token). Reads are authenticated like a real deployment's (token in the path)."""
    policy = Policy({
        "upstreams": upstreams,
        "groups": {"readers": ["reader"], "writers": ["writer"]},
        "channels": {name: {"upstreams": list(upstreams), "read": ["group:readers"], "write": ["group:writers"]}
                     for name in channels},
    })
    reader = policy.add_token("reader", ["pypi:download", "conda:download"])
    writer = policy.add_token("writer", ["api:write", "conda:download", "pypi:download"])
    return policy, reader, writer


def channel_url(server_url: str, token: str, channel: str = CHANNEL) -> str:
    """``/t/<TOKEN>/api/repo/<channel>``: the authenticated prefix the issue names."""
    return f"{server_url}/t/{token}/api/repo/{channel}"


async def upload_conda(server_url: str, token: str, path: Path, channel: str = CHANNEL) -> float:
    """``POST /api/repo/<channel>`` with ``content=@pkg.conda``; returns its duration (s).
    A 404/405 means conda uploads are not there yet: Skip."""
    form = aiohttp.FormData()
    data = await asyncio.to_thread(path.read_bytes)
    form.add_field("content", data, filename=path.name, content_type="application/octet-stream")
    async with aiohttp.ClientSession(trust_env=False) as session:
        start = time.monotonic()
        async with session.post(f"{server_url}/api/repo/{channel}", data=form,
                                headers={"Authorization": f"token {token}"}) as resp:
            body = await resp.text()
        elapsed = time.monotonic() - start
    if resp.status in (404, 405, 501):
        raise Skip(f"conda upload answered {resp.status} (conda handlers not available): {body[:120]}")
    if resp.status not in (200, 201):
        raise RuntimeError(f"conda upload of {path.name} answered {resp.status}: {body[:300]}")
    return elapsed


def unzstd(body: bytes) -> bytes:
    """Decompress a zstd frame whether or not it declares its content size."""
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()


def median(values: list[float]) -> float:
    return statistics.median(values)


# checks (ours, peer, ratio) -> passed
def ratio_at_least(x: float) -> Check:
    return lambda ours, peer, ratio: ratio is not None and ratio >= x


def ratio_at_most(x: float) -> Check:
    return lambda ours, peer, ratio: ratio is not None and ratio <= x


def at_most(x: float) -> Check:
    return lambda ours, peer, ratio: ours <= x


def below(x: float) -> Check:
    return lambda ours, peer, ratio: ours < x
