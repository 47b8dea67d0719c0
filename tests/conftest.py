"""Shared fixtures: real upstream servers and real channelgate processes, torn down after use."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from harness import Channelgate, Policy, UpstreamServer
from secret_scan import SCAN

if TYPE_CHECKING:
    from pg_cluster import PgCluster
    from proxy.storage_settings import S3Settings


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


# --------------------------------------------------------------------------- run order
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse-order", action="store_true",
                     help="run each module's tests in reverse order (no test may depend on another having run)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --reverse-order, each module's tests run last to first (modules keep their order,
    so module-scoped servers still start once): a test that needs another's uploads, or is
    broken by them, fails. Module-scoped worlds stay shared; what a test writes goes into a
    channel of its own."""
    if not config.getoption("--reverse-order"):
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    items[:] = [item for group in modules.values() for item in reversed(group)]


# --------------------------------------------------------------------------- the secret scan
def pytest_configure(config: pytest.Config) -> None:
    """Record every response body the tests' HTTP clients read (secret_scan.py)."""
    import aiohttp

    read = aiohttp.ClientResponse.read

    async def recording_read(self: aiohttp.ClientResponse) -> bytes:
        body = await read(self)
        SCAN.received(f"{self.method} {self.url}", body)
        return body

    aiohttp.ClientResponse.read = recording_read  # type: ignore[method-assign]
    try:
        import requests
    except ImportError:  # pragma: no cover - in the test extras
        return
    send = requests.Session.send

    def recording_send(self: requests.Session, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        response = send(self, request, **kwargs)
        if not kwargs.get("stream"):
            SCAN.received(f"{request.method} {request.url}", response.content)
        return response

    requests.Session.send = recording_send  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def secret_scan() -> Iterator[None]:
    """After each test: no token or upstream password in what the servers logged or the
    tests received since the last test."""
    yield
    leaks = SCAN.findings()
    if leaks:
        pytest.fail("secrets leaked:\n" + "\n".join(leaks[:20]), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """What servers logged while shutting down after their module's last test."""
    leaks = SCAN.findings()
    if leaks:
        session.exitstatus = 1
        print("\nsecrets leaked after the last test of their module:\n" + "\n".join(leaks[:20]), file=sys.stderr)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator["PgCluster"]:
    """A throwaway PostgreSQL cluster for the session (tests/pg_cluster.py). Outside CI, a
    missing postgresql skips with the reason; CI installs it."""
    from pg_cluster import PgCluster, missing_tools

    reason = missing_tools()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: "PgCluster") -> str:
    """The URL of a fresh database of its own for one test."""
    return pg_cluster.new_database()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (a real HTTP S3 protocol) on a free 127.0.0.1 port, for the S3 store
    backend. Outside CI, a missing moto skips with the reason; CI installs it (the test extra)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("moto[server] is not installed (the test extra installs it)")
        pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> "S3Settings":
    """A fresh bucket of its own for one test."""
    import uuid

    import botocore.session

    from proxy.storage_settings import S3Settings

    settings = S3Settings(bucket=f"cg-{uuid.uuid4().hex[:12]}", endpoint_url=s3_endpoint, prefix="cg/",
                          region="us-east-1", access_key_id="testing", secret_access_key="testing")
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=s3_endpoint,
        aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=settings.bucket)
    return settings
