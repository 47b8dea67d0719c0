"""Every typed ``web.AppKey`` in one place (aiohttp >= 3.10 warns on string keys)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .context import Services

if TYPE_CHECKING:
    from .app import Gateway

SERVICES = web.AppKey("services", Services)  # built in cleanup_ctx, lives as long as the app
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")  # the one request handler over SERVICES
