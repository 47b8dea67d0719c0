"""Property tests of routing and name normalisation (issue 8; DESIGN, "Hostile input and
faults"), against a real server and a real upstream that logs every raw request path:

1. No request reaches an upstream outside its configured URL: whatever path a client
   sends (percent-encoded dots and slashes, double encoding, ``%3F``, ``%23``, NUL,
   non-ASCII look-alikes...), every upstream request lies under the upstream's URL (or
   at a file the upstream's own index named) and carries no query.
2. Equivalent spellings of a path get the same access decision: every token form DESIGN
   allows, percent-encoded characters, and PEP 503 spellings of a project name.

Plus the cases issue 8 observed, as plain examples: ``%252e%252e``, ``%3F``, ``%23`` and
``acme-internal%3F`` (which served the upstream squatter's page) are 404s, and the
upstream never sees them.
"""
from __future__ import annotations

import base64
import http.client
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fixtures import conda_pkgs as fx
from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer

# where the upstreams live on the fake server, and the one place outside them that the
# PyPI upstream's own index names (its files)
PYPI, CONDA, CRAN = "/up/simple", "/upc", "/upr"
ALLOWED = (f"{PYPI}/", f"{CONDA}/", f"{CRAN}/", "/up/files/")

# pieces of path segments: plain names, separators, and every encoding trick seen
PIECES = [
    "acme", "internal", "a", "x1", "-", "_", ".", "..", "simple", "noarch", "PACKAGES",
    "%2e", "%2E", "%252e", "%2e%2e", "%252e%252e", "%2f", "%2F", "%252f", "%5c", "%3f", "%3F",
    "%253F", "%23", "%2523", "%25", "%00", "%0a", "%20", "%E2%84%AA", "%C9%A1", "?", ";", "@", ":",
]
segment = st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("".join)
SHAPES = [
    "simple/{0}/", "simple/{0}", "simple/{0}/{1}", "simple/acme-internal/{0}", "{0}/repodata.json",
    "noarch/{0}", "{0}/{1}", "src/contrib/{0}", "src/contrib/Archive/{0}/{1}", "bin/windows/contrib/{0}/{1}",
]


class RecordingUpstream(UpstreamServer):
    """Logs every request's raw path (undecoded, query included)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.raw: list[str] = []
        self._lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.raw.append(request.raw_path)
        return await super()._handle(request)


@dataclass
class World:
    server: Channelgate
    upstream: RecordingUpstream
    tokens: dict[str, str]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request with ``path`` sent exactly as given (no client-side normalisation)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("routing")
    root = base / "root"
    squatter = make_wheel(base / "d", "acme-internal", "99.0")  # an upstream squatter on our private name
    write_simple_index(root / "up", [squatter, make_wheel(base / "d", "other-pkg", "1.0")], fmt="json")
    fx.write_channel(root / "upc", [fx.build_package(base / "pkgs", fx.PkgSpec("up-pkg", "1.0", "0"))])
    (root / "upr" / "src" / "contrib").mkdir(parents=True)
    (root / "upr" / "src" / "contrib" / "PACKAGES").write_text("Package: uppkg\nVersion: 1.0\nMD5sum: " + "0" * 32 + "\n\n")
    (root / "secret").mkdir()
    (root / "secret" / "index.html").write_text("outside every upstream")
    upstream = RecordingUpstream(root).start()
    policy = Policy({
        "cache": {"metadata_ttl": 600},
        # the property tests send hundreds of bogus tokens from one address on purpose: the
        # sign-in brake (tested in test_anaconda_accounts) must not turn a later test's answers into 429s
        "accounts": {"max_failures": 1_000_000},
        "upstreams": {"pypi": {"type": "pypi", "url": upstream.url + PYPI},
                      "conda": {"type": "conda", "url": upstream.url + CONDA},
                      "cran": {"type": "cran", "url": upstream.url + CRAN}},
        "groups": {"devs": ["alice"]},
        "users": ["bob"],
        "channels": {
            "internal": {"upstreams": ["pypi", "conda", "cran"], "read": ["group:devs"], "write": ["group:devs"]},
            "public": {"public": True, "upstreams": ["pypi", "conda", "cran"]},
        },
    })
    tokens = {
        "reader": policy.add_token("alice", ["pypi:download", "conda:download", "cran:download"]),
        "outsider": policy.add_token("bob", ["pypi:download", "conda:download", "cran:download"]),
        "wrongscope": policy.add_token("alice", ["api:read"]),
        "writer": policy.add_token("alice", ["api:write"]),
        "bogus": "cgt-" + "A1b2" * 10,
    }
    server = Channelgate(base / "cg", policy).start()
    own = make_wheel(base / "own", "acme-internal", "1.0")
    with open(own, "rb") as fh:
        resp = requests.post(f"{server.url}/api/repo/internal", data=twine_fields(own),
                             files={"content": (own.name, fh, "application/octet-stream")},
                             auth=(tokens["writer"], "x-auth-token"), timeout=60)
    assert resp.status_code == 200, resp.text
    yield World(server, upstream, tokens)
    server.stop()
    upstream.stop()


def escapes(raw: str) -> str | None:
    """Why an upstream request path leaves its upstream, or None if it stays inside."""
    path, sep, query = raw.partition("?")
    if sep:
        return f"a query ({query!r})"
    decoded = path
    for _ in range(4):  # however many times a sloppy upstream decodes it
        decoded = unquote(decoded)
    if any(seg in (".", "..") for seg in decoded.split("/")) or "\\" in decoded or "#" in decoded:
        return "dot segments, a backslash or a fragment"
    if not decoded.startswith(ALLOWED):
        return "outside every upstream URL"
    return None


# --------------------------------------------------------------------------- property 1
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES), first=segment, second=segment,
       prefix=st.sampled_from(["/t/{reader}/internal", "/public", "/api/repo/t/{reader}/internal"]))
@example(shape="simple/{0}/", first="%252e%252e", second="a", prefix="/t/{reader}/internal")
@example(shape="simple/{0}/", first="%252e%252e%252f%252e%252e%252fsecret", second="a", prefix="/public")
@example(shape="simple/{0}/", first="acme-internal%3F", second="a", prefix="/t/{reader}/internal")
@example(shape="simple/{0}/", first="acme-internal%23", second="a", prefix="/t/{reader}/internal")
@example(shape="simple/{0}/", first="other-pkg%3Fx=1", second="a", prefix="/public")
@example(shape="{0}/repodata.json", first="noarch%0a", second="a", prefix="/public")
@example(shape="bin/windows/contrib/{0}/{1}", first="4.3%0a", second="PACKAGES", prefix="/public")
def test_no_request_leaves_its_upstream(world: World, shape: str, first: str, second: str, prefix: str) -> None:
    before = len(world.upstream.raw)
    path = prefix.format(**world.tokens) + "/" + shape.format(first, second)
    status, body = world.get(path)
    assert status < 500 or status in (502, 504), (path, status, body[:200])
    for raw in world.upstream.raw[before:]:
        reason = escapes(raw)
        assert reason is None, f"{path} made the upstream see {raw}: {reason}"
    if status == 200:  # nothing served may come from outside the upstreams
        assert b"outside every upstream" not in body


def test_observed_name_tricks_are_404_and_never_reach_the_upstream(world: World) -> None:
    reader = world.tokens["reader"]
    for name in ("%252e%252e", "%252e%252e%252f%252e%252e%252fsecret", "acme-internal%3F", "acme-internal%3Fx",
                 "acme-internal%23", "acme%2finternal", "acme-internal%00", "%E2%84%AAcme", "acme-internal."):
        before = list(world.upstream.raw)
        status, body = world.get(f"/t/{reader}/internal/simple/{name}/")
        assert status == 404, (name, status, body)
        assert b"99.0" not in body  # not the squatter's page
        assert world.upstream.raw == before, (name, world.upstream.raw[len(before):])
    status, body = world.get(f"/t/{reader}/internal/simple/acme-internal/")  # the real page: ours only
    assert status == 200 and b"acme_internal-1.0" in body and b"99.0" not in body


# --------------------------------------------------------------------------- property 2
CREDENTIALS = ["reader", "outsider", "wrongscope", "bogus", "none"]
FORMS = ["alias", "server", "leading", "basic", "basic-password", "x-auth", "bearer", "token"]
RESTS = ["simple/", "simple/acme-internal/", "simple/other-pkg/", "noarch/repodata.json", "src/contrib/PACKAGES"]


def request_for(form: str, token: str | None, channel: str, rest: str) -> tuple[str, dict[str, str]]:
    if token is None:
        return f"/{channel}/{rest}", {}
    basic = lambda user, password: {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}  # noqa: E731
    return {
        "alias": (f"/t/{token}/{channel}/{rest}", {}),
        "server": (f"/api/repo/t/{token}/{channel}/{rest}", {}),
        "leading": (f"/t/{token}/api/repo/{channel}/{rest}", {}),
        "basic": (f"/api/repo/{channel}/{rest}", basic(token, "x-auth-token")),
        "basic-password": (f"/{channel}/{rest}", basic("__token__", token)),
        "x-auth": (f"/{channel}/{rest}", {"X-Auth": token}),
        "bearer": (f"/{channel}/{rest}", {"Authorization": f"Bearer {token}"}),
        "token": (f"/api/repo/{channel}/{rest}", {"Authorization": f"token {token}"}),
    }[form]


def decision(status: int) -> str:
    return {401: "unauthenticated", 403: "forbidden"}.get(status, "allowed")


@st.composite
def spelling(draw: st.DrawFn, path: str) -> str:
    """``path`` with some characters percent-encoded (RFC 3986 §2.3: equivalent) and the
    project name in another PEP 503 spelling."""
    if "acme-internal" in path:
        variant = "".join(draw(st.sampled_from([c, c.upper()])) if c != "-" else draw(st.sampled_from(["-", "_", ".", "-_", "--"]))
                          for c in "acme-internal")
        path = path.replace("acme-internal", variant)
    out = []
    for char in path:
        if char != "/" and draw(st.booleans()):
            out.append(f"%{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), credential=st.sampled_from(CREDENTIALS), channel=st.sampled_from(["internal", "public", "missing"]),
       rest=st.sampled_from(RESTS), form=st.sampled_from(FORMS))
def test_equivalent_spellings_get_the_same_decision(
    world: World, data: st.DataObject, credential: str, channel: str, rest: str, form: str
) -> None:
    token = None if credential == "none" else world.tokens[credential]
    canonical_path, canonical_headers = request_for("alias", token, channel, rest)
    expected = decision(world.get(canonical_path, canonical_headers)[0])
    path, headers = request_for(form, token, channel, rest)
    variant = data.draw(spelling(path))
    status, body = world.get(variant, headers)
    assert decision(status) == expected, (variant, status, body[:200])
