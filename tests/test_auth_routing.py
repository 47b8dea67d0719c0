"""Pure units: the routing table, the token forms and the authorisation decision."""
from __future__ import annotations

import base64
import datetime as dt

import pytest

from proxy.auth.credentials import Principal, generate_token, hash_token, token_from_headers, verify
from proxy.auth.policy import Action, Decision, decide
from proxy.errors import NotFound
from proxy.merge import merge
from proxy.routing import parse
from proxy.settings import SCOPES, ChannelPolicy, parse_settings
from proxy.api.accounts import SCOPE_HELP


@pytest.mark.parametrize(
    "path, token, channel, rest, prefix",
    [
        ("/api/repo/ch/simple/x/", None, "ch", "simple/x/", "/api/repo/ch"),
        ("/api/repo/t/cgt-A1/ch/simple/", "cgt-A1", "ch", "simple/", "/api/repo/t/cgt-A1/ch"),
        ("/t/cgt-A1/api/repo/ch/linux-64/repodata.json", "cgt-A1", "ch", "linux-64/repodata.json", "/t/cgt-A1/api/repo/ch"),
        ("/t/cgt-A1/ch/label/dev/noarch/repodata.json", "cgt-A1", "ch", "label/dev/noarch/repodata.json", "/t/cgt-A1/ch"),
        ("/ch/src/contrib/PACKAGES", None, "ch", "src/contrib/PACKAGES", "/ch"),
        ("/api/repo/ch", None, "ch", "", "/api/repo/ch"),
    ],
)
def test_channel_routes(path: str, token: str | None, channel: str, rest: str, prefix: str) -> None:
    route = parse(path)
    assert (route.kind, route.token, route.channel, route.rest, route.prefix) == ("channel", token, channel, rest, prefix)


def test_ecosystem_by_path_and_api_routes() -> None:
    assert parse("/ch/simple/").ecosystem == "pypi"
    assert parse("/ch/bin/windows/contrib/4.3/PACKAGES").ecosystem == "cran"
    assert parse("/ch/linux-64/repodata.json").ecosystem == "conda"
    assert parse("/ch/channeldata.json").ecosystem == "conda"
    api = parse("/t/cgt-X/api/dist/ch/pkg/1.0/f")
    assert (api.kind, api.token, api.rest) == ("api", "cgt-X", "dist/ch/pkg/1.0/f")
    for reserved in ("/static/x", "/metrics", "/t/", "/"):
        with pytest.raises(NotFound):
            parse(reserved)
    with pytest.raises(NotFound):  # two different path tokens
        parse("/t/cgt-A/api/repo/t/cgt-B/ch/simple/")


def test_tokens_are_conda_safe_and_long() -> None:
    token = generate_token()
    assert token.startswith("cgt-") and token[4:].isalnum() and len(token) == 47  # 43 * log2(62) > 256 bits
    assert generate_token() != token


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Auth": "cgt-T"},
        {"Authorization": "token cgt-T"},
        {"Authorization": "Bearer cgt-T"},
        {"Authorization": "Basic " + base64.b64encode(b"cgt-T:x-auth-token").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"__token__:cgt-T").decode()},
    ],
)
def test_token_header_forms(headers: dict[str, str]) -> None:
    assert token_from_headers(headers) == "cgt-T"


def test_malformed_headers_carry_no_token() -> None:
    assert token_from_headers({"Authorization": "Basic !!!"}) is None
    assert token_from_headers({"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}) is None
    assert token_from_headers({"Authorization": "Digest x"}) is None
    assert token_from_headers({}) is None


def test_verify_checks_hash_and_expiry() -> None:
    token = generate_token()
    settings = parse_settings(
        f"groups: {{g: [alice]}}\ntokens: [{{name: t, user: alice, sha256: 'sha256:{hash_token(token)}', "
        "scopes: [pypi:download], expires: 2027-01-01}]\n"
    )
    principal = verify(token, settings, today=dt.date(2026, 12, 31))
    assert principal is not None and principal.user == "alice" and principal.groups == frozenset({"g"})
    assert verify(token, settings, today=dt.date(2027, 1, 2)) is None
    assert verify(token + "x", settings) is None
    assert verify(None, settings) is None


CHANNEL = ChannelPolicy("ch", read=("group:readers",), write=("user:w",), admin=("user:a",))
PUBLIC = ChannelPolicy("pub", public=True, write=("user:w",))


def who(user: str, scopes: set[str], groups: set[str] = frozenset()) -> Principal:  # type: ignore[assignment]
    return Principal(user, "t", frozenset(scopes), frozenset(groups))


@pytest.mark.parametrize(
    "principal, channel, action, expected",
    [
        (None, CHANNEL, Action.PYPI_READ, Decision.UNAUTHENTICATED),
        (None, None, Action.PYPI_READ, Decision.UNAUTHENTICATED),  # missing == private
        (None, PUBLIC, Action.CONDA_READ, Decision.ALLOW),
        (None, PUBLIC, Action.WRITE, Decision.UNAUTHENTICATED),
        (who("r", {"pypi:download"}, {"readers"}), CHANNEL, Action.PYPI_READ, Decision.ALLOW),
        (who("r", {"pypi:download"}, {"readers"}), CHANNEL, Action.CONDA_READ, Decision.FORBIDDEN),  # scope
        (who("r", {"all"}, {"readers"}), CHANNEL, Action.WRITE, Decision.FORBIDDEN),  # role
        (who("w", {"api:write"}), CHANNEL, Action.WRITE, Decision.ALLOW),
        (who("w", {"pypi:download"}), CHANNEL, Action.WRITE, Decision.FORBIDDEN),  # scope ∩ role
        (who("w", {"all"}), CHANNEL, Action.ADMIN, Decision.FORBIDDEN),
        (who("a", {"all"}), CHANNEL, Action.ADMIN, Decision.ALLOW),
        (who("w", {"all"}), None, Action.PYPI_READ, Decision.FORBIDDEN),
        (who("w", {"api:write"}), PUBLIC, Action.WRITE, Decision.ALLOW),
    ],
)
def test_decide(principal: Principal | None, channel: ChannelPolicy | None, action: Action, expected: Decision) -> None:
    assert decide(principal, channel, action) is expected


def test_scopes_are_defined_once() -> None:
    """Every action is granted by a known scope, every known scope but ``all`` grants an
    action, and the scope help names exactly the known scopes."""
    granting = {action.scope for action in Action}
    assert granting <= SCOPES
    assert SCOPES - granting == {"all"}
    assert set(SCOPE_HELP) == SCOPES


def test_merge_rule() -> None:
    local = [("acme", "acme-1.0"), ("shared", "shared-1.0")]
    up1 = [("acme", "acme-9.0"), ("dep", "dep-1.0"), ("shared", "shared-2.0")]
    up2 = [("dep", "dep-1.0"), ("dep", "dep-2.0")]
    out = merge(local, [up1, up2], name=lambda i: i[0], key=lambda i: i[1], allow=frozenset({"shared"}))
    assert [i[1] for i in out] == ["acme-1.0", "shared-1.0", "dep-1.0", "shared-2.0", "dep-2.0"]
