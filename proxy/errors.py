"""Typed errors. Raised anywhere; mapped to HTTP once, in ``app.Gateway`` (``error_response``).

Messages are shown to clients (JSON ``{"error": ...}`` and, for 4xx, the reason phrase,
which twine prints). They must never contain a token: callers pass only facts they
derived themselves (file names, field names), never a raw path or header.
"""
from __future__ import annotations


class ChannelgateError(Exception):
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)


class InvalidInput(ChannelgateError):
    """Input that is not what it must be: an upload, a form, a digest, a document to parse."""

    default_message = "bad request"


BadRequest = InvalidInput  # the name request-handling code has always used


class Unauthorized(ChannelgateError):
    """No or invalid credentials. Always carries the Basic challenge (pip and R retry with it)."""

    default_message = "authentication required"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Basic realm="channelgate"'})


class Forbidden(ChannelgateError):
    default_message = "forbidden"


class NotFound(ChannelgateError):
    default_message = "not found"


class MethodNotAllowed(ChannelgateError):
    default_message = "method not allowed"


class NotAcceptable(ChannelgateError):
    default_message = "no acceptable representation"


class Conflict(ChannelgateError):
    default_message = "File already exists"


class PayloadTooLarge(ChannelgateError):
    default_message = "upload too large"


class RequestTimeout(ChannelgateError):
    """A request body that stalled or took too long (``server.limits.body_*``): nothing was kept."""

    default_message = "the request body was not received in time"


class Locked(ChannelgateError):
    default_message = "locked"


class TooManyRequests(ChannelgateError):
    default_message = "too many requests"


class NotReady(ChannelgateError):
    """A rendering that exists but is still being produced (a 503 with ``Retry-After``)."""

    default_message = "not ready yet"

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class StorageError(ChannelgateError):
    """The store failed (a full disk, a temp file that vanished): nothing was kept (a 500)."""

    default_message = "storage error"


class Unavailable(StorageError):
    """A backend the server depends on (the database) does not answer: nothing was changed,
    retry later (a 503)."""

    default_message = "the database is unavailable; nothing was changed, retry later"

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamError(ChannelgateError):
    """The upstream failed, or served bytes that do not match its own index."""

    default_message = "upstream error"


class UpstreamIsSelf(UpstreamError):
    """A URL whose host resolves, at connect time, to this server's own listener
    (``self_reference.OwnAddressResolver``): never fetched, the server would ask itself. The
    upstream is not down (it is not backed off): the name it (or its index) gave is wrong."""

    default_message = "the upstream URL resolves to this server itself: refused"


class UpstreamTimeout(ChannelgateError):
    default_message = "upstream timed out"


class ConfigError(Exception):
    """A policy file is invalid. ``problems`` holds every finding, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
