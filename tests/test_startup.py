"""Start-up and policy faults (DESIGN "Hostile input and faults"): a bad listen address, a
busy port, unwritable storage and a missing tokens_file are one clear line and a non-zero
exit, found before anything changes on disk; a running server is never disturbed by them.
``token create --append`` edits YAML structurally or refuses, never corrupting the file."""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, http
from proxy.auth.credentials import hash_token
from proxy.server import WORKER_THREADS


def channelgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: a non-zero exit and exactly one line of output, no traceback."""
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    return output


BAD_LISTEN = [
    ("127.0.0.1", "needs HOST:PORT"),
    ("localhost:99999", "from 1 to 65535"),
    ("127.0.0.1:0", "from 1 to 65535"),
    ("8080", "a port alone"),
    (":8080", "no host"),
    ("127.0.0.1:http", "from 1 to 65535"),
    ("::1:8080", "in brackets"),
]


@pytest.mark.parametrize(
    ("listen", "says"),
    [*BAD_LISTEN[:2], BAD_LISTEN[3], ("no-such-host.invalid:8080", "unknown host")],
)
def test_a_bad_listen_address_is_one_line_before_anything_is_stored(tmp_path: Path, listen: str, says: str) -> None:
    storage = tmp_path / "storage"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"storage": {"path": str(storage)}}))
    line = one_line(channelgate("serve", "--config", str(policy), "--listen", listen))
    assert says in line and listen in line, line
    assert not storage.exists()  # refused before the store was opened


@pytest.mark.parametrize(("listen", "says"), BAD_LISTEN)
def test_check_config_applies_the_same_rule_to_server_listen(listen: str, says: str) -> None:
    from proxy.errors import ConfigError
    from proxy.settings import parse_settings

    with pytest.raises(ConfigError) as caught:
        parse_settings(yaml.safe_dump({"server": {"listen": listen}}))
    (problem,) = caught.value.problems
    assert "server.listen" in problem and says in problem, problem
    assert parse_settings("server: {listen: '[::1]:8080'}").listen == "[::1]:8080"


def test_unwritable_storage_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"storage": {"path": str(blocker / "storage")}}))
    with socket.create_server(("127.0.0.1", 0)) as busy:  # a busy port is found first
        port = busy.getsockname()[1]
        line = one_line(channelgate("serve", "--config", str(policy), "--listen", f"127.0.0.1:{port}"))
        assert "the port is already in use" in line
    line = one_line(channelgate("serve", "--config", str(policy), "--listen", f"127.0.0.1:{port}"))
    assert line.startswith(f"storage.path {blocker / 'storage'} is not writable"), line


def test_a_missing_tokens_file_fails_check_serve_and_reload(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups: {devs: [alice]}\ntokens_file: tokens.yaml\n")
    check = channelgate("check-config", "--config", str(policy))
    assert check.returncode != 0 and f"tokens_file: {tmp_path / 'tokens.yaml'} does not exist" in check.stdout, check.stdout
    serve = channelgate("serve", "--config", str(policy), "--listen", "127.0.0.1:8080")
    assert serve.returncode != 0 and "tokens.yaml does not exist" in serve.stderr
    assert not (tmp_path / "var").exists()

    # a running server refuses a reload that names a missing tokens_file: the old tokens stay valid
    running = Policy({"groups": {"devs": ["alice"]}, "channels": {"internal": {"read": ["group:devs"]}}})
    token = running.add_token("alice", ["pypi:download"])
    server = Channelgate(tmp_path / "cg", running).start()
    try:
        url = f"{server.url}/internal/simple/"
        assert http("GET", url, headers={"X-Auth": token})[0] == 200
        text = yaml.safe_dump(dict(running.data, tokens_file="gone.yaml"))
        outcome = server.reload(text)
        assert "refused" in outcome
        assert "gone.yaml does not exist" in server.log()
        assert http("GET", url, headers={"X-Auth": token})[0] == 200
    finally:
        server.stop()


BIG = "big_pkg-1.0-py3-none-any.whl"


def _held_download(tmp_path: Path, upstream_factory):  # type: ignore[no-untyped-def]
    """An upstream whose ~8 MiB wheel ``BIG`` sends all but its last MiB, then waits for
    ``release``: (upstream, the wheel's bytes, release)."""
    payload = base64.b64encode(os.urandom(6 * 1024 * 1024)).decode()
    wheel = make_wheel(tmp_path / "d", "big-pkg", "1.0", module_body=f"DATA = '{payload}'\n")
    write_simple_index(tmp_path / "root", [wheel], fmt="html")
    upstream = upstream_factory(tmp_path / "root")
    data = wheel.read_bytes()
    release = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:  # all but the last MiB, then wait
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: -1024 * 1024])
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        await resp.write(data[-1024 * 1024 :])
        await resp.write_eof()
        return resp

    upstream.overrides[f"/files/{BIG}"] = slow
    return upstream, data, release


async def test_a_second_serve_on_a_busy_port_leaves_the_first_download_intact(
    tmp_path: Path, upstream_factory  # type: ignore[no-untyped-def]
) -> None:
    upstream, data, release = _held_download(tmp_path, upstream_factory)
    policy = Policy(
        {
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"]}},
        }
    )
    token = policy.add_token("alice", ["pypi:download"])
    first = Channelgate(tmp_path / "cg", policy).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.get(f"{first.url}/t/{token}/internal/simple/big-pkg/{BIG}") as resp:
                assert resp.status == 200
                head = await resp.content.readexactly(1024 * 1024)  # the download is under way
                parts = list((first.storage / "tmp").rglob("cache-*.part"))
                assert parts, "no download in progress in storage/tmp"
                second = await asyncio.to_thread(
                    channelgate, "serve", "--config", str(first.config), "--listen", f"127.0.0.1:{first.port}"
                )
                line = one_line(second)
                assert f"cannot listen on 127.0.0.1:{first.port}: the port is already in use" in line
                assert all(part.exists() for part in parts)  # the second serve touched nothing
                release.set()
                body = head + await resp.read()
        assert body == data
        status, _, again = http("GET", f"{first.url}/t/{token}/internal/simple/big-pkg/{BIG}")
        assert status == 200 and again == data and upstream.calls_to(f"/files/{BIG}") == 1
    finally:
        release.set()
        first.stop()

async def test_a_replica_starting_on_the_same_storage_leaves_a_download_in_progress_intact(
    tmp_path: Path, upstream_factory  # type: ignore[no-untyped-def]
) -> None:
    """Issue 13 part 4: a second replica sharing storage.path starts (and sweeps tmp/) while the
    first is mid-download; the first's temp file survives and its client gets every byte."""
    upstream, data, release = _held_download(tmp_path, upstream_factory)
    policy = Policy(
        {
            "storage": {"path": str(tmp_path / "shared")},
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"]}},
        }
    )
    token = policy.add_token("alice", ["pypi:download"])
    first = Channelgate(tmp_path / "a", policy).start()
    second = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.get(f"{first.url}/t/{token}/internal/simple/big-pkg/{BIG}") as resp:
                assert resp.status == 200
                head = await resp.content.readexactly(1024 * 1024)  # the download is under way
                parts = list((first.storage / "tmp").rglob("cache-*.part"))
                assert parts, "no download in progress in storage/tmp"
                second = await asyncio.to_thread(Channelgate(tmp_path / "b", policy).start)
                assert all(part.exists() for part in parts)  # the second replica's sweep left it
                release.set()
                body = head + await resp.read()
        assert body == data
        status, _, again = http("GET", f"{second.url}/t/{token}/internal/simple/big-pkg/{BIG}")
        assert status == 200 and again == data and upstream.calls_to(f"/files/{BIG}") == 1
    finally:
        release.set()
        first.stop()
        if second is not None:
            second.stop()


# --------------------------------------------------------------------------- token create --append
def create_token(path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    result = channelgate("token", "create", "--user", "alice", "--scope", "all", "--append", str(path), *extra)
    token = result.stdout.split("token (shown once, store it now): ", 1)[1].split()[0]
    return result, token


def test_append_to_tokens_file_holding_an_empty_flow_list(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("# CI tokens, rotated monthly\ntokens: []\n")
    first, token = create_token(tokens)
    assert first.returncode == 0, first.stderr
    second, _ = create_token(tokens)
    assert second.returncode == 0, second.stderr
    text = tokens.read_text()
    assert text.startswith("# CI tokens, rotated monthly\n") and token not in text
    entries = yaml.safe_load(text)["tokens"]
    assert len(entries) == 2 and entries[0]["sha256"] == f"sha256:{hash_token(token)}"
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups: {devs: [alice]}\ntokens_file: tokens.yaml\n")
    check = channelgate("check-config", "--config", str(policy))
    assert check.returncode == 0 and "2 token(s)" in check.stdout, check.stdout + check.stderr


def test_append_to_a_policy_whose_last_key_is_not_tokens(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    before = """\
groups:
  devs: [alice]
tokens:
  - {name: old, user: alice, sha256: "sha256:%s", scopes: [all]}
channels:
  internal:
    read: [group:devs]   # readers
""" % ("a" * 64)
    policy.write_text(before)
    result, token = create_token(policy)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(policy.read_text())
    assert [e["name"] for e in data["tokens"]][0] == "old" and len(data["tokens"]) == 2
    assert data["tokens"][1]["sha256"] == f"sha256:{hash_token(token)}"
    assert data["channels"] == {"internal": {"read": ["group:devs"]}}
    after = policy.read_text()
    for line in before.splitlines():  # every line already there is kept as it was written
        assert line in after.splitlines(), line
    check = channelgate("check-config", "--config", str(policy))
    assert check.returncode == 0 and "2 token(s)" in check.stdout, check.stdout


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("tokens: {alice: x}\n", "not a list"),
        ("tokens: [\n", "not valid YAML"),
        ("just a string\n", "not a policy or a tokens file"),
        ('tokens:\n  - {name: ci, user: alice, sha256: "sha256:%s", scopes: [all]}\n' % ("b" * 64), "already has a token named 'ci'"),
    ],
)
def test_append_refuses_what_it_cannot_edit_and_leaves_the_file_alone(tmp_path: Path, content: str, says: str) -> None:
    from proxy.auth.tokens_file import append_token_entry
    from proxy.errors import ConfigError

    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    entry = {"name": "ci", "user": "alice", "sha256": "sha256:" + "c" * 64, "scopes": ["all"]}
    with pytest.raises(ConfigError) as caught:
        append_token_entry(path, entry)
    assert says in caught.value.problems[0], caught.value.problems
    assert path.read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.yaml"]  # no temp file left behind


def test_a_refused_append_still_shows_the_token_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens: 7\n")
    result, token = create_token(path)
    assert result.returncode != 0
    assert token.startswith("cgt-") and f"sha256:{hash_token(token)}" in result.stdout  # the entry to paste
    assert "not appended" in result.stderr and "not a list" in result.stderr
    assert path.read_text() == "tokens: 7\n"


def test_append_to_a_bare_list_and_to_a_new_file(tmp_path: Path) -> None:
    from proxy.auth.tokens_file import append_token_entry

    bare = tmp_path / "bare.yaml"
    bare.write_text('- {name: a, user: alice, sha256: "sha256:%s", scopes: [all]}\n' % ("d" * 64))
    new = tmp_path / "new.yaml"
    for path in (bare, new):
        append_token_entry(path, {"name": "ci", "user": "alice", "sha256": "sha256:" + "e" * 64, "scopes": ["all"]})
    assert [e["name"] for e in yaml.safe_load(bare.read_text())] == ["a", "ci"]
    assert [e["name"] for e in yaml.safe_load(new.read_text())["tokens"]] == ["ci"]
    assert new.stat().st_mode & 0o777 == 0o600  # a new tokens file is not world-readable


def test_readme_security_section_lists_every_limit_with_its_default() -> None:
    from dataclasses import fields

    from proxy.settings import Limits

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    security = readme.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    for heading in ("### Threat model", "### Limits", "### Rotating tokens and upstream credentials"):
        assert heading in security
    for spec in fields(Limits):
        shown = spec.default // spec.metadata["unit"]  # type: ignore[operator]
        row = f"| `server.limits.{spec.metadata['key']}` | `{shown}` |"
        assert row in security, f"README's Security section lacks {row}"


def test_an_upstream_whose_name_resolves_to_this_server_is_refused(tmp_path: Path) -> None:
    """Not the spelling but the resolution: this host's name reaches a wildcard listener, and
    localhost a loopback one, so such an upstream would make the server ask itself in a loop."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    host = socket.gethostname()
    storage = tmp_path / "storage"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "server": {"listen": f"0.0.0.0:{port}"},
        "storage": {"path": str(storage)},
        "upstreams": {
            "itself": {"type": "pypi", "url": f"http://{host}:{port}/simple"},
            "neighbour": {"type": "pypi", "url": f"http://{host}:{port + 1 if port < 65535 else port - 1}/simple"},
        },
    }))
    checked = channelgate("check-config", "--config", str(policy))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"upstreams.itself.url: {host} resolves to" in checked.stdout and "fetch from itself" in checked.stdout
    assert "neighbour" not in checked.stdout  # the same host on another port is another server
    policy.write_text(yaml.safe_dump({
        "storage": {"path": str(storage)},
        "upstreams": {"itself": {"type": "pypi", "url": f"http://localhost:{port}/simple"}},
    }))
    line = one_line(channelgate("serve", "--config", str(policy), "--listen", f"127.0.0.1:{port}"))
    assert "upstreams.itself.url: localhost resolves to 127.0.0.1" in line, line
    assert not storage.exists()  # refused before the store was opened


def test_worker_threads_are_started_before_the_first_request(tmp_path: Path) -> None:
    """The default executor's threads (store writes, fsync) exist once the server is ready,
    so the first requests of a cold resolve do not each wait for a thread to start."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        pytest.skip("counting a process's threads reads /proc (Linux)")
    server = Channelgate(tmp_path / "cg", Policy({"channels": {"c": {"public": True}}})).start()
    try:
        assert server.proc is not None
        threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))  # only /api/health was asked
        assert threads >= 1 + WORKER_THREADS, threads
    finally:
        server.stop()
