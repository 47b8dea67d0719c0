"""The fake upstream for the benchmarks, in a process of its own.

It is ``tests/harness.py``'s ``UpstreamServer`` (same directory layout, ETags, call log), run
outside the benchmark's process so that the clients' work never slows it down, with two
additions for large files:

- files of ``--big`` bytes or more are streamed from disk (sendfile) instead of being read
  into memory, and may be throttled (``--throttle /path=BYTES_PER_SECOND``) to look like a
  real, finite upstream;
- ``--delay SECONDS`` holds every answer that long before it starts, a round trip as a
  remote registry has (the cold-resolve rows' ``*_rtt`` figures: 20 ms);
- ``GET /_bench/report`` answers ``{"calls": [[method, path, range], ...], "finished": {path: [t, ...]}}``
  (``range``: the request's Range header, or null for a whole-file request)
  where ``t`` is ``time.monotonic()`` (system-wide CLOCK_MONOTONIC on Linux, comparable with
  the benchmark's clock) when a large file's last byte was handed to the kernel.

Run: ``python -m tests.bench.upstream --root DIR [--throttle PATH=RATE]...``; the first line on
stdout is ``PORT <n>``. It stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import mimetypes
import signal
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from tests.harness import Call, UpstreamServer

CHUNK = 256 * 1024


class BenchUpstream(UpstreamServer):
    def __init__(self, root: Path, *, big: int, throttle: dict[str, float], delay: float = 0.0) -> None:
        super().__init__(root, json_index=False)
        self.big = big
        self.throttle = throttle
        self.delay = delay
        self.finished: dict[str, list[float]] = {}

    def _large_file(self, url_path: str) -> Path | None:
        path = (self.root / url_path.lstrip("/")).resolve()
        if not str(path).startswith(str(self.root.resolve())) or not path.is_file():
            return None
        return path if path.stat().st_size >= self.big else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_bench/report":
            return web.json_response(
                {"calls": [[c.method, c.path, c.headers.get("Range")] for c in self.calls], "finished": self.finished}
            )
        if self.delay:
            await asyncio.sleep(self.delay)  # the round trip of a remote registry
        path = self._large_file(request.path)
        if path is None or request.method not in ("GET", "HEAD"):
            return await super()._handle(request)
        self.calls.append(Call(request.method, request.path, dict(request.headers)))
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        rate = self.throttle.get(request.path)
        if rate is None or request.method == "HEAD":
            # sent by aiohttp (sendfile, Range, HEAD). A FileResponse prepared here and then
            # returned is prepared again by aiohttp 3.14 (AssertionError in _sendfile): the
            # connection was then reset, and a client that reused it (uv) retried after ~2 s
            return web.FileResponse(path, headers={"Content-Type": content_type})
        resp = await self._throttled(request, path, content_type, rate)
        await resp.write_eof()
        self.finished.setdefault(request.path, []).append(time.monotonic())
        return resp

    async def _throttled(self, request: web.Request, path: Path, content_type: str, rate: float) -> web.StreamResponse:
        size = path.stat().st_size
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.content_length = size
        await resp.prepare(request)
        start = time.monotonic()
        sent = 0
        with open(path, "rb") as fh:  # noqa: ASYNC230 - 256 KiB reads from the page cache, paced anyway
            while True:
                data = fh.read(CHUNK)
                if not data:
                    break
                await resp.write(data)
                sent += len(data)
                due = start + sent / rate - time.monotonic()
                if due > 0:
                    await asyncio.sleep(due)  # the throttle itself: a finite upstream bandwidth
        return resp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--big", type=int, default=8 * 1024 * 1024, help="stream files of this many bytes or more")
    parser.add_argument("--throttle", action="append", default=[], metavar="PATH=BYTES_PER_SECOND")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds every answer waits before it starts")
    args = parser.parse_args(argv)
    throttle = {}
    for item in args.throttle:
        url_path, _, rate = item.rpartition("=")
        throttle[url_path] = float(rate)
    server = BenchUpstream(args.root, big=args.big, throttle=throttle, delay=args.delay).start(args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"PORT {server.port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
