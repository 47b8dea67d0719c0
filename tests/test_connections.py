"""Connections that misbehave, against a real server over real sockets (DESIGN "Hostile
input and faults"): slowloris and idle sockets are closed, the connection cap answers 503
and frees up, accept errors are logged at a bounded rate, malformed requests get an error
page without the token, and control characters never reach the log raw."""
from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from harness import Channelgate, Policy, free_port, http, stored_blobs, wait_until


def _policy(**limits: int) -> tuple[Policy, str]:
    policy = Policy(
        {
            "server": {"limits": limits},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"read": ["group:devs"], "write": ["group:devs"]}},
        }
    )
    return policy, policy.add_token("alice", ["all"])


@pytest.fixture()
def gate(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Channelgate, str]]:
    limits = getattr(request, "param", {"header_timeout": 1, "keepalive_timeout": 1, "max_connections": 50})
    policy, token = _policy(**limits)
    server = Channelgate(tmp_path / "cg", policy).start()
    yield server, token
    server.stop()


def connect(server: Channelgate) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s socket timeout: a
    server that never closes fails the test instead of hanging it)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_slowloris_connections_are_closed_after_the_header_timeout(gate: tuple[Channelgate, str]) -> None:
    server, _ = gate
    socks = [connect(server) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    closed: set[int] = set()
    stop = threading.Event()
    sent_after_start = [0]

    def trickle() -> None:  # the attack: one header byte per socket, again and again
        while not stop.is_set():
            for i, sock in enumerate(socks):
                if i not in closed:
                    try:
                        sock.send(b"X")
                        sent_after_start[0] += 1
                    except OSError:
                        closed.add(i)
            stop.wait(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        for i, sock in enumerate(socks):
            assert read_until_closed(sock) == b"", "a slowloris connection got an answer instead of being closed"
            closed.add(i)
    finally:
        stop.set()
        thread.join(5)
    assert sent_after_start[0] > len(socks)  # bytes kept coming: the timeout is not an idle timer
    # the server still answers a client that sends its request at once
    assert http("GET", f"{server.url}/api/health")[0] == 200


def test_idle_and_kept_alive_connections_are_closed(gate: tuple[Channelgate, str]) -> None:
    server, _ = gate
    silent = connect(server)  # never sends a byte
    kept = connect(server)
    kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = read_response(kept)
    assert status == 200 and b'"ok"' in body
    kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive works...
    assert read_response(kept)[0] == 200
    assert read_until_closed(kept) == b""  # ...and an idle kept-alive connection is closed
    assert read_until_closed(silent) == b""


@pytest.mark.parametrize("gate", [{"header_timeout": 2, "max_connections": 5}], indirect=True)
def test_beyond_the_connection_cap_503_then_health_answers_once_sockets_are_freed(gate: tuple[Channelgate, str]) -> None:
    server, _ = gate
    holders = [connect(server) for _ in range(5)]
    holders[-1].sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(holders[-1])[0] == 200  # every holder is accepted by now
    refused = [connect(server) for _ in range(20)]
    for sock in refused:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer
    for sock in holders:  # the server frees them itself: header or keep-alive timeout
        assert read_until_closed(sock) == b""
    status, _, body = http("GET", f"{server.url}/api/health")
    assert status == 200 and b'"ok"' in body
    log = server.wait_log("connection limit reached")
    assert log.count("connection limit reached") <= 2  # 20 refusals, reported at a bounded rate


def test_accept_errors_are_logged_at_a_bounded_rate(tmp_path: Path) -> None:
    """A cap above the open-file limit: accept() fails with EMFILE. One line per 10 s, no
    tracebacks, and the server answers again once the sockets are gone."""
    policy, _ = _policy(header_timeout=2, max_connections=1000)
    server = Channelgate(tmp_path / "cg", policy, nofile=64).start()
    try:
        assert "open-file limit (64) is below" in server.log()
        socks = [connect(server) for _ in range(200)]
        log = server.wait_log("cannot accept connections: Too many open files")
        for sock in socks:
            sock.close()
        status, _, _ = http("GET", f"{server.url}/api/health")
        assert status == 200
        log = server.log()
        assert log.count("cannot accept connections") <= 3, log[-3000:]
        assert "Traceback" not in log and "out of system resource" not in log
        assert len(log.splitlines()) < 40, f"{len(log.splitlines())} log lines"
    finally:
        server.stop()


def malformed_requests(token: str) -> dict[str, bytes]:
    """Ten ways to send a broken request, each carrying a token where aiohttp's own error
    page or log would quote it."""
    crlf = b"\r\n"
    t = token.encode()
    return {
        "bad method": b"G\x01T /t/" + t + b"/internal/simple/ HTTP/1.1" + crlf + b"Host: x" + crlf * 2,
        "bad version": b"GET /t/" + t + b"/internal/simple/ HTTP/9.Z" + crlf + b"Host: x" + crlf * 2,
        "long request line": b"GET /t/" + t + b"/" + b"a" * 20000 + b" HTTP/1.1" + crlf * 2,
        "long header": b"GET / HTTP/1.1" + crlf + b"X-Auth: " + t + b"a" * 20000 + crlf * 2,
        "bad header name": b"GET / HTTP/1.1" + crlf + b"X Auth" + t + b": " + t + crlf * 2,
        "control char in header": b"GET / HTTP/1.1" + crlf + b"Authorization: Bearer " + t + b"\x00\x01" + crlf * 2,
        "bad content-length": b"POST /api/repo/internal HTTP/1.1" + crlf + b"X-Auth: " + t + crlf
        + b"Content-Length: " + t + crlf * 2,
        "bad transfer-encoding": b"POST / HTTP/1.1" + crlf + b"X-Auth: " + t + crlf + b"Transfer-Encoding: " + t + crlf * 2,
        "bad chunk size": b"POST /t/" + t + b"/api/repo/internal HTTP/1.1" + crlf + b"Transfer-Encoding: chunked"
        + crlf * 2 + t + crlf + b"x" + crlf,
        "obsolete line folding": b"GET / HTTP/1.1" + crlf + b"Host: x" + crlf + b" X-Auth: " + t + crlf * 2,
        "garbage target": b"GET \x7f/t/" + t + b"\x7f HTTP/1.1" + crlf + b"Host: x" + crlf * 2,
    }


def test_error_pages_for_malformed_requests_never_echo_the_token(gate: tuple[Channelgate, str]) -> None:
    server, token = gate
    answers = {}
    for kind, raw in malformed_requests(token).items():
        with connect(server) as sock:
            sock.sendall(raw)
            answers[kind] = read_until_closed(sock)
    for kind, answer in answers.items():
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), f"{kind}: {answer[:200]!r}"
        assert token.encode() not in answer, f"{kind} echoed the token: {answer!r}"
        assert token[4:20].encode() not in answer, f"{kind} echoed part of the token: {answer!r}"
    server.stop()
    assert token not in server.log() and token[4:20] not in server.log()


def test_control_characters_in_paths_are_escaped_in_the_access_log(gate: tuple[Channelgate, str]) -> None:
    server, token = gate
    line = '2026-01-01 00:00:00,000 INFO access: 10.0.0.1 "GET /admin" 200'
    forged = "/internal/simple/x%0a" + line.replace(" ", "%20").replace('"', "%22")
    assert http("GET", server.url + forged, headers={"X-Auth": token})[0] == 404
    assert http("GET", server.url + "/internal/simple/nul%00byte%1b[31m/", headers={"X-Auth": token})[0] == 404
    server.stop()  # flushes the access log
    raw = server.log_path.read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw
    lines = raw.decode().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines), "a log line was forged"
    assert any("/internal/simple/x%0A2026-01-01" in line and "%22GET /admin%22" in line for line in lines)
    assert any("/internal/simple/nul%00byte%1B[31m/" in line for line in lines)


# --------------------------------------------------------------------------- request bodies
BOUNDARY = "cgslowbody"


def upload_head(token: str, length: int) -> bytes:
    """A twine-style upload's head and the start of its body, up to the file's first bytes."""
    head = (
        f"POST /api/repo/internal HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
    form = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\":action\"\r\n\r\nfile_upload\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"slow-1.0.tar.gz\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return (head + form).encode()


def temp_files(server: Channelgate) -> list[Path]:
    tmp = server.storage / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith((".", "lock"))] if tmp.exists() else []


def assert_nothing_stored(server: Channelgate, token: str) -> None:
    assert temp_files(server) == [], "the upload's temp file was left behind"
    assert stored_blobs(server.storage, "uploads") == set()
    status, _, _ = http("GET", f"{server.url}/internal/simple/slow/", headers={"Authorization": f"token {token}"})
    assert status == 404  # no index entry either


@pytest.mark.parametrize("gate", [{"body_idle_timeout": 1, "header_timeout": 5}], indirect=True)
def test_a_stalled_upload_body_gets_408_and_leaves_no_temp_file(gate: tuple[Channelgate, str]) -> None:
    server, token = gate
    baseline = set(temp_files(server))
    sock = connect(server)
    sock.sendall(upload_head(token, 10 * 1024 * 1024) + b"\0" * (300 * 1024))  # then nothing more
    wait_until(lambda: set(temp_files(server)) - baseline, "the upload's temp file")  # the server is writing it
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"server.limits.body_idle_timeout" in answer
    assert_nothing_stored(server, token)
    assert http("GET", f"{server.url}/api/health")[0] == 200


@pytest.mark.parametrize("gate", [{"body_deadline": 2, "header_timeout": 5}], indirect=True)
def test_a_trickled_upload_body_gets_408_at_the_body_deadline(gate: tuple[Channelgate, str]) -> None:
    """One byte every 0.1 s never trips the idle timeout (30 s): the overall deadline ends it."""
    server, token = gate
    sock = connect(server)
    sock.sendall(upload_head(token, 10 * 1024 * 1024))
    stop = threading.Event()
    sent = [0]

    def trickle() -> None:
        while not stop.is_set():
            try:
                sock.send(b"\0")
                sent[0] += 1
            except OSError:
                return
            stop.wait(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        answer = read_until_closed(sock)
    finally:
        stop.set()
        thread.join(5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"server.limits.body_deadline" in answer
    assert sent[0] > 1  # bytes kept coming: this is not the idle timeout
    assert_nothing_stored(server, token)


# --------------------------------------------------------------------------- the metrics listener
def test_the_metrics_listener_has_the_same_connection_guard(tmp_path: Path) -> None:
    metrics_port = free_port()
    policy, _ = _policy(header_timeout=1, keepalive_timeout=1, max_connections=2)
    policy.data["server"]["metrics_listen"] = f"127.0.0.1:{metrics_port}"
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        def metrics_conn() -> socket.socket:
            return socket.create_connection(("127.0.0.1", metrics_port), timeout=30)

        slow = [metrics_conn() for _ in range(2)]
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        slow[-1].sendall(b"X-Slow: 1\r\n")
        refused = metrics_conn()
        refused.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(refused)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer[:200]
        for sock in slow:  # closed at the header timeout, unanswered
            assert read_until_closed(sock) == b""
        scrape = metrics_conn()
        scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = read_response(scrape)
        assert status == 200 and b"channelgate_requests_total" in body
        assert read_until_closed(scrape) == b""  # an idle kept-alive scrape connection is closed too
    finally:
        server.stop()
