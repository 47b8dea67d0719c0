"""Accounts through the real anaconda-client: passwords, ``anaconda login``, tokens that users
make (``auth --create/--list/--info/--remove``), ``channelgate token list/revoke`` over both
kinds of token, and the brake on failed sign-ins. Every test checks the effect: what the
token may read or write afterwards, what the store and the logs hold."""
from __future__ import annotations

import base64
import http.client as httpclient
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import Channelgate, Policy, client_env, http, leaked_secrets, remember_secret, venv_bin

PASSWORD = "alice-pass-1234"


@dataclass
class World:
    base: Path
    server: Channelgate
    tokens: dict[str, str]

    def repodata(self, token: str, channel: str = "internal") -> int:
        return http("GET", f"{self.server.url}/t/{token}/{channel}/noarch/repodata.json")[0]

    def upload_status(self, token: str) -> int:
        """An empty package POST: 401/403 are decided before the body is read."""
        return http("POST", f"{self.server.url}/api/repo/internal", headers={
            "Authorization": f"token {token}", "Content-Type": "multipart/form-data; boundary=x"}, data=b"--x--\r\n")[0]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def anaconda(world: World, home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real anaconda-client in its legacy (password) sign-in mode, with no terminal:
    ``getpass`` then reads the password from standard input. ``anaconda org <command>``
    is anaconda-client's own command where anaconda-cli-base has a same-named one."""
    env = client_env(home)
    env["ANACONDA_CLIENT_LEGACY_INTERACTIVE_LOGIN"] = "1"
    for name in ("BINSTAR_API_TOKEN", "ANACONDA_API_TOKEN"):
        env.pop(name, None)
    if not (home / ".configured").exists():
        subprocess.run([venv_bin("anaconda"), "config", "--set", "url", f"{world.server.url}/api"], env=env,
                       capture_output=True, check=True, timeout=120)
        (home / ".configured").touch()
    return subprocess.run([venv_bin("anaconda"), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=180, start_new_session=True)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Content-Type": "application/json"}


def make_token(world: World, user: str, secret: str, **payload: Any) -> tuple[int, Any]:
    status, _, body = http("POST", f"{world.server.url}/api/authentications", headers=basic(user, secret),
                           data=json.dumps(payload).encode())
    data = json.loads(body) if body else {}
    if status == 200:
        remember_secret(data["token"])
    return status, data


def until(check: Any, timeout: float = 10.0) -> bool:
    """Wait for an effect another process causes (a revocation reaching the server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)  # the server notices another process's write on its next lookup
    return False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("accounts")
    made = cli("user", "password", "alice", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout
    hashed = next(line.split("password:", 1)[1].strip() for line in made.stdout.splitlines() if "password:" in line)
    policy = Policy({
        "users": [{"name": "alice", "password": hashed}, "carol"],
        "groups": {"devs": ["alice"], "readers": ["bob"]},
        "accounts": {"token_days": 7, "token_max_days": 30},
        "channels": {"internal": {"read": ["group:readers"], "write": ["group:devs"]}},
    })
    tokens = {
        "alice-all": policy.add_token("alice", ["all"], name="alice-all"),
        "alice-read": policy.add_token("alice", ["conda:download"], name="alice-read"),
        "bob": policy.add_token("bob", ["conda:download"], name="bob-read"),
        "doomed": policy.add_token("carol", ["conda:download"], name="carol-doomed"),
    }
    server = channelgate_factory(base / "cg", policy)
    return World(base, server, tokens)


def test_user_password_hash_signs_in_and_a_wrong_one_is_401(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="direct", scopes=["conda:download"])
    assert status == 200 and world.repodata(data["token"]) == 200
    wrong, _ = make_token(world, "alice", "not-the-password", note="wrong")
    unknown, _ = make_token(world, "mallory", PASSWORD, note="wrong")
    assert wrong == 401 and unknown == 401
    assert "wrong" not in [t["name"] for t in json.loads(http(
        "GET", f"{world.server.url}/api/authentications", headers={"Authorization": f"token {data['token']}"})[2])]


def test_anaconda_login_returns_a_token_that_whoami_and_conda_use(world: World) -> None:
    home = world.base / "home-login"
    login = anaconda(world, home, "org", "login", "--username", "alice", "--password", PASSWORD, "--hostname", "ci-box")
    assert login.returncode == 0, login.stdout + login.stderr
    (token,) = {path.read_text().strip() for path in home.rglob("*.token")}  # one token, in each token dir
    remember_secret(token)
    assert world.repodata(token) == 200 and world.upload_status(token) != 401
    who = anaconda(world, home, "org", "whoami")
    assert "Username: alice" in who.stderr + who.stdout, who.stderr
    listed = cli("token", "list", "--config", str(world.server.config))
    assert "binstar_client:" in listed.stdout and "user-made" in listed.stdout
    assert token not in listed.stdout


def test_auth_create_list_info_remove(world: World) -> None:
    home = world.base / "home-auth"
    created = anaconda(world, home, "-t", world.tokens["alice-all"], "org", "auth", "--create", "--name", "ci-read",
                       "--scopes", "conda:download", "--url", "https://ci.example.org/jobs", stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    remember_secret(token)
    assert token.startswith("cgt-")
    assert world.repodata(token) == 200
    assert world.upload_status(token) == 403  # conda:download only
    listed = anaconda(world, home, "-t", token, "org", "auth", "--list")
    assert "ci-read" in listed.stderr and "conda:download" in listed.stderr and token not in listed.stderr
    info = anaconda(world, home, "-t", token, "org", "auth", "--info")
    assert "Name: ci-read" in info.stderr, info.stderr
    status, _, body = http("GET", f"{world.server.url}/api/authentications", headers={"Authorization": f"token {token}"})
    mine = [t for t in json.loads(body) if t["name"] == "ci-read"]
    assert status == 200 and [t["note_url"] for t in mine] == ["https://ci.example.org/jobs"]  # --url is kept
    removed = anaconda(world, home, "-t", world.tokens["alice-all"], "org", "auth", "--remove", "ci-read")
    assert removed.returncode == 0, removed.stderr
    assert world.repodata(token) == 401


def test_a_token_never_makes_a_wider_token(world: World) -> None:
    narrow = world.tokens["alice-read"]
    status, data = make_token(world, "alice", narrow, note="wider", scopes=["api:write"])
    assert status == 403 and "api:write" in data["error"]
    status, data = make_token(world, "alice", narrow, note="same")  # no scopes: the creator's own
    assert status == 200 and data["scopes"] == ["conda:download"]
    assert world.upload_status(data["token"]) == 403 and world.repodata(data["token"]) == 200
    status, data = make_token(world, "alice", narrow, note="unknown", scopes=["repos"])
    assert status == 400 and "repos" in data["error"]


def test_a_weak_token_is_refused_not_ignored(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="short", strength="weak")
    assert status == 400 and "weak" in data["error"]
    listed_status, _, body = http("GET", f"{world.server.url}/api/authentications",
                                  headers={"Authorization": f"token {world.tokens['alice-all']}"})
    assert listed_status == 200 and "short" not in [t["name"] for t in json.loads(body)]
    status, data = make_token(world, "alice", PASSWORD, note="strong-one", strength="strong")
    assert status == 200 and data["token"].startswith("cgt-")


def test_expiry_defaults_to_policy_and_is_capped(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="week", scopes=["conda:download"])
    assert status == 200
    created = time.mktime(time.strptime(data["created_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    expires = time.mktime(time.strptime(data["expires"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert round((expires - created) / 86400) == 7
    status, data = make_token(world, "alice", PASSWORD, note="long", **{"max-age": 31 * 86400})
    assert status == 400 and "30 days" in data["error"]


def test_tokens_are_stored_hashed(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="stored")
    assert status == 200
    raw = b"".join(p.read_bytes() for p in world.server.storage.glob("accounts.sqlite3*"))
    assert data["token"].encode() not in raw
    import hashlib

    assert hashlib.sha256(data["token"].encode()).hexdigest().encode() in raw


def test_cli_revokes_both_kinds_of_token(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="to-revoke", scopes=["conda:download"])
    made = data["token"]
    assert world.repodata(made) == 200 and world.repodata(world.tokens["doomed"]) in (403, 200)
    listed = cli("token", "list", "--config", str(world.server.config))
    assert "to-revoke" in listed.stdout and "carol-doomed" in listed.stdout and "policy" in listed.stdout
    for secret in [made, *world.tokens.values()]:
        assert secret not in listed.stdout
    assert cli("token", "revoke", "to-revoke", "--config", str(world.server.config)).returncode == 0
    assert until(lambda: world.repodata(made) == 401)
    doomed = http("GET", f"{world.server.url}/api/user", headers={"Authorization": f"token {world.tokens['doomed']}"})
    assert doomed[0] == 200
    assert cli("token", "revoke", "carol-doomed", "--config", str(world.server.config)).returncode == 0
    assert until(lambda: http("GET", f"{world.server.url}/api/user",
                              headers={"Authorization": f"token {world.tokens['doomed']}"})[0] == 401)
    assert "revoked" in cli("token", "list", "--config", str(world.server.config)).stdout
    assert cli("token", "revoke", "no-such-token", "--config", str(world.server.config)).returncode == 1


def test_audit_lines_for_tokens_and_no_secret_in_the_log(world: World) -> None:
    status, data = make_token(world, "alice", PASSWORD, note="audited")
    assert status == 200
    log = world.server.wait_log("token=password action=token-create channel=- file=audited")
    assert data["token"] not in log


# --------------------------------------------------------------------------- the brake
def request_from(server: Channelgate, source: str, path: str, headers: dict[str, str], method: str = "GET") -> int:
    """A request from another loopback address (127.0.0.0/8 is all local on Linux)."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_failed_authentication_is_braked_per_address_and_per_user(tmp_path: Path, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    from proxy.auth.accounts import hash_password

    policy = Policy({
        "users": [{"name": "alice", "password": hash_password(PASSWORD)}, "bob"],
        "accounts": {"max_failures": 3, "failure_window": 600},
        "channels": {"internal": {"read": ["user:alice", "user:bob"]}},
    })
    good = policy.add_token("bob", ["conda:download"])
    server = channelgate_factory(tmp_path / "cg", policy)
    page = "/internal/noarch/repodata.json"
    for i in range(3):
        assert request_from(server, "127.0.0.2", page, {"X-Auth": f"cgt-wrong{i}"}) == 401
    assert request_from(server, "127.0.0.2", page, {"X-Auth": good}) == 429  # this address is braked
    assert request_from(server, "127.0.0.3", page, {"X-Auth": good}) == 200  # another is not
    sign_in = "/api/authentications"
    for _ in range(3):
        assert request_from(server, f"127.0.0.{4}", sign_in, basic("alice", "wrong"), "POST") == 401
    # alice is braked from everywhere, however right the password; bob is not
    assert request_from(server, "127.0.0.5", sign_in, basic("alice", PASSWORD), "POST") == 429
    assert request_from(server, "127.0.0.5", page, {"X-Auth": good}) == 200


def test_concurrent_wrong_passwords_cannot_outrun_the_brake(tmp_path: Path, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """Eight wrong passwords for one user sent at once (max_failures 3): a password is checked
    in a thread (scrypt, ~0.1 s), and an attempt in flight counts against the limit until its
    outcome is known (FailureLimiter.attempt), so at most three are checked at all and the
    rest get 429 at once; before, all eight passed the check before the first had failed."""
    from proxy.auth.accounts import hash_password

    policy = Policy({"users": [{"name": "alice", "password": hash_password(PASSWORD)}],
                     "accounts": {"max_failures": 3, "failure_window": 600},
                     "channels": {"internal": {"read": ["user:alice"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)
    conns = [httpclient.HTTPConnection("127.0.0.1", server.port, timeout=60, source_address=(f"127.0.1.{i + 1}", 0))
             for i in range(8)]  # eight addresses: only the user's own count can brake them
    try:
        for i, conn in enumerate(conns):  # every request is sent before any answer is read
            conn.request("POST", "/api/authentications", body=b"{}", headers=basic("alice", f"wrong-{i}"))
        statuses = sorted(conn.getresponse().status for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert statuses == [401] * 3 + [429] * 5, statuses
    assert request_from(server, "127.0.1.9", "/api/authentications", basic("alice", PASSWORD), "POST") == 429


def test_revocation_reaches_every_worker(tmp_path: Path) -> None:
    """Two worker processes share the port; after ``token revoke`` no connection, whichever
    worker takes it, accepts the token (each had it verified and remembered before)."""
    policy = Policy({"users": ["alice"], "channels": {"internal": {"read": ["user:alice"], "write": ["user:alice"]}}})
    creator = policy.add_token("alice", ["all"], name="creator")
    server = Channelgate(tmp_path / "cg", policy, args=["--workers", "2"]).start()
    try:
        world = World(tmp_path, server, {})
        status, data = make_token(world, "alice", creator, note="shared", scopes=["conda:download"])
        assert status == 200
        assert all(world.repodata(data["token"]) == 200 for _ in range(12))  # fresh connections: both workers
        assert cli("token", "revoke", "shared", "--config", str(server.config)).returncode == 0
        assert until(lambda: all(world.repodata(data["token"]) == 401 for _ in range(12)))
        assert all(world.repodata(data["token"]) == 401 for _ in range(24))
    finally:
        server.stop()
    assert not leaked_secrets(server.log())


def test_logout_revokes_the_token_in_use(world: World) -> None:
    home = world.base / "home-logout"
    login = anaconda(world, home, "org", "login", "--username", "alice", "--password", PASSWORD, "--hostname", "gone")
    assert login.returncode == 0, login.stdout + login.stderr
    (token,) = {path.read_text().strip() for path in home.rglob("*.token")}
    remember_secret(token)
    assert world.repodata(token) == 200
    out = anaconda(world, home, "org", "logout")
    assert out.returncode == 0, out.stderr
    assert world.repodata(token) == 401 and not list(home.rglob("*.token"))
