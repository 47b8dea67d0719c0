"""``channelgate seed`` failures (issue 10): a seed file with an unknown key, or a need that
cannot be resolved, is a clear error naming it and a non-zero exit; what did resolve is
still fetched, and the summary says so."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.conda_pkgs import PkgSpec, build_package, write_channel
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, UpstreamServer
from proxy.cli import main


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory, upstream_factory) -> dict[str, UpstreamServer]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("seed-upstreams")
    write_simple_index(base / "pypi", [make_wheel(base / "w", "plain", "1.0")], fmt="json")
    write_channel(base / "conda", [build_package(base / "c", PkgSpec("tool", "1.0"))])
    return {"pypi": upstream_factory(base / "pypi"), "conda": upstream_factory(base / "conda")}


def _config(tmp_path: Path, upstreams: dict[str, UpstreamServer]) -> tuple[str, Path]:
    gate = Channelgate(tmp_path / "cg", Policy({
        "storage": {"path": str(tmp_path / "store")},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstreams['pypi'].url}/simple"},
                      "conda": {"type": "conda", "url": upstreams["conda"].url}},
        "channels": {"mirror": {"public": True, "upstreams": ["pypi", "conda"]}},
    }))
    gate.write_policy()
    return str(gate.config), tmp_path / "store"


def test_a_seed_file_with_an_unknown_key_is_refused_naming_it(tmp_path: Path, upstreams, capsys) -> None:  # type: ignore[no-untyped-def]
    config, _ = _config(tmp_path, upstreams)
    seed = tmp_path / "seed.yaml"
    seed.write_text("channel: nowhere\npypi: {requirements: [plain], python: ['3.11'], platform: [win_amd64]}\n"
                    "npm: {packages: [left-pad]}\n")
    assert main(["seed", "--config", config, str(seed)]) == 2
    err = capsys.readouterr().err
    assert "npm: unknown key" in err
    assert "pypi.platform: unknown key" in err and "pypi.platforms: is required" in err
    assert "channel: names channel 'nowhere'" in err


def test_needs_that_cannot_be_resolved_are_named_and_exit_non_zero(tmp_path: Path, upstreams, capsys) -> None:  # type: ignore[no-untyped-def]
    config, _ = _config(tmp_path, upstreams)
    seed = tmp_path / "seed.yaml"
    seed.write_text("channel: mirror\n"
                    "pypi: {requirements: ['plain', 'ghost-project>=1'], python: ['3.11'], platforms: [win_amd64]}\n"
                    "conda: {specs: ['tool', 'nonexistent-pkg >=2'], subdirs: [linux-64]}\n")
    assert main(["seed", "--config", config, str(seed)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "FAILED pypi: python 3.11 on win_amd64: cannot resolve" in text and "ghost-project" in text
    assert "FAILED conda: linux-64: tool, nonexistent-pkg >=2: cannot solve" in text and "nonexistent-pkg" in text
    assert "channelgate seed" in out.out  # the summary table is printed all the same
    # nothing of a failed resolution is fetched (uv read metadata files only)
    assert upstreams["pypi"].calls_to("/files/plain-1.0-py3-none-any.whl") == 0
    assert upstreams["conda"].calls_to("/noarch/tool-1.0-0.conda") == 0
