"""``channelgate seed`` beyond the end-to-end test (issue 10): a PyPI project that has only an
sdist (no wheel fits any target) is seeded as that sdist and installs offline; CRAN macOS
binaries for an R x.y are seeded from the folders R's ``contrib.url`` names, carried by the
bundle, and served offline to R's own ``download.packages``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import require_tool
from fixtures.cran_pkgs import HAVE_R, build_macos_binary, build_source_package, run_r, write_cran_repo
from fixtures.wheels import make_sdist, make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, client_env, run

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def cg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=600)


def _policy(storage: Path, upstreams: dict[str, object], **extra: object) -> Policy:
    return Policy({"storage": {"path": str(storage)}, "upstreams": upstreams,
                   "channels": {"internal": {"public": True, "upstreams": ["up"]}}, **extra})


def _carry(tmp_path: Path, kind: str, upstream: UpstreamServer, seed: str) -> Channelgate:
    """Seed host A from ``upstream`` (a ``kind`` upstream), export, stop the upstream, import
    into host B (another path, offline) and start it."""
    url = f"{upstream.url}/simple" if kind == "pypi" else upstream.url
    ups: dict[str, object] = {"up": {"type": kind, "url": url}}
    host_a = Channelgate(tmp_path / "a", _policy(tmp_path / "a" / "store", ups))
    host_a.write_policy()
    (tmp_path / "seed.yaml").write_text(seed)
    done = cg("seed", "--config", str(host_a.config), str(tmp_path / "seed.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    bundle = tmp_path / "site.tar"
    done = cg("export", "--config", str(host_a.config), "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    upstream.stop()
    host_b = Channelgate(tmp_path / "b", _policy(tmp_path / "b" / "store", ups, offline=True))
    host_b.write_policy()
    done = cg("import", "--config", str(host_b.config), str(bundle))
    assert done.returncode == 0, done.stderr
    return host_b.start()


def test_a_project_with_only_an_sdist_is_seeded_and_installs_offline(tmp_path: Path, upstream_factory) -> None:  # type: ignore[no-untyped-def]
    files = tmp_path / "files"
    sdist = make_sdist(files, "sdonly", "1.0", requires_dist=["wheeled>=1"], module_body="WHO = 'sdist'\n")
    write_simple_index(tmp_path / "pypi", [sdist, make_wheel(files, "wheeled", "1.0")], fmt="json")
    upstream = upstream_factory(tmp_path / "pypi")
    seed = (f'channel: internal\npypi: {{requirements: ["sdonly"], python: ["{PY}"], '
            f'platforms: [win_amd64, manylinux_2_17_x86_64]}}\n')
    host_b = _carry(tmp_path, "pypi", upstream, seed)
    fetched = [c.path for c in upstream.calls]
    assert any(p.endswith("/sdonly-1.0.tar.gz") for p in fetched), fetched  # no wheel fits: the sdist
    try:
        target = tmp_path / "site-packages"
        done = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--no-build-isolation",
                    "--index-url", f"{host_b.url}/internal/simple/", "--target", str(target), "sdonly"],
                   env=client_env(tmp_path / "home"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert (target / "sdonly" / "__init__.py").read_text() == "WHO = 'sdist'\n"  # built from the sdist
        assert (target / "wheeled").is_dir()
    finally:
        host_b.stop()


def _r_minor() -> str:
    out = run_r('cat(paste(R.version$major, strsplit(R.version$minor, ".", fixed = TRUE)[[1]][1], sep = "."))')
    return out.stdout.strip()


def _contrib(r_type: str) -> str:
    """The folder R's own contrib.url gives binaries of ``r_type`` (this R's x.y)."""
    return run_r(f'cat(contrib.url("", type = "{r_type}"))').stdout.strip().lstrip("/")


def test_cran_macos_binaries_are_seeded_exported_and_served_offline(tmp_path: Path, upstream_factory) -> None:  # type: ignore[no-untyped-def]
    require_tool("Rscript")
    assert HAVE_R
    minor = _r_minor()
    x86_type = "mac.binary.big-sur-x86_64" if tuple(int(p) for p in minor.split(".")) >= (4, 3) else "mac.binary"
    trees = {"mac.binary.big-sur-arm64": "big-sur-arm64", x86_type: x86_type.removeprefix("mac.binary").lstrip(".")}
    b = tmp_path / "r"
    pkgs = [build_source_package(b / "s1", "topa", "1.0", imports=["midb"]),
            build_source_package(b / "s2", "midb", "1.0"),
            build_source_package(b / "s3", "loner", "1.0")]
    binaries = {}
    # each tree's builds name their own platform, as CRAN's do, so no two trees hold the same
    # bytes (identical files would be one content-addressed blob, fetched once or twice
    # depending on which download finished first)
    platforms = {"big-sur-arm64": "aarch64-apple-darwin20", "big-sur-x86_64": "x86_64-apple-darwin20",
                 "": "x86_64-apple-darwin17.0"}
    for r_type, subtype in trees.items():
        for name in ("topa", "midb", "loner"):
            built = build_macos_binary(b / f"{subtype or 'legacy'}-{name}", name, "1.0", r_version=f"{minor}.0",
                                       platform=platforms[subtype], subtype=subtype or None,
                                       imports=["midb"] if name == "topa" else ())
            assert built.repo_dir == _contrib(r_type)  # the fixture lays it out where R looks
            pkgs.append(built)
            binaries[(r_type, name)] = built.path.read_bytes()
    upstream = upstream_factory(write_cran_repo(tmp_path / "cran", pkgs))
    seed = f'channel: internal\ncran: {{packages: [topa], r_version: "{minor}", binaries: [macos, macos-x86_64]}}\n'
    host_b = _carry(tmp_path, "cran", upstream, seed)
    fetched = [c.path for c in upstream.calls]
    for r_type in trees:
        for name in ("topa", "midb"):
            assert f"/{_contrib(r_type)}/{name}_1.0.tgz" in fetched, (r_type, name, fetched)
        assert f"/{_contrib(r_type)}/loner_1.0.tgz" not in fetched  # not in topa's closure
    try:
        for r_type in trees:
            dest = tmp_path / "dl" / r_type
            dest.mkdir(parents=True)
            done = run([require_tool("Rscript"), "--vanilla", "-e",
                        f'options(repos = c(CG = "{host_b.url}/internal")); '
                        f'print(rownames(available.packages(type = "{r_type}"))); '
                        f'download.packages(c("topa", "midb"), destdir = "{dest}", type = "{r_type}")'],
                       env=client_env(tmp_path / "home"), timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            for name in ("topa", "midb"):
                assert (dest / f"{name}_1.0.tgz").read_bytes() == binaries[(r_type, name)], (r_type, name)
    finally:
        host_b.stop()
