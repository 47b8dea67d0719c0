"""``channelgate seed``: fill the store with what a list of needs resolves to (DESIGN, "Air-gap").

The resolvers ask *channelgate itself*: seed starts the real gateway in this process on a
loopback port, with a one-off token that may read the seed's channel, so every answer
comes from the channel's merged indexes (the merge rule, upstream filters and policy
apply) and every file fetched lands in the store exactly as a client's download would.

1. resolve: PyPI with uv per python x platform (seed_pypi.py), conda with py-rattler's
   solver per subdir (seed_conda.py), CRAN by its dependency closure (seed_cran.py);
2. fetch every file resolved, at most CONCURRENCY at a time; a file whose hash the store
   already holds is not fetched again (reruns fetch only what is missing);
3. print a summary per ecosystem and every failure; exit 1 if anything failed.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Coroutine, TextIO

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table

from ..app import Gateway, open_services
from ..auth.credentials import generate_token, hash_token
from ..settings import Settings, TokenEntry
from ..store.protocols import Store
from .progress import Progress, human
from .seedfile import SeedFile

log = logging.getLogger(__name__)

CONCURRENCY = 8
SEED_USER = "channelgate-seed"
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Want:
    """One file the store must hold: its path below the channel URL and what it hashes to."""

    ecosystem: str
    path: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    ecosystem: str
    what: str
    reason: str


@dataclass
class Tally:
    resolved: int = 0
    fetched: int = 0
    stored: int = 0  # already in the store
    bytes: int = 0
    failed: int = 0


@dataclass
class SeedRun:
    """What the resolvers and the fetcher share."""

    base: str  # http://127.0.0.1:PORT/t/TOKEN/<channel>
    token: str
    session: aiohttp.ClientSession
    store: Store
    progress: Progress
    failures: list[Failure] = field(default_factory=list)

    def fail(self, ecosystem: str, what: str, reason: str) -> None:
        self.failures.append(Failure(ecosystem, what, reason))
        self.progress.note(f"FAILED {ecosystem}: {what}: {reason}")

    async def get(self, path: str, *, accept: str | None = None) -> bytes:
        headers = {"Accept": accept} if accept else {}
        async with self.session.get(f"{self.base}/{path}", headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise LookupError(f"{path}: the channel answered {resp.status}: {body[:200].decode(errors='replace')}")
            return body

    def stored(self, want: Want) -> bool:
        if want.sha256:
            return any(self.store.find(area, want.sha256.lower()) for area in ("cache", "uploads"))
        if want.md5:
            return self.store.find_ref(f"md5:{want.md5.lower()}") is not None
        return False


def seed_settings(settings: Settings, channel: str, token: str) -> Settings:
    """The policy plus a one-off token that may read ``channel`` (never written anywhere)."""
    entry = TokenEntry(name=SEED_USER, user=SEED_USER, sha256=hash_token(token), scopes=frozenset({"all"}))
    policy = settings.channels[channel]
    policy = dataclasses.replace(policy, read=policy.read + (f"user:{SEED_USER}",))
    return dataclasses.replace(
        settings, tokens=settings.tokens + (entry,), tokens_by_hash={**settings.tokens_by_hash, entry.sha256: entry},
        users=settings.users | {SEED_USER}, channels={**settings.channels, channel: policy},
    )


@contextlib.asynccontextmanager
async def gateway(settings: Settings, channel: str) -> AsyncIterator[tuple[str, str, Store]]:
    """The real gateway on a loopback port: (channel base URL with token, token, store)."""
    token = generate_token()
    async with open_services(seed_settings(settings, channel, token), clean_tmp=False) as services:
        # no access log: seed's own progress and summary are its output
        runner = web.ServerRunner(web.Server(Gateway(services).handle, access_log=None), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            yield f"http://{host}:{port}/t/{token}/{channel}", token, services.store
        finally:
            await runner.cleanup()


async def seed(settings: Settings, seed_file: SeedFile, stream: TextIO | None = None) -> tuple[dict[str, Tally], list[Failure]]:
    from . import seed_conda, seed_cran, seed_pypi

    tallies: dict[str, Tally] = {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with gateway(settings, seed_file.channel) as (base, token, store), \
            aiohttp.ClientSession(timeout=timeout) as session:
        with Progress("seed", None, stream=stream) as progress:
            run = SeedRun(base, token, session, store, progress)
            wants: list[Want] = []
            if seed_file.pypi is not None:
                wants += await _resolve(run, tallies, "pypi", seed_pypi.resolve(run, seed_file.pypi))
            if seed_file.conda is not None:
                wants += await _resolve(run, tallies, "conda", seed_conda.resolve(run, seed_file.conda))
            if seed_file.cran is not None:
                wants += await _resolve(run, tallies, "cran", seed_cran.resolve(run, seed_file.cran))
            await fetch_all(run, wants, tallies)
    return tallies, run.failures


async def _resolve(run: SeedRun, tallies: dict[str, Tally], ecosystem: str,
                   resolving: Coroutine[Any, Any, list[Want]]) -> list[Want]:
    run.progress.note(f"resolving {ecosystem} ...")
    found = await resolving
    tallies[ecosystem] = Tally(resolved=len({w.path for w in found}))
    return found


async def fetch_all(run: SeedRun, wants: list[Want], tallies: dict[str, Tally]) -> None:
    unique = list({w.path: w for w in wants}.values())
    missing = []
    for want in unique:
        if run.stored(want):
            tallies[want.ecosystem].stored += 1
        else:
            missing.append(want)
    if all(w.size is not None for w in missing):  # else the bar counts bytes without a total
        run.progress.grow(sum(w.size or 0 for w in missing))
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(want: Want) -> None:
        tally = tallies[want.ecosystem]
        async with limit:
            try:
                async with run.session.get(f"{run.base}/{want.path}") as resp:
                    if resp.status != 200:
                        raise LookupError(f"the channel answered {resp.status}")
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        tally.bytes += len(chunk)
                        run.progress.advance(len(chunk))
            except (LookupError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                tally.failed += 1
                run.fail(want.ecosystem, want.path.rsplit("/", 1)[-1], str(exc) or type(exc).__name__)
                return
            tally.fetched += 1

    await asyncio.gather(*(one(w) for w in missing))


def print_summary(tallies: dict[str, Tally], failures: list[Failure], stream: TextIO | None = None) -> None:
    console = Console(file=stream)
    table = Table(title="channelgate seed")
    for column in ("ecosystem", "files", "fetched now", "already stored", "bytes fetched", "failures"):
        table.add_column(column, justify="left" if column == "ecosystem" else "right")
    for ecosystem, t in tallies.items():
        failed = sum(1 for f in failures if f.ecosystem == ecosystem)
        table.add_row(ecosystem, str(t.resolved), str(t.fetched), str(t.stored), human(t.bytes), str(failed))
    console.print(table)
    for f in failures:
        console.print(f"FAILED {f.ecosystem}: {f.what}: {f.reason}", markup=False, highlight=False)
