"""Two replicas sharing a store, a catalog and one Redis (issue 13 parts 3 and 6; DESIGN,
"Scale-out on existing engines"): real ``channelgate serve`` processes, a real redis-server,
a real PostgreSQL (the shared catalog), a real upstream; the shared store is moto's S3 server
(each replica on a storage.path of its own, as on two hosts) or one filesystem on this host.

- an upload through one replica is in the other's indexes (pub/sub), and pip and py-rattler
  install it from the other;
- 32 concurrent cold requests split across both: one upstream GET, every body correct;
- kill -9 the replica that downloads: the other takes over, and the restarted one serves the
  file without another upstream GET;
- Redis stopped: warm and cold content is still served, readiness says "degraded" and names it.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
import requests
from aiohttp import web

from fixtures import conda_pkgs as fx
from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, client_env, http, run, wait_until
from redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

EVENTS = "channelgate:events"
BIG = "big_pkg-1.0-py3-none-any.whl"


class Cluster:
    """Two replicas of one policy: one PostgreSQL catalog, one Redis, one storage.path. With
    ``s3``, each replica has a storage.path of its own, as on two hosts, and the blobs are in
    one bucket: the replicas share nothing but the engines."""

    def __init__(self, tmp_path: Path, upstream: UpstreamServer, redis: RedisServer, database: str, *,
                 s3: Any = None, **cache: Any) -> None:
        self.policy = Policy({
            "storage": {"path": str(tmp_path / "shared")},
            "database": {"url": database},
            "cache": {"backend": "redis", "redis_url": redis.url, **cache},
            "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
            "groups": {"devs": ["alice"]},
            "channels": {"internal": {"upstreams": ["pypi"], "read": ["group:devs"], "write": ["group:devs"]}},
        })
        self.token = self.policy.add_token("alice", ["all"])
        policies = [self.policy, Policy(copy.deepcopy(self.policy.data))]
        if s3 is not None:
            for name, policy in zip("ab", policies):
                policy.data["storage"] = {"path": str(tmp_path / name / "storage"), "backend": "s3", "s3": {
                    "endpoint_url": s3.endpoint_url, "bucket": s3.bucket, "prefix": s3.prefix, "region": s3.region,
                    "access_key_id": "testing", "secret_access_key": "testing"}}
        self.a = Channelgate(tmp_path / "a", policies[0])
        self.b = Channelgate(tmp_path / "b", policies[1])

    def __enter__(self) -> "Cluster":
        self.a.start()
        self.b.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.a.stop()
        self.b.stop()

    def url(self, replica: Channelgate, path: str) -> str:
        return f"{replica.url}/t/{self.token}/internal{path}"


def metric(replica: Channelgate, name: str) -> float:
    _, _, body = http("GET", f"{replica.url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture()
def events(redis_server: RedisServer) -> Iterator[Any]:  # noqa: F811
    """A subscription to the replicas' event channel, made before any replica writes."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS)
    try:
        yield pubsub
    finally:
        pubsub.close()
        client.close()


def await_change(pubsub: Any, channel: str, ecosystem: str, timeout: float = 10) -> dict[str, Any]:
    """The catalog message a replica publishes once its change is committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is None:
            continue
        event = json.loads(message["data"])
        if event.get("kind") == "catalog" and (event["channel"], event["ecosystem"]) == (channel, ecosystem):
            return dict(event)
    raise TimeoutError(f"no change of {channel}/{ecosystem} was published")


def post(url: str, path: Path, token: str, fields: dict[str, str] | None = None) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(url, data=fields or {}, files={"content": (path.name, fh, "application/octet-stream")},
                             headers={"Authorization": f"token {token}"}, timeout=60)


def upload_wheel_until_b_lists_it(cg: Cluster, events: Any, wheel: Path, project: str) -> None:
    """Upload ``wheel`` through replica A (twine's form), see the change published, then wait
    until B's page for ``project`` lists it: B applies the change when its own feed delivers it
    (PostgreSQL NOTIFY or the Redis message), which may come after the message seen here."""
    resp = post(f"{cg.a.url}/api/repo/internal", wheel, cg.token, twine_fields(wheel))
    assert resp.status_code == 200, resp.text
    await_change(events, "internal", "pypi")
    wait_until(lambda: wheel.name.encode() in http("GET", cg.url(cg.b, f"/simple/{project}/"))[2],
               "replica B lists the upload")


async def test_an_upload_through_one_replica_is_in_the_others_indexes_and_installs_from_it(
    tmp_path: Path, upstream_factory, redis_server: RedisServer, events: Any, pg_url: str, s3_settings: Any  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    rattler = pytest.importorskip("rattler")
    write_simple_index(tmp_path / "root", [])
    with Cluster(tmp_path, upstream_factory(tmp_path / "root"), redis_server, pg_url, s3=s3_settings) as cg:
        # B has built its merged indexes before the upload: they must not be served again
        assert b"fresh-pkg" not in http("GET", cg.url(cg.b, "/simple/"))[2]
        assert b"fresh-pkg" not in http("GET", cg.url(cg.b, "/noarch/repodata.json"))[2]
        upload_wheel_until_b_lists_it(cg, events, make_wheel(tmp_path / "d", "fresh-pkg", "1.0"), "fresh-pkg")
        target = tmp_path / "pip-target"
        done = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
                    cg.url(cg.b, "/simple/"), "--target", str(target), "fresh-pkg"], env=client_env(tmp_path / "h"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert (target / "fresh_pkg-1.0.dist-info").is_dir()

        conda = fx.build_package(tmp_path / "c", fx.PkgSpec("fresh-tool", "2.0", "0"))
        resp = post(f"{cg.a.url}/api/repo/internal", conda, cg.token)
        assert resp.status_code == 201, resp.text
        await_change(events, "internal", "conda")
        gateway = rattler.Gateway(cache_dir=tmp_path / "rattler-cache")
        records = await rattler.solve([rattler.Channel(cg.url(cg.b, ""))], ["fresh-tool"], gateway=gateway,
                                      platforms=["linux-64", "noarch"], virtual_packages=[])
        assert [(r.name.normalized, str(r.version)) for r in records] == [("fresh-tool", "2.0")]
        await rattler.install(records, tmp_path / "env", cache_dir=tmp_path / "rattler-pkgs", show_progress=False,
                              platform=rattler.Subdir("linux-64"))
        assert (tmp_path / "env/share/fresh-tool/README.txt").read_text().startswith("fresh-tool 2.0")
        assert records[0].url.startswith(cg.b.url)


def test_a_ready_answer_on_the_redis_backend_is_replayed_until_an_upload_through_the_other_replica(
    tmp_path: Path, upstream_factory, redis_server: RedisServer, events: Any, pg_url: str  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    """Replica B learns an upstream page fresh from Redis (A fetched it) and keeps its answer
    whole: repeated GETs are replayed (channelgate_ready_answers_total). An upload through A
    reaches B through the catalog's change feed and Redis pub/sub: B's very next answer is
    built anew and lists the upload, and is kept again from then on."""
    old = make_wheel(tmp_path / "d", "kept-pkg", "1.0")
    write_simple_index(tmp_path / "root", [old])
    with Cluster(tmp_path, upstream_factory(tmp_path / "root"), redis_server, pg_url) as cg:
        assert http("GET", cg.url(cg.a, "/simple/kept-pkg/"))[0] == 200  # A fetches the page
        page = http("GET", cg.url(cg.b, "/simple/kept-pkg/"))[2]  # B: fresh in Redis
        assert old.name.encode() in page
        replays = 'channelgate_ready_answers_total{ecosystem="pypi"}'
        before = metric(cg.b, replays)
        for _ in range(5):
            status, _, body = http("GET", cg.url(cg.b, "/simple/kept-pkg/"))
            assert status == 200 and body == page
        assert metric(cg.b, replays) - before >= 4  # (the first one may still be the one kept)

        new = make_wheel(tmp_path / "d", "kept-pkg", "2.0")
        # the kept answer (fresh for 600 s) must give way to one listing the upload
        upload_wheel_until_b_lists_it(cg, events, new, "kept-pkg")
        before = metric(cg.b, replays)
        body = http("GET", cg.url(cg.b, "/simple/kept-pkg/"))[2]
        assert new.name.encode() in body and old.name.encode() not in body  # the merge rule: uploads win
        assert metric(cg.b, replays) == before + 1  # kept again


async def test_invalidation_reaches_a_catalog_that_cannot_see_the_write(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """Backend-independent: two catalogs that share nothing (two SQLite files) still hear of
    each other's changes through Redis, so a catalog without its own change feed is covered."""
    from proxy.coordination import Coordinator
    from proxy.store.catalog import SqliteCatalog, Upload

    first, second = SqliteCatalog(tmp_path / "one.sqlite3"), SqliteCatalog(tmp_path / "two.sqlite3")
    heard: asyncio.Queue[tuple[str | None, str | None]] = asyncio.Queue()

    def changed(channel: str | None, ecosystem: str | None) -> None:
        second.changed(channel, ecosystem)
        heard.put_nowait((channel, ecosystem))

    one, two = Coordinator(redis_server.url), Coordinator(redis_server.url)
    try:
        await one.start(first.changed)
        await two.start(changed)
        first.watch(one.changed_here)
        before = second.generation("internal", "pypi")
        await first.add(Upload("internal", "pypi", "x/x-1.whl", "x", "1", "x-1.whl", "0" * 64, "0" * 32, 1))
        assert await asyncio.wait_for(heard.get(), 10) == ("internal", "pypi")
        assert second.generation("internal", "pypi") != before
        assert second.generation("internal", "conda") == 0  # only the pair that changed
        # a change committed on a worker thread is published all the same
        await asyncio.to_thread(one.changed_here, "internal", "cran")
        assert await asyncio.wait_for(heard.get(), 10) == ("internal", "cran")
    finally:
        await one.close()
        await two.close()
        first.close()
        second.close()


def slow_big_file(data: bytes, release: threading.Event, *, stall_first_only: bool = False) -> Any:
    """An upstream handler: the file in pieces; the first GET stalls before its last MiB
    until ``release`` (with ``stall_first_only``, later GETs are served at once)."""
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        stall = calls["n"] == 1 or not stall_first_only
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: -1024 * 1024])
        if stall:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        await resp.write(data[-1024 * 1024 :])
        await resp.write_eof()
        return resp

    return handler


def big_world(tmp_path: Path, upstream_factory: Any) -> tuple[UpstreamServer, bytes]:
    payload = os.urandom(3 * 1024 * 1024).hex()
    wheel = make_wheel(tmp_path / "d", "big-pkg", "1.0", module_body=f"DATA = '{payload}'\n")
    write_simple_index(tmp_path / "root", [wheel], fmt="html")
    return upstream_factory(tmp_path / "root"), wheel.read_bytes()


async def fetch_all(urls: list[str]) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(url: str) -> tuple[int, str]:
            try:
                async with session.get(url) as resp:
                    return resp.status, hashlib.sha256(await resp.read()).hexdigest()
            except aiohttp.ClientError:
                return 0, "cut"  # the connection ended before a complete body

        return list(await asyncio.gather(*(one(u) for u in urls)))


@pytest.mark.parametrize("store", ["filesystem", "s3"])
async def test_32_cold_requests_across_two_replicas_make_one_upstream_get(
    tmp_path: Path, upstream_factory, redis_server: RedisServer, pg_url: str, store: str, request  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    """``s3``: the replicas share nothing but the bucket and Redis (moto's S3 server): the
    waiting replica reads the file from the bucket once the other published it."""
    s3 = request.getfixturevalue("s3_settings") if store == "s3" else None
    upstream, data = big_world(tmp_path, upstream_factory)
    release = threading.Event()
    upstream.overrides[f"/files/{BIG}"] = slow_big_file(data, release)
    with Cluster(tmp_path, upstream, redis_server, pg_url, s3=s3) as cg:
        for replica in (cg.a, cg.b):  # each replica has the index (its file URLs) before the rush
            assert http("GET", cg.url(replica, "/simple/big-pkg/"))[0] == 200
        urls = [cg.url(cg.a if i % 2 else cg.b, f"/simple/big-pkg/{BIG}") for i in range(32)]
        rush = asyncio.ensure_future(fetch_all(urls))
        try:
            # one replica downloads, the other waits for it: both states are visible in /metrics
            await asyncio.to_thread(wait_until, lambda: upstream.calls_to(f"/files/{BIG}") == 1, "no download")
            await asyncio.to_thread(wait_until, lambda: sum(metric(r, "channelgate_replica_waits") for r in (cg.a, cg.b))
                                    == 1, "no replica waits for the other")
            # a HEAD on the waiting replica (the simple page declares no size) gets the length
            waiting = cg.a if metric(cg.a, "channelgate_replica_waits") else cg.b
            head = asyncio.ensure_future(asyncio.to_thread(http, "HEAD", cg.url(waiting, f"/simple/big-pkg/{BIG}")))
        finally:
            release.set()
        answers = await rush
        status, headers, _ = await head
    assert answers == [(200, hashlib.sha256(data).hexdigest())] * 32
    assert status == 200 and int(headers["Content-Length"]) == len(data)
    assert upstream.calls_to(f"/files/{BIG}") == 1
    if s3 is not None:  # the replicas share no disk: the one copy is the bucket's
        import botocore.session

        assert cg.a.storage != cg.b.storage
        sha = hashlib.sha256(data).hexdigest()
        client = botocore.session.get_session().create_client(
            "s3", region_name=s3.region, endpoint_url=s3.endpoint_url,
            aws_access_key_id="testing", aws_secret_access_key="testing")
        stored = client.get_object(Bucket=s3.bucket, Key=f"{s3.prefix}cache/sha256/{sha[:2]}/{sha}")
        assert stored["Body"].read() == data


async def test_kill_9_the_downloading_replica_the_other_takes_over_and_nothing_is_fetched_again(
    tmp_path: Path, upstream_factory, redis_server: RedisServer, pg_url: str  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    upstream, data = big_world(tmp_path, upstream_factory)
    release = threading.Event()
    upstream.overrides[f"/files/{BIG}"] = slow_big_file(data, release, stall_first_only=True)
    digest = hashlib.sha256(data).hexdigest()
    with Cluster(tmp_path, upstream, redis_server, pg_url, download_lease=2) as cg:
        try:
            holder = asyncio.ensure_future(fetch_all([cg.url(cg.a, f"/simple/big-pkg/{BIG}")]))
            await asyncio.to_thread(wait_until, lambda: upstream.calls_to(f"/files/{BIG}") == 1, "A never downloaded")
            waiters = asyncio.ensure_future(fetch_all([cg.url(cg.b, f"/simple/big-pkg/{BIG}")] * 4))
            await asyncio.to_thread(wait_until, lambda: metric(cg.b, "channelgate_replica_waits") == 1,
                                    "B does not wait for A")
            assert cg.a.proc is not None and cg.b.proc is not None
            tmp = cg.a.storage / "tmp"  # each process's own directory is named after its pid
            a_tmp = [p for p in tmp.iterdir() if p.name.startswith("r-") and f"-{cg.a.proc.pid}-" in p.name]
            b_tmp = [p for p in tmp.iterdir() if p.name.startswith("r-") and f"-{cg.b.proc.pid}-" in p.name]
            assert a_tmp and b_tmp
            cg.a.proc.send_signal(signal.SIGKILL)  # mid-fill: its lease lapses, no message is sent
            cg.a.proc.wait(10)
            assert await waiters == [(200, digest)] * 4  # B took over once the lease lapsed
            assert upstream.calls_to(f"/files/{BIG}") == 2
            assert (await holder)[0][1] != digest  # A's own client was cut: never a wrong complete body
        finally:
            release.set()
        cg.a.start()  # the restarted replica: the file is in the shared store
        assert not any(p.exists() for p in a_tmp)  # the killed process's temp files were swept
        assert all(p.exists() for p in b_tmp)  # the live sibling's were not
        status, _, body = http("GET", cg.url(cg.a, f"/simple/big-pkg/{BIG}"))
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest
        assert upstream.calls_to(f"/files/{BIG}") == 2


async def test_with_redis_stopped_content_is_still_served_and_readiness_says_degraded(
    tmp_path: Path, upstream_factory, redis_server: RedisServer, pg_url: str  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    wheels = [make_wheel(tmp_path / "d", name, "1.0") for name in ("warm-pkg", "cold-pkg")]
    write_simple_index(tmp_path / "root", wheels)
    upstream = upstream_factory(tmp_path / "root")
    with Cluster(tmp_path, upstream, redis_server, pg_url) as cg:
        warm = cg.url(cg.a, f"/simple/warm-pkg/{wheels[0].name}")
        assert http("GET", warm)[2] == wheels[0].read_bytes()
        assert json.loads(http("GET", f"{cg.a.url}/api/ready")[2])["status"] == "ready"
        redis_server.stop()
        for replica in (cg.a, cg.b):
            status, _, body = http("GET", cg.url(replica, f"/simple/warm-pkg/{wheels[0].name}"))
            assert status == 200 and body == wheels[0].read_bytes()
            # an index this replica never served asks the shared cache first: it falls back
            status, _, page = http("GET", cg.url(replica, "/simple/cold-pkg/"))
            assert status == 200 and wheels[1].name.encode() in page
        status, _, body = http("GET", cg.url(cg.b, f"/simple/cold-pkg/{wheels[1].name}"))  # a cold file: local lease
        assert status == 200 and body == wheels[1].read_bytes()
        for replica in (cg.a, cg.b):
            status, _, ready = http("GET", f"{replica.url}/api/ready")
            report = json.loads(ready)
            assert status == 200 and report["status"] == "degraded", report
            assert report["checks"]["redis"].startswith("degraded"), report
            assert report["checks"]["storage"] == "ok" and report["checks"]["catalog"] == "ok"
            assert replica.log().count("Redis is unreachable") == 1  # logged once, not per request
        redis_server.start()
        for replica in (cg.a, cg.b):
            await asyncio.to_thread(wait_until, lambda: json.loads(http("GET", f"{replica.url}/api/ready")[2])[
                "status"] == "ready", "readiness never recovered")
            assert replica.wait_log("Redis is back").count("Redis is back") == 1
