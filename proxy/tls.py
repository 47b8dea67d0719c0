"""HTTPS for the listener (DESIGN, "Operations": server.tls_cert and server.tls_key).

One ``ssl.SSLContext`` for the server's lifetime; SIGHUP loads the certificate again into
the same context, so a renewed certificate is presented on every new connection without a
restart (open connections keep the one they were made with).
"""
from __future__ import annotations

import logging
import ssl

from .settings import Settings

log = logging.getLogger(__name__)


def server_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def reload_certificate(context: ssl.SSLContext, settings: Settings) -> list[str]:
    """Load the (possibly renewed) certificate; on failure the old one stays in use."""
    if settings.tls_cert is None or settings.tls_key is None:
        return ["TLS stays on: turning it off needs a restart"]
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate reload refused, the old certificate stays: %s", exc)
        return [f"cannot load the certificate {settings.tls_cert}: {exc}"]
    log.info("TLS certificate reloaded from %s", settings.tls_cert)
    return []
