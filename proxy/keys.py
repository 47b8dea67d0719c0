"""Every typed ``web.AppKey`` in one place (aiohttp >= 3.10 warns on string keys)."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .context import Services
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)  # the policy the app was created with
POLICY_PATH = web.AppKey("policy_path", Path)  # where SIGHUP reloads from (absent: embedded default)
SERVICES = web.AppKey("services", Services)  # built in cleanup_ctx, lives as long as the app
