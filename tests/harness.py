"""Test harness: a real channelgate process and real upstream HTTP servers.

- ``UpstreamServer``: an aiohttp server on 127.0.0.1 in its own thread and loop, serving a
  directory of real-format fixtures, with a call log, ETag/Last-Modified/304 support and
  fault injection (``overrides``: path -> bytes or status; ``stop()`` refuses connections).
- ``Channelgate``: ``python -m proxy serve`` as a subprocess with a policy written from a
  dict; ``reload()`` sends SIGHUP and waits for the server's own log line.
- ``client_env``: an environment for pip/uv/twine/R/rattler isolated from the machine's
  own configuration (this machine's pip.conf adds extra indexes).
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import mimetypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Callable

import yaml
from aiohttp import web

from proxy.auth.credentials import generate_token, hash_token
try:
    from secret_scan import SCAN
except ModuleNotFoundError:  # imported as tests.harness: the benchmark runner, outside pytest
    from tests.secret_scan import SCAN

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- upstreams
@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]


Override = Callable[[web.Request], Any] | bytes | int  # a callable may be async


class UpstreamServer:
    """A real HTTP server over ``root``. ``url`` has no trailing slash."""

    def __init__(self, root: Path, *, json_index: bool = True) -> None:
        self.root = Path(root)
        self.json_index = json_index
        self.calls: list[Call] = []
        self.overrides: dict[str, Override] = {}
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls_to(self, suffix: str, method: str = "GET") -> int:
        return sum(1 for c in self.calls if c.method == method and c.path.endswith(suffix))

    def app(self) -> web.Application:
        """The upstream as an aiohttp Application: ``start`` serves it from its own thread;
        in-process tests hand it to aiohttp's ``aiohttp_server`` instead."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def start(self, port: int = 0) -> "UpstreamServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._runner = web.AppRunner(self.app(), access_log=None)
            try:
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", port)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            except BaseException as exc:  # pragma: no cover - reported to the caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def restart(self) -> None:
        """Start again on the same port (an upstream that comes back)."""
        self.start(self.port)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(Call(request.method, request.path, dict(request.headers)))
        override = self.overrides.get(request.path)
        if isinstance(override, int):
            return web.Response(status=override)
        if isinstance(override, bytes):
            return web.Response(body=override, content_type="application/octet-stream")
        if callable(override):
            resp = override(request)
            if inspect.isawaitable(resp):
                resp = await resp
            if resp is not None:
                return resp
        rel = request.path.lstrip("/")
        path = (self.root / rel).resolve()
        if not str(path).startswith(str(self.root.resolve())):
            return web.Response(status=404)
        content_type = None
        if path.is_dir():
            accept = request.headers.get("Accept", "")
            if self.json_index and "json" in accept and (path / "index.json").exists():
                path, content_type = path / "index.json", "application/vnd.pypi.simple.v1+json"
            elif (path / "index.html").exists():
                path, content_type = path / "index.html", "text/html"
            else:
                return web.Response(status=404)
        if not path.is_file():
            return web.Response(status=404)
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True)}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if content_type is None:
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.name.endswith(".json"):
                content_type = "application/json"
        headers["Content-Type"] = content_type
        return web.Response(body=data, headers=headers)


# --------------------------------------------------------------------------- secrets
def remember_secret(secret: str) -> str:
    """A token a test makes or receives (policy tokens, tokens users made through the API or
    anaconda-client): from now on the suite-wide scan (secret_scan.py, conftest) fails the
    test if it appears in a server's log or in a response body."""
    SCAN.secret(secret)
    return secret


def leaked_secrets(text: str) -> list[str]:
    """The known secrets found in ``text``, raw or base64 (the autouse scan does this for
    every log and body anyway; this is for a test that checks one text explicitly)."""
    data = text.encode()
    return sorted(secret for secret, (_, patterns) in SCAN.secrets.items() if any(p in data for p in patterns))


# --------------------------------------------------------------------------- channelgate
@dataclass
class Policy:
    """A policy under construction; ``add_token`` returns the secret, the entry keeps its hash."""

    data: dict[str, Any] = field(default_factory=dict)

    def add_token(self, user: str, scopes: list[str], *, expires: str | None = None, name: str | None = None) -> str:
        token = generate_token()
        entry: dict[str, Any] = {
            "name": name or f"{user}-{len(self.data.setdefault('tokens', []))}",
            "user": user,
            "sha256": f"sha256:{hash_token(token)}",
            "scopes": scopes,
        }
        if expires:
            entry["expires"] = expires
        self.data.setdefault("tokens", []).append(entry)
        return remember_secret(token)


class Channelgate:
    def __init__(
        self, workdir: Path, policy: Policy | dict[str, Any], *, args: list[str] | None = None, nofile: int | None = None
    ) -> None:
        self.args = list(args or [])
        self.nofile = nofile  # the process's open-file limit (soft and hard), to provoke EMFILE
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy = policy if isinstance(policy, Policy) else Policy(policy)
        self.policy.data.setdefault("storage", {"path": str(self.workdir / "storage")})
        self.config = self.workdir / "channelgate.yaml"
        self.log_path = self.workdir / "channelgate.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tls_cert(self) -> str | None:
        """server.tls_cert of the policy: then the server speaks HTTPS (a self-signed
        certificate is its own CA)."""
        return (self.policy.data.get("server") or {}).get("tls_cert")

    def ssl_context(self) -> ssl.SSLContext | None:
        """What a client trusts to reach this server: its own certificate over HTTPS."""
        return ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return Path(self.policy.data["storage"]["path"])

    def write_policy(self, text: str | None = None) -> None:
        for upstream in (self.policy.data.get("upstreams") or {}).values():
            if isinstance(upstream, dict):
                SCAN.secret(upstream.get("password"))
        self.config.write_text(text if text is not None else yaml.safe_dump(self.policy.data, sort_keys=False))

    def start(self) -> "Channelgate":
        self.write_policy()
        self.port = free_port()
        SCAN.watch_log(self.log_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config), "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            preexec_fn=self._limit_files if self.nofile else None,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"channelgate exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=2, context=self.ssl_context()) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)  # polling the readiness endpoint of a process that is starting
        raise RuntimeError(f"channelgate did not become healthy:\n{self.log()}")

    def _limit_files(self) -> None:
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """The log once ``text`` has appeared in it (access lines are written in batches)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)  # waiting for the server's own output
        raise TimeoutError(f"{text!r} never appeared in the log")

    def writes_done(self, timeout: float = 30) -> None:
        """Return once nothing answered from memory waits for its durable write
        (``channelgate_held_writes`` is 0: proxy/write_behind.py)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=10, context=self.ssl_context()) as resp:
                held = [line for line in resp.read().decode().splitlines() if line.startswith("channelgate_held_writes ")]
            if held and float(held[0].split()[1]) == 0:
                return
            time.sleep(0.05)  # polling the server's own gauge
        raise TimeoutError("held writes were not written")

    def reload(self, text: str | None = None, *, timeout: float = 15) -> str:
        """Write the policy (or ``text``), SIGHUP, and return the outcome line from the log."""
        assert self.proc is not None
        before = self.log().count("policy reload")
        self.write_policy(text)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.log().splitlines() if "policy reload" in line]
            if len(lines) > before:
                return lines[-1]
            time.sleep(0.05)  # waiting for the server's own log line
        raise TimeoutError("no reload outcome in the log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def channel_url(server: Channelgate, form: str, token: str = "", channel: str = "internal") -> str:
    """A channel URL as a client configures it, in each form DESIGN allows:
    ``alias`` /t/TOKEN/<channel> (anaconda.org, conda's channel_alias), ``server``
    /api/repo/t/TOKEN/<channel>, ``leading`` /t/TOKEN/api/repo/<channel>, ``basic``
    TOKEN:x-auth-token@ (pip, R), ``anonymous`` /<channel> (public channels)."""
    host = f"127.0.0.1:{server.port}"
    forms = {
        "alias": f"http://{host}/t/{token}/{channel}",
        "server": f"http://{host}/api/repo/t/{token}/{channel}",
        "leading": f"http://{host}/t/{token}/api/repo/{channel}",
        "basic": f"http://{token}:x-auth-token@{host}/api/repo/{channel}",
        "anonymous": f"http://{host}/{channel}",
    }
    return forms[form]


# --------------------------------------------------------------------------- clients
def client_env(home: Path) -> dict[str, str]:
    """Environment for real clients, isolated from this machine's pip/uv/conda/R config."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "CONDA", "TWINE_", "R_"))}
    env.update(
        HOME=str(home),
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(home / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
    )
    return env


def venv_bin(name: str) -> str:
    """A console script installed beside this interpreter (twine, uv, anaconda)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(name)
    return found


def run(cmd: list[str], *, env: dict[str, str], timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def http(method: str, url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request that does not raise on 4xx/5xx."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, headers, body = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, body = err.code, dict(err.headers), err.read()
    SCAN.received(f"{method} {url}", str(headers).encode() + body)
    return status, headers, body


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll a server-side state that has no event of its own (a gauge, a file, a log line), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never happened: {what}")
        time.sleep(0.02)


def stored_blobs(storage: Path, area: str) -> set[str]:
    base = storage / area / "sha256"
    return {p.name for p in base.rglob("*") if p.is_file()} if base.exists() else set()
