"""Upstream filters (DESIGN, "Air-gap", upstream filters): subdirs, include/exclude with
version specs in each ecosystem's syntax and name globs, licenses, latest N. Filtered-out
names are absent (404), never a broken index; the policy checker names a bad rule."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from fixtures.conda_pkgs import PkgSpec, build_package, write_channel
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer, http
from proxy.errors import ConfigError
from proxy.filters import build_filter
from proxy.settings import parse_settings


# --------------------------------------------------------------------------- pure rules
def _flt(ecosystem: str, raw: dict[str, object]):  # type: ignore[no-untyped-def]
    flt, problems = build_filter(ecosystem, raw)
    assert not problems and flt is not None
    return flt


def test_each_ecosystem_reads_version_specs_in_its_own_syntax() -> None:
    pypi = _flt("pypi", {"include": ["Numpy>=1.26,<2", "req*"]})
    assert pypi.allows("numpy", "1.26.4") and not pypi.allows("numpy", "2.0.0") and not pypi.allows("numpy", "1.25")
    assert pypi.allows("requests", "0.1") and not pypi.allows("scipy", "1.0")
    conda = _flt("conda", {"include": ["python 3.11.*", "numpy >=1.26|1.2.*"]})
    assert conda.allows("python", "3.11.4") and not conda.allows("python", "3.12.0")
    assert conda.allows("numpy", "1.26.0") and conda.allows("numpy", "1.2.9") and not conda.allows("numpy", "1.25")
    cran = _flt("cran", {"include": ["ggplot2 (>= 3.4)"], "licenses": ["MIT", "GPL-2"]})
    assert cran.allows("ggplot2", "3.4.0-1", "MIT + file LICENSE") and cran.allows("ggplot2", "3.10", "GPL-3 | GPL-2")
    assert not cran.allows("ggplot2", "3.3.9", "MIT") and not cran.allows("ggplot2", "3.5", "Proprietary")


def test_latest_keeps_the_newest_versions_of_each_name_by_the_ecosystems_order() -> None:
    conda = _flt("conda", {"latest": 2})
    items = [("a", "1.9"), ("a", "1.10"), ("a", "1.10"), ("a", "1.2"), ("b", "0.1")]
    kept = conda.select(items, name=lambda i: i[0], version=lambda i: i[1])
    assert kept == [("a", "1.9"), ("a", "1.10"), ("a", "1.10"), ("b", "0.1")]


def test_check_config_names_every_bad_filter_rule() -> None:
    text = """
upstreams:
  pypi: {type: pypi, url: https://pypi.org/simple, filter: {subdirs: [linux-64], include: ["numpy>>1"], colour: red}}
  cran: {type: cran, url: https://cloud.r-project.org, filter: {include: ["ggplot2 >= 3"], latest: 0}}
"""
    with pytest.raises(ConfigError) as err:
        parse_settings(text)
    problems = "\n".join(err.value.problems)
    assert "upstreams.pypi.filter.subdirs: applies to conda upstreams only" in problems
    assert "upstreams.pypi.filter.include[0]: not a PEP 440 version specifier" in problems
    assert "upstreams.pypi.filter.colour: unknown key" in problems
    assert "upstreams.cran.filter.include[0]: not an R version requirement" in problems
    assert "upstreams.cran.filter.latest: must be a positive integer" in problems


# --------------------------------------------------------------------------- through the server
@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> dict[str, UpstreamServer]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("filter-upstreams")
    wheels = [make_wheel(base / "w", "alpha", v) for v in ("1.0", "2.0", "3.0")]
    wheels.append(make_wheel(base / "w", "beta-debug", "1.0"))
    write_simple_index(base / "pypi", wheels, fmt="json")
    pkgs = [build_package(base / "c" / "linux-64", PkgSpec("numpy", v, subdir="linux-64", license=lic))
            for v, lic in (("1.25.0", "BSD-3-Clause"), ("1.26.0", "BSD-3-Clause"), ("2.0.0", "GPL-3.0"))]
    pkgs.append(build_package(base / "c" / "osx-arm64", PkgSpec("numpy", "1.26.0", subdir="osx-arm64", license="BSD-3-Clause")))
    pkgs.append(build_package(base / "c", PkgSpec("tool-debug", "1.0", license="MIT")))
    write_channel(base / "conda", pkgs)
    cran = base / "cran" / "src" / "contrib"
    cran.mkdir(parents=True)
    entries = []
    for name, version, lic in (("abc", "1.0", "MIT + file LICENSE"), ("abc", "2.0", "MIT + file LICENSE"),
                               ("closed", "1.0", "Proprietary")):
        body = f"{name} {version}".encode()
        (cran / f"{name}_{version}.tar.gz").write_bytes(body)
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        entries.append(f"Package: {name}\nVersion: {version}\nLicense: {lic}\nMD5sum: {md5}\nNeedsCompilation: no\n")
    (cran / "PACKAGES").write_text("\n".join(entries))
    (cran / "PACKAGES.gz").write_bytes(gzip.compress("\n".join(entries).encode()))
    return {k: upstream_factory(base / k) for k in ("pypi", "conda", "cran")}


def test_filters_shape_every_ecosystems_merged_index(tmp_path: Path, upstreams: dict[str, UpstreamServer]) -> None:
    policy = Policy({
        "upstreams": {
            "pypi": {"type": "pypi", "url": f"{upstreams['pypi'].url}/simple",
                     "filter": {"include": ["alpha>=2", "beta*"], "exclude": ["*-debug"], "latest": 1}},
            "conda": {"type": "conda", "url": upstreams["conda"].url,
                      "filter": {"subdirs": ["linux-64", "noarch"], "include": ["numpy >=1.26", "tool-*"],
                                 "exclude": ["*-debug"], "licenses": ["BSD-3-Clause"]}},
            "cran": {"type": "cran", "url": upstreams["cran"].url,
                     "filter": {"include": ["abc (>= 2.0)", "closed"], "licenses": ["MIT"]}},
        },
        "channels": {"mirror": {"public": True, "upstreams": ["pypi", "conda", "cran"]}},
    })
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        base = f"{server.url}/mirror"
        status, _, body = http("GET", f"{base}/simple/alpha/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        assert status == 200 and [f["filename"] for f in json.loads(body)["files"]] == ["alpha-3.0-py3-none-any.whl"]
        assert http("GET", f"{base}/simple/alpha/alpha-1.0-py3-none-any.whl")[0] == 404
        assert http("GET", f"{base}/simple/beta-debug/")[0] == 404
        root = http("GET", f"{base}/simple/")[2]
        assert b"alpha" in root and b"beta-debug" not in root

        status, _, body = http("GET", f"{base}/linux-64/repodata.json")
        records = {**json.loads(body)["packages"], **json.loads(body)["packages.conda"]}
        assert status == 200 and sorted(records) == ["numpy-1.26.0-0.conda"]
        assert http("GET", f"{base}/linux-64/numpy-2.0.0-0.conda")[0] == 404
        status, _, body = http("GET", f"{base}/noarch/repodata.json")
        assert status == 200 and not json.loads(body)["packages.conda"]
        status, _, body = http("GET", f"{base}/osx-arm64/repodata.json")  # the subdir is filtered out
        assert status == 404 or not json.loads(body)["packages.conda"]
        assert upstreams["conda"].calls_to("/osx-arm64/repodata.json.zst") == 0

        status, _, body = http("GET", f"{base}/src/contrib/PACKAGES")
        assert status == 200 and body.decode().split("\n")[:2] == ["Package: abc", "Version: 2.0"]
        assert b"closed" not in body
        assert http("GET", f"{base}/src/contrib/abc_2.0.tar.gz")[0] == 200
        assert http("GET", f"{base}/src/contrib/closed_1.0.tar.gz")[0] == 404
    finally:
        server.stop()
