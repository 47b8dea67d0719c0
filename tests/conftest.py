"""Shared fixtures: real upstream servers and real channelgate processes, torn down after use."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness import Channelgate, Policy, UpstreamServer, leaked_secrets


def require_tool(name: str) -> str:
    """The path of a command-line tool, or skip with the reason. Under CI (which installs
    every tool) a missing tool fails instead: CI must never skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def upstream_factory() -> Iterator[Callable[..., UpstreamServer]]:
    servers: list[UpstreamServer] = []

    def make(root: Path, **kwargs: object) -> UpstreamServer:
        server = UpstreamServer(root, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def channelgate_factory() -> Iterator[Callable[[Path, Policy], Channelgate]]:
    procs: list[Channelgate] = []

    def make(workdir: Path, policy: Policy) -> Channelgate:
        proc = Channelgate(workdir, policy).start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()
    # the suite-wide secret scan: no token (policy or user-made) in any server's log
    leaks = {str(proc.log_path): leaked_secrets(proc.log()) for proc in procs}
    assert not any(leaks.values()), f"tokens in server logs: { {k: len(v) for k, v in leaks.items() if v} }"
