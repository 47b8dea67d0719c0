"""``channelgate migrate``: an embedded-default store (SQLite catalog and tokens, blobs on the
filesystem) copied into PostgreSQL and an S3 bucket (moto's server: a real HTTP S3), then
served from the new configuration to a real pip; a rerun copies nothing; a blob that fails
verification is listed and the exit status is non-zero (README "Scaling out")."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from fixtures.wheels import make_wheel
from harness import Channelgate, Policy, client_env, http, remember_secret, run, venv_bin
from proxy.auth.accounts import hash_password

if TYPE_CHECKING:
    from proxy.storage_settings import S3Settings

pytest.importorskip("asyncpg", reason="the postgres extra is in the test extras")

PASSWORD = "alice-pass-1234"


def _migrate(config: Path, source: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "proxy", "migrate", "--config", str(config), "--from", str(source)],
                          capture_output=True, text=True, timeout=300)


def _policy(storage: dict[str, Any], database: dict[str, str] | None = None) -> Policy:
    data: dict[str, Any] = {
        "storage": storage, "users": [{"name": "alice", "password": hash_password(PASSWORD)}],
        "groups": {"devs": ["alice"]}, "channels": {"internal": {"read": ["group:devs"], "write": ["group:devs"]}},
        "tokens": [],
    }
    if database:
        data["database"] = database
    return Policy(data)


def _pip(server: Channelgate, token: str, target: Path, package: str) -> "subprocess.CompletedProcess[str]":
    return run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
                f"{server.url}/t/{token}/internal/simple", "--target", str(target), package],
               env=client_env(target.parent / f"home-{target.name}"))


def test_migrate_to_postgresql_and_s3_then_serve(tmp_path: Path, pg_url: str, s3_settings: "S3Settings") -> None:
    old_policy = _policy({"path": str(tmp_path / "old" / "storage")})
    token = old_policy.add_token("alice", ["all"], name="alice-all")
    old = Channelgate(tmp_path / "old", old_policy).start()
    try:
        wheel = make_wheel(tmp_path / "dists", "moved-pkg", "1.0", module_body="WHERE = 'migrated'\n")
        up = run([venv_bin("twine"), "upload", "--disable-progress-bar", "--non-interactive", "--repository-url",
                  f"{old.url}/api/repo/internal", "-u", token, "-p", "x-auth-token", str(wheel)],
                 env=client_env(tmp_path / "home-twine"))
        assert up.returncode == 0, up.stdout + up.stderr
        status, _, body = http("POST", f"{old.url}/api/authentications", data=json.dumps(
            {"note": "laptop", "note_url": "https://laptop.example/app", "scopes": ["pypi:download"]}).encode(), headers={
            "Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
            "Content-Type": "application/json"})
        assert status == 200, body
        made = remember_secret(json.loads(body)["token"])
    finally:
        old.stop()

    s3 = {"endpoint_url": s3_settings.endpoint_url, "bucket": s3_settings.bucket, "prefix": s3_settings.prefix,
          "region": s3_settings.region, "access_key_id": s3_settings.access_key_id,
          "secret_access_key": s3_settings.secret_access_key}
    new_policy = _policy({"path": str(tmp_path / "new" / "storage"), "backend": "s3", "s3": s3}, {"url": pg_url})
    new_policy.data["tokens"] = old_policy.data["tokens"]
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump(new_policy.data))

    first = _migrate(config, old.storage)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "catalog rows 1," in first.stdout and "tokens 1," in first.stdout and "blobs 2 " in first.stdout, first.stdout
    assert "blobs:" in first.stderr  # progress
    again = _migrate(config, old.storage)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "catalog rows 0, package settings 0, tokens 0, revocations 0, blobs 0 (0 bytes; 2 already there)" \
        in again.stdout, again.stdout

    new = Channelgate(tmp_path / "new", new_policy).start()
    try:
        assert not (new.storage / "uploads").exists() or not any((new.storage / "uploads").rglob("*.whl"))
        installed = _pip(new, token, tmp_path / "site", "moved-pkg")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert (tmp_path / "site" / "moved_pkg" / "__init__.py").read_text() == "WHERE = 'migrated'\n"
        status, _, _ = http("GET", f"{new.url}/t/{made}/internal/simple/moved-pkg/")
        assert status == 200  # the user-made token came along
        status, _, body = http("GET", f"{new.url}/api/authentications", headers={"Authorization": f"token {made}"})
        assert status == 200 and [t["note_url"] for t in json.loads(body)] == ["https://laptop.example/app"]
    finally:
        new.stop()


def test_migrate_lists_a_blob_that_fails_verification(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "old"
    bogus = "ab" * 32
    path = source / "uploads" / "sha256" / bogus[:2] / bogus
    path.parent.mkdir(parents=True)
    path.write_bytes(b"these bytes do not hash to their name")
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "new")}, "database": {"url": pg_url}}))
    result = _migrate(config, source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED uploads/{bogus}: sha256 mismatch" in result.stderr
    assert not (tmp_path / "new" / "uploads" / "sha256" / bogus[:2] / bogus).exists()
