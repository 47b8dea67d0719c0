"""Finding and reloading a running server: pid files in the store (DESIGN, "Operations").

``serve`` writes ``<storage>/run/<host>-<pid>.json`` ({pid, config, workers}) and holds an
exclusive ``flock`` on it while it runs, so a pid file left by a crash is recognised (its
lock is free) and never leads to signalling an unrelated process that reused the pid.
Replicas on one host sharing a store each have their own file; ``reload`` reloads them all,
which is right since they serve the same policy. Hosts sharing a volume never see each
other's files (the host name is part of the name).

After each SIGHUP every serving process (each worker under --workers) writes
``run/<host>-<pid>.reload-<its pid>.json`` ({time, ok, problems}); ``channelgate reload``
waits for those to learn the outcome.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 15.0


def _run_dir(storage: Path) -> Path:
    return storage / "run"


def _stem(pid: int) -> str:
    return f"{socket.gethostname()}-{pid}"


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    config: str | None
    workers: int
    path: Path


class PidFile:
    """The running server's pid file, locked for its lifetime."""

    def __init__(self, storage: Path, config: Path | None, workers: int) -> None:
        self.dir = _run_dir(storage)
        self.pid = os.getpid()
        self.path = self.dir / f"{_stem(self.pid)}.json"
        self.config = config
        self.workers = workers
        self._fh: IO[str] | None = None

    def __enter__(self) -> "PidFile":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{self.path.name}.tmp"
        fh = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - held open (and locked) while serving
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # locked before it is visible under its name
        json.dump({"pid": self.pid, "config": str(self.config) if self.config else None, "workers": self.workers}, fh)
        fh.flush()
        os.replace(tmp, self.path)
        self._fh = fh

    def close(self) -> None:
        for status in self.dir.glob(f"{self.path.stem}.reload-*.json"):
            status.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_reload_status(storage: Path, main_pid: int, problems: list[str]) -> None:
    """One serving process's outcome of a SIGHUP, for ``channelgate reload``."""
    directory = _run_dir(storage)
    path = directory / f"{_stem(main_pid)}.reload-{os.getpid()}.json"
    tmp = directory / f".{path.name}.tmp"
    try:
        tmp.write_text(json.dumps({"time": time.time(), "ok": not problems, "problems": problems}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the reload status %s: %s", path, exc)


def live_servers(storage: Path) -> list[ServerInfo]:
    """Servers on this host running on ``storage``; stale pid files are removed."""
    servers = []
    for path in sorted(_run_dir(storage).glob(f"{socket.gethostname()}-*.json")):
        if ".reload-" in path.name:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    data = json.load(fh)
                    servers.append(ServerInfo(int(data["pid"]), data.get("config"), int(data.get("workers", 1)), path))
                    continue
            log.info("removing the stale pid file %s (no server holds it)", path)
            for status in path.parent.glob(f"{path.stem}.reload-*.json"):
                status.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring the unreadable pid file %s: %s", path, exc)
    return servers


def _outcomes(server: ServerInfo, since: float) -> list[dict[str, Any]]:
    found = []
    for path in server.path.parent.glob(f"{server.path.stem}.reload-*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now
        if float(data.get("time", 0)) >= since:
            found.append(data)
    return found


def reload_servers(storage: Path, config: Path, *, timeout: float = RELOAD_TIMEOUT) -> list[str]:
    """SIGHUP every server on ``storage`` and wait for each worker's outcome.
    Returns every problem (an empty list: all reloaded)."""
    servers = live_servers(storage)
    if not servers:
        return [f"no running server found: no live pid file in {_run_dir(storage)}"]
    problems: list[str] = []
    for server in servers:
        if server.config is None or Path(server.config) != config:
            where = server.config or "the embedded default policy"
            problems.append(f"server {server.pid} runs with {where}, not {config}: reload it with that file")
    if problems:
        return problems
    since = time.time()
    for server in servers:
        os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending and time.monotonic() < deadline:
        done = []
        for server in pending:
            outcomes = _outcomes(server, since)
            if len(outcomes) >= server.workers:
                done.append(server)
                for outcome in outcomes:
                    reported = outcome.get("problems")
                    if isinstance(reported, list):
                        problems.extend(str(p) for p in reported)
        pending = [s for s in pending if s not in done]
        if pending:
            time.sleep(0.05)  # the server answers through a file: poll it
    for server in pending:
        problems.append(f"server {server.pid} did not report a reload within {timeout:g}s")
    return list(dict.fromkeys(problems))
