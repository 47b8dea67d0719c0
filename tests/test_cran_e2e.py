"""CRAN end to end: curl uploads (the seed's form) and R (install.packages,
available.packages, download.packages) against a real channelgate in front of a real
CRAN-style upstream indexed by R's own tools::write_PACKAGES."""
from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_tool
from fixtures.cran_pkgs import (
    BuiltPackage,
    build_macos_binary,
    build_source_package,
    build_windows_binary,
    make_dotdot_member,
    make_no_description,
    make_not_gzip,
    make_renamed,
    make_truncated,
    write_cran_repo,
)
from harness import Channelgate, Policy, UpstreamServer, channel_url, client_env, http, run, stored_blobs

R_MINOR = "4.2"  # the binaries target the R on this machine, so contrib.url finds them
R_FULL = "4.2.2"
MAC_TYPE = "mac.binary.big-sur-arm64"


@dataclass
class World:
    base: Path
    upstream: UpstreamServer
    server: Channelgate
    tokens: dict[str, str]
    private: dict[str, BuiltPackage]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def repo(self, form: str = "path", token: str | None = None, channel: str = "internal") -> str:
        """R's repos URL: ``path`` /t/TOKEN/<channel>, ``api-path`` /api/repo/t/TOKEN/<channel>."""
        mapped = {"path": "alias", "api-path": "server"}.get(form, form)
        return channel_url(self.server, mapped, token or self.tokens["reader"], channel)


def rscript(world: World, code: str, name: str) -> subprocess.CompletedProcess[str]:
    home = world.base / f"home-{name}"
    env = client_env(home)
    return run([require_tool("Rscript"), "--vanilla", "-e", code], env=env, cwd=home, timeout=300)


def curl_upload(world: World, path: Path, token: str, filetype: str = "cran_source_package") -> tuple[int, str]:
    """The seed's command: curl -F filetype=... -F content=@FILE http://HOST/api/repo/CHANNEL -H X-Auth."""
    out = world.base / "curl-body.txt"
    proc = subprocess.run(
        [require_tool("curl"), "-sS", "-o", str(out), "-w", "%{http_code}",
         "-F", f"filetype={filetype}", "-F", f"content=@{path.name}",
         f"{world.server.url}/api/repo/internal", "-H", f"X-Auth: {token}"],
        cwd=path.parent, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout), out.read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    require_tool("R")
    require_tool("Rscript")
    require_tool("curl")
    base = tmp_path_factory.mktemp("cran")
    b = base / "build"
    upstream_pkgs = [
        build_source_package(b / "u1", "updep", "1.0"),
        build_source_package(b / "u2", "updep", "1.1"),
        build_source_package(b / "u3", "acme", "8.0"),         # a squatter on the private name...
        build_source_package(b / "u4", "acme", "9.0"),         # ...with a higher version
        build_source_package(b / "u5", "shared", "2.0"),
        build_source_package(b / "u6", "tampered", "1.0"),
        build_windows_binary(b / "u7", "updep", "1.1", r_version=R_FULL),
        build_windows_binary(b / "u8", "acme", "9.0", r_version=R_FULL),
        build_macos_binary(b / "u9", "updep", "1.1", r_version=R_FULL, subtype="big-sur-arm64"),
    ]
    write_cran_repo(base / "upstream", upstream_pkgs)
    upstream = upstream_factory(base / "upstream")
    policy = Policy({
        "cache": {"metadata_ttl": 0},  # revalidate on every request: exercises stale serving
        "upstreams": {"cran": {"type": "cran", "url": upstream.url}},
        "groups": {"devs": ["alice"], "readers": ["bob"]},
        "users": ["mallory"],
        "channels": {
            "internal": {"upstreams": ["cran"], "upstream_allow": ["shared"],
                         "read": ["group:readers"], "write": ["group:devs"]},
            "mirror": {"public": True, "upstreams": ["cran"]},
        },
    })
    tokens = {
        "writer": policy.add_token("alice", ["api:write", "cran:download"]),
        "reader": policy.add_token("bob", ["cran:download"]),
        "norole": policy.add_token("mallory", ["all"]),
    }
    server = channelgate_factory(base / "cg", policy)
    p = base / "private"
    private = {
        "acme_1.0": build_source_package(p / "a", "acme", "1.0", imports=["updep (>= 1.1)"]),
        "acme_1.1": build_source_package(p / "b", "acme", "1.1", imports=["updep (>= 1.1)"]),
        "shared_1.0": build_source_package(p / "c", "shared", "1.0"),
        "acme_win": build_windows_binary(p / "d", "acme", "1.0", r_version=R_FULL),
        "acme_mac": build_macos_binary(p / "e", "acme", "1.0", r_version=R_FULL, subtype="big-sur-arm64"),
    }
    w = World(base, upstream, server, tokens, private)
    for key, pkg in private.items():
        filetype = "cran_source_package" if pkg.kind == "source" else "cran_binary_package"
        status, body = curl_upload(w, pkg.path, tokens["writer"], filetype)
        assert status == 201, (key, body)
    return w


def installed_versions(world: World, lib: Path) -> dict[str, str]:
    out = rscript(world, f'ip <- installed.packages(lib.loc = "{lib}"); '
                         'cat(paste(ip[, "Package"], ip[, "Version"]), sep = "\\n")', "list")
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ") for line in out.stdout.splitlines() if line)


def install(world: World, repo: str, lib: Path, *pkgs: str) -> subprocess.CompletedProcess[str]:
    lib.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f'"{p}"' for p in pkgs)
    return rscript(world, f'options(repos = c(CG = "{repo}")); '
                          f'install.packages(c({names}), lib = "{lib}", type = "source")', lib.name)


# ------------------------------------------------------------------ uploads
def test_curl_upload_rules(world: World) -> None:
    pkg = build_source_package(world.base / "curl", "curlpkg", "0.1")
    assert curl_upload(world, pkg.path, "cgt-" + "x" * 43)[0] == 401
    assert curl_upload(world, pkg.path, world.tokens["reader"])[0] == 403
    status, body = curl_upload(world, pkg.path, world.tokens["writer"])
    assert status == 201 and '"path": "src/contrib/curlpkg_0.1.tar.gz"' in body
    status, body = curl_upload(world, pkg.path, world.tokens["writer"])
    assert status == 409 and "File already exists" in body
    status, _, data = http("GET", f"{world.repo()}/src/contrib/PACKAGES")
    assert status == 200 and b"Package: curlpkg\nVersion: 0.1\n" in data


@pytest.mark.parametrize("case", ["not-gzip", "truncated", "no-description", "renamed", "dotdot",
                                  "binary-as-source", "source-as-binary"])
def test_bad_uploads_are_400_and_store_nothing(world: World, case: str) -> None:
    d = world.base / f"bad-{case}"
    src = world.private["acme_1.0"].path
    filetype, expect = "cran_source_package", ""
    if case == "not-gzip":
        path, expect = make_not_gzip(d, "badpkg", "1.0"), "not a gzip"
    elif case == "truncated":
        path, expect = make_truncated(src, d), "truncated"
    elif case == "no-description":
        path, expect = make_no_description(d, "badpkg", "1.0"), "has no badpkg/DESCRIPTION"
    elif case == "renamed":
        path, expect = make_renamed(src, d, "acme_7.0.tar.gz"), "does not match DESCRIPTION"
    elif case == "dotdot":
        path, expect = make_dotdot_member(d, "badpkg", "1.0"), "escapes its folder"
    elif case == "binary-as-source":
        path, expect = make_renamed(world.private["acme_mac"].path, d, "acme_1.0.tar.gz"), "installed"
    else:
        path, filetype, expect = make_renamed(src, d, "acme_1.0.tgz"), "cran_binary_package", "no Built field"
    before = stored_blobs(world.server.storage, "uploads")
    status, body = curl_upload(world, path, world.tokens["writer"], filetype)
    assert status == 400 and expect in body, body
    assert stored_blobs(world.server.storage, "uploads") == before
    assert not list((world.server.storage / "tmp").rglob("uploads-*"))  # no partial upload left
    status, _, data = http("GET", f"{world.repo()}/src/contrib/PACKAGES")
    assert b"badpkg" not in data


# ------------------------------------------------------------------ R installs
@pytest.mark.parametrize("form", ["path", "api-path", "basic"])
def test_install_private_with_upstream_dependency(world: World, form: str) -> None:
    lib = world.base / f"lib-{form}"
    result = install(world, world.repo(form), lib, "acme")
    assert result.returncode == 0, result.stdout + result.stderr
    # the squatter's acme 9.0 is never chosen; the newest upload wins; updep comes from upstream
    assert installed_versions(world, lib) == {"acme": "1.1", "updep": "1.1"}
    out = rscript(world, f'library(acme, lib.loc = "{lib}"); cat(acme_hello())', "hello")
    assert out.stdout == "hello from acme 1.1"
    # R read our PACKAGES.rds and never needed its PACKAGES.gz / PACKAGES fallbacks
    access = [line for line in world.server.log().splitlines() if '"GET ' in line]
    assert any('internal/src/contrib/PACKAGES.rds" 200' in line for line in access)
    assert not any('src/contrib/PACKAGES.gz"' in line for line in access)


def test_available_packages_merge(world: World) -> None:
    out = rscript(world, (
        f'repo <- "{world.repo("basic")}"; '
        'a <- available.packages(repos = repo, type = "source", filters = list()); '
        'cat(paste(a[, "Package"], a[, "Version"], a[, "MD5sum"]), sep = "\\n"); '
        f'w <- available.packages(repos = repo, type = "win.binary", filters = list()); '
        'cat(paste("win", w[, "Package"], w[, "Version"]), sep = "\\n"); '
        f'm <- available.packages(repos = repo, type = "{MAC_TYPE}", filters = list()); '
        'cat(paste("mac", m[, "Package"], m[, "Version"]), sep = "\\n")'
    ), "avail")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    src = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith(("win ", "mac "))}
    assert src["acme"] == ["1.1", world.private["acme_1.1"].md5()]
    assert src["shared"][0] == "2.0"   # upstream_allow: the upstream's newer version is offered
    assert src["updep"][0] == "1.1" and "tampered" in src
    assert "win acme 1.0" in lines and "win updep 1.1" in lines   # the squatter's 9.0 binary is blocked
    assert "mac acme 1.0" in lines and "mac updep 1.1" in lines


def test_binary_downloads(world: World) -> None:
    dest = world.base / "downloads"
    (dest / "mac").mkdir(parents=True)
    out = rscript(world, (
        f'repo <- "{world.repo()}"; '
        f'x <- download.packages(c("acme", "updep"), destdir = "{dest}", repos = repo, type = "win.binary"); '
        f'y <- download.packages("updep", destdir = "{dest}/mac", repos = repo, type = "{MAC_TYPE}"); '
        'cat(basename(c(x[, 2], y[, 2])), sep = "\\n")'
    ), "binaries")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["acme_1.0.zip", "updep_1.1.zip", "updep_1.1.tgz"]
    assert hashlib.md5((dest / "acme_1.0.zip").read_bytes()).hexdigest() == world.private["acme_win"].md5()
    upstream_zip = world.base / "upstream/bin/windows/contrib" / R_MINOR / "updep_1.1.zip"
    assert (dest / "updep_1.1.zip").read_bytes() == upstream_zip.read_bytes()
    upstream_tgz = world.base / "upstream/bin/macosx/big-sur-arm64/contrib" / R_MINOR / "updep_1.1.tgz"
    assert (dest / "mac/updep_1.1.tgz").read_bytes() == upstream_tgz.read_bytes()


def test_archive(world: World) -> None:
    repo = world.repo()
    status, _, data = http("GET", f"{repo}/src/contrib/Archive/acme/acme_1.0.tar.gz")
    assert status == 200 and data == world.private["acme_1.0"].path.read_bytes()
    # the squatter's archived acme is blocked like its current version
    assert http("GET", f"{repo}/src/contrib/Archive/acme/acme_8.0.tar.gz")[0] == 404
    lib = world.base / "lib-archive"
    lib.mkdir()
    out = rscript(world, (
        f'install.packages("{repo}/src/contrib/Archive/updep/updep_1.0.tar.gz", repos = NULL, '
        f'type = "source", lib = "{lib}"); '
        f'a <- readRDS(url("{repo}/src/contrib/Meta/archive.rds")); '
        'cat("NAMES", names(a), "\\n"); cat("ROWS", unlist(lapply(a, rownames)), "\\n")'
    ), "archive")
    assert out.returncode == 0, out.stderr
    assert installed_versions(world, lib) == {"updep": "1.0"}
    found = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith(("NAMES", "ROWS"))}
    # shared 1.0 was uploaded, but the allowed upstream's 2.0 is newer: the upload is archived
    assert found["NAMES"] == ["acme", "shared", "updep"]
    assert found["ROWS"] == ["acme/acme_1.0.tar.gz", "shared/shared_1.0.tar.gz", "updep/updep_1.0.tar.gz"]


# ------------------------------------------------------------------ indexes and integrity
def test_indexes_etag_and_rds(world: World) -> None:
    url = f"{world.repo()}/src/contrib/PACKAGES.rds"
    status, headers, body = http("GET", url)
    assert status == 200 and headers["ETag"] and "max-age" in headers["Cache-Control"]
    assert http("GET", url, headers={"If-None-Match": headers["ETag"]})[0] == 304
    (world.base / "PACKAGES.rds").write_bytes(body)
    out = rscript(world, f'x <- readRDS("{world.base}/PACKAGES.rds"); cat(is.matrix(x), x[x[, "Package"] == "acme", "Version"])', "rds")
    assert out.stdout == "TRUE 1.1"
    assert http("GET", f"{world.repo()}/bin/windows/contrib/3.1/PACKAGES")[0] == 404
    assert http("GET", f"{world.repo()}/src/contrib/nosuch_1.0.tar.gz")[0] == 404
    # the squatter's file is not reachable by its name either
    assert http("GET", f"{world.repo()}/src/contrib/acme_9.0.tar.gz")[0] == 404
    assert http("GET", f"{world.repo()}/bin/windows/contrib/{R_MINOR}/acme_9.0.zip")[0] == 404
    status, headers, _ = http("HEAD", f"{world.repo()}/src/contrib/acme_1.1.tar.gz")
    assert status == 200 and int(headers["Content-Length"]) == world.private["acme_1.1"].path.stat().st_size


def test_md5_mismatch_is_502_and_not_cached(world: World) -> None:
    path = "/src/contrib/tampered_1.0.tar.gz"
    world.upstream.overrides[path] = b"\x1f\x8b these are not the bytes the index declared"
    try:
        before = stored_blobs(world.server.storage, "cache")
        for attempt in (1, 2):
            status, _, body = http("GET", f"{world.repo()}/src/contrib/tampered_1.0.tar.gz")
            assert status == 502 and b"does not match" in body
            assert world.upstream.calls_to(path) == attempt
        assert stored_blobs(world.server.storage, "cache") == before
    finally:
        del world.upstream.overrides[path]


def test_public_mirror_reads_anonymously(world: World) -> None:
    lib = world.base / "lib-mirror"
    result = install(world, world.repo("anonymous", channel="mirror"), lib, "acme")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_versions(world, lib) == {"acme": "9.0"}  # the mirror hosts nothing: upstream's acme
    assert http("GET", f"http://{world.host}/internal/src/contrib/PACKAGES")[0] == 401
    assert http("GET", f"{world.repo(token=world.tokens['norole'])}/src/contrib/PACKAGES")[0] == 403


def test_install_from_cache_when_upstream_is_down(world: World) -> None:
    warm = world.base / "lib-warm"
    assert install(world, world.repo(), warm, "acme").returncode == 0
    world.upstream.stop()
    try:
        cold = world.base / "lib-cold"
        result = install(world, world.repo("basic"), cold, "acme")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed_versions(world, cold) == {"acme": "1.1", "updep": "1.1"}
    finally:
        world.upstream.restart()


def test_no_token_in_logs(world: World) -> None:
    http("GET", f"http://{world.host}/t/cgt-WrongTokenInPath123/internal/src/contrib/PACKAGES")
    log = world.server.log()
    for secret in [*world.tokens.values(), "cgt-WrongTokenInPath123"]:
        assert secret not in log
