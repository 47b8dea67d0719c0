"""Operations (DESIGN "Operations", issue 12): /metrics and JSON logs after real traffic.

One channelgate in ``--log-format json`` in front of one upstream server that carries a
PyPI index, a conda channel and a CRAN repository; twine, pip, py-rattler and R use it.
The metrics are read with prometheus-client's own parser and compared with what really
happened: the upstream's call log and the server's own access lines.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from prometheus_client.parser import text_string_to_metric_families

from fixtures import conda_pkgs as fx
from fixtures.cran_pkgs import build_source_package, write_cran_repo
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, channel_url, client_env, http, run, venv_bin

rattler = pytest.importorskip("rattler")

ARTIFACT_SUFFIXES = (".whl", ".metadata", ".conda", ".tar.bz2", ".tar.gz")


def is_artifact(path: str) -> bool:
    """A package file (or PEP 658 metadata file), as opposed to an index document."""
    return path.endswith(ARTIFACT_SUFFIXES) and not path.endswith("PACKAGES.gz")


@dataclass
class World:
    base: Path
    upstream: UpstreamServer
    server: Channelgate
    tokens: dict[str, str]
    private_wheel: Path


@pytest.fixture
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> Any:  # type: ignore[no-untyped-def]
    """A server of each test's own: the metrics test counts every request since start."""
    base = tmp_path_factory.mktemp("ops")
    root = base / "upstream"
    dists = base / "dists"
    # a wheel big enough that its body dwarfs any header (sendfile bytes must be counted)
    write_simple_index(root / "pypi", [make_wheel(dists / "up", "upstream-dep", "2.0",
                                                  module_body="DATA = '" + "x" * 300_000 + "'\n")], fmt="json")
    fx.write_channel(root / "forge", [
        fx.build_package(dists / "forge", fx.PkgSpec("upstream-dep", "2.0", "0")),
        fx.build_package(dists / "forge", fx.PkgSpec("tool", "1.5", "h0_0", subdir="linux-64", depends=("upstream-dep >=2",))),
    ])
    write_cran_repo(root / "cran", [build_source_package(dists / "cran", "updep", "1.1")])
    upstream = upstream_factory(root)
    policy = Policy({
        "upstreams": {
            "pypi": {"type": "pypi", "url": f"{upstream.url}/pypi/simple"},
            "forge": {"type": "conda", "url": f"{upstream.url}/forge"},
            "cran": {"type": "cran", "url": f"{upstream.url}/cran"},
        },
        "groups": {"devs": ["alice"], "readers": ["bob"]},
        "channels": {"internal": {"upstreams": ["pypi", "forge", "cran"], "read": ["group:readers"], "write": ["group:devs"]}},
    })
    tokens = {
        "writer": policy.add_token("alice", ["api:write", "pypi:download"], name="alice-ci"),
        "reader": policy.add_token("bob", ["pypi:download", "conda:download", "cran:download"], name="bob-laptop"),
    }
    server = Channelgate(base / "cg", policy, args=["--log-format", "json"]).start()
    private = make_wheel(dists / "private", "acme-lib", "1.0", requires_dist=["upstream-dep>=2"])
    yield World(base, upstream, server, tokens, private)
    server.stop()


def scrape(world: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = http("GET", f"{world.server.url}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, val) in ls for k, val in labels.items()))


def json_lines(world: World) -> list[dict[str, Any]]:
    return [json.loads(line) for line in world.server.log().splitlines() if line.strip()]


def access_lines(world: World) -> list[dict[str, Any]]:
    return [e for e in json_lines(world) if e["logger"] == "access"]


def drive_traffic(world: World) -> None:
    server = world.server
    twine = run([venv_bin("twine"), "upload", "--disable-progress-bar", "--non-interactive",
                 "--repository-url", f"{server.url}/api/repo/internal",
                 "-u", world.tokens["writer"], "-p", "x-auth-token", str(world.private_wheel)],
                env=client_env(world.base / "home-twine"))
    assert twine.returncode == 0, twine.stdout + twine.stderr
    index = channel_url(server, "basic", world.tokens["reader"]) + "/simple"
    for n in (1, 2):  # the second install is served from the cache
        target = world.base / f"pip-{n}"
        pip = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--trusted-host", "127.0.0.1",
                   "--index-url", index, "--target", str(target), "acme-lib"], env=client_env(world.base / f"home-pip{n}"))
        assert pip.returncode == 0, pip.stdout + pip.stderr
        assert (target / "upstream_dep" / "__init__.py").exists()
    r_lib = world.base / "rlib"
    r_lib.mkdir()
    repo = channel_url(server, "alias", world.tokens["reader"])
    r = run([require_tool("Rscript"), "--vanilla", "-e",
             f'options(repos = c(CG = "{repo}")); install.packages("updep", lib = "{r_lib}", type = "source")'],
            env=client_env(world.base / "home-r"), cwd=world.base)
    assert (r_lib / "updep" / "DESCRIPTION").exists(), r.stdout + r.stderr


async def install_with_rattler(world: World) -> None:
    target = world.base / "conda-env"
    gateway = rattler.Gateway(cache_dir=world.base / "rattler-cache", default_config=rattler.SourceConfig(sharded_enabled=False))
    records = await rattler.solve([rattler.Channel(channel_url(world.server, "alias", world.tokens["reader"]))], ["tool"],
                                  gateway=gateway, platforms=["linux-64", "noarch"], virtual_packages=[])
    await rattler.install(records, target, cache_dir=world.base / "rattler-pkgs", show_progress=False,
                          platform=rattler.Subdir("linux-64"))
    assert (target / "bin" / "tool-hello").exists()


async def test_metrics_agree_with_real_traffic(world: World) -> None:
    require_tool("Rscript")
    drive_traffic(world)
    await install_with_rattler(world)
    samples = scrape(world)
    # every request before the scrape has its access line once the scrape's own line is out
    world.server.wait_log('"path":"/metrics"')
    lines = [e for e in access_lines(world) if e["path"] != "/metrics"]

    # requests and bytes: exactly what the access lines say, per ecosystem and status
    by_eco_status = Counter((e["ecosystem"], str(e["status"])) for e in lines)
    for (eco, status), count in by_eco_status.items():
        assert total(samples, "channelgate_requests_total", ecosystem=eco, status=status) == count, (eco, status)
    assert total(samples, "channelgate_requests_total") == len(lines)
    for eco in ("pypi", "conda", "cran"):
        sent = sum(e["bytes"] for e in lines if e["ecosystem"] == eco)
        assert total(samples, "channelgate_sent_bytes_total", ecosystem=eco) == sent > 0
    # the upstream wheel went out by sendfile: its bytes are counted, not only the headers
    wheel_size = (world.base / "upstream" / "pypi").rglob("upstream_dep-2.0-*.whl").__next__().stat().st_size
    wheel_lines = [e for e in lines if e["path"].endswith(".whl") and "upstream_dep" in e["path"] and e["status"] == 200]
    assert len(wheel_lines) == 2 and all(e["bytes"] > wheel_size for e in wheel_lines)

    # upstream requests: exactly the calls the upstream server saw, per upstream
    for name in ("pypi", "forge", "cran"):
        calls = sum(1 for c in world.upstream.calls if c.path.startswith(f"/{name}/"))
        assert calls > 0
        assert total(samples, "channelgate_upstream_requests_total", upstream=name) == calls, name
        assert total(samples, "channelgate_upstream_seconds_count", upstream=name) == calls, name

    # cache results: every artifact miss is one upstream download (whether a client or the
    # PyPI fetch ahead started it; a client that waited on one is "joined"); the second pip
    # install hit
    downloads = sum(1 for c in world.upstream.calls if is_artifact(c.path))
    assert downloads >= 3  # a wheel, conda packages and an R source package
    assert total(samples, "channelgate_cache_total", kind="artifact", result="miss") == downloads
    joined = [e for e in lines if e["cache"] == "joined"]
    assert total(samples, "channelgate_cache_total", kind="artifact", result="joined") == len(joined)
    assert total(samples, "channelgate_cache_total", kind="artifact", result="hit") == sum(
        1 for e in lines if e["cache"] == "hit" and is_artifact(e["path"])) >= 1
    hosted = [e["path"] for e in lines if e["cache"] == "hosted"]
    assert total(samples, "channelgate_cache_total", kind="artifact", result="hosted") == len(hosted)
    # acme-lib's wheel (and its PEP 658 metadata), once per pip install, and nothing else
    assert sum(p.endswith(".whl") for p in hosted) == 2 and all("acme_lib-1.0" in p for p in hosted)
    assert total(samples, "channelgate_cache_total", kind="index", result="miss") >= 3
    assert total(samples, "channelgate_uploads_total", ecosystem="pypi") == 1
    assert total(samples, "channelgate_inflight_downloads") == 0
    assert total(samples, "channelgate_open_connections") >= 1  # the scrape's own

    # labels hold no secret, no user, no path
    secrets = [*world.tokens.values(), "alice", "bob", "/"]
    for (_, labels) in samples:
        for _, value in labels:
            assert not any(s in value for s in secrets), value


def test_every_log_line_is_json_with_the_operator_fields(world: World) -> None:
    status, _, _ = http("GET", f"{world.server.url}/api/repo/internal/simple/upstream-dep/",
                        headers={"Authorization": f"Bearer {world.tokens['reader']}"})
    assert status == 200  # fetched from the upstream: an upstream line too
    # the JSON API authenticates on its own path: its access line names the user too
    status, _, _ = http("GET", f"{world.server.url}/api/user", headers={"Authorization": f"token {world.tokens['writer']}"})
    assert status == 200
    world.server.wait_log("/simple/upstream-dep/")
    world.server.wait_log('"path":"/api/user"')
    entries = json_lines(world)  # raises if any line is not JSON
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    access = [e for e in entries if e["logger"] == "access"]
    for entry in access:
        assert {"user", "token", "channel", "ecosystem", "status", "bytes", "duration", "cache", "path"} <= entry.keys()
    mine = [e for e in access if e["path"] == "/api/repo/internal/simple/upstream-dep/"]
    assert mine and mine[-1]["user"] == "bob" and mine[-1]["token"] == "bob-laptop"
    assert mine[-1]["channel"] == "internal" and mine[-1]["ecosystem"] == "pypi"
    api = [e for e in access if e["path"] == "/api/user"]
    assert api and (api[-1]["user"], api[-1]["token"], api[-1]["ecosystem"]) == ("alice", "alice-ci", "api")
    anonymous = [e for e in access if e["path"] == "/api/health"]
    assert anonymous and anonymous[0]["user"] == "-" and anonymous[0]["token"] == "-"
    upstream = [e for e in entries if e.get("upstream") in ("pypi", "forge", "cran")]
    assert upstream, "no upstream fetch was logged"
    for entry in upstream:
        assert entry["level"] == "INFO" and {"status", "bytes", "seconds", "url"} <= entry.keys()
    log = world.server.log()
    assert not any(token in log for token in world.tokens.values())
