"""Logging that can never leak a token: every formatted line (access log, tracebacks
included) passes through ``mask`` on its way out. Configured from cli.py only.

``--log-format json`` (DESIGN, "Operations"): one JSON object per line, for every line:
``time``, ``level``, ``logger``, ``message``, plus the record's structured fields (an
upstream fetch carries upstream, url, status, bytes, seconds). The access line carries
remote, method, path, status, bytes (really sent: headers and body, sendfile included),
duration, user (or ``-``), token (its name), channel, ecosystem and cache (hit, miss,
stale, hosted or ``-``).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .metrics import REQUEST, Metrics, RequestFacts
from .responses import bytes_sent

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# attributes every LogRecord has; anything else on a record came from ``extra=``
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_NO_FACTS = RequestFacts()
PATH_MEMO = 4096  # masked paths remembered by an AccessSink

_PATH_TOKEN = re.compile(r"/t/[^/\s\"'?]+")
_PATTERNS = (
    (_PATH_TOKEN, "/t/<redacted>"),  # path tokens, whatever their form
    (re.compile(r"cgt-[A-Za-z0-9]+"), "cgt-<redacted>"),  # our tokens anywhere
    (re.compile(r"(?i)(authorization|x-auth)(['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}]+( [^\s,'\"}]+)?"), r"\1\2<redacted>"),
    (re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"), r"\1<redacted>@"),  # userinfo in URLs
)


# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: each could forge or
# split a log line (%0a) or write raw NUL bytes (%00) when a client puts it in a path
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def escape_path(path: str) -> str:
    """A request path safe inside one quoted log field: controls, '"' and '\\' percent-encoded."""
    path = _CONTROL.sub(_percent, path)
    if '"' in path or "\\" in path:
        path = path.replace("\\", "%5C").replace('"', "%22")
    return path


def escape_controls(text: str) -> str:
    """A log message on one line: control characters written as \\xNN escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() < "\u0100" else f"\\u{ord(m.group()):04x}", text)


def mask(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        # the message itself stays one line; tracebacks (appended after this) keep theirs
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, masked like every other line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask(orjson.dumps(entry, default=str).decode())


def masked_names(facts: RequestFacts) -> tuple[str, str]:
    """The access line's user and token name: chosen by users, so never trusted (masked)."""
    user, token = facts.user, facts.token
    if "cgt-" in token or "cgt-" in user:
        user, token = mask(user), mask(token)
    return user, token


def line_tail(facts: RequestFacts) -> str:
    """The end of a text access line: who, which channel, what the cache did."""
    user, token = masked_names(facts)
    return f" user={user} token={token} channel={facts.channel} ecosystem={facts.ecosystem} cache={facts.cache}\n"


class AccessSink:
    """Buffers access-log lines and writes them in batches, at most ``delay`` seconds late.

    A LogRecord per request costs more than serving a warm index page; a formatted line
    appended to a list costs almost nothing. Lines go to the same stream as the log.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        delay: float = 0.2,
        max_lines: int = 512,
        json_lines: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.json_lines = json_lines
        # access lines are INFO: --log-level warning (or above) silences them, not the metrics
        self.quiet = not logging.getLogger("access").isEnabledFor(logging.INFO)
        self.metrics = metrics
        self.delay = delay
        self.max_lines = max_lines
        self._lines: list[str] = []
        self.paths: dict[str, str] = {}  # request path -> as logged (AccessLogger)
        self._scheduled: asyncio.TimerHandle | None = None
        self._stamp_second = -1
        self._stamp = ""

    def record(self, request: BaseRequest, response: StreamResponse, duration: float, path: str) -> None:
        """One answered request: count it, then log it (``path`` is already masked)."""
        facts = REQUEST.get() or _NO_FACTS
        sent = bytes_sent(response)
        status = response.status
        if self.metrics is not None:
            self.metrics.request_done(facts.ecosystem, status, sent)
        if self.quiet:
            return
        if self.json_lines:
            user, token = masked_names(facts)
            self._json(request, status, sent, duration, path, facts, user, token)
            return
        now = time.time()
        if int(now) != self._stamp_second:
            self._stamp_second = int(now)
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._stamp_second))
        self._append(f'{self._stamp} INFO access: {request.remote} "{request.method} {path}" {status} {sent} '
                     f"{duration:.4f}{facts.line_tail or line_tail(facts)}")

    def _json(self, request: BaseRequest, status: int, sent: int, duration: float, path: str, facts: RequestFacts,
              user: str, token: str) -> None:
        entry = {
            "time": _iso(time.time()),
            "level": "INFO",
            "logger": "access",
            "message": f"{request.method} {path} {status}",
            "remote": request.remote,
            "method": request.method,
            "path": path,
            "status": status,
            "bytes": sent,
            "duration": round(duration, 6),
            "user": user,
            "token": token,
            "channel": facts.channel,
            "ecosystem": facts.ecosystem,
            "cache": facts.cache,
        }
        self._append(orjson.dumps(entry).decode() + "\n")

    def _append(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._scheduled is None:
            try:
                self._scheduled = asyncio.get_running_loop().call_later(self.delay, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("".join(lines))
            self.stream.flush()


class AccessLogger(AbstractAccessLogger):
    """Access log without query strings or credentials; ``logger`` is an AccessSink."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        sink: AccessSink = self.logger  # type: ignore[assignment]
        raw = request.path
        path = sink.paths.get(raw)  # paths repeat (one per client and token): masked once
        if path is None:
            path = raw
            if "/t/" in path:
                path = _PATH_TOKEN.sub("/t/<redacted>", path)
            if "cgt-" in path:
                path = mask(path)
            path = escape_path(path)
            if len(sink.paths) >= PATH_MEMO:
                sink.paths.clear()
            sink.paths[raw] = path
        sink.record(request, response, time, path)

    @property
    def enabled(self) -> bool:
        return True


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
