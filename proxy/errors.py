"""Typed errors. Raised anywhere; mapped to HTTP once, in ``app.Gateway`` (``error_response``).

Messages are shown to clients (JSON ``{"error": ...}`` and, for 4xx, the reason phrase,
which twine prints). They must never contain a token: callers pass only facts they
derived themselves (file names, field names), never a raw path or header.
"""
from __future__ import annotations


class ChannelgateError(Exception):
    status: int = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)


class BadRequest(ChannelgateError):
    status = 400
    default_message = "bad request"


class Unauthorized(ChannelgateError):
    """No or invalid credentials. Always carries the Basic challenge (pip and R retry with it)."""

    status = 401
    default_message = "authentication required"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Basic realm="channelgate"'})


class Forbidden(ChannelgateError):
    status = 403
    default_message = "forbidden"


class NotFound(ChannelgateError):
    status = 404
    default_message = "not found"


class MethodNotAllowed(ChannelgateError):
    status = 405
    default_message = "method not allowed"


class NotAcceptable(ChannelgateError):
    status = 406
    default_message = "no acceptable representation"


class Conflict(ChannelgateError):
    status = 409
    default_message = "File already exists"


class PayloadTooLarge(ChannelgateError):
    status = 413
    default_message = "upload too large"


class Locked(ChannelgateError):
    status = 423
    default_message = "locked"


class TooManyRequests(ChannelgateError):
    status = 429
    default_message = "too many requests"


class UpstreamError(ChannelgateError):
    """The upstream failed, or served bytes that do not match its own index."""

    status = 502
    default_message = "upstream error"


class UpstreamTimeout(ChannelgateError):
    status = 504
    default_message = "upstream timed out"


class ConfigError(Exception):
    """A policy file is invalid. ``problems`` holds every finding, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
