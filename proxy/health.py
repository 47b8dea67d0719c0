"""Liveness and readiness (DESIGN, "Operations"; Kubernetes' probe split).

- ``GET /api/health``: liveness. 200 while the process answers at all; a load balancer or
  orchestrator that sees it fail restarts the process.
- ``GET /api/ready`` (or ``/api/health?ready``): readiness. 200 when the storage is writable,
  the catalog answers and the bucket answers HeadBucket (when ``storage.backend: s3``);
  otherwise 503 with every failed check named, so traffic goes elsewhere while the process
  is left running. With ``cache.backend: redis``, Redis being down
  is 200 with ``"status": "degraded"`` and ``checks.redis`` naming the failure: the replicas
  share one Redis, so a 503 would take every replica out of rotation at once, while each
  still serves correctly with local coordination (coordination.py).
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from . import __version__
from .context import Services

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0  # seconds each readiness check may take


def liveness() -> web.Response:
    return web.json_response({"status": "ok", "version": __version__, "time": time.time()})


async def _probe_catalog(services: Services) -> None:
    await services.catalog.check()  # one query to the database (SQLite: a pragma)


async def _check(name: str, probe: asyncio.Future[object] | asyncio.Task[object], problems: dict[str, str]) -> None:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        problems[name] = f"no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # any failure of a dependency makes the server not ready
        problems[name] = f"{type(exc).__name__}: {exc}"[:200]


async def readiness(services: Services) -> web.Response:
    settings = services.settings
    problems: dict[str, str] = {}
    checks = {
        "storage": asyncio.ensure_future(asyncio.to_thread(services.store.probe)),
        "catalog": asyncio.ensure_future(_probe_catalog(services)),
    }
    if settings.storage_backend == "s3":  # HeadBucket (store/s3.py)
        checks["s3"] = asyncio.ensure_future(services.store.ready())
    await asyncio.gather(*(_check(name, task, problems) for name, task in checks.items()))  # type: ignore[arg-type]
    results = {name: problems.get(name, "ok") for name in checks}
    if problems:
        log.warning("not ready: %s", "; ".join(f"{k}: {v}" for k, v in problems.items()))
        return web.json_response({"status": "unavailable", "checks": results}, status=503)
    redis = services.coordinator.state
    if redis is None:
        return web.json_response({"status": "ready", "version": __version__, "checks": results})
    results["redis"] = redis if redis == "ok" else f"degraded, coordinating locally: {redis}"
    # Redis down is 200 "degraded", not 503: every replica shares the one Redis, so a 503 would
    # take them all out of rotation at once, while each still serves correctly on its own
    status = "ready" if redis == "ok" else "degraded"
    return web.json_response({"status": status, "version": __version__, "checks": results})
