"""Fetching ahead of a cold resolve (issue 15, the ``resolve.uv_meta`` row).

A resolver reads a project page, then the PEP 658 metadata of the version it picks (the
newest that fits), then the pages of that version's dependencies, and so on. Through a cold
proxy each step is an upstream round trip on the resolver's critical path, after the
resolver's own. So when a project page is first rendered, the upstream ``.metadata`` files of
its newest version's wheels (at most ``METADATA_AHEAD``) are fetched in the background; once
one is stored, the pages of the dependencies it names (``Requires-Dist`` lines without an
``extra`` marker, at most ``PAGES_AHEAD``) and their newest ``.metadata`` are fetched too.
The client's own requests then join those fetches (single flight) or find them cached.

Bounded on purpose: only upstream ``.metadata`` files and pages (never a wheel, never Range
reads), only from a page a client asked for, and one dependency level deep (what is fetched
ahead of a dependency starts nothing more until a client asks for its page). A failure
here is only logged: the client's own request will meet it and answer for it.
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

METADATA_AHEAD = 2  # .metadata files of the newest version fetched ahead per page
PAGES_AHEAD = 32  # dependency pages fetched ahead per metadata file
MAX_METADATA_READ = 1 << 20  # bytes of a stored metadata file read for its Requires-Dist
_REQUIRES = re.compile(r"^Requires-Dist:[ \t]*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)([^\n]*)$", re.M | re.I)


def newest_wheels(entries: Iterable[FileEntry], limit: int = METADATA_AHEAD) -> list[FileEntry]:
    """The wheels of the newest non-yanked, non-pre-release version among ``entries`` whose
    metadata the upstream serves (PEP 658), at most ``limit``, in page order."""
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
                                  page: Callable[[str], Awaitable[object]] | None) -> None:
        """Fetch each wheel's ``.metadata`` (``fetch``: its first MAX_METADATA_READ bytes,
        once stored), then, with ``page`` (a project by normalised name), the pages of the
        dependencies the first one names."""
        bodies = await asyncio.gather(*(fetch(w) for w in wheels), return_exceptions=True)
        body = next((b for b in bodies if isinstance(b, bytes)), None)
        if body is None or page is None:
            return
        text = body.decode("utf-8", "replace")
        await asyncio.gather(*(page(name) for name in dependencies(text)), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


__all__ = ["MAX_METADATA_READ", "METADATA_AHEAD", "PAGES_AHEAD", "Prefetch", "dependencies", "newest_wheels"]
