"""Fetching ahead of a cold resolve (issue 15, the resolve.* rows): once a client reads a
project page, the metadata of its newest wheels (PEP 658 files, or METADATA by Range reads),
then the pages of the dependencies it names and their newest metadata, three levels down,
are fetched before the client asks; the client's own requests then cost no further upstream
request. Bounded: never a wheel, never an older version, never an extra's dependencies,
never a fourth level."""
from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
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


@pytest.mark.parametrize("pep658", [True, False], ids=["metadata-files", "ranges-only"])
def test_a_page_fetches_metadata_and_three_levels_of_dependency_pages_ahead(
    tmp_path: Path, upstream_factory, channelgate_factory, pep658: bool  # type: ignore[no-untyped-def]
) -> None:
    """One page read by a client: its newest metadata, then three levels of dependency pages
    and their newest metadata are fetched ahead, from the upstream's .metadata files or, when
    it has none, by Range requests into the wheels; the client's own requests then cost no
    upstream request. Bounded: no wheel, no older version, no extra, no fourth level."""
    dists = tmp_path / "d"
    chain = ["app", "dep", "deeper", "deepest", "bottom"]
    wheels = [
        make_wheel(dists, "app", "1.0", requires_dist=["old-dep"]),
        make_wheel(dists, "old-dep", "1.0"),
        make_wheel(dists, "tests-only", "1.0"),
    ]
    for name, below in zip(chain, [*chain[1:], None]):
        extra = ["tests-only; extra == 'test'"] if name == "app" else []
        wheels.append(make_wheel(dists, name, "2.0" if name == "app" else "1.0",
                                 requires_dist=([below] if below else []) + extra))
    write_simple_index(tmp_path / "root", wheels, fmt="html", metadata_files=pep658)
    upstream = upstream_factory(tmp_path / "root")
    if not pep658:  # byte ranges, as a real file server serves them (aiohttp's FileResponse: 206)
        for wheel in wheels:
            upstream.overrides[f"/files/{wheel.name}"] = lambda request, w=wheel: web.FileResponse(
                tmp_path / "root" / "files" / w.name)
    policy = Policy({"upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
                     "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}}})
    server = channelgate_factory(tmp_path / "cg", policy)

    def metadata_reads(filename: str) -> int:  # upstream requests for a wheel's metadata
        if pep658:
            return upstream.calls_to(f"/files/{filename}.metadata")
        return len([c for c in upstream.calls if c.path == f"/files/{filename}" and "Range" in c.headers])

    status, _, _ = http("GET", f"{server.url}/mirror/simple/app/")
    assert status == 200
    server.wait_log(f"GET {upstream.url}/files/deepest-1.0-py3-none-any.whl")  # three levels down
    for name in chain[1:4]:
        assert upstream.calls_to(f"/simple/{name}/") == 1, name
    assert upstream.calls_to("/simple/bottom/") == 0  # a fourth level: not before a client reads dep
    reads = {w.name: metadata_reads(w.name) for w in wheels}
    for name in chain[:4]:
        version = "2.0" if name == "app" else "1.0"
        filename = f"{name}-{version}-py3-none-any.whl"
        if name != "app":
            status, _, body = http("GET", f"{server.url}/mirror/simple/{name}/")
            assert status == 200 and filename.encode() in body
        status, _, body = http("GET", f"{server.url}/mirror/simple/{name}/{filename}.metadata")
        assert status == 200 and f"Name: {name}".encode() in body
        # the client's own requests were served from what was fetched ahead
        assert upstream.calls_to(f"/simple/{name}/") == 1 and metadata_reads(filename) == reads[filename] >= 1
    # bounded: no wheel, no older version, no extra's dependency
    assert not [c for c in upstream.calls if c.path.endswith(".whl") and "Range" not in c.headers]
    assert metadata_reads("app-1.0-py3-none-any.whl") == 0
    assert upstream.calls_to("/simple/old-dep/") == 0 and upstream.calls_to("/simple/tests-only/") == 0
    server.wait_log(f"GET {upstream.url}/simple/bottom/")  # a client read dep: one level further
