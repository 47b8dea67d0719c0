"""The anaconda.org surface through the real anaconda-client: every command the seeds or its
``--help`` name, checked by its effect (the indexes, the file URLs, another token's view).

Covers: whoami/show/label without tracebacks, --private and PATCH public in every index and
file URL (the merge rule still hides a squatter), metadata from upload -s/-d and update,
package --create, move of a missing spec (404), label lock/unlock, copy between labels and
channels, remove and DELETE of PyPI and CRAN files, anaconda upload of wheels and R
packages, search, groups (read-only), the channel listing and the audit lines."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from fixtures import conda_pkgs as fx
from fixtures import wheels
from harness import Channelgate, Policy, UpstreamServer, client_env, http, run, venv_bin

Spec = fx.PkgSpec


@dataclass
class World:
    base: Path
    server: Channelgate
    upstream: UpstreamServer
    tokens: dict[str, str]
    home: Path

    def cli(self, token: str, *args: str, cwd: Path | None = None) -> Any:
        """``anaconda -t TOKEN org ARGS``: anaconda-client's own commands."""
        env = client_env(self.home)
        env.pop("BINSTAR_API_TOKEN", None)
        env.pop("ANACONDA_API_TOKEN", None)
        return run([venv_bin("anaconda"), "-t", token, "org", *args], env=env, timeout=180, cwd=cwd)

    def get(self, path: str, token: str = "") -> tuple[int, bytes]:
        prefix = f"/t/{token}" if token else ""
        status, _, body = http("GET", f"{self.server.url}{prefix}{path}")
        return status, body

    def api(self, method: str, path: str, token: str = "", body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"token {token}"
        status, _, raw = http(method, f"{self.server.url}/api{path}", headers=headers,
                              data=json.dumps(body).encode() if body is not None else None)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def conda_files(self, channel: str, token: str = "", subdir: str = "noarch", label: str = "") -> set[str]:
        where = f"/label/{label}" if label else ""
        status, body = self.get(f"/{channel}{where}/{subdir}/repodata.json", token)
        if status != 200:
            return set()
        doc = json.loads(body)
        return set(doc["packages"]) | set(doc["packages.conda"])


def output(result: Any) -> str:
    return str(result.stdout) + str(result.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("surface")
    squatter = fx.build_package(base / "up", Spec("secret-pkg", "9.0", "0"))
    fx.write_channel(base / "upstream" / "forge", [squatter])
    upstream = upstream_factory(base / "upstream")
    policy = Policy({
        "upstreams": {"forge": {"type": "conda", "url": f"{upstream.url}/forge"}},
        "groups": {"devs": ["alice"], "readers": ["bob"], "pubwriters": ["dan"]},
        "users": ["mallory"],
        "channels": {
            "pub": {"public": True, "upstreams": ["forge"], "read": ["group:readers"],
                    "write": ["group:devs", "group:pubwriters"]},
            "other": {"read": ["group:readers"], "write": ["group:devs"]},
            "internal": {"read": ["group:readers"], "write": ["group:devs"]},
        },
    })
    tokens = {
        "alice": policy.add_token("alice", ["all"], name="alice-all"),
        "bob": policy.add_token("bob", ["conda:download", "pypi:download", "cran:download", "api:read"], name="bob-read"),
        "dan": policy.add_token("dan", ["api:write", "api:read", "conda:download"], name="dan-pub"),
        "mallory": policy.add_token("mallory", ["all"], name="mallory-all"),
    }
    server = channelgate_factory(base / "cg", policy)
    world = World(base, server, upstream, tokens, base / "home")
    env = client_env(world.home)
    assert run([venv_bin("anaconda"), "config", "--set", "url", f"{server.url}/api"], env=env).returncode == 0
    return world


def conda_pkg(world: World, name: str, version: str = "1.0") -> Path:
    return fx.build_package(world.base / "pkgs" / name, Spec(name, version, "0"))


def upload(world: World, path: Path, *args: str, channel: str = "pub", token: str = "") -> Any:
    result = world.cli(token or world.tokens["alice"], "upload", "-u", channel, *args, str(path))
    return result


# --------------------------------------------------------------------------- part 1: fields
def test_whoami_show_and_labels_answer_every_field(world: World) -> None:
    pkg = conda_pkg(world, "fields-pkg")
    assert upload(world, pkg, "-d", "file notes").returncode == 0
    who = world.cli(world.tokens["alice"], "whoami")
    assert "Username: alice" in output(who) and "Member since" in output(who), output(who)
    owner = world.cli(world.tokens["alice"], "show", "pub")
    assert "pub/fields-pkg" in output(owner) and "Traceback" not in output(owner), output(owner)
    listed = world.cli(world.tokens["alice"], "label", "-o", "pub", "--list")
    assert " + main" in output(listed) and "Traceback" not in output(listed), output(listed)
    shown = world.cli(world.tokens["alice"], "label", "-o", "pub", "--show", "main")
    assert "pub/fields-pkg/1.0/noarch/fields-pkg-1.0-0.conda" in output(shown), output(shown)
    file = world.cli(world.tokens["alice"], "show", "pub/fields-pkg/1.0/noarch/fields-pkg-1.0-0.conda")
    assert "file notes" in output(file) and "Traceback" not in output(file), output(file)


# --------------------------------------------------------------------------- part 2: privacy
def test_private_conda_package_is_invisible_without_the_read_role(world: World) -> None:
    pkg = conda_pkg(world, "secret-pkg")
    assert upload(world, pkg, "--private").returncode == 0
    anonymous = world.conda_files("pub")
    assert "secret-pkg-1.0-0.conda" not in anonymous
    assert "secret-pkg-9.0-0.conda" not in anonymous  # the squatter stays hidden: the name is local
    assert world.get("/pub/noarch/secret-pkg-1.0-0.conda")[0] == 404
    assert world.get("/pub/noarch/secret-pkg-9.0-0.conda")[0] == 404
    assert world.get("/pub/noarch/secret-pkg-1.0-0.conda", world.tokens["mallory"])[0] == 404  # no role
    assert world.conda_files("pub", world.tokens["bob"]) >= {"secret-pkg-1.0-0.conda"}  # the read role
    assert "secret-pkg-9.0-0.conda" not in world.conda_files("pub", world.tokens["bob"])
    assert world.get("/pub/noarch/secret-pkg-1.0-0.conda", world.tokens["bob"])[1] == pkg.read_bytes()
    assert world.api("GET", "/package/pub/secret-pkg")[0] == 404
    assert world.api("GET", "/search?name=secret")[1] == []
    assert [p["full_name"] for p in world.api("GET", "/search?name=secret", world.tokens["bob"])[1]] == ["pub/secret-pkg"]
    # and back to public, by the PATCH the issue found ignored
    status, doc = world.api("PATCH", "/package/pub/secret-pkg", world.tokens["alice"], {"public": True})
    assert status == 200 and doc["public"] is True
    assert "secret-pkg-1.0-0.conda" in world.conda_files("pub")
    assert "secret-pkg-9.0-0.conda" not in world.conda_files("pub")
    status, doc = world.api("PATCH", "/package/pub/secret-pkg", world.tokens["alice"], {"public": False})
    assert status == 200 and "secret-pkg-1.0-0.conda" not in world.conda_files("pub")


def test_private_wheel_through_anaconda_upload(world: World) -> None:
    wheel = wheels.make_wheel(world.base / "wheels", "hush-lib", "1.0", summary="quiet things")
    result = upload(world, wheel, "--private")
    assert result.returncode == 0, output(result)
    assert world.get("/pub/simple/hush-lib/")[0] == 404
    assert world.get(f"/pub/simple/hush-lib/{wheel.name}")[0] == 404
    assert b"hush-lib" not in world.get("/pub/simple/")[1]
    status, body = world.get("/pub/simple/hush-lib/", world.tokens["bob"])
    assert status == 200 and wheel.name.encode() in body
    assert world.get(f"/pub/simple/hush-lib/{wheel.name}", world.tokens["bob"])[1] == wheel.read_bytes()
    doc = world.api("GET", "/package/pub/hush-lib", world.tokens["bob"])[1]
    assert doc["public"] is False and doc["package_types"] == ["pypi"] and doc["summary"] == "quiet things"


def test_package_create_private_makes_a_private_package(world: World) -> None:
    created = world.cli(world.tokens["alice"], "package", "--create", "--private", "--summary", "reserved", "pub/reserved-pkg")
    assert created.returncode == 0, output(created)
    status, doc = world.api("GET", "/package/pub/reserved-pkg", world.tokens["alice"])
    assert status == 200 and doc["public"] is False and doc["summary"] == "reserved"
    assert world.api("GET", "/package/pub/reserved-pkg")[0] == 404  # anonymous: not there
    assert upload(world, conda_pkg(world, "reserved-pkg")).returncode == 0
    assert "reserved-pkg-1.0-0.conda" not in world.conda_files("pub")
    assert "reserved-pkg-1.0-0.conda" in world.conda_files("pub", world.tokens["bob"])


# --------------------------------------------------------------------------- part 3: metadata
def test_metadata_from_upload_update_and_show(world: World) -> None:
    pkg = conda_pkg(world, "meta-pkg")
    assert upload(world, pkg, "-s", "A short summary", "-d", "A longer description").returncode == 0
    shown = world.cli(world.tokens["bob"], "show", "pub/meta-pkg")
    assert "Summary: A short summary" in output(shown), output(shown)
    release = world.cli(world.tokens["bob"], "show", "pub/meta-pkg/1.0")
    assert "A longer description" in output(release), output(release)
    doc = world.api("GET", "/package/pub/meta-pkg", world.tokens["bob"])[1]
    assert doc["license"] == "MIT" and doc["home"] == "https://example.org"  # from the package's about.json
    attrs = world.base / "meta.json"
    attrs.write_text(json.dumps({"summary": "An updated summary", "home": "https://example.com/meta"}))
    updated = world.cli(world.tokens["alice"], "update", "pub/meta-pkg", str(attrs))
    assert updated.returncode == 0, output(updated)
    doc = world.api("GET", "/package/pub/meta-pkg", world.tokens["bob"])[1]
    assert doc["summary"] == "An updated summary" and doc["home"] == "https://example.com/meta"
    assert "Summary: An updated summary" in output(world.cli(world.tokens["bob"], "show", "pub/meta-pkg"))
    assert world.api("PATCH", "/package/pub/meta-pkg", world.tokens["bob"], {"public_attrs": {"summary": "x"}})[0] == 403


# --------------------------------------------------------------------------- part 6: commands
def test_move_of_a_missing_spec_is_404(world: World) -> None:
    moved = world.cli(world.tokens["alice"], "move", "--from-label", "main", "--to-label", "elsewhere", "pub/no-such-pkg/1.0")
    assert "404" in output(moved) or "no file" in output(moved), output(moved)
    status, doc = world.api("POST", "/channels/pub/elsewhere", world.tokens["alice"], {"package": "no-such-pkg"})
    assert status == 404 and "no-such-pkg" in doc["error"]
    assert world.conda_files("pub", label="elsewhere") == set()


def test_locked_label_refuses_uploads_and_moves(world: World) -> None:
    first, second = conda_pkg(world, "locky", "1.0"), conda_pkg(world, "locky", "2.0")
    assert upload(world, first, "--label", "frozen").returncode == 0
    assert world.cli(world.tokens["alice"], "label", "-o", "pub", "--lock", "frozen").returncode == 0
    assert "[locked]" in output(world.cli(world.tokens["alice"], "label", "-o", "pub", "--list"))
    refused = upload(world, second, "--label", "frozen")
    assert refused.returncode != 0 and "locked" in output(refused)
    assert world.conda_files("pub", label="frozen") == {"locky-1.0-0.conda"}
    status, _ = world.api("POST", "/channels/pub/frozen", world.tokens["alice"], {"package": "locky"})
    assert status == 423
    assert world.cli(world.tokens["alice"], "label", "-o", "pub", "--unlock", "frozen").returncode == 0
    assert upload(world, second, "--label", "frozen").returncode == 0
    assert world.conda_files("pub", label="frozen") == {"locky-1.0-0.conda", "locky-2.0-0.conda"}


def test_copy_between_labels_and_channels_with_write_checks(world: World) -> None:
    pkg = conda_pkg(world, "copied")
    assert upload(world, pkg).returncode == 0
    to_label = world.cli(world.tokens["alice"], "copy", "--from-label", "main", "--to-label", "stable", "pub/copied/1.0")
    assert to_label.returncode == 0, output(to_label)
    assert "copied-1.0-0.conda" in world.conda_files("pub", label="stable")
    to_channel = world.cli(world.tokens["alice"], "copy", "--to-owner", "other", "pub/copied/1.0")
    assert to_channel.returncode == 0, output(to_channel)
    assert world.get("/other/noarch/copied-1.0-0.conda", world.tokens["bob"])[1] == pkg.read_bytes()
    denied = world.cli(world.tokens["dan"], "copy", "--to-owner", "internal", "pub/copied/1.0")
    assert denied.returncode != 0
    assert "copied-1.0-0.conda" not in world.conda_files("internal", world.tokens["bob"])
    again = world.api("POST", "/copy/package/pub/copied/1.0", world.tokens["alice"], {"to_owner": "other"})
    assert again[0] == 409


def test_remove_and_delete_pypi_and_cran_files(world: World) -> None:
    first = wheels.make_wheel(world.base / "rm", "gone-lib", "1.0")
    second = wheels.make_sdist(world.base / "rm", "gone-lib", "1.1")
    for dist in (first, second):
        result = upload(world, dist)
        assert result.returncode == 0, output(result)
    listing = world.get("/pub/simple/gone-lib/", world.tokens["bob"])[1]
    assert first.name.encode() in listing and second.name.encode() in listing
    removed = world.cli(world.tokens["alice"], "remove", "-f", f"pub/gone-lib/1.0/{first.name}")
    assert removed.returncode == 0, output(removed)
    status, _, _ = http("DELETE", f"{world.server.url}/t/{world.tokens['bob']}/pub/simple/gone-lib/{second.name}")
    assert status == 403  # a reader may not delete
    status, _, _ = http("DELETE", f"{world.server.url}/t/{world.tokens['alice']}/pub/simple/gone-lib/{second.name}")
    assert status == 200
    assert world.get("/pub/simple/gone-lib/", world.tokens["bob"])[0] == 404
    assert world.get(f"/pub/simple/gone-lib/{first.name}")[0] == 404


def test_anaconda_upload_of_r_packages_then_remove(world: World) -> None:
    require_tool("R")
    from fixtures import cran_pkgs

    built = cran_pkgs.build_source_package(world.base / "r", "rsurf", "0.1")
    result = upload(world, built.path)
    assert result.returncode == 0, output(result)
    packages = world.get("/pub/src/contrib/PACKAGES", world.tokens["bob"])[1]
    assert b"Package: rsurf" in packages
    assert world.get("/pub/src/contrib/rsurf_0.1.tar.gz")[1] == built.path.read_bytes()
    again = upload(world, built.path)
    assert again.returncode != 0 and "already exists" in output(again)
    status, _, _ = http("DELETE", f"{world.server.url}/t/{world.tokens['alice']}/pub/src/contrib/rsurf_0.1.tar.gz")
    assert status == 200
    assert b"Package: rsurf" not in world.get("/pub/src/contrib/PACKAGES", world.tokens["bob"])[1]


def test_search_sees_only_what_the_caller_may_read(world: World) -> None:
    assert upload(world, conda_pkg(world, "findme-internal"), channel="internal").returncode == 0
    assert upload(world, conda_pkg(world, "findme-public")).returncode == 0
    anonymous = world.api("GET", "/search?name=findme")[1]
    assert [p["full_name"] for p in anonymous] == ["pub/findme-public"]
    found = world.cli(world.tokens["bob"], "search", "findme")
    assert "internal/findme-internal" in output(found) and "pub/findme-public" in output(found), output(found)
    assert "findme-internal" not in output(world.cli(world.tokens["mallory"], "search", "findme"))


def test_groups_are_read_only_and_channels_are_listed(world: World) -> None:
    shown = world.cli(world.tokens["bob"], "groups", "show", "pub")
    assert "devs" in output(shown) and "readers" in output(shown), output(shown)
    members = world.cli(world.tokens["bob"], "groups", "members", "pub/devs")
    assert "alice" in output(members), output(members)
    added = world.cli(world.tokens["alice"], "groups", "add_member", "pub/devs/mallory")
    assert added.returncode != 0 and "policy file" in output(added)
    assert "mallory" not in output(world.cli(world.tokens["bob"], "groups", "members", "pub/devs"))
    assert [c["name"] for c in world.api("GET", "/channels", world.tokens["bob"])[1]] == ["internal", "other", "pub"]
    assert [c["name"] for c in world.api("GET", "/channels")[1]] == ["pub"]


def test_every_write_is_one_audit_line(world: World) -> None:
    pkg = conda_pkg(world, "audited")
    assert upload(world, pkg, "--label", "qa").returncode == 0
    assert world.cli(world.tokens["alice"], "move", "--from-label", "qa", "--to-label", "main", "pub/audited/1.0").returncode == 0
    assert world.cli(world.tokens["alice"], "remove", "-f", "pub/audited/1.0/noarch/audited-1.0-0.conda").returncode == 0
    log = world.server.wait_log("action=delete channel=pub file=noarch/audited-1.0-0.conda")
    for line in ("user=alice token=alice-all action=upload channel=pub file=noarch/audited-1.0-0.conda",
                 "user=alice token=alice-all action=label-add channel=pub file=noarch/audited-1.0-0.conda",
                 "user=alice token=alice-all action=label-remove channel=pub file=noarch/audited-1.0-0.conda",
                 "user=alice token=alice-all action=delete channel=pub file=noarch/audited-1.0-0.conda"):
        assert line in log, line


def test_download_fetches_the_package_files(world: World) -> None:
    pkg = conda_pkg(world, "fetched")
    assert upload(world, pkg).returncode == 0
    out = world.base / "downloads"
    out.mkdir()
    # anaconda-client makes a conda file's subdir folder in the working directory: download there
    got = world.cli(world.tokens["bob"], "download", "pub/fetched", cwd=out)
    assert got.returncode == 0, output(got)
    (found,) = [p for p in out.rglob("fetched-1.0-0.conda")]
    assert found.read_bytes() == pkg.read_bytes()
