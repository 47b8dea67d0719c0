"""The web UI over plain HTTP (DESIGN "Web UI"): addresses, CSRF refusal, the session
cookie, sign-in throttling, and the authorisation matrix — a reader never sees another
channel's package names through any page, search, count or error."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from fixtures.wheels import make_wheel
from harness import Policy, stored_blobs
from webui_world import ALPHA_NAMES, BRAVO_NAMES, PASSWORD, World, build_world, csrf_of, signed_in


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    return build_world(tmp_path_factory.mktemp("webui"), upstream_factory, channelgate_factory)


def get(session: requests.Session | None, world: World, path: str) -> requests.Response:
    return (session or requests).get(f"{world.url}{path}", timeout=60, allow_redirects=False)


def test_root_redirects_a_browser_to_the_ui(world: World) -> None:
    resp = get(None, world, "/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/"
    assert get(None, world, "/ui").headers["Location"] == "/ui/"
    home = get(None, world, "/ui/")
    assert home.status_code == 200 and "text/html" in home.headers["Content-Type"]
    assert get(None, world, "/ui/static/style.css").headers["Content-Type"].startswith("text/css")


def test_anonymous_sees_public_channels_only(world: World) -> None:
    home = get(None, world, "/ui/").text
    assert "/ui/c/mirror" in home
    assert "team-a" not in home and "team-b" not in home
    hidden, missing = get(None, world, "/ui/c/team-a"), get(None, world, "/ui/c/no-such-channel")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text  # a private channel reads exactly like a missing one
    for query in ("alpha", "bravo", "a", "conda"):
        body = get(None, world, f"/ui/search?q={query}").text
        for name in ALPHA_NAMES + BRAVO_NAMES:
            assert name not in body, (query, name)
    assert "upcondapkg" in get(None, world, "/ui/search?q=upconda").text


def without_echo(body: str, path: str) -> str:
    """The page without the reader's own query echoed back (the search box and the count)."""
    query = parse_qs(urlsplit(path).query).get("q", [""])[0]
    if not query:
        return body
    return body.replace(f'value="{query}"', "").replace(f"“{query}”", "")


def _pages_for(channel: str, names: tuple[str, ...]) -> list[str]:
    pages = ["/ui/", f"/ui/c/{channel}", f"/ui/c/{channel}?q=a", "/ui/c/mirror", "/ui/c/mirror?q=b",
             "/ui/upload", "/ui/tokens", "/ui/search?q=", "/ui/search?q=a", "/ui/search?q=e", "/ui/search?q=o",
             "/ui/search?q=conda", "/ui/search?q=wheel", "/ui/search?q=secret", "/ui/login"]
    for name in names:
        pages += [f"/ui/search?q={name}", f"/ui/c/{channel}?q={name}"]
        for eco in ("conda", "pypi", "cran"):
            pages += [f"/ui/c/{channel}/{eco}/{name}", f"/ui/c/mirror/{eco}/{name}", f"/ui/c/team-x/{eco}/{name}"]
    return pages


@pytest.mark.parametrize("reader, own, other, other_channel", [
    ("amy", ALPHA_NAMES, BRAVO_NAMES, "team-b"),
    ("bob", BRAVO_NAMES, ALPHA_NAMES, "team-a"),
])
def test_a_reader_never_sees_another_channels_names(world: World, reader: str, own: tuple[str, ...],
                                                    other: tuple[str, ...], other_channel: str) -> None:
    session = signed_in(world, reader)
    mine = "team-a" if other_channel == "team-b" else "team-b"
    listing = get(session, world, f"/ui/c/{mine}").text
    for name in own:  # the reader's own channel shows its packages (the check below means something)
        assert name in listing
        assert name in get(session, world, f"/ui/search?q={name}").text
    for path in _pages_for(other_channel, other) + _pages_for(mine, other):
        resp = get(session, world, path)
        assert resp.status_code in (200, 303, 404), path
        body = without_echo(resp.text, path)
        for name in other:
            assert name not in body, (path, name)
    assert other_channel not in get(session, world, "/ui/").text
    hidden = get(session, world, f"/ui/c/{other_channel}")
    missing = get(session, world, "/ui/c/team-x")
    assert hidden.status_code == missing.status_code == 404 and hidden.text == missing.text


def test_channel_page_lists_every_ecosystem_with_sources_and_setup(world: World) -> None:
    session = signed_in(world, "alice")
    page = get(session, world, "/ui/c/team-a").text
    assert re.search(r">alphaconda<.*?<td>conda</td><td>hosted</td>", page, re.S)
    assert re.search(r">alpha-wheel<.*?<td>pypi</td><td>hosted</td>", page, re.S)
    assert "/t/&lt;TOKEN&gt;/team-a" in page and "&lt;TOKEN&gt;:x-auth-token@" in page
    assert "cgt-" not in page  # never a secret in a page
    mirror = get(None, world, "/ui/c/mirror?q=up").text
    assert re.search(r">upcondapkg<.*?<td>conda</td><td>up-conda</td>", mirror, re.S)
    assert re.search(r">uppypkg<.*?<td>pypi</td><td>up-pypi</td>", mirror, re.S)
    only_pypi = get(None, world, "/ui/c/mirror?ecosystem=pypi&q=up").text
    assert "uppypkg" in only_pypi and "upcondapkg" not in only_pypi


def test_package_page_shows_files_hashes_uploader_and_source(world: World) -> None:
    from fixtures.conda_pkgs import file_hashes

    session = signed_in(world, "alice")
    page = get(session, world, "/ui/c/team-a/conda/alphaconda").text
    path = world.files["alphaconda"]
    digest = file_hashes(path)["sha256"]
    row = re.search(rf"<tr><td>{re.escape(path.name)}</td>.*?</tr>", page, re.S)
    assert row, page
    assert digest in row.group(0) and "<td>alice</td>" in row.group(0) and "<td>main</td>" in row.group(0)
    assert "<td>hosted</td>" in row.group(0) and "3.0" in row.group(0)
    upstream = get(None, world, "/ui/c/mirror/conda/upcondapkg").text
    assert upstream.index(">1.1<") < upstream.index(">1.0<")  # newest version first
    assert upstream.count("<td>up-conda</td>") == 2
    wheel = get(None, world, "/ui/c/mirror/pypi/uppypkg").text
    assert "uppypkg-2.0-py3-none-any.whl" in wheel and "<td>up-pypi</td>" in wheel


def test_channel_filter_and_paging(world: World) -> None:
    names = get(None, world, "/ui/c/mirror?ecosystem=pypi&q=bulk").text
    assert "60 packages matching" in names
    first = re.findall(r">(bulk-\d+)<", names)
    second = re.findall(r">(bulk-\d+)<", get(None, world, "/ui/c/mirror?ecosystem=pypi&q=bulk&page=2").text)
    assert len(first) == 50 and len(second) == 10 and not set(first) & set(second)
    assert re.findall(r">(bulk-\d+)<", get(None, world, "/ui/c/mirror?q=bulk-07").text) == ["bulk-07"]


def test_csrf_is_required_on_every_form(world: World) -> None:
    anonymous = requests.Session()
    anonymous.get(f"{world.url}/ui/login", timeout=30)
    resp = anonymous.post(f"{world.url}/ui/login", data={"csrf": "forged", "token": world.tokens["alice"]},
                          timeout=30, allow_redirects=False)
    assert resp.status_code == 403 and "CSRF" in resp.text
    assert 'id="signed-in-user"' not in anonymous.get(f"{world.url}/ui/", timeout=30).text

    alice = signed_in(world, "alice")
    before = stored_blobs(world.server.storage, "uploads")
    wheel = make_wheel(world.work / "csrf", "csrf-wheel", "1.0")
    with wheel.open("rb") as fh:
        resp = alice.post(f"{world.url}/ui/upload", data={"csrf": "forged", "channel": "team-a", "kind": "auto"},
                          files={"content": (wheel.name, fh)}, timeout=60, allow_redirects=False)
    assert resp.status_code == 403 and "CSRF" in resp.text
    assert stored_blobs(world.server.storage, "uploads") == before
    assert "csrf-wheel" not in get(alice, world, "/ui/c/team-a").text
    resp = alice.post(f"{world.url}/ui/logout", data={}, timeout=30, allow_redirects=False)
    assert resp.status_code == 403
    assert 'id="signed-in-user">alice<' in get(alice, world, "/ui/").text  # still signed in


def test_session_cookie_flags_and_logout(world: World) -> None:
    session = requests.Session()
    page = session.get(f"{world.url}/ui/login", timeout=30)
    resp = session.post(f"{world.url}/ui/login", data={"csrf": csrf_of(page.text), "token": world.tokens["amy"]},
                        timeout=30, allow_redirects=False)
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see test_web_session for TLS
    assert world.tokens["amy"] not in cookie  # encrypted
    home = get(session, world, "/ui/").text
    assert 'id="signed-in-user">amy<' in home
    resp = session.post(f"{world.url}/ui/logout", data={"csrf": csrf_of(home)}, timeout=30, allow_redirects=False)
    assert resp.status_code == 303
    assert re.search(r"channelgate_session=\"?\"?;", resp.headers["Set-Cookie"])  # the cookie is cleared
    assert 'id="signed-in-user"' not in get(session, world, "/ui/").text
    assert get(session, world, "/ui/c/team-a").status_code == 404


def test_a_reader_may_not_upload(world: World) -> None:
    amy = signed_in(world, "amy")
    page = get(amy, world, "/ui/upload").text
    assert 'id="no-write"' in page
    wheel = make_wheel(world.work / "reader", "reader-wheel", "1.0")
    before = stored_blobs(world.server.storage, "uploads")
    with wheel.open("rb") as fh:
        resp = amy.post(f"{world.url}/ui/upload", data={"csrf": csrf_of(page), "channel": "team-a", "kind": "auto"},
                        files={"content": (wheel.name, fh)}, timeout=60, allow_redirects=False)
    assert resp.status_code == 403 and "may not upload" in resp.text
    assert stored_blobs(world.server.storage, "uploads") == before


def test_upload_gives_the_apis_messages(world: World) -> None:
    alice = signed_in(world, "alice")
    page = get(alice, world, "/ui/upload").text
    wheel = world.files["alpha-wheel"]  # already uploaded through the API
    with wheel.open("rb") as fh:
        resp = alice.post(f"{world.url}/ui/upload", data={"csrf": csrf_of(page), "channel": "team-a", "kind": "auto"},
                          files={"content": (wheel.name, fh)}, timeout=60, allow_redirects=False)
    assert resp.status_code == 409 and "File already exists" in resp.text
    bogus = world.work / "bogus-1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    with bogus.open("rb") as fh:
        resp = alice.post(f"{world.url}/ui/upload", data={"csrf": csrf_of(page), "channel": "team-a", "kind": "auto"},
                          files={"content": (bogus.name, fh)}, timeout=60, allow_redirects=False)
    api = requests.post(f"{world.url}/api/repo/team-a", files={"content": (bogus.name, b"not a zip")},
                        data={":action": "file_upload", "name": "bogus", "version": "1.0"},
                        auth=(world.tokens["alice"], "x-auth-token"), timeout=60)
    assert resp.status_code == api.status_code == 400
    assert api.json()["error"] in resp.text.replace("&#39;", "'")


def test_sign_in_is_throttled_after_failures(tmp_path: Path, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    policy = Policy({"users": ["carl"], "channels": {"c": {"read": ["user:carl"]}}, "accounts": {"max_failures": 5}})
    token = policy.add_token("carl", ["all"])
    server = channelgate_factory(tmp_path, policy)
    session = requests.Session()
    csrf = csrf_of(session.get(f"{server.url}/ui/login", timeout=30).text)
    for _ in range(5):
        resp = session.post(f"{server.url}/ui/login", data={"csrf": csrf, "token": "cgt-wrong"}, timeout=30)
        assert resp.status_code == 401 and "not valid" in resp.text
    resp = session.post(f"{server.url}/ui/login", data={"csrf": csrf, "token": token}, timeout=30,
                        allow_redirects=False)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in resp.text
    assert 'id="signed-in-user"' not in session.get(f"{server.url}/ui/", timeout=30).text


def test_server_runs_without_the_ui_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    """Without jinja2 (the ``ui`` extra) the server serves the API and says once that the UI is off."""
    shim = tmp_path / "no-jinja2" / "jinja2"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'jinja2'\", name='jinja2')\n")
    monkeypatch.setenv("PYTHONPATH", str(shim.parent))
    server = channelgate_factory(tmp_path / "cg", Policy({"channels": {"open": {"public": True}}}))
    assert "web UI off: jinja2 is not installed (pip install 'channelgate[ui]')" in server.log()
    resp = requests.get(f"{server.url}/ui/", timeout=30)
    assert resp.status_code == 404 and "channelgate[ui]" in resp.json()["error"]
    assert requests.get(f"{server.url}/open/simple/", timeout=30).status_code == 200


def test_password_sign_in(world: World) -> None:
    session = requests.Session()
    csrf = csrf_of(session.get(f"{world.url}/ui/login", timeout=30).text)
    wrong = session.post(f"{world.url}/ui/login", data={"csrf": csrf, "username": "paula", "password": "nope"},
                         timeout=60, allow_redirects=False)
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    nobody = session.post(f"{world.url}/ui/login", data={"csrf": csrf, "username": "nobody", "password": "nope"},
                          timeout=60, allow_redirects=False)
    assert nobody.status_code == 401 and nobody.text.replace("nobody", "paula") == wrong.text  # no user enumeration
    right = session.post(f"{world.url}/ui/login", data={"csrf": csrf, "username": "paula", "password": PASSWORD},
                         timeout=60, allow_redirects=False)
    assert right.status_code == 303
    home = get(session, world, "/ui/").text
    assert 'id="signed-in-user">paula<' in home and "/ui/c/team-a" in home and "team-b" not in home
    assert "alphaconda" in get(session, world, "/ui/c/team-a").text
    assert PASSWORD not in right.headers["Set-Cookie"]


def test_a_changed_password_ends_its_sessions(tmp_path: Path, channelgate_factory) -> None:  # type: ignore[no-untyped-def]
    from proxy.auth.accounts import hash_password

    policy = Policy({"users": [{"name": "pat", "password": hash_password("first secret")}],
                     "channels": {"c": {"read": ["user:pat"]}}})
    server = channelgate_factory(tmp_path, policy)
    session = requests.Session()
    csrf = csrf_of(session.get(f"{server.url}/ui/login", timeout=30).text)
    resp = session.post(f"{server.url}/ui/login", data={"csrf": csrf, "username": "pat", "password": "first secret"},
                        timeout=60, allow_redirects=False)
    assert resp.status_code == 303
    assert "/ui/c/c" in session.get(f"{server.url}/ui/", timeout=30).text
    policy.data["users"] = [{"name": "pat", "password": hash_password("second secret")}]
    assert "policy reloaded" in server.reload()
    home = session.get(f"{server.url}/ui/", timeout=30).text
    assert 'id="signed-in-user"' not in home and "/ui/c/c" not in home


def test_privacy_toggle_needs_the_admin_role_and_csrf(world: World) -> None:
    page_path = "/ui/c/mirror/conda/mirror-secret"
    bob = signed_in(world, "bob")  # every scope, but no role on the public mirror
    page = get(bob, world, page_path).text
    assert 'id="privacy"' in page and 'id="privacy-toggle"' not in page
    resp = bob.post(f"{world.url}{page_path}/privacy", data={"csrf": csrf_of(page), "private": "1"},
                    timeout=30, allow_redirects=False)
    assert resp.status_code == 403 and "admin role" in resp.text
    alice = signed_in(world, "alice")
    page = get(alice, world, page_path).text
    assert 'id="privacy-toggle"' in page
    resp = alice.post(f"{world.url}{page_path}/privacy", data={"csrf": "forged", "private": "1"},
                      timeout=30, allow_redirects=False)
    assert resp.status_code == 403 and "CSRF" in resp.text
    assert "mirror-secret" in get(None, world, "/ui/c/mirror?q=mirror-secret").text  # still public


@pytest.mark.parametrize("next_page", ["/ui/\r\nSet-Cookie: planted=1", "/ui/\nX-Injected: 1", "/ui/c/\x00mirror",
                                       "/ui/\u2028c", "//evil.example/ui/", "/ui/\\evil"])
def test_the_sign_in_redirect_never_carries_a_header_break_or_leaves_the_ui(world: World, next_page: str) -> None:
    """``next`` comes from the client: a control or non-ASCII character (a header break once
    in Location) or another host sends the reader home, never a 500, never an extra header."""
    session = requests.Session()
    page = session.get(f"{world.url}/ui/login", params={"next": next_page}, timeout=30)
    assert page.status_code == 200 and "planted" not in page.text and "Injected" not in page.text
    resp = session.post(f"{world.url}/ui/login", timeout=30, allow_redirects=False,
                        data={"csrf": csrf_of(page.text), "token": world.tokens["amy"], "next": next_page})
    assert resp.status_code == 303 and resp.headers["Location"] == "/ui/", (resp.status_code, resp.headers)
    assert "planted" not in resp.headers.get("Set-Cookie", "") and "X-Injected" not in resp.headers
