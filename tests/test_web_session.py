"""The web UI's session plumbing, in process: the Fernet key (configured, or made once in
the store), the cookie's flags over plain HTTP and over TLS, and the policy key's check."""
from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.fernet import Fernet

from proxy.errors import ConfigError
from proxy.settings import parse_settings
from proxy.store.blobs import BlobStore
from proxy.web.session import KEY_FILE, Sessions, session_key


def test_key_is_made_once_in_the_store_and_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = session_key(None, store)
    assert session_key(None, BlobStore(tmp_path)) == first  # a restart (or a sibling worker) reads the same key
    Fernet(first)  # a valid key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    configured = Fernet.generate_key().decode()
    assert session_key(configured, store) == configured.encode()
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temp file left


def test_policy_refuses_a_malformed_session_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings("server: {session_key: not-a-key}\n")
    assert "server.session_key" in str(err.value) and "Fernet" in str(err.value)
    good = Fernet.generate_key().decode()
    assert parse_settings(f"server: {{session_key: '{good}'}}\n").session_key == good


@pytest.mark.parametrize("tls", [False, True])
async def test_cookie_is_httponly_samesite_and_secure_under_tls(tls: bool) -> None:
    sessions = Sessions(Fernet.generate_key())
    request = make_mocked_request("GET", "/ui/", sslcontext=ssl.create_default_context() if tls else None)
    assert request.secure is tls
    session = await sessions.load(request)
    session["csrf"] = "x"
    response = web.Response()
    await sessions.save(request, response, session)
    cookie = response.cookies["channelgate_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/ui/"
    assert bool(cookie["secure"]) is tls
    assert "csrf" not in cookie.value  # encrypted
