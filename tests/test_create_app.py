"""create_app(): the same Gateway and services as `channelgate serve`, as an aiohttp Application
(for embedding), driven here by aiohttp's test client."""
from __future__ import annotations

from pathlib import Path

from proxy.app import create_app
from proxy.auth.credentials import generate_token, hash_token
from proxy.settings import parse_settings


async def test_create_app_serves_health_and_enforces_auth(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = generate_token()
    settings = parse_settings(
        f"storage: {{path: {tmp_path / 'storage'}}}\n"
        "groups: {devs: [alice]}\n"
        "channels: {internal: {read: [group:devs]}}\n"
        f"tokens: [{{name: t, user: alice, sha256: 'sha256:{hash_token(token)}', scopes: [pypi:download]}}]\n"
    )
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/api/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/internal/simple/")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="channelgate"'
    resp = await client.get(f"/t/{token}/internal/simple/")
    assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    assert (tmp_path / "storage" / "catalog.sqlite3").exists()
