"""Fetching ahead of a cold resolve (issue 15, resolve.uv_meta): once a client reads a
project page, the upstream PEP 658 metadata of its newest wheels, then the pages of the
dependencies that metadata names and their newest metadata, are fetched before the client
asks; the client's own requests then cost no further upstream request. Bounded: never a
wheel, never an older version, never an extra's dependencies, never a second level."""
from __future__ import annotations

from pathlib import Path

from fixtures.wheels import make_wheel, write_simple_index
from harness import Policy, http

from proxy.ecosystems.pypi.prefetch import dependencies, newest_wheels
from proxy.ecosystems.pypi.simple import FileEntry


def test_newest_wheels_and_dependencies() -> None:
    def entry(filename: str, **kw: object) -> FileEntry:
        return FileEntry(filename, f"https://up/{filename}", {"sha256": "0" * 64}, core_metadata=True, **kw)  # type: ignore[arg-type]

    files = [entry("a-1.0-py3-none-any.whl"), entry("a-2.0-py3-none-any.whl"), entry("a-2.0.tar.gz"),
             entry("a-2.0-cp311-cp311-manylinux_2_17_x86_64.whl"), entry("a-3.0rc1-py3-none-any.whl"),
             entry("a-9.0-py3-none-any.whl", yanked=True), FileEntry("a-5.0-py3-none-any.whl", "https://up/x")]
    assert [e.filename for e in newest_wheels(files)] == [
        "a-2.0-py3-none-any.whl", "a-2.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    assert newest_wheels(files, limit=1)[0].filename == "a-2.0-py3-none-any.whl"
    metadata = ("Metadata-Version: 2.1\nName: a\nRequires-Dist: Foo_Bar (>=1)\n"
                "Requires-Dist: baz; python_version >= \"3.8\"\nRequires-Dist: extra-only; extra == \"test\"\n"
                "requires-dist: foo-bar\n\nRequires-Dist: in-the-body\n")
    assert dependencies(metadata)[:2] == ["foo-bar", "baz"] and "extra-only" not in dependencies(metadata)
    assert dependencies(metadata, limit=1) == ["foo-bar"]


def test_a_page_fetches_its_newest_metadata_and_the_dependency_pages_ahead(
    tmp_path: Path, upstream_factory, channelgate_factory  # type: ignore[no-untyped-def]
) -> None:
    dists = tmp_path / "d"
    wheels = [
        make_wheel(dists, "app", "1.0", requires_dist=["old-dep"]),
        make_wheel(dists, "app", "2.0", requires_dist=["dep>=1", "tests-only; extra == 'test'"]),
        make_wheel(dists, "dep", "1.0", requires_dist=["deeper"]),
        make_wheel(dists, "deeper", "1.0"),
        make_wheel(dists, "old-dep", "1.0"),
        make_wheel(dists, "tests-only", "1.0"),
    ]
    write_simple_index(tmp_path / "root", wheels, fmt="html", metadata_files=True)
    upstream = upstream_factory(tmp_path / "root")
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)

    status, _, _ = http("GET", f"{server.url}/mirror/simple/app/")
    assert status == 200
    server.wait_log(f"GET {upstream.url}/files/dep-1.0-py3-none-any.whl.metadata")  # fetched ahead
    assert upstream.calls_to("/files/app-2.0-py3-none-any.whl.metadata") == 1
    status, _, body = http("GET", f"{server.url}/mirror/simple/app/app-2.0-py3-none-any.whl.metadata")
    assert status == 200 and b"Requires-Dist: dep>=1" in body
    assert upstream.calls_to("/simple/deeper/") == 0  # two levels ahead: not before a client reads dep
    status, _, body = http("GET", f"{server.url}/mirror/simple/dep/")
    assert status == 200 and b"dep-1.0-py3-none-any.whl" in body
    status, _, body = http("GET", f"{server.url}/mirror/simple/dep/dep-1.0-py3-none-any.whl.metadata")
    assert status == 200 and b"Requires-Dist: deeper" in body
    # the client's own requests were served from what was fetched ahead
    assert upstream.calls_to("/files/app-2.0-py3-none-any.whl.metadata") == 1
    assert upstream.calls_to("/simple/dep/") == 1
    assert upstream.calls_to("/files/dep-1.0-py3-none-any.whl.metadata") == 1
    # bounded: no wheel, no older version, no extra's dependency, nothing two levels ahead
    assert not [c for c in upstream.calls if c.path.endswith(".whl")]
    assert upstream.calls_to("/files/app-1.0-py3-none-any.whl.metadata") == 0
    assert upstream.calls_to("/simple/old-dep/") == 0 and upstream.calls_to("/simple/tests-only/") == 0
    server.wait_log(f"GET {upstream.url}/files/deeper-1.0-py3-none-any.whl.metadata")  # a client read dep's page
