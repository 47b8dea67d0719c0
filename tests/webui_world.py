"""A channelgate world for the web UI tests (HTTP and browser): two private team channels
with uploads of each ecosystem, a public mirror of real upstream servers (conda, PyPI),
and tokens for a writer, readers of each team, and an admin."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from proxy.auth.accounts import hash_password

from fixtures.conda_pkgs import PkgSpec, build_package, write_channel
from fixtures.wheels import make_wheel, twine_fields, write_simple_index
from harness import Channelgate, Policy, UpstreamServer

PASSWORD = "correct horse battery staple"  # paula's, a reader of team-a
# names that must never leak to a reader of the other team (the authorisation matrix)
ALPHA_NAMES = ("alphaconda", "alpha-wheel")
BRAVO_NAMES = ("bravoconda", "bravo-wheel", "bravo-secret")


@dataclass
class World:
    server: Channelgate
    tokens: dict[str, str]
    work: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def api_upload(world: World, channel: str, path: Path, token: str, fields: dict[str, str] | None = None) -> requests.Response:
    with path.open("rb") as fh:
        return requests.post(f"{world.url}/api/repo/{channel}", data=fields or {}, files={"content": (path.name, fh)},
                             auth=(token, "x-auth-token"), timeout=60)


def build_world(work: Path, upstream_factory: Callable[..., UpstreamServer],
                channelgate_factory: Callable[[Path, Policy], Channelgate]) -> World:
    pkgs = work / "pkgs"
    conda_up = write_channel(work / "conda-up", [
        build_package(pkgs, PkgSpec("upcondapkg", "1.0")),
        build_package(pkgs, PkgSpec("upcondapkg", "1.1")),
    ])
    pypi_root = work / "pypi-up"
    bulk = [make_wheel(work / "up-wheels", f"bulk-{i:02d}", "1.0") for i in range(60)]
    write_simple_index(pypi_root, [make_wheel(work / "up-wheels", "uppypkg", "2.0"), *bulk])
    conda_server = upstream_factory(conda_up)
    pypi_server = upstream_factory(pypi_root)
    policy = Policy({
        "upstreams": {
            "up-conda": {"type": "conda", "url": conda_server.url},
            "up-pypi": {"type": "pypi", "url": f"{pypi_server.url}/simple"},
        },
        "groups": {"alpha": ["alice", "amy", "paula"], "bravo": ["bob"]},
        "users": ["root", {"name": "paula", "password": hash_password(PASSWORD)}],
        "channels": {
            "team-a": {"read": ["group:alpha"], "write": ["user:alice"], "admin": ["user:alice"]},
            "team-b": {"read": ["group:bravo"], "write": ["user:bob"]},
            "mirror": {"public": True, "upstreams": ["up-conda", "up-pypi"], "write": ["user:alice"],
                       "admin": ["user:alice"]},
        },
    })
    tokens = {
        "alice": policy.add_token("alice", ["all"], name="alice-all"),
        "amy": policy.add_token("amy", ["conda:download", "pypi:download", "cran:download", "api:read"],
                                name="amy-read"),
        "bob": policy.add_token("bob", ["all"], name="bob-all"),
    }
    server = channelgate_factory(work / "cg", policy)
    world = World(server, tokens, work)
    uploads = work / "uploads"
    world.files["alphaconda"] = build_package(uploads, PkgSpec("alphaconda", "3.0"))
    world.files["alpha-wheel"] = make_wheel(uploads, "alpha-wheel", "1.0")
    world.files["bravoconda"] = build_package(uploads, PkgSpec("bravoconda", "5.0"))
    world.files["bravo-wheel"] = make_wheel(uploads, "bravo-wheel", "0.5")
    world.files["bravo-secret"] = build_package(uploads, PkgSpec("bravo-secret", "1.0"))
    world.files["mirror-secret"] = build_package(uploads, PkgSpec("mirror-secret", "0.1"))
    for name, channel, token in (("alphaconda", "team-a", "alice"), ("bravoconda", "team-b", "bob"),
                                 ("bravo-secret", "team-b", "bob"), ("mirror-secret", "mirror", "alice")):
        assert api_upload(world, channel, world.files[name], tokens[token]).status_code == 201
    for name, channel, token in (("alpha-wheel", "team-a", "alice"), ("bravo-wheel", "team-b", "bob")):
        path = world.files[name]
        assert api_upload(world, channel, path, tokens[token], twine_fields(path)).status_code == 200
    return world


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def signed_in(world: World, who: str) -> requests.Session:
    """A plain-HTTP browser session signed in with a token through the login form."""
    session = requests.Session()
    page = session.get(f"{world.url}/ui/login", timeout=30)
    resp = session.post(f"{world.url}/ui/login", data={"csrf": csrf_of(page.text), "token": world.tokens[who]},
                        timeout=30, allow_redirects=False)
    assert resp.status_code == 303, resp.text
    return session
