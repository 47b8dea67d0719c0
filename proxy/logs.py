"""Logging that can never leak a token: every formatted line (access log, tracebacks
included) passes through ``mask`` on its way out. Configured from cli.py only."""
from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_PATH_TOKEN = re.compile(r"/t/[^/\s\"'?]+")
_PATTERNS = (
    (_PATH_TOKEN, "/t/<redacted>"),  # path tokens, whatever their form
    (re.compile(r"cgt-[A-Za-z0-9]+"), "cgt-<redacted>"),  # our tokens anywhere
    (re.compile(r"(?i)(authorization|x-auth)(['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}]+( [^\s,'\"}]+)?"), r"\1\2<redacted>"),
    (re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"), r"\1<redacted>@"),  # userinfo in URLs
)


def mask(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class AccessSink:
    """Buffers access-log lines and writes them in batches, at most ``delay`` seconds late.

    A LogRecord per request costs more than serving a warm index page; a formatted line
    appended to a list costs almost nothing. Lines go to the same stream as the log.
    """

    def __init__(self, stream: TextIO | None = None, *, delay: float = 0.2, max_lines: int = 512) -> None:
        self.stream = stream or sys.stderr
        self.delay = delay
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._scheduled: asyncio.TimerHandle | None = None
        self._stamp_second = -1
        self._stamp = ""

    def write(self, line: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._lines.append(f"{self._stamp} INFO access: {line}\n")
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
        path = request.path
        if "/t/" in path:
            path = _PATH_TOKEN.sub("/t/<redacted>", path)
        if "cgt-" in path:
            path = mask(path)
        self.logger.write(  # type: ignore[attr-defined]
            f'{request.remote} "{request.method} {path}" {response.status} {response.body_length} {time:.4f}'
        )

    @property
    def enabled(self) -> bool:
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
