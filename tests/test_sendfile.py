"""Stored files go out by kernel sendfile a bounded chunk at a time (proxy/sendfile.py): the
bytes must be exactly the file's, however the body is cut into chunks and whoever asks at
once; the connection must go on serving afterwards (reading is paused during the body and
resumed after it, a pipelined request included); a client that hangs up mid-body costs no
traceback and no later download; over TLS the same file goes out through the SSL layer.

Real channelgate processes in front of a real upstream; the clients are raw sockets and
http.client, so what is on the wire is what is checked. (How fast it goes is a benchmark
row: tests/bench, "warm artifact ... vs nginx".)
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from typing import Any

import pytest

from fixtures.certs import make_cert
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, http, wait_until
from proxy.sendfile import CHUNK

FILE_PATH = "/mirror/simple/bigwheel/bigwheel-1.0-py3-none-any.whl"


@dataclass
class World:
    plain: Channelgate
    tls: Channelgate
    data: bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> Any:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("sendfile")
    # incompressible content, so the wheel is several chunks long
    body = base64.b64encode(os.urandom(int(CHUNK * 3.5))).decode()
    wheel = make_wheel(base / "dists", "bigwheel", "1.0", module_body=f"DATA = '{body}'\n")
    assert wheel.stat().st_size > 2 * CHUNK
    write_simple_index(base / "up", [wheel], fmt="json")
    upstream = upstream_factory(base / "up")
    cert, key = make_cert(base / "tls", "channelgate-tls")
    channels = {"mirror": {"public": True, "upstreams": ["pypi"]}}
    upstreams = {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}}
    plain = Channelgate(base / "plain", Policy({"upstreams": upstreams, "channels": channels})).start()
    tls = Channelgate(base / "tls-cg", Policy({
        "server": {"tls_cert": str(cert), "tls_key": str(key)}, "upstreams": upstreams, "channels": channels,
    })).start()
    data = wheel.read_bytes()
    for server in (plain, tls):  # the page, then the file once: it is stored (warm) from here on
        status, _, page = get(server, "/mirror/simple/bigwheel/")
        assert status == 200 and b"bigwheel-1.0-py3-none-any.whl" in page
        status, _, got = get(server, FILE_PATH)
        assert status == 200 and got == data
        server.writes_done()
    yield World(plain, tls, data)
    plain.stop()
    tls.stop()


def get(server: Channelgate, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = connection(server)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def connection(server: Channelgate) -> HTTPConnection:
    if server.tls_cert:
        return HTTPSConnection("127.0.0.1", server.port, timeout=60, context=server.ssl_context())
    return HTTPConnection("127.0.0.1", server.port, timeout=60)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_parallel_downloads_of_a_warm_file_get_its_exact_bytes(world: World, scheme: str) -> None:
    server = world.plain if scheme == "http" else world.tls
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(server, FILE_PATH), range(8)))
    want = hashlib.sha256(world.data).hexdigest()
    for status, headers, body in results:
        assert status == 200
        assert int(headers["Content-Length"]) == len(world.data) == len(body)
        assert hashlib.sha256(body).hexdigest() == want


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_one_keep_alive_connection_gets_the_file_a_range_across_chunks_and_then_a_page(world: World, scheme: str) -> None:
    server = world.plain if scheme == "http" else world.tls
    conn = connection(server)
    try:
        conn.request("GET", FILE_PATH)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == world.data
        # a range that starts in one chunk and ends two chunks later, from an odd offset
        first, last = CHUNK - 7, 2 * CHUNK + 11
        conn.request("GET", FILE_PATH, headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {first}-{last}/{len(world.data)}"
        assert resp.read() == world.data[first:last + 1]
        # the same connection still reads requests once the body has gone out
        conn.request("GET", "/mirror/simple/bigwheel/")
        resp = conn.getresponse()
        assert resp.status == 200 and b"bigwheel-1.0-py3-none-any.whl" in resp.read()
    finally:
        conn.close()


def test_a_request_pipelined_behind_a_file_is_answered_after_it(world: World) -> None:
    """Both requests in one write: the second waits in the socket while the file goes out
    (reading is paused) and is answered, whole, right after it."""
    with socket.create_connection(("127.0.0.1", world.plain.port), timeout=60) as sock:
        sock.sendall(f"GET {FILE_PATH} HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /mirror/simple/bigwheel/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reader = sock.makefile("rb")
        first = http_response(reader)
        second = http_response(reader)
    assert first == (200, world.data)
    assert second[0] == 200 and b"bigwheel-1.0-py3-none-any.whl" in second[1]


def http_response(reader: Any) -> tuple[int, bytes]:
    """One Content-Length response off a raw HTTP/1.1 stream: (status, body)."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, reader.read(length)


def test_a_client_hanging_up_mid_file_costs_no_traceback_and_no_later_download(world: World) -> None:
    server = world.plain
    line = f'"GET {FILE_PATH}" 200'
    before, tracebacks = server.log().count(line), server.log().count("Traceback")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(f"GET {FILE_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            while len(got) < 256 * 1024:
                got += sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    # each hung-up download has ended on the server (its access line is written) ...
    wait_until(lambda: server.log().count(line) >= before + 3, "three access lines of hung-up downloads")
    # ... and the next client gets the whole file
    status, _, body = get(server, FILE_PATH)
    assert status == 200 and body == world.data
    status, _, _ = http("GET", f"{server.url}/api/health")
    assert status == 200
    assert server.log().count("Traceback") == tracebacks, server.log()[-4000:]

