"""Load generators: wrk for request rates, curl processes for throughput, aiohttp clients for
time to first byte and body checks. Every helper checks status codes and sizes: a rate made
of 401s or short bodies is an error, never a figure."""
from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .procs import Unavailable


class BenchError(Exception):
    """A measurement went wrong (bad status, wrong bytes, tool failure)."""


# --------------------------------------------------------------------------- plain requests
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer of its own, never followed: a 308 to the page is not the page."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, dict[str, str], bytes]:
    """One GET that does not raise on HTTP errors and follows no redirect (urllib: no Accept,
    Accept-Encoding identity, which is what wrk's requests look like too)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def fetch_ok(url: str, what: str, headers: dict[str, str] | None = None) -> bytes:
    status, _, body = fetch(url, headers)
    if status != 200:
        raise BenchError(f"{what}: HTTP {status}: {body[:200]!r}")
    return body


def answer_size(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> int:
    """The bytes of one whole answer (status line, headers, body) to the very request wrk
    sends (``GET``, ``Host``, ``headers``, nothing else), on a raw socket; BenchError unless
    it is a 200 with a Content-Length body. wrk's byte count is checked against this."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError(f"{redact(url)}: the connection closed before the answer's headers")
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status != 200:
            raise BenchError(f"{redact(url)}: HTTP {status} to wrk's request (only 200 answers are counted)")
        if "content-length" not in fields:
            raise BenchError(f"{redact(url)}: no Content-Length (a chunked answer cannot be size-checked)")
        length = int(fields["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError(f"{redact(url)}: the connection closed inside the body")
            rest += chunk
    return len(header_block) + 4 + length


# --------------------------------------------------------------------------- wrk
@dataclass
class WrkResult:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: str
    output: str
    bytes_read: int = 0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise Unavailable("wrk is not installed (apt-get install wrk)")
    return found


# wrk's own summary has no status counts beyond "Non-2xx or 3xx": its exact byte count (a
# done() hook costs nothing per request, unlike a response() hook, which halves nginx's rate)
_WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("Bytes read (exact): %d\\n", summary.bytes))
end
"""


def _wrk_script() -> str:
    """The hook's file, shared by concurrent runs: written whole, then renamed into place."""
    path = Path(tempfile.gettempdir()) / "channelgate-bench-wrk-done.lua"
    if not path.exists() or path.read_text() != _WRK_DONE:
        fd, tmp = tempfile.mkstemp(prefix=".wrk-done-", suffix=".lua", dir=path.parent)
        with open(fd, "w") as fh:
            fh.write(_WRK_DONE)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    return str(path)


def wrk(url: str, *, seconds: int, connections: int = 64, threads: int = 2,
        headers: dict[str, str] | None = None, answer: tuple[int, int] | None = None) -> WrkResult:
    """``wrk -t2 -c64 -dNs URL``; raises BenchError when any answer was not 2xx/3xx, and, given
    ``answer`` (the smallest and largest bytes of a whole 200 answer, ``answer_size``), when
    the bytes read do not amount to that many whole answers: a 3xx, 304 or short error page
    counts as a request for wrk, never as an answer here. Only the answers still in flight
    when wrk stops (at most one per connection) may be partial."""
    cmd = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", _wrk_script()]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = proc.stdout + proc.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    read = re.search(r"Bytes read \(exact\): (\d+)", out)
    if proc.returncode != 0 or rps is None or total is None or read is None:
        raise BenchError(f"wrk failed on {redact(url)}: {out[-500:]}")
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s+(.*)", out)
    result = WrkResult(float(rps.group(1)), int(total.group(1)), int(non.group(1)) if non else 0,
                       sock.group(1).strip() if sock else "", out, int(read.group(1)))
    if result.non_2xx:
        raise BenchError(f"{result.non_2xx} of {result.requests} answers from {redact(url)} were not 2xx/3xx")
    if result.requests == 0:
        raise BenchError(f"wrk made no request to {redact(url)}")
    if answer is not None:
        low, high = result.requests * answer[0], (result.requests + connections) * answer[1]
        if not low <= result.bytes_read <= high:
            raise BenchError(
                f"{redact(url)}: {result.bytes_read:,} bytes for {result.requests:,} requests "
                f"({result.bytes_read / result.requests:,.0f} per request) is not that many whole 200 answers "
                f"of {answer[0]:,}-{answer[1]:,} bytes: some answers were something else (redirect, 304, error)"
            )
    return result


def redact(url: str) -> str:
    return re.sub(r"/t/[^/]+/", "/t/<token>/", url)


# --------------------------------------------------------------------------- curl (throughput)
async def parallel_curl(url: str, *, clients: int, size: int, follow: bool = False) -> float:
    """``clients`` curl processes download ``url`` at once; returns the wall time (s) from
    starting them to the last one finishing. Each must get HTTP 200 and ``size`` bytes
    (``follow``: after redirects, curl -L)."""
    curl = shutil.which("curl")
    if not curl:
        raise Unavailable("curl is not installed")
    cmd = [curl, "-s", *(["-L"] if follow else []), "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
    start = time.monotonic()
    procs = [await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    wall = time.monotonic() - start
    for out, _ in outs:
        code, _, got = out.decode().partition(" ")
        if code != "200" or int(got or 0) != size:
            raise BenchError(f"curl {redact(url)}: HTTP {code}, {got} of {size} bytes")
    return wall


async def curl_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, float, int, int]:
    """One GET by a curl process (body discarded): (total s, first byte s, HTTP code, size)."""
    curl = shutil.which("curl")
    if not curl:
        raise Unavailable("curl is not installed")
    cmd = [curl, "-s", "-o", "/dev/null", "-w", "%{time_total} %{time_starttransfer} %{http_code} %{size_download}"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    proc = await asyncio.create_subprocess_exec(*cmd, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    fields = out.decode().split()
    if proc.returncode != 0 or len(fields) != 4:
        raise BenchError(f"curl {redact(url)} failed: {err.decode()[-300:]}")
    return float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])


# --------------------------------------------------------------------------- aiohttp clients
@dataclass
class Download:
    status: int = 0
    first_byte: float | None = None  # time.monotonic() of the first body byte
    done: float | None = None
    size: int = 0
    sha256: str = ""
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


async def download(session: aiohttp.ClientSession, url: str, *, chunk: int = 1024 * 1024) -> Download:
    """GET ``url``, hashing the body as it streams; records when the first body byte came."""
    result = Download()
    digest = hashlib.sha256()
    try:
        async with session.get(url) as resp:
            result.status = resp.status
            async for data in resp.content.iter_any():
                if result.first_byte is None:
                    result.first_byte = time.monotonic()
                digest.update(data)
                result.size += len(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.done = time.monotonic()
    result.sha256 = digest.hexdigest()
    return result


def client_session(connections: int) -> aiohttp.ClientSession:
    """A client session with no connection cap below ``connections`` and no auto headers
    that would change what the server sends (no compression)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections + 8, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        skip_auto_headers=("Accept-Encoding",),
        trust_env=False,
    )


async def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, int, bytes, dict[str, str]]:
    """(seconds to the complete body, status, body, headers) of one GET on a fresh connection."""
    async with client_session(1) as session:
        start = time.monotonic()
        async with session.get(url, headers=headers or {}) as resp:
            body = await resp.read()
        return time.monotonic() - start, resp.status, body, dict(resp.headers)
