"""The framework ceiling: bare aiohttp (on asyncio's own loop, as ``channelgate serve`` runs by default) answering
every GET with the same bytes and the same headers from memory (``--header``, given channelgate's
own answer's headers by the scenario), no auth, routing, logging or metrics. What channelgate reaches against this is what its own code costs; what this
reaches against nginx is what the framework costs.

Run: ``python -m tests.bench.bare --file BODY --port N --header 'Content-Type: TYPE' [--header ...]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiohttp import web


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent on every answer")
    args = parser.parse_args(argv)
    body = args.file.read_bytes()
    headers = dict(h.split(": ", 1) for h in args.header)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
