"""The processes a benchmark runs: the fake upstream, channelgate, nginx and proxpi.

Every process is a real one on a 127.0.0.1 port, registered with a ``contextlib.ExitStack``
so it is stopped however the scenario ends. Processes started here get
``PR_SET_PDEATHSIG(SIGTERM)``: if the benchmark itself is killed, they die with it.
channelgate runs through ``tests/harness.py``'s ``Channelgate`` (``python -m proxy serve``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tests.harness import REPO_ROOT, Channelgate, Policy, free_port


class Unavailable(Exception):
    """A peer cannot run here (tool or package missing): the rows that need it are skipped."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when the benchmark dies (Linux
    PR_SET_PDEATHSIG). libc is loaded here, in the parent, so the child only makes one
    foreign call between fork and exec (no import, no dlopen, no lock)."""
    libc = _libc()
    if libc is None:
        return None
    prctl = libc.prctl

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Poll ``url`` until the process answers (any HTTP status) or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)  # polling a process that is starting up
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(stack: contextlib.ExitStack, cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - owned by the child
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_death_signal(), **kwargs)  # noqa: PLW1509 - see _death_signal
    finally:
        out.close()
    stack.callback(stop_process, proc)
    return proc


# --------------------------------------------------------------------------- memory
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of a process in bytes (/proc/<pid>/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize", "VmPeak"):
            out[key] = int(value.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------- the fake upstream
class Upstream:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def report(self) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(f"{self.url}/_bench/report", timeout=30) as resp:
            return dict(json.loads(resp.read()))

    def gets(self, path: str) -> tuple[int, int]:
        """(whole-file GETs, ranged GETs) of ``path``: a ranged GET is a read of a few bytes
        (e.g. a wheel's METADATA read ahead when its page was rendered), not a download."""
        return whole_and_ranged(self.report(), path)


def whole_and_ranged(report: dict[str, Any], path: str) -> tuple[int, int]:
    calls = [rng for method, p, rng in report["calls"] if method == "GET" and p == path]
    return sum(1 for rng in calls if rng is None), sum(1 for rng in calls if rng is not None)


def start_upstream(stack: contextlib.ExitStack, root: Path, log: Path, *, throttle: dict[str, float] | None = None,
                   delay: float = 0.0, big: int | None = None) -> Upstream:
    cmd = [sys.executable, "-m", "tests.bench.upstream", "--root", str(root), "--delay", str(delay)]
    if big is not None:
        cmd += ["--big", str(big)]
    for path, rate in (throttle or {}).items():
        cmd += ["--throttle", f"{path}={rate:.0f}"]
    out = open(log, "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, cwd=REPO_ROOT, preexec_fn=_death_signal())  # noqa: PLW1509 - see _death_signal
    finally:
        out.close()
    stack.callback(stop_process, proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        raise RuntimeError(f"the fake upstream did not start:\n{tail(log)}")
    return Upstream(proc, int(line.split()[1]))


# --------------------------------------------------------------------------- reaper
REAPER = r"""
import os, signal, sys, time
watched = {}
for line in sys.stdin:  # "+pid marker" / "-pid"; EOF: the benchmark is gone
    op, pid, marker = line[0], int(line[1:].split(" ", 1)[0]), line[1:].split(" ", 1)[-1].strip()
    if op == "+":
        watched[pid] = marker
    else:
        watched.pop(pid, None)
def ours(pid, marker):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return marker.encode() in fh.read()
    except OSError:
        return False
for pid, marker in watched.items():
    if ours(pid, marker):
        os.kill(pid, signal.SIGTERM)
deadline = time.monotonic() + 15
for pid, marker in watched.items():
    while ours(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if ours(pid, marker):
        os.kill(pid, signal.SIGKILL)
"""


class Reaper:
    """Stops processes the benchmark could not give a death signal (channelgate, started by
    tests/harness.py) if the benchmark dies without cleaning up, e.g. on SIGKILL. It kills a
    pid only while that pid's command line still names the benchmark's directory."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE, start_new_session=True)

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def watch(self, pid: int, marker: str) -> None:
        self._send(f"+{pid} {marker}")

    def forget(self, pid: int) -> None:
        self._send(f"-{pid}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# --------------------------------------------------------------------------- channelgate
def start_channelgate(stack: contextlib.ExitStack, workdir: Path, policy: Policy, *, workers: int = 1,
                      reaper: Reaper | None = None, profile: Path | None = None) -> Channelgate:
    args = ["--workers", str(workers)] if workers > 1 else []
    server = Channelgate(workdir, policy, args=args)
    stack.callback(server.stop)
    server.start()
    if reaper is not None and server.proc is not None:
        pid = server.proc.pid
        reaper.watch(pid, str(server.config))

        def stop() -> None:  # unwinds before the stop registered above, which is then a no-op
            server.stop()
            reaper.forget(pid)

        stack.callback(stop)
    if profile is not None and server.proc is not None:  # stopped first: it writes its file
        start_py_spy(stack, server.proc.pid, profile / f"{workdir.parent.name}-{workdir.name}")
    return server


def start_py_spy(stack: contextlib.ExitStack, pid: int, out: Path) -> None:
    """``py-spy record`` on the server for the rest of the scenario, stopped with SIGINT (which
    makes it write ``out``.txt: collapsed stacks, readable as text and by flamegraph.pl or
    speedscope). Sampling perturbs the figures of that run."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise Unavailable("py-spy is not installed (pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "97",
           "--format", "raw", "--output", f"{out}.txt"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_death_signal())  # noqa: PLW1509 - see _death_signal

    def finish() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(finish)


# --------------------------------------------------------------------------- nginx
NGINX_CONF = """\
# generated by tests/bench: a static file server over the same bytes channelgate serves
worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ text/html html; application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 65;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html index.json;
    }}
}}
"""


class Nginx:
    def __init__(self, port: int, workers: str) -> None:
        self.port = port
        self.workers = workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise Unavailable("nginx is not installed (apt-get install nginx)")
    return found


def start_nginx(stack: contextlib.ExitStack, workdir: Path, root: Path, *, workers: str = "1") -> Nginx:
    """nginx over ``root``; ``workers`` is "1" (the primary peer) or "auto"."""
    binary = nginx_binary()
    conf_dir = workdir / f"nginx-{workers}"
    (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, dir=conf_dir, port=port, root=root))
    if os.geteuid() == 0:
        # as root, nginx's workers would run as "nobody", and any pytest session starting
        # meanwhile resets /tmp/pytest-of-root to 0700 under them (403 on every file):
        # keep the workers as the user who generated the tree
        conf.write_text("user root root;\n" + conf.read_text())
    log = conf_dir / "stdout.log"
    proc = spawn(stack, [binary, "-e", str(conf_dir / "error.log"), "-p", str(conf_dir), "-c", str(conf)], log)
    wait_http(f"http://127.0.0.1:{port}/", proc, conf_dir / "error.log")
    return Nginx(port, workers)


# --------------------------------------------------------------------------- bare aiohttp
# what aiohttp writes itself on every answer: the bare peer adds the rest of channelgate's headers
OWN_HEADERS = frozenset({"date", "server", "content-length", "connection", "keep-alive", "transfer-encoding"})


def start_bare(stack: contextlib.ExitStack, workdir: Path, body: Path, headers: dict[str, str]) -> str:
    """tests/bench/bare.py over ``body``, answering with ``headers`` (channelgate's answer's
    headers: the same bytes and the same headers, as issue 15 part 4 compares); returns its URL."""
    port = free_port()
    log = workdir / "bare.log"
    sent = [f"--header={k}: {v}" for k, v in headers.items() if k.lower() not in OWN_HEADERS]
    proc = spawn(stack, [sys.executable, "-m", "tests.bench.bare", "--file", str(body), "--port", str(port),
                         *sent], log, cwd=REPO_ROOT)
    wait_http(f"http://127.0.0.1:{port}/", proc, log)
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- proxpi
class Proxpi:
    def __init__(self, port: int, runner: str) -> None:
        self.port = port
        self.runner = runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_proxpi(stack: contextlib.ExitStack, workdir: Path, index_url: str, *, workers: int = 1,
                 threads: int = 2) -> Proxpi:
    """proxpi the way its Docker image runs it: gunicorn --preload, one worker, 2 threads,
    access log on (``workers``/``threads`` change that); `flask run` (its README's local way)
    when gunicorn is missing."""
    if importlib.util.find_spec("proxpi") is None:
        raise Unavailable("proxpi is not installed (pip install proxpi gunicorn)")
    cache = workdir / f"proxpi-cache-{workers}x{threads}"
    cache.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PROXPI_"))}
    env.update(PROXPI_INDEX_URL=index_url.rstrip("/") + "/", PROXPI_CACHE_DIR=str(cache), NO_COLOR="1")
    if importlib.util.find_spec("gunicorn") is not None:
        runner = (f"gunicorn --preload --workers {workers} --threads {threads}"
                  + (" (proxpi's Docker entrypoint)" if (workers, threads) == (1, 2) else ""))
        cmd = [
            sys.executable, "-m", "gunicorn", "--preload",
            "--access-logfile", "-", "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(M)dms',
            "--logger-class", "proxpi.server._GunicornLogger",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads), "--graceful-timeout", "3",
            "proxpi.server:app",
        ]
    else:
        runner = "flask run (gunicorn missing)"
        env["FLASK_APP"] = "proxpi.server"
        cmd = [sys.executable, "-m", "flask", "run", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / f"proxpi-{workers}x{threads}.log"
    proc = spawn(stack, cmd, log, env=env, cwd=workdir)
    wait_http(f"http://127.0.0.1:{port}/", proc, log)
    return Proxpi(port, runner)
