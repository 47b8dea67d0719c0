"""Ready answers (proxy/answers.py): a warm index answer is kept whole and replayed, yet an
upload, a private mark or a policy reload reaches the very next request, one caller's view
never reaches another, and every request is still authorised, logged and counted.

In-process (create_app + aiohttp's test client): no real client is needed to read an index.
Real .conda packages are uploaded through the HTTP API.
"""
from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy import answers as answers_module
from proxy.answers import ReadyAnswers
from proxy.app import create_app
from proxy.cache import OFFLINE_RECHECK
from proxy.auth.credentials import generate_token, hash_token
from proxy.auth.guard import Guard
from proxy.auth.policy import Action
from proxy.context import LivePolicy
from proxy.keys import GATEWAY, SERVICES
from proxy.metrics import RequestFacts
from proxy.responses import IndexResponse
from proxy.settings import parse_settings
from proxy.store.packages import PackageInfo
from proxy.store.tokens import TokenStore, UserToken
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer
from tests.bench.common import upload_conda
from tests.bench.data import conda_packages

INDEX = "linux-64/repodata.json"


def _settings(tmp_path: Path, *, public: bool) -> tuple[Any, str, str]:
    reader, writer = generate_token(), generate_token()
    text = (
        f"storage: {{path: {tmp_path / 'storage'}}}\n"
        "groups: {devs: [alice], uploaders: [bob]}\n"
        f"channels: {{team: {{public: {str(public).lower()}, read: [group:devs, group:uploaders], write: [group:uploaders]}}}}\n"
        "tokens:\n"
        f"  - {{name: r, user: alice, sha256: 'sha256:{hash_token(reader)}', scopes: [conda:download]}}\n"
        f"  - {{name: w, user: bob, sha256: 'sha256:{hash_token(writer)}', scopes: [conda:download, api:write]}}\n"
    )
    return parse_settings(text), reader, writer


async def _upload(client: Any, token: str, path: Path) -> None:
    form = aiohttp.FormData()
    form.add_field("content", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
    resp = await client.post("/api/repo/team", data=form, headers={"Authorization": f"token {token}"})
    assert resp.status in (200, 201), await resp.text()


async def _names(resp: aiohttp.ClientResponse) -> set[str]:
    assert resp.status == 200, await resp.text()
    doc = orjson.loads(await resp.read())
    return {r["name"] for part in ("packages", "packages.conda") for r in doc.get(part, {}).values()}


async def test_an_upload_reaches_the_next_request_of_a_kept_answer(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, reader, writer = _settings(tmp_path, public=False)
    app = create_app(settings)
    client = await aiohttp_client(app)
    first, second = conda_packages(tmp_path / "pkgs", ["ready-a", "ready-b"])
    await _upload(client, writer, first)
    url = f"/t/{reader}/team/{INDEX}"
    answers = app[GATEWAY].answers

    one = await client.get(url)
    assert await _names(one) == {"ready-a"}
    assert len(answers) == 1  # kept whole
    two = await client.get(url)
    assert await _names(two) == {"ready-a"} and two.headers["ETag"] == one.headers["ETag"]
    assert two.headers["Cache-Control"].startswith("private")  # a non-public channel's answer, replayed too

    # a conditional request is answered 304 from the kept answer (RFC 9110 §13.1.2)
    cond = await client.get(url, headers={"If-None-Match": one.headers["ETag"]})
    assert cond.status == 304 and cond.headers["ETag"] == one.headers["ETag"] and not await cond.read()

    await _upload(client, writer, second)
    three = await client.get(url)
    assert await _names(three) == {"ready-a", "ready-b"}  # the catalog generation moved on
    assert three.headers["ETag"] != one.headers["ETag"]
    stale = await client.get(url, headers={"If-None-Match": one.headers["ETag"]})
    assert stale.status == 200 and await _names(stale) == {"ready-a", "ready-b"}

    # authorisation still runs on every request: no token, a wrong token, are refused
    assert (await client.get(f"/team/{INDEX}")).status == 401
    assert (await client.get(f"/t/{generate_token()}/team/{INDEX}")).status == 401


async def test_one_callers_view_never_reaches_another(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A public channel with a private package: anonymous callers get the public view, a
    reader the whole channel; each view is kept apart, in either order."""
    settings, reader, writer = _settings(tmp_path, public=True)
    app = create_app(settings)
    client = await aiohttp_client(app)
    for pkg in conda_packages(tmp_path / "pkgs", ["open-pkg", "secret-pkg"]):
        await _upload(client, writer, pkg)
    catalog = app[SERVICES].catalog
    await catalog.packages.put(PackageInfo(channel="team", ecosystem="conda", name="secret-pkg", private=True))

    for _ in range(2):  # the second round is served from the kept answers
        anonymous = await client.get(f"/team/{INDEX}")
        assert await _names(anonymous) == {"open-pkg"}
        member = await client.get(f"/t/{reader}/team/{INDEX}")
        assert await _names(member) == {"open-pkg", "secret-pkg"}
        assert member.headers["Cache-Control"].startswith("private")  # a shared cache must not replay it
        assert member.headers["ETag"] != anonymous.headers["ETag"]
    assert len(app[GATEWAY].answers) == 2

    # the package made public again: the next anonymous request sees it
    await catalog.packages.put(PackageInfo(channel="team", ecosystem="conda", name="secret-pkg", private=False))
    assert await _names(await client.get(f"/team/{INDEX}")) == {"open-pkg", "secret-pkg"}


async def test_kept_answers_are_logged_and_counted(tmp_path: Path) -> None:
    """A real ``channelgate serve``: its access log and /metrics see every replayed answer."""
    policy = Policy({"groups": {"devs": ["alice"]}, "channels": {"team": {"read": ["group:devs"], "write": ["group:devs"]}}})
    token = policy.add_token("alice", ["conda:download", "api:write"])
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        await upload_conda(server.url, token, conda_packages(tmp_path / "pkgs", ["counted"])[0], channel="team")
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(f"{server.url}/t/{token}/team/{INDEX}") as resp:
                    assert resp.status == 200
            async with session.get(f"{server.url}/metrics") as resp:
                metrics = await resp.text()
        assert 'channelgate_requests_total{ecosystem="conda",status="200"} 5.0' in metrics
        log = server.wait_log(f"/t/<redacted>/team/{INDEX}")
        lines = [line for line in server.wait_log("ecosystem=metrics").splitlines() if f"/team/{INDEX}" in line]
        assert len(lines) == 5 and all(" 200 " in line and "user=alice" in line for line in lines), log[-2000:]
    finally:
        server.stop()


async def test_a_policy_reload_drops_kept_answers(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, reader, writer = _settings(tmp_path, public=False)
    app = create_app(settings)
    client = await aiohttp_client(app)
    await _upload(client, writer, conda_packages(tmp_path / "pkgs", ["reloaded"])[0])
    url = f"/t/{reader}/team/{INDEX}"
    assert (await client.get(url)).status == 200 and len(app[GATEWAY].answers) == 1
    # the reader loses the read role: the kept answer must not outlive the policy
    text = (f"storage: {{path: {tmp_path / 'storage'}}}\n"
            "groups: {uploaders: [bob], others: [alice]}\n"
            "channels: {team: {read: [group:uploaders], write: [group:uploaders]}}\n"
            f"tokens: [{{name: r, user: alice, sha256: 'sha256:{hash_token(reader)}', scopes: [conda:download]}}]\n")
    app[SERVICES].live.swap(parse_settings(text))
    assert (await client.get(url)).status == 403


async def test_an_offline_server_keeps_answers_and_reads_its_store_again_within_a_second(
        aiohttp_client, aiohttp_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``offline: true``: a page from the stored upstream copy is kept whole and replayed, and
    taken as stored for OFFLINE_RECHECK only (``channelgate import`` may bring a newer copy)."""
    write_simple_index(tmp_path / "root", [make_wheel(tmp_path / "d", "stored-pkg", "1.0")])
    upstream = await aiohttp_server(UpstreamServer(tmp_path / "root").app())
    token = generate_token()
    text = (f"storage: {{path: {tmp_path / 'storage'}}}\n"
            f"upstreams: {{pypi: {{type: pypi, url: '{str(upstream.make_url('')).rstrip('/')}/simple'}}}}\n"
            "groups: {devs: [alice]}\n"
            "channels: {team: {upstreams: [pypi], read: [group:devs]}}\n"
            f"tokens: [{{name: r, user: alice, sha256: 'sha256:{hash_token(token)}', scopes: [pypi:download]}}]\n")
    online = await aiohttp_client(create_app(parse_settings(text)))
    page = await (await online.get(f"/t/{token}/team/simple/stored-pkg/")).read()
    assert b"stored_pkg-1.0" in page
    await online.close()
    await upstream.close()  # offline: nothing is contacted anyway

    app = create_app(parse_settings(text + "offline: true\n"))
    client = await aiohttp_client(app)
    url = f"/t/{token}/team/simple/stored-pkg/"
    assert await (await client.get(url)).read() == page  # read from the store
    assert await (await client.get(url)).read() == page  # known fresh now: kept
    gateway, metrics = app[GATEWAY], app[SERVICES].metrics
    assert len(gateway.answers) == 1
    kept = next(iter(gateway.answers._answers.values()))
    assert kept.fresh_until <= time.time() + OFFLINE_RECHECK
    replays = _replays(metrics)
    assert await (await client.get(url)).read() == page
    assert _replays(metrics) == replays + 1
    later = kept.fresh_until
    monkeypatch.setattr(time, "time", lambda: later)  # the recheck is due: the store is read again
    assert await (await client.get(url)).read() == page
    assert _replays(metrics) == replays + 1


def _replays(metrics: Any) -> float:
    """channelgate_ready_answers_total{ecosystem="pypi"} as /metrics shows it."""
    for line in metrics.render().decode().splitlines():
        if line.startswith('channelgate_ready_answers_total{ecosystem="pypi"}'):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- tickets
async def test_a_ticket_replays_without_deciding_again_yet_sees_revocation_and_the_brake(
        aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A repeated GET with the same path and credentials is answered from its ticket (the
    decision is not made again), yet a revoked policy token, a removed user-made token and a
    client braked for failed sign-ins are refused on the very next request."""
    settings, reader, writer = _settings(tmp_path, public=False)
    app = create_app(settings)
    client = await aiohttp_client(app)
    await _upload(client, writer, conda_packages(tmp_path / "pkgs", ["ticketed"])[0])
    services, gateway = app[SERVICES], app[GATEWAY]
    url = f"/t/{reader}/team/{INDEX}"
    assert await _names(await client.get(url)) == {"ticketed"}
    assert len(gateway.tickets) == 1 and len(gateway.answers) == 1

    def no_decision(*args: object, **kwargs: object) -> None:
        raise AssertionError("a ticketed request was authorised again")

    with monkeypatch.context() as patched:
        patched.setattr(services.guard, "authorize", no_decision)
        for _ in range(3):  # every header form of the same credentials has its own ticket
            assert await _names(await client.get(url)) == {"ticketed"}

    # a user-made token: its ticket ends when the token is removed
    user_token = generate_token()
    await services.guard.tokens.add(UserToken(user="alice", name="laptop", sha256=hash_token(user_token),
                                              scopes=("conda:download",), created_at=time.time(),
                                              expires_at=time.time() + 3600))
    made = {"Authorization": f"token {user_token}"}
    assert (await client.get(f"/team/{INDEX}", headers=made)).status == 200
    assert (await client.get(f"/team/{INDEX}", headers=made)).status == 200 and len(gateway.tickets) == 2
    await services.guard.tokens.remove("alice", "laptop")
    assert (await client.get(f"/team/{INDEX}", headers=made)).status == 401

    # failed sign-ins from this client: the brake applies to a ticketed request too
    assert (await client.get(url)).status == 200
    for _ in range(services.settings.accounts.max_failures):  # (the removed token's 401 was one)
        assert (await client.get(f"/t/{generate_token()}/team/{INDEX}")).status in (401, 429)
    assert (await client.get(url)).status == 429
    services.guard.limiter = type(services.guard.limiter)()  # the window passed

    # the policy token revoked (``channelgate token revoke``): refused at once
    assert (await client.get(url)).status == 200
    await services.guard.tokens.revoke_policy_token(hash_token(reader), "r")
    assert (await client.get(url)).status == 401


def test_a_grant_ends_when_its_token_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy token is valid through its ``expires`` day (local time): a grant ends there."""
    token = generate_token()
    today = dt.date.today()
    text = (
        f"storage: {{path: {tmp_path / 'storage'}}}\n"
        "groups: {devs: [alice]}\n"
        "channels: {team: {read: [group:devs]}}\n"
        f"tokens: [{{name: r, user: alice, sha256: 'sha256:{hash_token(token)}', scopes: [conda:download], expires: {today}}}]\n")
    settings = parse_settings(text)
    live = LivePolicy(settings)
    store = TokenStore(tmp_path / "accounts.sqlite3")
    guard = Guard(live, store)
    principal = guard.authorize({}, token, "team", Action.CONDA_READ)
    grant = guard.grant(settings, principal)
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time()).timestamp()
    assert grant.until == midnight and guard.still_valid(grant)
    monkeypatch.setattr(time, "time", lambda: midnight)
    assert not guard.still_valid(grant)
    live.swap(parse_settings(text))  # a reload, even of the same file: another policy object
    monkeypatch.undo()
    assert not guard.still_valid(grant)
    store.close()


# --------------------------------------------------------------------------- what is kept
def _answer(body: bytes = b"{}") -> IndexResponse:
    return IndexResponse(body=body, headers={"ETag": '"e"', "Content-Type": "application/json"})


def _request(**headers: str) -> web.Request:
    return make_mocked_request("GET", "/x", headers=headers)


def test_only_answers_built_from_checked_inputs_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = ReadyAnswers()
    stamp = (object(), 1)
    volatile = RequestFacts()
    volatile.volatile = True  # e.g. an index lookup past L1, a previous index while one builds
    answers.keep("volatile", stamp, _answer(), volatile)
    expired = RequestFacts(fresh_until=time.time() - 1)
    answers.keep("expired", stamp, _answer(), expired)
    answers.keep("file", stamp, web.Response(body=b"{}", headers={"ETag": '"e"'}), RequestFacts())
    assert len(answers) == 0

    facts = RequestFacts()
    facts.read_fresh(time.time() + 0.05)
    assert facts.fresh_until < math.inf
    answers.keep("fresh", stamp, _answer(b"kept"), facts)
    hit = answers.answer(_request(), "fresh", stamp)
    assert hit is not None and hit.body == b"kept"
    assert answers.answer(_request(), "fresh", (stamp[0], 2)) is None  # catalog moved: dropped
    assert len(answers) == 0

    answers.keep("fresh", stamp, _answer(b"kept"), facts)
    assert answers.answer(_request(), "fresh", (object(), 1)) is None  # another policy object
    answers.keep("fresh", stamp, _answer(b"kept"), facts)
    later = time.time() + 0.05
    monkeypatch.setattr(time, "time", lambda: later)  # the upstream document it read is no longer fresh
    assert answers.answer(_request(), "fresh", stamp) is None


def test_kept_answers_are_bounded_in_bytes() -> None:
    answers = ReadyAnswers(max_bytes=1000)
    stamp = (object(), 1)
    for n in range(5):
        answers.keep(n, stamp, _answer(bytes(300)), RequestFacts())
    assert answers.bytes <= 1000 and len(answers) == 1  # 600 bytes each: the body and its wire copy
    assert answers.answer(_request(), 3, stamp) is None and answers.answer(_request(), 4, stamp) is not None


@pytest.mark.parametrize("header", ['"e"', 'W/"e"', '"x", "e"', "*"])
def test_a_kept_answer_answers_conditional_requests(header: str) -> None:
    answers = ReadyAnswers()
    stamp = (object(), 1)
    answers.keep("k", stamp, _answer(), RequestFacts())
    hit = answers.answer(_request(**{"If-None-Match": header}), "k", stamp)
    assert hit is not None and hit.status == 304 and hit.headers["ETag"] == '"e"'


# --------------------------------------------------------------------------- the wire form
async def _raw(port: int, request: bytes) -> tuple[list[str], bytes]:
    """One raw HTTP exchange: the answer's status line and header lines (Date taken out: it
    moves), and its body."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
        length = next(int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:"))
        body = await reader.readexactly(length)
    finally:
        writer.close()
    return [line for line in head if not line.startswith("Date: ")], body


async def test_a_replay_sends_the_bytes_aiohttp_would_send(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A replayed answer to a keep-alive HTTP/1.1 GET is one write of prebuilt bytes
    (answers.WireResponse): the same status line, headers in the same order and body as
    aiohttp's own path sends for the same answer. A HEAD, a ``Connection: close``, an
    HTTP/1.0 request and a matching If-None-Match go aiohttp's way, with what it adds."""
    settings, reader, writer = _settings(tmp_path, public=False)
    app = create_app(settings)
    client = await aiohttp_client(app)
    await _upload(client, writer, conda_packages(tmp_path / "pkgs", ["wired"])[0])
    port = client.server.port
    get = f"GET /t/{reader}/team/{INDEX} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    built = await _raw(port, get)  # the first answer: built, sent by aiohttp, kept
    sent: list[type] = []
    original = answers_module.WireResponse.write_eof

    async def spy(self: answers_module.WireResponse, data: bytes = b"") -> None:
        sent.append(type(self))
        await original(self, data)

    answers_module.WireResponse.write_eof = spy  # type: ignore[method-assign]
    try:
        replayed = await _raw(port, get)
        assert sent == [answers_module.WireResponse]  # the replay took the prebuilt path
        assert replayed == built and b'"wired"' in replayed[1]
        assert built[0][0] == "HTTP/1.1 200 OK" and built[0][-1].startswith("Server: ")

        closing = await _raw(port, get.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert "Connection: close" in closing[0] and closing[1] == built[1]
        old = await _raw(port, get.replace(b"HTTP/1.1", b"HTTP/1.0"))
        assert old[0][0] == "HTTP/1.0 200 OK" and old[1] == built[1]  # aiohttp answers in its version
        etag = next(line.split(": ", 1)[1] for line in built[0] if line.startswith("ETag: "))
        r, w = await __import__("asyncio").open_connection("127.0.0.1", port)
        w.write(get.replace(b"\r\n\r\n", f"\r\nIf-None-Match: {etag}\r\n\r\n".encode()))
        assert (await r.readline()).startswith(b"HTTP/1.1 304")
        w.close()
        assert sent == [answers_module.WireResponse]  # none of these took it
    finally:
        answers_module.WireResponse.write_eof = original  # type: ignore[method-assign]
    head = await client.head(f"/t/{reader}/team/{INDEX}")
    assert head.status == 200 and await head.read() == b""


def test_a_tickets_access_line_end_is_made_once_and_masked() -> None:
    """A replay's access line ends with its ticket's facts, formatted once (answers.Ticket.facts):
    the same text as a request's own line, a token-like name masked like any other line."""
    from proxy.answers import Ticket
    from proxy.auth.credentials import Principal
    from proxy.auth.guard import Grant
    from proxy.logs import line_tail

    secret = generate_token()
    principal = Principal(user="alice", token_name=secret, scopes=frozenset(), groups=frozenset())
    ticket = Ticket(Grant(object(), principal, math.inf), "k", "conda", "team", "team", False, False)  # type: ignore[arg-type]
    facts = ticket.facts("hit")
    assert facts is ticket.facts("hit")  # made once per cache result
    assert facts.line_tail == " user=alice token=cgt-<redacted> channel=team ecosystem=conda cache=hit\n"
    assert secret not in facts.line_tail
    own = RequestFacts(ecosystem="conda", channel="team", cache="hit", user="alice", token=secret)
    assert line_tail(own) == facts.line_tail
