"""``database.url``: a real ``channelgate serve`` keeping its catalog, package settings and
user-made tokens in PostgreSQL (DESIGN "Scale-out on existing engines"), driven by real
clients: twine then pip, anaconda upload then rattler, ``anaconda auth --create``; and
``/api/ready`` while the database refuses connections, and after it is back."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from fixtures import conda_pkgs as fx
from fixtures.wheels import make_wheel, twine_fields
from harness import Channelgate, Policy, client_env, free_port, http, remember_secret, run, venv_bin
from proxy.auth.accounts import hash_password
from proxy.auth.credentials import hash_token

asyncpg = pytest.importorskip("asyncpg", reason="the postgres extra is in the test extras")
rattler = pytest.importorskip("rattler")

PASSWORD = "alice-pass-1234"


async def _fetch(url: str, sql: str, *args: object) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _query(url: str, sql: str, *args: object) -> list[Any]:
    return asyncio.run(_fetch(url, sql, *args))


def _anaconda(server: Channelgate, home: Path, *args: str, stdin: str = "") -> "subprocess.CompletedProcess[str]":
    """anaconda-client in its legacy (password) mode; ``auth --create`` asks for the password on stdin."""
    env = client_env(home)
    env["ANACONDA_CLIENT_LEGACY_INTERACTIVE_LOGIN"] = "1"
    if not (home / ".configured").exists():
        run([venv_bin("anaconda"), "config", "--set", "url", f"{server.url}/api"], env=env)
        (home / ".configured").touch()
    return subprocess.run([venv_bin("anaconda"), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=180, start_new_session=True)


def _cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=300)


def _until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Wait for an effect the server process causes on its own (its listener reconnecting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)  # polling another process's state
    return False


def _ready(server: Channelgate) -> tuple[int, dict[str, Any]]:
    status, _, body = http("GET", f"{server.url}/api/ready")
    return status, json.loads(body)


@pytest.fixture
def served(tmp_path: Path, pg_url: str, channelgate_factory) -> tuple[Channelgate, str]:  # type: ignore[no-untyped-def]
    policy = Policy({"database": {"url": pg_url}, "users": [{"name": "alice", "password": hash_password(PASSWORD)}],
                     "groups": {"devs": ["alice"]},
                     "channels": {"internal": {"read": ["group:devs"], "write": ["group:devs"]}}})
    token = policy.add_token("alice", ["all"], name="alice-all")
    return channelgate_factory(tmp_path / "cg", policy), token


async def test_uploads_installs_and_user_tokens_live_in_postgresql(served: tuple[Channelgate, str], pg_url: str,
                                                                    tmp_path: Path) -> None:
    server, token = served
    # twine upload -> pip install
    wheel = make_wheel(tmp_path / "dists", "pg-demo", "1.0", module_body="ORIGIN = 'postgresql'\n")
    up = run([venv_bin("twine"), "upload", "--disable-progress-bar", "--non-interactive", "--repository-url",
              f"{server.url}/api/repo/internal", "-u", token, "-p", "x-auth-token", str(wheel)],
             env=client_env(tmp_path / "home-twine"))
    assert up.returncode == 0, up.stdout + up.stderr
    target = tmp_path / "site"
    pip = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
               f"{server.url}/t/{token}/internal/simple", "--target", str(target), "pg-demo"],
              env=client_env(tmp_path / "home-pip"))
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (target / "pg_demo" / "__init__.py").read_text() == "ORIGIN = 'postgresql'\n"

    # anaconda upload -> rattler install
    pkg = fx.build_package(tmp_path / "pkgs", fx.PkgSpec("pg-conda", "1.0", "0"))
    home = tmp_path / "home-anaconda"
    uploaded = _anaconda(server, home, "-t", token, "upload", "-u", "internal", str(pkg))
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    channel = f"{server.url}/t/{token}/internal"
    records = await rattler.solve([rattler.Channel(channel)], ["pg-conda"], platforms=["linux-64", "noarch"],
                                  gateway=rattler.Gateway(cache_dir=tmp_path / "rattler-cache"), virtual_packages=[])
    env_dir = tmp_path / "env"
    await rattler.install(records, env_dir, cache_dir=tmp_path / "rattler-pkgs", show_progress=False,
                          platform=rattler.Subdir("linux-64"))
    assert (env_dir / "share/pg-conda/README.txt").read_text().startswith("pg-conda 1.0")

    # both uploads are rows of PostgreSQL; nothing went to SQLite
    rows = await _fetch(pg_url, "SELECT ecosystem, filename FROM uploads ORDER BY ecosystem")
    assert [(r[0], r[1]) for r in rows] == [("conda", pkg.name), ("pypi", wheel.name)]
    assert not list(server.storage.glob("*.sqlite3*"))

    # anaconda auth --create: the token works, and only its digest is stored, in PostgreSQL
    created = _anaconda(server, home, "-t", token, "org", "auth", "--create", "--name", "ci-read",
                        "--scopes", "conda:download", stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stdout + created.stderr
    made = remember_secret(created.stdout.strip().splitlines()[-1])
    status, _, body = http("GET", f"{server.url}/t/{made}/internal/noarch/repodata.json")
    assert status == 200 and pkg.name in json.loads(body)["packages.conda"]
    stored = await _fetch(pg_url, 'SELECT "user", sha256, scopes FROM user_tokens WHERE name = $1', "ci-read")
    assert [(r[0], r[1], json.loads(r[2])) for r in stored] == [("alice", hash_token(made), ["conda:download"])]
    assert not list(server.storage.glob("*.sqlite3*"))

    # channelgate token list/revoke work on PostgreSQL, and the running server hears the revocation
    listed = _cli("token", "list", "--config", str(server.config))
    assert "ci-read" in listed.stdout and "user-made" in listed.stdout and made not in listed.stdout, listed.stderr
    assert _cli("token", "revoke", "ci-read", "--config", str(server.config)).returncode == 0
    assert _until(lambda: http("GET", f"{server.url}/t/{made}/internal/noarch/repodata.json")[0] == 401, 5)


async def test_export_from_postgresql_and_import_into_another(served: tuple[Channelgate, str], pg_cluster: Any,
                                                              tmp_path: Path) -> None:
    """Air-gap commands read and write the configured catalog: a bundle exported from a server
    on PostgreSQL carries its uploads, and importing it into a store on another PostgreSQL
    database puts the rows there (twice: nothing changes the second time)."""
    server, token = served
    wheel = make_wheel(tmp_path / "dists", "carried", "1.0")
    assert _post_wheel(server, token, wheel) == 200
    bundle = tmp_path / "bundle.tar"
    exported = _cli("export", "--config", str(server.config), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    other = pg_cluster.new_database()
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump({**server.policy.data, "storage": {"path": str(tmp_path / "other")},
                                      "database": {"url": other}}))
    for _ in range(2):
        imported = _cli("import", "--config", str(config), str(bundle))
        assert imported.returncode == 0, imported.stdout + imported.stderr
    rows = await _fetch(other, "SELECT channel, filename FROM uploads")
    assert [(r[0], r[1]) for r in rows] == [("internal", wheel.name)]
    assert (await _fetch(other, "SELECT generation FROM generations"))[0][0] == 1  # the second import wrote nothing


def _post_wheel(server: Channelgate, token: str, wheel: Path) -> int:
    with open(wheel, "rb") as fh:
        response = requests.post(f"{server.url}/api/repo/internal", data=twine_fields(wheel),
                                 files={"content": (wheel.name, fh, "application/octet-stream")},
                                 auth=(token, "x-auth-token"), timeout=60)
    if response.status_code == 503:  # the database is down: the client is told when to retry
        assert response.headers["Retry-After"] == "5" and "database" in response.json()["error"]
    return response.status_code


def test_ready_reports_the_database_down_and_recovers(served: tuple[Channelgate, str], pg_url: str,
                                                      tmp_path: Path) -> None:
    server, token = served
    wheel = make_wheel(tmp_path / "dists", "while-down", "1.0")
    status, doc = _ready(server)
    assert status == 200 and doc["checks"]["catalog"] == "ok", doc
    database = urlsplit(pg_url).path.lstrip("/")
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    _query(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    _query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
    try:
        status, doc = _ready(server)
        assert status == 503 and doc["checks"]["catalog"] != "ok", doc
        assert doc["checks"]["storage"] == "ok"  # only the database is named
        status, _, _ = http("GET", f"{server.url}/t/{token}/internal/simple/")
        assert status == 200  # reads are served from memory meanwhile
        assert _post_wheel(server, token, wheel) == 503  # a write says so, and keeps nothing
    finally:
        _query(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert _until(lambda: _ready(server)[0] == 200), server.log()
    assert b"while-down" not in http("GET", f"{server.url}/t/{token}/internal/simple/")[2]
    assert _post_wheel(server, token, wheel) == 200  # writes work again once it is back
    assert b"while-down" in http("GET", f"{server.url}/t/{token}/internal/simple/")[2]


def test_an_unreachable_database_is_one_line_at_start(tmp_path: Path) -> None:
    """DESIGN "Hostile input and faults": a start-up problem is one clear line and a non-zero
    exit; the database's password is never printed."""
    config = tmp_path / "policy.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'storage'}}}\n"
                      f"database: {{url: 'postgresql://cg:not-to-be-shown@127.0.0.1:{free_port()}/cg'}}\n")
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--listen",
                             f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("database: cannot open postgresql://cg@127.0.0.1:"), result.stderr
    assert "not-to-be-shown" not in result.stderr + result.stdout
