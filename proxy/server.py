"""The listener: start-up checks, and the connection guard around aiohttp's low-level server.

DESIGN "Hostile input and faults":
- start-up problems (bad listen address, port in use, storage not writable) are one clear line
  and a non-zero exit, found before anything is changed on disk: ``bind`` runs first, then
  ``check_storage``, and only then does the store clean its tmp/ (a second ``serve`` on a busy
  port must not break the first one's downloads in progress);
- connections that send no complete request are closed after ``header_timeout``; idle
  keep-alive connections after ``keepalive_timeout``; beyond ``max_connections`` a new
  connection gets a 503 and is closed at once, so file descriptors never run out;
- no input may cost unbounded time: a request body (an upload) that sends nothing for
  ``body_idle_timeout`` while the server waits for it, or is not whole ``body_deadline`` after
  its head, fails the handler's read with ``RequestTimeout`` (a 408 naming the limit; the
  upload's temp file is discarded by its reader) and the connection is closed after that answer;
- the metrics listener (``server.metrics_listen``) is the same guarded server, so it has the
  same protections;
- accept errors (EMFILE...) and refused connections are logged at a bounded rate;
- aiohttp's own 400 pages echo the malformed request line or header (a token included):
  ours name only the kind of error.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import os
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest

from .errors import ConfigError, RequestTimeout
from .metrics import CountingServer, Metrics
from .settings import Limits, parse_listen

log = logging.getLogger(__name__)

# descriptors kept free beyond max_connections: store files, upstream sockets, the catalog
FD_RESERVE = 256
LOG_INTERVAL = 10.0  # seconds between two reports of the same recurring event
ACCEPT_ERROR = "socket.accept() out of system resource"

_BUSY_BODY = b'{"error": "too many open connections; retry later"}'
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)

# the message of each malformed-request error, chosen by us: aiohttp's own repeats the input
_MALFORMED: tuple[tuple[type[BaseException], str], ...] = (
    (LineTooLong, "request line or header too long"),
    (BadHttpMethod, "invalid method"),
    (BadStatusLine, "invalid request line"),
    (InvalidURLError, "invalid request target"),
    (InvalidHeader, "invalid header"),
    (TransferEncodingError, "invalid transfer encoding"),
    (ContentLengthError, "invalid content length"),
    (BadHttpMessage, "malformed request"),
)


# --------------------------------------------------------------------------- start-up checks
def bind(listen: str, *, backlog: int = 1024) -> socket.socket:
    """The listening socket for HOST:PORT, or ConfigError with one line saying why not."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError([f"cannot listen on {listen}: {exc}"]) from None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError([f"cannot listen on {listen}: unknown host {host!r} ({exc.strerror})"]) from None
    try:
        return socket.create_server(address, family=family, backlog=backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "the port is already in use (is another server running?)"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "the address is not one of this machine's"
        else:
            why = exc.strerror or str(exc)
        raise ConfigError([f"cannot listen on {listen}: {why}"]) from None


def check_storage(path: Path) -> None:
    """``storage.path`` exists (or can be made) and takes new files; ConfigError otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        for where in (path, path / "tmp"):
            if where.exists():
                fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=where)
                os.close(fd)
                os.unlink(probe)
    except OSError as exc:
        raise ConfigError([f"storage.path {path} is not writable: {exc.strerror or exc}"]) from None


def raise_fd_limit(limits: Limits) -> None:
    """Lift the soft open-file limit towards the hard one, so max_connections fits under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit (%d) is below server.limits.max_connections (%d) + %d reserved: "
            "raise `ulimit -n` or lower max_connections", soft, limits.max_connections, FD_RESERVE,
        )


# --------------------------------------------------------------------------- bounded logging
class RateLimitedLog:
    """One line per ``interval`` seconds for a recurring event, with how often it happened."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.count = 0
        self._last = -float("inf")

    def hit(self, level: int, message: str, *args: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.log(level, message + " (%d time(s) since the last report)", *args, self.count)
            self._last = now
            self.count = 0


WORKER_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor size
WORKER_PREFIX = "channelgate-io"


async def start_worker_threads() -> None:
    """The loop's default executor (file writes, fsync, hashing off the loop) with all its
    threads started now: lazily, the first requests that write to the store each paid for a
    thread start, and a cold resolve is nothing but first requests (issue 15)."""
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix=WORKER_PREFIX)
    loop.set_default_executor(executor)
    # each waits for all the others: no thread is idle when the next task arrives, so the
    # executor starts a new one for each
    barrier = threading.Barrier(WORKER_THREADS)
    started = [loop.run_in_executor(None, barrier.wait, 10.0) for _ in range(WORKER_THREADS)]
    for result in await asyncio.gather(*started, return_exceptions=True):
        if isinstance(result, threading.BrokenBarrierError):  # a slow start: the rest start lazily
            log.warning("not every worker thread started at once")
            break


def install_accept_error_handler(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback for every failed accept(), up to a backlog's worth per wake-up
    (268,000 lines for 20,000 idle sockets): report them at a bounded rate instead."""
    reports = RateLimitedLog(LOG_INTERVAL)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            exc = context.get("exception")
            reason = getattr(exc, "strerror", None) or str(exc)
            reports.hit(logging.ERROR, "cannot accept connections: %s; raise `ulimit -n` or lower "
                        "server.limits.max_connections", reason)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# --------------------------------------------------------------------------- the guard
class GuardedServer(CountingServer):
    """aiohttp's low-level server whose connections are ``GuardedHandler``s. ``active``
    counts a connection until the server closes it (not until its task has wound down),
    so a slot is free again by the time the client sees the close."""

    def __init__(self, handler: Any, *, limits: Limits, metrics: Metrics | None, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=limits.keepalive_timeout, metrics=metrics, **kwargs)
        self.limits = limits
        self.active: set[RequestHandler] = set()
        self.refusals = RateLimitedLog(LOG_INTERVAL)
        self.slow_bodies = RateLimitedLog(LOG_INTERVAL)

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedHandler(RequestHandler):
    """One connection: refused beyond the cap, closed when a request head is not complete
    within ``header_timeout`` (from the connection's start, or from the first byte of a later
    request); aiohttp's keep-alive timer closes it when idle between requests."""

    __slots__ = ("_guard", "_header_handle", "_body")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_handle: asyncio.TimerHandle | None = None
        self._body: BodyWatch | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if len(guard.active) >= guard.limits.max_connections:
            self._manager = None  # never registered: connection_lost has nothing to undo
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY_RESPONSE)
            transport.close()
            guard.refusals.hit(logging.WARNING, "connection limit reached (server.limits.max_connections=%d): "
                               "refused a connection", guard.limits.max_connections)
            return
        guard.active.add(self)
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._end_body_watch()
        self._guard.active.discard(self)
        super().connection_lost(exc)

    def force_close(self) -> None:
        self._guard.active.discard(self)
        super().force_close()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        super().data_received(data)
        if self._body is not None:
            self._body.received()  # progress on the body being watched, or its end
            if self._body.done:
                self._body = None
        if self._request_count != requests:
            self._cancel_header_timer()  # a complete request head arrived
            payload = self._messages[-1][1] if self._messages else None
            if self._body is None and isinstance(payload, StreamReader) and not payload.is_eof():
                self._body = BodyWatch(self, payload)  # ...whose body is still to come
        elif data and self._header_handle is None and self._waiter is not None and not self._waiter.done():
            self._start_header_timer()  # the first bytes of a next request on a kept-alive connection

    def _end_body_watch(self) -> None:
        if self._body is not None:
            self._body.cancel()
            self._body = None

    def body_expired(self, payload: StreamReader, problem: str) -> None:
        """A body stalled or overran its deadline: the handler reading it gets RequestTimeout
        (answered 408), and the connection closes after that answer. If no handler is running
        (the answer is already sent and aiohttp is draining the body), close at once."""
        self._body = None
        self._guard.slow_bodies.hit(logging.INFO, "request body refused: %s", problem)
        if self._current_request is None:
            self.force_close()
            return
        self._lingering_time = 0.0  # nothing more is read from this body
        payload.set_exception(RequestTimeout(problem))
        self.close()

    def _start_header_timer(self) -> None:
        self._header_handle = self._loop.call_later(self._guard.limits.header_timeout, self._header_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None

    def _header_expired(self) -> None:
        self._header_handle = None
        if not self._request_in_progress:
            log.debug("closing a connection that sent no complete request in %ss", self._guard.limits.header_timeout)
            self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's page for a malformed request quotes the request line or a header, a token
        with it (DESIGN: no token in an error page): answer and log the kind of error only."""
        if status >= 500 or exc is None:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        kind = next((text for cls, text in _MALFORMED if isinstance(exc, cls)), "malformed request")
        log.debug("malformed request from %s: %s", request.remote, kind)
        resp = web.Response(status=status, text=json.dumps({"error": kind}), content_type="application/json")
        resp.force_close()
        return resp


class BodyWatch:
    """The body of the request whose head just arrived on ``handler``: ``body_idle_timeout``
    with no progress, or ``body_deadline`` since the head, and ``handler.body_expired`` is
    called. Time the server itself spends not reading (bytes waiting in the reader's buffer,
    the transport paused by flow control) never counts as the client's idleness."""

    __slots__ = ("_handler", "_payload", "_limits", "_last", "_idle", "_deadline", "done")

    def __init__(self, handler: GuardedHandler, payload: StreamReader) -> None:
        self._handler = handler
        self._payload = payload
        self._limits = handler._guard.limits
        loop = handler._loop
        self._last = loop.time()
        self._idle = loop.call_later(self._limits.body_idle_timeout, self._check_idle)
        self._deadline = loop.call_later(self._limits.body_deadline, self._overran)
        self.done = False

    def received(self) -> None:
        self._last = self._handler._loop.time()
        if self._payload.is_eof():
            self.cancel()

    def cancel(self) -> None:
        self.done = True
        self._idle.cancel()
        self._deadline.cancel()

    def _check_idle(self) -> None:
        loop = self._handler._loop
        if self._payload._size > 0 or self._handler._reading_paused:
            self._last = loop.time()  # the server has not read what came: not the client's fault
        remaining = self._last + self._limits.body_idle_timeout - loop.time()
        if remaining > 0:
            self._idle = loop.call_later(remaining, self._check_idle)
            return
        self._expire(f"the request body sent nothing for {self._limits.body_idle_timeout} s "
                     "(server.limits.body_idle_timeout)")

    def _overran(self) -> None:
        self._expire(f"the request body was not complete {self._limits.body_deadline} s after its head "
                     "(server.limits.body_deadline)")

    def _expire(self, problem: str) -> None:
        if not self.done:
            self.cancel()
            self._handler.body_expired(self._payload, problem)
