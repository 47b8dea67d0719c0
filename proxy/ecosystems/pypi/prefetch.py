"""Fetching ahead of a cold resolve (issue 15, the ``resolve.*`` rows).

A resolver reads a project page, then the metadata of the version it picks (the newest that
fits), then the pages of that version's dependencies, and so on. Through a cold proxy each
step is an upstream round trip on the resolver's critical path, after the resolver's own.
So when a client reads a project page rendered for the first time, the metadata of its
newest version's wheels (at most ``METADATA_AHEAD``) is fetched in the background: the
upstream's PEP 658 ``.metadata`` file, or, when it has none, METADATA read out of the wheel
by Range requests (wheel_metadata.py). Once one is stored, the pages of the dependencies it
names (``Requires-Dist`` lines without an ``extra`` marker) are fetched, and their newest
metadata, and so on ``DEPTH_AHEAD`` levels down. The client's own requests then join those
fetches (single flight) or find them cached.

Bounded on purpose: only metadata and pages (never a whole wheel), only from a page a client
asked for, at most ``PAGES_AHEAD`` pages per such page over all levels (``Budget``), and a
project whose fetch ahead already went as deep is not walked again. A failure here is only
logged: the client's own request will meet it and answer for it.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from packaging.version import InvalidVersion, Version

from .simple import FileEntry, normalize

log = logging.getLogger(__name__)

METADATA_AHEAD = 2  # metadata files of the newest version fetched ahead per page
DEPTH_AHEAD = 3  # dependency levels fetched ahead of a page a client asked for
PAGES_AHEAD = 64  # pages fetched ahead of one page a client asked for, all levels together
MAX_METADATA_READ = 1 << 20  # bytes of a stored metadata file read for its Requires-Dist
_REQUIRES = re.compile(r"^Requires-Dist:[ \t]*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)([^\n]*)$", re.M | re.I)


def newest_wheels(entries: Iterable[FileEntry], limit: int = METADATA_AHEAD) -> list[FileEntry]:
    """The wheels of the newest non-yanked, non-pre-release version among ``entries`` whose
    metadata is served (PEP 658/714), at most ``limit``, in page order."""
    best: Version | None = None
    chosen: list[FileEntry] = []
    for entry in entries:
        if not entry.filename.endswith(".whl") or not entry.has_metadata or entry.yanked or not entry.version:
            continue
        try:
            version = Version(entry.version)
        except InvalidVersion:
            continue
        if version.is_prerelease:
            continue
        if best is None or version > best:
            best, chosen = version, [entry]
        elif version == best:
            chosen.append(entry)
    return chosen[:limit]


def dependencies(metadata: str, limit: int = PAGES_AHEAD) -> list[str]:
    """Normalised names of the unconditional-extra ``Requires-Dist`` entries (core metadata
    2.x), at most ``limit``; markers other than ``extra`` are kept (they usually hold)."""
    names: list[str] = []
    for name, rest in _REQUIRES.findall(metadata):
        if "extra" in rest.partition(";")[2]:
            continue
        project = normalize(name)
        if project not in names:
            names.append(project)
        if len(names) >= limit:
            break
    return names


class Budget:
    """The pages one walk ahead may still fetch (shared by all its levels)."""

    def __init__(self, pages: int = PAGES_AHEAD) -> None:
        self.pages = pages

    def take(self) -> bool:
        if self.pages <= 0:
            return False
        self.pages -= 1
        return True


class Prefetch:
    """Background fetches ahead of clients, cancelled when the server stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any]) -> None:
        # an empty context: what the fetch ahead does is no request's doing (its cache results
        # and freshness must not mark the access line, or the ready answer, of the page that
        # started it)
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("fetch ahead failed: %r", task.exception())

    async def metadata_then_pages(self, wheels: list[FileEntry], fetch: Callable[[FileEntry], Awaitable[bytes]],
                                  page: Callable[[str], Awaitable[object]] | None, budget: Budget) -> None:
        """Fetch each wheel's metadata (``fetch``: its first MAX_METADATA_READ bytes, once
        stored), then, with ``page`` (a project by normalised name), the pages of the
        dependencies the first one names, while ``budget`` lasts."""
        bodies = await asyncio.gather(*(fetch(w) for w in wheels), return_exceptions=True)
        body = next((b for b in bodies if isinstance(b, bytes)), None)
        if body is None or page is None:
            return
        names = [name for name in dependencies(body.decode("utf-8", "replace")) if budget.take()]
        await asyncio.gather(*(page(name) for name in names), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


__all__ = ["DEPTH_AHEAD", "MAX_METADATA_READ", "METADATA_AHEAD", "PAGES_AHEAD", "Budget", "Prefetch", "dependencies",
           "newest_wheels"]
