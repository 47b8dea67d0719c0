"""Load generators: wrk for request rates, curl processes for throughput, aiohttp clients for
time to first byte and body checks. Every helper checks status codes and sizes: a rate made
of 401s or short bodies is an error, never a figure."""
from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import aiohttp

from .procs import Unavailable


class BenchError(Exception):
    """A measurement went wrong (bad status, wrong bytes, tool failure)."""


# --------------------------------------------------------------------------- plain requests
def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, dict[str, str], bytes]:
    """One GET that does not raise on HTTP errors (urllib: no Accept, Accept-Encoding identity,
    which is what wrk's requests look like too)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def fetch_ok(url: str, what: str, headers: dict[str, str] | None = None) -> bytes:
    status, _, body = fetch(url, headers)
    if status != 200:
        raise BenchError(f"{what}: HTTP {status}: {body[:200]!r}")
    return body


# --------------------------------------------------------------------------- wrk
@dataclass
class WrkResult:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: str
    output: str


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise Unavailable("wrk is not installed (apt-get install wrk)")
    return found


def wrk(url: str, *, seconds: int, connections: int = 64, threads: int = 2,
        headers: dict[str, str] | None = None) -> WrkResult:
    """``wrk -t2 -c64 -dNs URL``; raises BenchError when any answer was not 2xx/3xx."""
    cmd = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = proc.stdout + proc.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if proc.returncode != 0 or rps is None or total is None:
        raise BenchError(f"wrk failed on {redact(url)}: {out[-500:]}")
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s+(.*)", out)
    result = WrkResult(float(rps.group(1)), int(total.group(1)), int(non.group(1)) if non else 0,
                       sock.group(1).strip() if sock else "", out)
    if result.non_2xx:
        raise BenchError(f"{result.non_2xx} of {result.requests} answers from {redact(url)} were not 2xx/3xx")
    if result.requests == 0:
        raise BenchError(f"wrk made no request to {redact(url)}")
    return result


def redact(url: str) -> str:
    return re.sub(r"/t/[^/]+/", "/t/<token>/", url)


# --------------------------------------------------------------------------- curl (throughput)
async def parallel_curl(url: str, *, clients: int, size: int) -> float:
    """``clients`` curl processes download ``url`` at once; returns the wall time (s) from
    starting them to the last one finishing. Each must get HTTP 200 and ``size`` bytes."""
    curl = shutil.which("curl")
    if not curl:
        raise Unavailable("curl is not installed")
    cmd = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
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
