"""One cold resolve, request by request: what the client asked, when, when channelgate
answered, and which upstream requests each caused (issue 15: where a cold resolve's time goes).

    python -m tests.bench.timeline [--client uv|pip] [--no-metadata] [--rtt SECONDS] [--projects N] [--wheel-mib M]

It builds the resolve scenario's tree (``bench-r00`` requires every other project), serves it
with nginx (``--rtt``: the fake upstream holding every answer that long instead), runs the
client once direct and once through a fresh channelgate (``--log-format json``, so access and
upstream lines carry milliseconds), and prints one line per event, in milliseconds from the
client's start: ``start end who what``, where ``who`` is ``client`` (a request channelgate
answered, with its cache result) or ``upstream`` (a request channelgate made). With nginx,
the direct run's requests are printed too, from nginx's ``$msec`` log. A diagnostic, not a
figure: its times move with the host's load.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import Channelgate

from . import procs
from .common import MiB, bench_policy, channel_url
from .scen_resolve import _pip, _tree, _uv

NGINX_LOG = "log_format timeline '$msec $request_time \"$request\" $status $body_bytes_sent range=$http_range';\n" \
            "    access_log {dir}/access.log timeline;"


def _iso(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def channelgate_events(log: Path, t0: float) -> list[tuple[float, float, str, str]]:
    """(start, end, who, what) in ms from ``t0``, from a ``--log-format json`` log."""
    events = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        end = _iso(entry["time"])
        if entry.get("logger") == "access" and "/api/health" not in entry["path"]:
            what = f"{entry['method']} {entry['path'].split('/simple/', 1)[-1]} {entry['status']} cache={entry['cache']}"
            events.append(((end - entry["duration"] - t0) * 1000, (end - t0) * 1000, "client", what))
        elif "upstream" in entry and "seconds" in entry:
            what = f"GET {entry['url'].split('/', 3)[-1]} {entry['status']} {entry['bytes']} B"
            events.append(((end - entry["seconds"] - t0) * 1000, (end - t0) * 1000, "upstream", what))
    return events


def nginx_events(log: Path, t0: float) -> list[tuple[float, float, str, str]]:
    events = []
    for line in log.read_text().splitlines():
        end, took, rest = line.split(" ", 2)
        events.append(((float(end) - float(took) - t0) * 1000, (float(end) - t0) * 1000, "direct", rest))
    return events


def show(title: str, took: float, events: list[tuple[float, float, str, str]]) -> None:
    print(f"--- {title}: {took * 1000:.0f} ms")
    for start, end, who, what in sorted(events):
        print(f"{start:8.1f} {end:8.1f}  {who:8}  {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=("uv", "pip"), default="uv")
    parser.add_argument("--no-metadata", action="store_true", help="an index without PEP 658 .metadata files")
    parser.add_argument("--rtt", type=float, default=0.0, help="the fake upstream holding every answer this long")
    parser.add_argument("--projects", type=int, default=15)
    parser.add_argument("--wheel-mib", type=int, default=1)
    args = parser.parse_args(argv)
    run = _uv if args.client == "uv" else _pip
    with tempfile.TemporaryDirectory(prefix="channelgate-timeline-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        _tree(work / "up", args.projects, args.wheel_mib * MiB, metadata=not args.no_metadata)
        nginx_log: Path | None = None
        if args.rtt:
            url = procs.start_upstream(stack, work / "up", work / "upstream.log", delay=args.rtt, big=0).url
        else:
            conf = procs.NGINX_CONF
            procs.NGINX_CONF = conf.replace("access_log {dir}/access.log;", NGINX_LOG)
            try:
                nginx = procs.start_nginx(stack, work / "nginx", work / "up")
            finally:
                procs.NGINX_CONF = conf
            url, nginx_log = nginx.url, work / "nginx" / "nginx-1" / "access.log"
            nginx_log.write_text("")
        t0 = time.time()
        took = run(f"{url}/simple", work / "home-direct")
        show("direct", took, nginx_events(nginx_log, t0) if nginx_log else [])
        policy, reader, _ = bench_policy({"pypi": {"type": "pypi", "url": f"{url}/simple"}})
        server = Channelgate(work / "cg", policy, args=["--log-format", "json"])
        stack.callback(server.stop)
        server.start()
        t0 = time.time()
        took = run(f"{channel_url(server.url, reader)}/simple", work / "home-cg")
        time.sleep(0.5)  # access lines are written in batches (logs.AccessSink)
        show("through channelgate", took, channelgate_events(server.log_path, t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
