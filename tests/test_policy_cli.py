"""check-config, token create and SIGHUP reload, through the real command line and process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import Channelgate, Policy, http

BAD_POLICY = """\
server:
  listen: 0.0.0.0:8080
  colour: blue
upstreams:
  pypi: {type: pypi, url: https://pypi.org/simple}
groups:
  devs: [alice]
  devs: [alice, bob]
channels:
  internal:
    upstreams: [pypi, conda-forge]
    read: [group:nobody]
    write: [user:ghost]
tokens:
  - {name: a, user: alice, sha256: "sha256:xyz", scopes: [pypi:download, everything], expires: 2027-02-30}
  - {name: b, user: zed, sha256: "sha256:%s", scopes: [all]}
""" % ("a" * 64)


def channelgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_check_config_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BAD_POLICY)
    result = channelgate("check-config", "--config", str(path))
    assert result.returncode != 0
    out = result.stdout
    expected = [
        ("server.colour: unknown key", 3),
        ("groups.devs: duplicate key", 8),
        ("channels.internal.upstreams[1]: names upstream 'conda-forge'", 11),
        ("channels.internal.read[0]: names group 'nobody'", 12),
        ("channels.internal.write[0]: names user 'ghost'", 13),
        ("tokens[0].sha256: must be 'sha256:' followed by 64", 15),
        ("tokens[0].scopes[1]: unknown scope 'everything'", 15),
        ("tokens[0].expires: must be a date", 15),
        ("tokens[1].user: names user 'zed'", 16),
    ]
    for text, line in expected:
        matching = [row for row in out.splitlines() if text in row]
        assert matching, f"{text!r} not reported in:\n{out}"
        assert f"(line {line})" in matching[0], matching[0]


def test_check_config_accepts_the_example_policy() -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "example.yaml"
    result = channelgate("check-config", "--config", str(example))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_check_config_rejects_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("channels:\n  a: [unclosed\n")
    result = channelgate("check-config", "--config", str(path))
    assert result.returncode != 0 and "not valid YAML" in result.stdout and "line" in result.stdout


def test_token_create_prints_a_token_and_its_entry(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.yaml"
    result = channelgate(
        "token", "create", "--user", "alice", "--scope", "pypi:download", "--scope", "api:write",
        "--expires", "30", "--append", str(tokens_file),
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.split("token (shown once, store it now): ", 1)[1].split()[0]
    assert token.startswith("cgt-") and token[4:].isalnum() and len(token) >= 4 + 28
    assert "_" not in token
    entries = yaml.safe_load(tokens_file.read_text())["tokens"]
    import hashlib

    assert entries[0]["sha256"] == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert entries[0]["scopes"] == ["pypi:download", "api:write"]
    assert token not in tokens_file.read_text()
    # a second token appends to the same file, and the file validates as part of a policy
    assert channelgate("token", "create", "--user", "alice", "--scope", "all", "--append", str(tokens_file)).returncode == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups: {devs: [alice]}\ntokens_file: tokens.yaml\n")
    check = channelgate("check-config", "--config", str(policy))
    assert check.returncode == 0 and "2 token(s)" in check.stdout, check.stdout
    bad = channelgate("token", "create", "--user", "alice", "--scope", "root")
    assert bad.returncode != 0 and "unknown scope" in bad.stderr


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    policy = Policy({"groups": {"devs": ["alice", "bob"]}, "channels": {"internal": {"read": ["group:devs"]}}})
    policy.add_token("alice", ["pypi:download"])
    gate = Channelgate(tmp_path / "cg", policy).start()
    yield gate
    gate.stop()


def test_sighup_applies_a_good_policy_and_refuses_a_bad_one(server: Channelgate) -> None:
    url = f"{server.url}/internal/simple/"
    new_token = server.policy.add_token("bob", ["pypi:download"])
    assert http("GET", url, headers={"X-Auth": new_token})[0] == 401  # not yet in force
    assert "policy reloaded" in server.reload()
    assert http("GET", url, headers={"X-Auth": new_token})[0] == 200
    outcome = server.reload("channels:\n  internal: {read: [group:missing]}\nbogus: 1\n")
    assert "refused" in outcome
    log = server.log()
    assert "names group 'missing'" in log and "bogus: unknown key" in log
    assert http("GET", url, headers={"X-Auth": new_token})[0] == 200  # the old policy stays
    assert server.proc is not None and server.proc.poll() is None


def test_embedded_default_serves_without_a_config(tmp_path: Path) -> None:
    """`channelgate serve` with no --config: the quickstart policy, storage under ./var."""
    import os
    import signal

    from harness import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for the server's own readiness line
            if b"listening on" in line:
                break
        status, _, body = http("GET", f"http://127.0.0.1:{port}/api/health")
        assert status == 200 and b'"ok"' in body
        assert (tmp_path / "var" / "catalog.sqlite3").exists()
        # the mirror channel is public: no token needed to reach it (its upstream is the internet,
        # which tests never contact, so only the authorisation outcome is checked)
        status, _, _ = http("GET", f"http://127.0.0.1:{port}/no-such/simple/")
        assert status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_server_limits_have_safe_defaults_and_are_validated_strictly() -> None:
    from proxy.errors import ConfigError
    from proxy.settings import Limits, parse_settings

    assert parse_settings("").limits == Limits()
    chosen = parse_settings("server:\n  limits: {archive_unpacked_mb: 10, form_fields: 5}\n").limits
    assert (chosen.archive_unpacked_bytes, chosen.form_fields) == (10 * 1024 * 1024, 5)
    assert chosen.archive_members == Limits().archive_members
    bad = """\
server:
  limits:
    form_fields: 0
    archive_ratio: 1.5
    validation_workers: true
    archive_members: -3
    zip_depth: 2
"""
    with pytest.raises(ConfigError) as caught:
        parse_settings(bad)
    found = "\n".join(caught.value.problems)
    for text, line in [
        ("server.limits.form_fields: must be a positive number", 3),
        ("server.limits.archive_ratio: must be int, not float", 4),
        ("server.limits.validation_workers: must be a number", 5),
        ("server.limits.archive_members: must be a positive number", 6),
        ("server.limits.zip_depth: unknown key", 7),
    ]:
        row = next(r for r in found.splitlines() if text in r)
        assert f"(line {line})" in row, row


def test_readme_lists_every_limit_with_its_default() -> None:
    from dataclasses import fields

    from proxy.settings import Limits

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for spec in fields(Limits):
        key = spec.metadata["key"]
        shown = spec.default // spec.metadata["unit"]  # type: ignore[operator]
        rows = [r for r in readme.splitlines() if r.startswith(f"| `server.limits.{key}`")]
        assert rows, f"README's policy reference has no row for server.limits.{key}"
        assert rows[0].rstrip().endswith(f"| `{shown}` |"), rows[0]
