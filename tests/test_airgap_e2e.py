"""Air-gapped sites end to end (issue 10; DESIGN, "Air-gap"): seed on host A from fixture
upstreams (multi-platform wheels, conda for two subdirs, an R Imports chain), export, stop
the upstreams, import into host B at another path, serve offline while something listens on
every old upstream address, and install with pip, uv, py-rattler and R. No connection may
reach the listeners."""
from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from fixtures.conda_pkgs import PkgSpec, build_package, write_channel
from fixtures.cran_pkgs import HAVE_R, build_source_package, build_windows_binary, write_cran_repo
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, client_env, run, venv_bin

rattler = pytest.importorskip("rattler")
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
OTHER_PY = "3.12" if PY != "3.12" else "3.11"
CP = f"cp{sys.version_info.major}{sys.version_info.minor}"


class Listener:
    """Sockets on the old upstream addresses, counting every connection that arrives."""

    def __init__(self, ports: list[int]) -> None:
        self.sel = selectors.DefaultSelector()
        self.connections: list[int] = []
        self.socks = []
        for port in ports:
            sock = socket.create_server(("127.0.0.1", port))
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, port)
            self.socks.append(sock)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.sel.select(timeout=0.1):
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                self.connections.append(key.data)
                conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def _pypi(base: Path) -> Path:
    d = base / "wheels"
    files = [make_wheel(d, "webapp", "1.0", requires_dist=["helper>=1", "winonly; sys_platform == 'win32'"])]
    other = "cp" + OTHER_PY.replace(".", "")
    for tag in (f"{CP}-{CP}-manylinux_2_17_x86_64", f"{CP}-{CP}-win_amd64", f"{other}-{other}-manylinux_2_17_x86_64",
                f"{other}-{other}-win_amd64", "cp313-cp313-macosx_11_0_arm64"):
        files.append(make_wheel(d, "helper", "1.1", tag=tag))
    files.append(make_wheel(d, "helper", "0.9", tag=f"{CP}-{CP}-manylinux_2_17_x86_64"))
    files.append(make_wheel(d, "winonly", "1.0"))
    files.append(make_wheel(d, "unrelated", "1.0"))
    write_simple_index(base / "pypi", files, fmt="json")
    return base / "pypi"


def _conda(base: Path) -> Path:
    pkgs = [build_package(base / "c" / "noarch", PkgSpec("app", "1.0", depends=["lib >=1"]))]
    for subdir in ("linux-64", "osx-arm64"):
        for version in ("1.0", "2.0"):
            pkgs.append(build_package(base / "c" / subdir, PkgSpec("lib", version, subdir=subdir)))
    # a build only a machine with a newer glibc could take: the target's virtual packages rule it out
    pkgs.append(build_package(base / "c" / "glibc", PkgSpec("lib", "3.0", subdir="linux-64",
                                                           depends=["__glibc >=2.99"])))
    return write_channel(base / "conda", pkgs, subdirs=["linux-64", "osx-arm64"])


def _cran(base: Path) -> Path:
    b = base / "r"
    pkgs = [
        build_source_package(b / "1", "topa", "1.0", imports=["midb (>= 1.0)", "stats"]),
        build_source_package(b / "2", "midb", "1.0", imports=["leafc"]),
        build_source_package(b / "3", "leafc", "1.0"),
        build_source_package(b / "4", "loner", "1.0"),
    ]
    pkgs += [build_windows_binary(b / f"w{n}", n, "1.0", r_version="4.2.3") for n in ("topa", "midb", "leafc")]
    return write_cran_repo(base / "cran", pkgs)


def _policy(storage: Path, urls: dict[str, str], **extra: Any) -> Policy:
    return Policy({
        "storage": {"path": str(storage)},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{urls['pypi']}/simple"},
                      "conda-forge": {"type": "conda", "url": urls["conda"]},
                      "cran": {"type": "cran", "url": urls["cran"]}},
        "users": ["alice"],
        "channels": {"internal": {"upstreams": ["pypi", "conda-forge", "cran"], "read": ["user:alice"]}},
        **extra,
    })


SEED = f"""
channel: internal
pypi:  {{requirements: ["webapp"], python: ["{PY}", "{OTHER_PY}"],
        platforms: [manylinux_2_17_x86_64, win_amd64]}}
conda: {{specs: ["app"], subdirs: [linux-64, osx-arm64]}}
cran:  {{packages: [topa], r_version: "4.2", binaries: [windows]}}
"""


def cg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=600)


def test_seed_export_import_and_install_offline_with_every_client(tmp_path: Path, upstream_factory) -> None:  # type: ignore[no-untyped-def]
    require_tool("Rscript")
    assert HAVE_R
    fixtures = tmp_path / "fixtures"
    ups: dict[str, UpstreamServer] = {k: upstream_factory(root) for k, root in
                                      (("pypi", _pypi(fixtures)), ("conda", _conda(fixtures)), ("cran", _cran(fixtures)))}
    urls = {k: u.url for k, u in ups.items()}
    # ---- host A: seed (twice: the rerun fetches nothing), then export
    host_a = Channelgate(tmp_path / "a", _policy(tmp_path / "a" / "store", urls))
    host_a.write_policy()
    (tmp_path / "seed.yaml").write_text(SEED)
    done = cg("seed", "--config", str(host_a.config), str(tmp_path / "seed.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "channelgate seed" in done.stdout  # the summary table
    files_before = {k: sum(1 for c in u.calls if "/files/" in c.path or c.path.endswith((".conda", ".tar.gz", ".zip")))
                    for k, u in ups.items()}
    again = cg("seed", "--config", str(host_a.config), str(tmp_path / "seed.yaml"))
    assert again.returncode == 0, again.stdout + again.stderr
    files_after = {k: sum(1 for c in u.calls if "/files/" in c.path or c.path.endswith((".conda", ".tar.gz", ".zip")))
                   for k, u in ups.items()}
    assert files_after == files_before  # nothing fetched twice
    fetched = [c.path for u in ups.values() for c in u.calls]
    for wanted in (f"helper-1.1-{CP}-{CP}-manylinux_2_17_x86_64.whl", f"helper-1.1-{CP}-{CP}-win_amd64.whl",
                   "winonly-1.0-py3-none-any.whl", "/osx-arm64/lib-2.0-0.conda", "/linux-64/lib-2.0-0.conda",
                   "/noarch/app-1.0-0.conda", "leafc_1.0.tar.gz", "bin/windows/contrib/4.2/leafc_1.0.zip"):
        assert any(p.endswith(wanted) for p in fetched), wanted
    for unwanted in ("unrelated-1.0", "helper-0.9", "lib-3.0", "loner_1.0", "cp313"):
        assert not any(unwanted in p for p in fetched), unwanted
    bundle = tmp_path / "site.tar"
    done = cg("export", "--config", str(host_a.config), "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    ports = [u.port for u in ups.values()]
    for u in ups.values():
        u.stop()
    # ---- host B: another path, offline, something listening where the upstreams were
    policy_b = _policy(tmp_path / "b" / "var" / "lib" / "cg", urls, offline=True)
    token = policy_b.add_token("alice", ["all"])
    host_b = Channelgate(tmp_path / "b", policy_b)
    host_b.write_policy()
    done = cg("import", "--config", str(host_b.config), str(bundle))
    assert done.returncode == 0, done.stderr
    listener = Listener(ports)
    host_b.start()
    try:
        base = f"http://127.0.0.1:{host_b.port}/t/{token}/internal"
        _install_everything(tmp_path / "clients", base, token, host_b)
    finally:
        host_b.stop()
        listener.close()
    assert listener.connections == []


def _install_everything(work: Path, base: str, token: str, server: Channelgate) -> None:
    env = client_env(work / "home")
    for name, cmd in {
        "pip": [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--index-url",
                f"{base}/simple/", "--target", str(work / "pip"), "webapp"],
        "uv": [venv_bin("uv"), "pip", "install", "--no-cache", "--python", sys.executable, "--index-url",
               f"{base}/simple/", "--target", str(work / "uv"), "webapp"],
    }.items():
        done = run(cmd, env=env)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        assert (work / name / "helper").is_dir() and (work / name / "webapp").is_dir(), name
    lib = work / "rlib"
    lib.mkdir()
    done = run([require_tool("Rscript"), "--vanilla", "-e",
                f'options(repos = c(CG = "{base}")); install.packages("topa", lib = "{lib}", type = "source"); '
                f'library(topa, lib.loc = "{lib}"); cat(topa_hello())'], env=env, timeout=300)
    assert done.returncode == 0 and "hello from topa 1.0" in done.stdout, done.stderr
    assert {p.name for p in lib.iterdir()} >= {"topa", "midb", "leafc"}
    import asyncio

    records = asyncio.run(_rattler(work, base))
    assert sorted((r.name.normalized, str(r.version)) for r in records) == [("app", "1.0"), ("lib", "2.0")]
    assert json.loads(next((work / "env" / "conda-meta").glob("lib-2.0-0.json")).read_text())["name"] == "lib"


async def _rattler(work: Path, base: str) -> list[Any]:
    gateway = rattler.Gateway(cache_dir=work / "rattler-cache")
    records = await rattler.solve([rattler.Channel(base)], ["app"], gateway=gateway,
                                  platforms=[rattler.Subdir("linux-64"), rattler.Subdir("noarch")])
    await rattler.install(records, work / "env", cache_dir=work / "rattler-pkgs", show_progress=False,
                          platform=rattler.Subdir("linux-64"))
    return records
