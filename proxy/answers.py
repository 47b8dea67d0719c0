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

``Tickets`` skip the rest of a repeated GET's work: the route, the authorisation and the view
that a path and its credentials (the path token, ``Authorization``, ``X-Auth``) led to, with
``Accept``, remembered once the answer was kept. A ticket is used only while
``Guard.still_valid`` holds for its ``Grant`` (the same policy object; the token neither
revoked, removed nor expired; no failed sign-in being counted) and, on a public channel,
whether it has private packages is unchanged; the answer itself is then checked as above.
Anything else goes the whole way (``Gateway.dispatch``).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

from .auth.guard import Grant
from .logs import line_tail
from .metrics import RequestFacts
from .responses import IndexResponse, not_modified

MAX_BYTES = 64 * 1024 * 1024  # all kept bodies together
MAX_ANSWER = 8 * 1024 * 1024  # a larger body is rendered anew each time (it is memoised below anyway)
MAX_ANSWERS = 4096
MAX_TICKETS = 4096


@dataclass(frozen=True, slots=True)
class Ready:
    stamp: tuple[object, int]  # (policy object, catalog generation) when it was built
    fresh_until: float  # time.time() when the first upstream document it read goes stale
    status: int
    headers: CIMultiDictProxy[str]  # copied into each response (one C-level copy)
    body: bytes
    etag: str
    cache: str  # the request's cache result, replayed into later requests' access lines
    head: bytes | None  # the status line and headers up to Date (``wire_head``); None: never sent whole
    # (the Date it was made for, the whole answer on the wire: head, Date, Server, body), remade each second
    _wire: list[object] = field(default_factory=lambda: ["", b""], compare=False)

    def response(self, request: web.BaseRequest) -> web.StreamResponse:
        """This answer for ``request``: a 304 when its If-None-Match names it (RFC 9110 §13.1.2);
        to a plain keep-alive HTTP/1.1 GET, the prebuilt bytes (``WireResponse``)."""
        if hdrs.IF_NONE_MATCH in request.headers and not_modified(request, self.etag):
            return web.Response(status=304, headers=[h for h in self.headers.items() if h[0] != "Content-Type"])
        if self.head is not None and request.method == "GET" and request.version == HttpVersion11 and request.keep_alive:
            return WireResponse(self)
        return IndexResponse(status=self.status, body=self.body, headers=self.headers)

    def wire(self) -> bytes:
        """The whole answer as aiohttp would write it (``wire_head``, then Date, Server and the
        body), built once per second: a replay is one write of these bytes, no copy."""
        date = rfc822_formatted_time()  # aiohttp's own Date string (remade once a second)
        cached = self._wire
        if cached[0] != date:
            cached[1] = b"".join((self.head or b"", b"Date: ", date.encode("latin-1"), b"\r\nServer: ",
                                  SERVER_SOFTWARE.encode("latin-1"), b"\r\n\r\n", self.body))
            cached[0] = date
        return cached[1]  # type: ignore[return-value]


def wire_head(status: int, reason: str, headers: CIMultiDictProxy[str], length: int) -> bytes | None:
    """The status line and headers of a 200 answer as aiohttp writes them to an HTTP/1.1
    keep-alive GET (its order: ours, then Content-Length; Date and Server follow), or None
    when a header is not plain ASCII text (aiohttp's own path then checks and writes it)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, value in headers.items():
        if name.lower() in ("content-length", "date", "server", "connection", "transfer-encoding"):
            return None
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    text = "\r\n".join(lines) + "\r\n"
    if not text.isascii() or any(c in text.replace("\r\n", "") for c in "\r\n\0"):
        return None
    return text.encode("ascii")


class WireResponse(web.StreamResponse):
    """A kept answer sent as one write of its prebuilt bytes (``Ready.wire``): no header
    dict, serialisation or body copy per request. Only for a keep-alive HTTP/1.1 GET
    without a matching If-None-Match (``Ready.response``); what aiohttp's own path would add
    to anything else (``Connection: close``, a HEAD without body, a 304) goes that way."""

    def __init__(self, ready: Ready) -> None:
        super().__init__(status=ready.status)
        self._ready = ready
        self._keep_alive = True

    @property
    def headers(self) -> CIMultiDictProxy[str]:  # type: ignore[override]
        return self._ready.headers  # read-only: these bytes are made already

    @property
    def body(self) -> bytes:
        return self._ready.body

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._payload_writer is None:
            self._req = request
            self._payload_writer = request._payload_writer
        return self._payload_writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None, "Response has not been started"
        await writer.write_eof(self._ready.wire())  # no headers buffered: written as they are
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """Where a GET's path and credentials led, once its answer was kept (``Tickets``)."""

    grant: Grant
    key: Hashable  # the ready answer's key
    ecosystem: str
    channel: str  # as routed (has_private is asked of it)
    view: str  # the catalog view served: the channel, or its public view
    public: bool  # a public channel: whether it has private packages decides the view
    private: bool  # ... and whether it had any when this was decided
    _facts: dict[str, RequestFacts] = field(default_factory=dict, compare=False)

    def facts(self, cache: str) -> RequestFacts:
        """The access line's facts of a replay whose answer had this cache result (made once)."""
        facts = self._facts.get(cache)
        if facts is None:
            principal = self.grant.principal
            facts = self._facts[cache] = RequestFacts(
                ecosystem=self.ecosystem, channel=self.channel, cache=cache,
                user=principal.user if principal is not None else "-",
                token=principal.token_name if principal is not None else "-")
            facts.line_tail = line_tail(facts)  # these facts never change: their access line's end made once
        return facts


TicketKey = tuple[str, "str | None", "str | None", "str | None"]  # path, Authorization, X-Auth, Accept


class Tickets:
    """One per Gateway. Keys hold credentials, as the token memo does; only authorised
    requests whose answer was kept make a ticket, so guesses cannot grow it (bounded anyway)."""

    def __init__(self, max_tickets: int = MAX_TICKETS) -> None:
        self.max_tickets = max_tickets
        self._tickets: dict[TicketKey, Ticket] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def get(self, key: TicketKey) -> Ticket | None:
        return self._tickets.get(key)

    def put(self, key: TicketKey, ticket: Ticket) -> None:
        if len(self._tickets) >= self.max_tickets and key not in self._tickets:
            for old in list(self._tickets)[: self.max_tickets // 2]:  # the oldest half
                del self._tickets[old]
        self._tickets[key] = ticket


class ReadyAnswers:
    """One per Gateway (per process): no globals."""

    def __init__(self, *, max_bytes: int = MAX_BYTES, max_answers: int = MAX_ANSWERS) -> None:
        self.max_bytes = max_bytes
        self.max_answers = max_answers
        self.bytes = 0
        self._answers: OrderedDict[Hashable, Ready] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def lookup(self, key: Hashable, stamp: tuple[object, int]) -> Ready | None:
        """The kept answer for ``key`` if nothing it was built from changed, else None."""
        ready = self._answers.get(key)
        if ready is None:
            return None
        if ready.stamp[1] != stamp[1] or ready.stamp[0] is not stamp[0] or time.time() >= ready.fresh_until:
            self._drop(key)
            return None
        self._answers.move_to_end(key)
        return ready

    def answer(self, request: web.BaseRequest, key: Hashable, stamp: tuple[object, int]) -> web.StreamResponse | None:
        """The kept answer for ``key`` as a response to ``request`` (``lookup``), else None."""
        ready = self.lookup(key, stamp)
        return ready.response(request) if ready is not None else None

    def keep(self, key: Hashable, stamp: tuple[object, int], response: web.StreamResponse, facts: RequestFacts) -> bool:
        """Keep a GET's answer when it is a whole index answer built only from checked inputs."""
        if type(response) is not IndexResponse or response.status != 200 or facts.volatile:
            return False
        body = response.body
        if not isinstance(body, bytes) or len(body) > MAX_ANSWER or response.prepared:
            return False
        etag = response.headers.get("ETag")
        if etag is None or time.time() >= facts.fresh_until:
            return False
        self._drop(key)
        headers = CIMultiDictProxy(CIMultiDict(response.headers))
        ready = Ready(stamp, facts.fresh_until, response.status, headers, body, etag, facts.cache,
                      wire_head(response.status, response.reason, headers, len(body)))
        self._answers[key] = ready
        self.bytes += 2 * len(body)  # the body, and its copy in the wire bytes
        while self._answers and (self.bytes > self.max_bytes or len(self._answers) > self.max_answers):
            self._drop(next(iter(self._answers)))
        return True

    def _drop(self, key: Hashable) -> None:
        ready = self._answers.pop(key, None)
        if ready is not None:
            self.bytes -= 2 * len(ready.body)
