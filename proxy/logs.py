"""Logging that can never leak a token: every formatted line (access log, tracebacks
included) passes through ``mask`` on its way out. Configured from cli.py only."""
from __future__ import annotations

import logging
import re
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_PATTERNS = (
    (re.compile(r"/t/[^/\s\"'?]+"), "/t/<redacted>"),  # path tokens, whatever their form
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


class AccessLogger(AbstractAccessLogger):
    """Access log without query strings or credentials."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            '%s "%s %s" %d %d %.4f',
            request.remote,
            request.method,
            mask(request.path),
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
