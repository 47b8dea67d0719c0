"""A real HTTP relay in front of moto's S3 server: it forwards every request unchanged and
records what it saw, so a test can tell which bytes came from the bucket (``gets``), and it
can hold a GetObject after its first chunk (``hold``) to play a slow object store."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    range: str | None
    user_agent: str


class S3Relay:
    """``url`` forwards to ``target`` (moto). ``hold(suffix)``: a GET of a key ending in
    ``suffix`` sends its first chunk, sets ``holding``, and waits for ``release()``."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.seen: list[Seen] = []
        self.port = 0
        self.holding = threading.Event()
        self._release = threading.Event()
        self._held: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, suffix: str) -> list[Seen]:
        """GetObject requests of keys ending in ``suffix``."""
        return [s for s in self.seen if s.method == "GET" and s.path.endswith(suffix)]

    def hold(self, suffix: str) -> None:
        self._held, self._release = suffix, threading.Event()
        self.holding.clear()

    def release(self) -> None:
        self._held = None
        self._release.set()

    def start(self) -> "S3Relay":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self.release()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, request.query_string, request.headers.get("Range"),
                              request.headers.get("User-Agent", "")))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        held = self._held is not None and request.method == "GET" and request.path.endswith(self._held)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(request.method, self.target + request.path_qs, headers=headers,
                                       data=body or None, allow_redirects=False) as upstream:
                resp = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP - {"content-length"}})
                await resp.prepare(request)
                first = True
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await resp.write(chunk)
                    if held and first:
                        first = False
                        self.holding.set()
                        await asyncio.to_thread(self._release.wait)
                await resp.write_eof()
                return resp
