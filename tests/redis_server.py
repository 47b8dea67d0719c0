"""A real redis-server that a test starts, stops and starts again (issue 13: the engines are
real servers the tests run themselves)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


class RedisServer:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:  # a free port (harness.free_port; this module serves tests/bench too)
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        log = self.workdir / f"redis-{self.port}.log"
        log.write_bytes(b"")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            if b"Ready to accept connections" in log.read_bytes():  # redis says when it accepts them
                return self
            time.sleep(0.02)  # waiting for the server's own log line
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (skipped outside CI when redis-server is missing)."""
    from conftest import require_tool

    binary = require_tool("redis-server")
    pytest.importorskip("redis", reason="the redis extra is in the test extras")
    server = RedisServer(binary, tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
