"""Ready answers: warm index responses kept whole (status, headers, body), so a repeated GET
costs its authorisation, one catalog check and a few comparisons instead of a walk over the
channel's sources, a merge lookup and a render (issue 15, per-request overhead).

Every request is still authorised first (app.Gateway): an answer is only looked up once the
caller may read the channel, and it is keyed by what the caller is allowed to see, never by
who the caller is:

- the channel and the path inside it (``Route.channel``, ``Route.rest``: the token in a path
  is not part of the key);
- the view the caller's rights give (the channel, or its public view without private
  packages) and whether a shared cache may keep the answer (``Cache-Control: private``);
- the request's ``Accept`` header (PEP 691 negotiation).

An answer is kept only when all it was built from can be checked on every hit:

- the policy object (a SIGHUP reload swaps it);
- the catalog generation of the channel and ecosystem (uploads, deletions, private marks;
  a ``--workers`` sibling's commits too, through SQLite's data_version);
- the upstream documents it read, each fresh in this process's cache (cache.py's L1) until a
  known time: the answer expires at the earliest.

Whatever makes an answer provisional (an index lookup that went past L1, a previous index
served while the new one builds) marks the request volatile (``RequestFacts.volatile``), and
the answer is not kept. Only ``IndexResponse`` 200 answers to GET are kept; files never are.
Memory is bounded by ``max_bytes`` (least recently used answers go first).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

from aiohttp import web

from .metrics import RequestFacts
from .responses import IndexResponse, not_modified

MAX_BYTES = 64 * 1024 * 1024  # all kept bodies together
MAX_ANSWER = 8 * 1024 * 1024  # a larger body is rendered anew each time (it is memoised below anyway)
MAX_ANSWERS = 4096


@dataclass(frozen=True, slots=True)
class Ready:
    stamp: tuple[object, int]  # (policy object, catalog generation) when it was built
    fresh_until: float  # time.time() when the first upstream document it read goes stale
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    etag: str
    cache: str  # the request's cache result, replayed into later requests' access lines


class ReadyAnswers:
    """One per Gateway (per process): no globals."""

    def __init__(self, *, max_bytes: int = MAX_BYTES, max_answers: int = MAX_ANSWERS) -> None:
        self.max_bytes = max_bytes
        self.max_answers = max_answers
        self.bytes = 0
        self._answers: OrderedDict[Hashable, Ready] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, request: web.BaseRequest, key: Hashable, stamp: tuple[object, int]) -> web.Response | None:
        """The kept answer for ``key`` if nothing it was built from changed (a 304 when the
        client's If-None-Match names it: RFC 9110 §13.1.2), else None."""
        ready = self._answers.get(key)
        if ready is None:
            return None
        if ready.stamp[1] != stamp[1] or ready.stamp[0] is not stamp[0] or time.time() >= ready.fresh_until:
            self._drop(key)
            return None
        self._answers.move_to_end(key)
        if "If-None-Match" in request.headers and not_modified(request, ready.etag):
            return web.Response(status=304, headers=[h for h in ready.headers if h[0] != "Content-Type"])
        return IndexResponse(status=ready.status, body=ready.body, headers=ready.headers)

    def keep(self, key: Hashable, stamp: tuple[object, int], response: web.StreamResponse, facts: RequestFacts) -> None:
        """Keep a GET's answer when it is a whole index answer built only from checked inputs."""
        if type(response) is not IndexResponse or response.status != 200 or facts.volatile:
            return
        body = response.body
        if not isinstance(body, bytes) or len(body) > MAX_ANSWER or response.prepared:
            return
        etag = response.headers.get("ETag")
        if etag is None or time.time() >= facts.fresh_until:
            return
        self._drop(key)
        ready = Ready(stamp, facts.fresh_until, response.status, tuple(response.headers.items()), body, etag,
                      facts.cache)
        self._answers[key] = ready
        self.bytes += len(body)
        while self._answers and (self.bytes > self.max_bytes or len(self._answers) > self.max_answers):
            self._drop(next(iter(self._answers)))

    def cache_result(self, key: Hashable) -> str:
        ready = self._answers.get(key)
        return ready.cache if ready is not None else "-"

    def _drop(self, key: Hashable) -> None:
        ready = self._answers.pop(key, None)
        if ready is not None:
            self.bytes -= len(ready.body)
