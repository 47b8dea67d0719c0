"""The Gateway's decisions in process: create_app() under aiohttp's test client, with the
harness's upstream as an in-process aiohttp app where a channel needs one. These cover logic
that needs no real client (routing and authorisation answers, the merge rule, the Simple
index's negotiation and redirects); the real-client end-to-end tests (test_*_e2e.py) stay."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import UpstreamServer
from proxy.app import create_app
from proxy.auth.credentials import generate_token, hash_token
from proxy.settings import parse_settings

PEP691 = "application/vnd.pypi.simple.v1+json"
Client = Any  # aiohttp.test_utils.TestClient


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _policy(storage: Path, upstream_url: str | None) -> tuple[str, dict[str, str]]:
    tokens = {who: generate_token() for who in ("writer", "reader", "norole")}
    scopes = {"writer": "[api:write, pypi:download]", "reader": "[all]", "norole": "[all]"}
    users = {"writer": "alice", "reader": "bob", "norole": "mallory"}
    upstreams = f"upstreams: {{pypi: {{type: pypi, url: '{upstream_url}/simple'}}}}\n" if upstream_url else ""
    channel_upstreams = "upstreams: [pypi], upstream_allow: [Shared_Lib], " if upstream_url else ""
    text = (
        f"storage: {{path: '{storage}'}}\n"
        "cache: {metadata_ttl: 0}\n"
        + upstreams
        + "groups: {devs: [alice], readers: [bob]}\n"
        "users: [mallory]\n"
        "channels:\n"
        f"  internal: {{{channel_upstreams}read: [group:readers], write: [group:devs]}}\n"
        "  open: {public: true, write: [group:devs]}\n"
        "tokens:\n"
        + "".join(f"  - {{name: {who}, user: {users[who]}, sha256: 'sha256:{hash_token(t)}', scopes: {scopes[who]}}}\n"
                  for who, t in tokens.items())
    )
    return text, tokens


@pytest.fixture
async def gateway(aiohttp_client, aiohttp_server, tmp_path: Path) -> tuple[Client, dict[str, str]]:  # type: ignore[no-untyped-def]
    """channelgate with channel ``internal`` (private, merging a PyPI upstream that has a
    squatter's acme-lib 9.0, shared-lib 2.0 and upstream-dep 1.0) and ``open`` (public)."""
    up = tmp_path / "dists"
    write_simple_index(tmp_path / "upstream", [
        make_wheel(up, "acme-lib", "9.0"), make_wheel(up, "shared-lib", "2.0"), make_wheel(up, "upstream-dep", "1.0"),
    ], fmt="json")
    upstream = await aiohttp_server(UpstreamServer(tmp_path / "upstream").app())
    text, tokens = _policy(tmp_path / "storage", str(upstream.make_url("")).rstrip("/"))
    return await aiohttp_client(create_app(parse_settings(text))), tokens


async def _upload(client: Client, channel: str, wheel: Path, token: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData(twine_fields(wheel))
    form.add_field("content", wheel.read_bytes(), filename=wheel.name, content_type="application/octet-stream")
    resp: aiohttp.ClientResponse = await client.post(f"/api/repo/{channel}", data=form,
                                                     headers=_basic(token, "x-auth-token"))
    return resp


# ------------------------------------------------------------------ routing and authorisation
@pytest.mark.parametrize("rest", ["simple/acme-lib/", "linux-64/repodata.json", "src/contrib/PACKAGES"])
async def test_private_and_missing_channels_answer_alike(aiohttp_client, tmp_path: Path, rest: str) -> None:  # type: ignore[no-untyped-def]
    """DESIGN "Tokens and authentication": a channel that does not exist is answered exactly
    like a private one, in every ecosystem, anonymously (401) and with a role-less token (403)."""
    text, tokens = _policy(tmp_path / "storage", None)
    client = await aiohttp_client(create_app(parse_settings(text)))
    answers = {}
    for channel in ("internal", "no-such-channel"):
        anon = await client.get(f"/{channel}/{rest}")
        norole = await client.get(f"/t/{tokens['norole']}/{channel}/{rest}")
        answers[channel] = (anon.status, anon.headers.get("WWW-Authenticate"), await anon.read(),
                            norole.status, await norole.read())
    assert answers["internal"] == answers["no-such-channel"]
    assert answers["internal"][0] == 401 and answers["internal"][1] == 'Basic realm="channelgate"'
    assert answers["internal"][3] == 403


async def test_public_channel_reads_anonymously_and_refuses_anonymous_or_readonly_writes(
        gateway: tuple[Client, dict[str, str]], tmp_path: Path) -> None:
    client, tokens = gateway
    wheel = make_wheel(tmp_path / "mine", "open-pkg", "1.0")
    assert (await _upload(client, "open", wheel, "cgt-" + "x" * 43)).status == 401
    assert (await _upload(client, "open", wheel, tokens["reader"])).status == 403  # bob: no write role
    resp = await client.get("/open/simple/open-pkg/")
    assert resp.status == 404  # nothing was stored by the refused uploads
    assert (await _upload(client, "open", wheel, tokens["writer"])).status == 200
    resp = await client.get("/open/simple/open-pkg/", headers={"Accept": PEP691})
    assert resp.status == 200
    assert [f["filename"] for f in json.loads(await resp.read())["files"]] == [wheel.name]


async def test_every_token_form_reaches_the_same_channel(gateway: tuple[Client, dict[str, str]]) -> None:
    client, tokens = gateway

    async def statuses(token: str) -> list[int]:
        forms = [
            client.get(f"/t/{token}/internal/simple/"),
            client.get(f"/api/repo/t/{token}/internal/simple/"),
            client.get("/internal/simple/", headers={"X-Auth": token}),
            client.get("/internal/simple/", headers={"Authorization": f"Bearer {token}"}),
            client.get("/internal/simple/", headers=_basic("__token__", token)),
            client.get("/internal/simple/", headers=_basic(token, "x-auth-token")),
        ]
        return [(await form).status for form in forms]

    assert await statuses(tokens["reader"]) == [200] * 6
    assert await statuses("cgt-" + "n" * 43) == [401] * 6  # the same forms with a token nobody holds


# ------------------------------------------------------------------ the merge rule
async def _files(client: Client, token: str, project: str) -> list[str]:
    resp = await client.get(f"/t/{token}/internal/simple/{project}/", headers={"Accept": PEP691})
    assert resp.status == 200, await resp.text()
    return sorted(f["filename"] for f in json.loads(await resp.read())["files"])


async def test_merge_rule_hides_upstream_versions_of_uploaded_names(gateway: tuple[Client, dict[str, str]],
                                                                    tmp_path: Path) -> None:
    """DESIGN "Merged indexes": an uploaded name hides every upstream file of that name (the
    squatter's acme-lib 9.0), unless the channel's upstream_allow names it (shared-lib);
    a name nobody uploaded comes from the upstream."""
    client, tokens = gateway
    reader = tokens["reader"]
    assert await _files(client, reader, "acme-lib") == ["acme_lib-9.0-py3-none-any.whl"]  # before any upload
    for name in ("acme-lib", "shared-lib"):
        resp = await _upload(client, "internal", make_wheel(tmp_path / "private", name, "1.0"), tokens["writer"])
        assert resp.status == 200, await resp.text()
    assert await _files(client, reader, "acme-lib") == ["acme_lib-1.0-py3-none-any.whl"]
    assert await _files(client, reader, "shared-lib") == ["shared_lib-1.0-py3-none-any.whl",
                                                          "shared_lib-2.0-py3-none-any.whl"]
    assert await _files(client, reader, "upstream-dep") == ["upstream_dep-1.0-py3-none-any.whl"]
    resp = await client.get(f"/t/{reader}/internal/simple/", headers={"Accept": PEP691})
    names = {p["name"] for p in json.loads(await resp.read())["projects"]}
    assert {"acme-lib", "shared-lib"} <= names


# ------------------------------------------------------------------ the Simple index
async def test_simple_page_negotiates_and_revalidates(gateway: tuple[Client, dict[str, str]]) -> None:
    client, tokens = gateway
    url = f"/t/{tokens['reader']}/internal/simple/upstream-dep/"
    as_json = await client.get(url, headers={"Accept": PEP691})
    assert as_json.headers["Content-Type"].startswith(PEP691) and as_json.headers["Vary"] == "Accept"
    doc = json.loads(await as_json.read())
    assert doc["name"] == "upstream-dep" and doc["meta"]["api-version"].startswith("1.")
    assert all(not f["url"].startswith("http") for f in doc["files"])  # links point at channelgate
    as_html = await client.get(url, headers={"Accept": "text/html"})
    body = await as_html.text()
    assert as_html.headers["Content-Type"].startswith("text/html") and "upstream_dep-1.0-py3-none-any.whl" in body
    assert as_json.headers["ETag"] != as_html.headers["ETag"]  # one ETag per representation
    again = await client.get(url, headers={"Accept": PEP691, "If-None-Match": as_json.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


async def test_non_canonical_names_redirect_and_unknown_names_are_404(gateway: tuple[Client, dict[str, str]]) -> None:
    client, tokens = gateway
    base = f"/t/{tokens['reader']}/internal/simple"
    resp = await client.get(f"{base}/Upstream_Dep/", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"].endswith(f"{base}/upstream-dep/")
    resp = await client.get(f"{base}/no-such-project/")
    assert resp.status == 404
