"""The suite-wide secret scan is real: its hooks see what servers log and what tests receive,
and it finds a secret raw or inside HTTP Basic credentials (secret_scan.py)."""
from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import requests

from harness import Channelgate, Policy, http, remember_secret
from secret_scan import SecretScan, SCAN


def test_a_secret_is_found_raw_and_in_base64_at_every_alignment(tmp_path: Path) -> None:
    scan = SecretScan()
    token, password = "cgt-" + "Ab3" * 12, "upstream-pass-S3cret!"
    scan.secret(token)
    scan.secret(password)
    log = tmp_path / "server.log"
    log.write_bytes(b"2026 INFO ok line\n")
    scan.watch_log(log)
    assert scan.findings() == []
    with log.open("ab") as fh:
        fh.write(b"2026 ERROR failed for " + token.encode() + b"\n")
    for prefix in ("", "a:", "ab:", "__token__:"):  # every base64 alignment of an echoed Basic header
        scan.received("GET /x", b"Authorization: Basic " + base64.b64encode(f"{prefix}{token}".encode()))
    scan.received("GET /y", b"password=" + password.encode())
    found = scan.findings()
    assert sum("log" in f for f in found) == 1
    assert sum("GET /x" in f and "base64" in f for f in found) == 4
    assert any("GET /y" in f and "raw" in f for f in found)
    assert scan.findings() == []  # each piece of data is scanned once


def test_a_response_that_hands_out_a_secret_is_not_a_leak() -> None:
    scan = SecretScan()
    scan.received("POST /api/authentications", b'{"token": "cgt-NewlyMadeToken12345678"}')
    scan.secret("cgt-NewlyMadeToken12345678")  # the test learns it from that answer
    scan.received("GET /later", b"echo cgt-NewlyMadeToken12345678")
    (finding,) = scan.findings()
    assert "GET /later" in finding


async def test_the_hooks_see_server_logs_and_every_client_s_bodies(tmp_path: Path) -> None:
    policy = Policy({"groups": {"devs": ["alice"]}, "channels": {"internal": {"read": ["group:devs"]}},
                     "upstreams": {"up": {"type": "pypi", "url": "http://127.0.0.1:9/simple",
                                          "username": "u", "password": "scan-me-Upstream-Pw"}}})
    token = policy.add_token("alice", ["pypi:download"])
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        assert token in SCAN.secrets and "scan-me-Upstream-Pw" in SCAN.secrets
        assert server.log_path in SCAN.logs
        before = SCAN.bodies_seen
        http("GET", f"{server.url}/api/health")
        requests.get(f"{server.url}/api/health", timeout=30)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/api/health") as resp:
                await resp.read()
        assert SCAN.bodies_seen == before + 3
        assert any(b'"ok"' in body for _, _, body in SCAN.bodies)
    finally:
        server.stop()
    remember_secret("cgt-" + "Z9" * 20)
    assert "cgt-" + "Z9" * 20 in SCAN.secrets


def test_a_leaking_test_fails(tmp_path: Path) -> None:
    """The conftest hook fails the test that let a secret out, and only that one."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(tests / 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "secret_scan, pytest_configure = suite.secret_scan, suite.pytest_configure\n"
    )
    (tmp_path / "test_leak.py").write_text(
        "from harness import remember_secret\nfrom secret_scan import SCAN\n\n"
        "def test_leaks():\n    remember_secret('cgt-LeakedOnPurpose123456789')\n"
        "    SCAN.received('GET /page', b'<p>cgt-LeakedOnPurpose123456789</p>')\n\n"
        "def test_clean():\n    SCAN.received('GET /page', b'<p>nothing here</p>')\n"
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-o", f"pythonpath={tests}", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "2 passed, 1 error" in result.stdout and "secrets leaked" in result.stdout, result.stdout
    assert "ERROR test_leak.py::test_leaks" in result.stdout and "test_clean" not in result.stdout
    assert "response body of GET /page" in result.stdout


def test_only_the_stage_answer_s_post_url_may_carry_its_holder_s_token() -> None:
    scan = SecretScan()
    scan.secret("cgt-HolderToken123456789")
    scan.received("POST http://h/api/stage/ch/pkg/1.0/noarch/f.conda",
                  b'{"post_url": "http://h/t/cgt-HolderToken123456789/api/upload/x", "form_data": {}}')
    assert scan.findings() == []
    scan.received("POST http://h/api/stage/ch/pkg/1.0/noarch/f.conda", b'{"error": "cgt-HolderToken123456789"}')
    scan.received("GET http://h/api/upload/x", b'{"post_url": "http://h/t/cgt-HolderToken123456789/"}')
    assert len(scan.findings()) == 2
