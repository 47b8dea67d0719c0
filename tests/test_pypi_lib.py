"""Unit tests for the pure PyPI library: simple API (PEP 503/592/658/691/700/714) and uploads."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from packaging.version import Version

from proxy.ecosystems.pypi.dist import Distribution, inspect_distribution, require_fields
from proxy.ecosystems.pypi.simple import (
    CONTENT_TYPE_HTML,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TEXT_HTML,
    FileEntry,
    negotiate,
    normalize,
    parse_html,
    parse_json,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
)
from proxy.errors import BadRequest, NotAcceptable, UpstreamError
from proxy.responses import http_status

from fixtures import wheels as fx

PAGE = "https://upstream.example/simple/foo-bar/"

UPSTREAM_HTML = b"""<!DOCTYPE html>
<html><head><meta name="pypi:repository-version" content="1.1"><title>Links for foo-bar</title></head>
<body><h1>Links for foo-bar</h1>
<a href="../../packages/ab/Foo_Bar-1.0-py3-none-any.whl#sha256=aaaa" data-requires-python="&gt;=3.8,&lt;4"
   data-core-metadata="sha256=bbbb">Foo_Bar-1.0-py3-none-any.whl</a><br/>
<a href="https://files.example/foo-bar-1.0.tar.gz#md5=cccc" data-yanked="broken &amp; &quot;bad&quot;"
   data-dist-info-metadata="true">foo-bar-1.0.tar.gz</a><br/>
<a href="foo_bar-2.0rc1-py3-none-any.whl" data-yanked>foo_bar-2.0rc1-py3-none-any.whl</a>
<a href="/x/foo-bar-0.9.win32.exe">foo-bar-0.9.win32.exe</a>
<a href="/x/foo-bar-junk.tar.gz">foo-bar-junk.tar.gz</a>
</body></html>
"""


def link(entry: FileEntry) -> str:
    return f"/local/files/{entry.filename}"


# --------------------------------------------------------------------------- normalize / entries


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Foo_Bar", "foo-bar"), ("foo.bar", "foo-bar"), ("FOO--_.bar", "foo-bar"), ("zope.interface", "zope-interface")],
)
def test_normalize(name: str, expected: str) -> None:
    assert normalize(name) == expected


def test_file_entry_version_is_derived_from_filename() -> None:
    assert FileEntry("Foo_Bar-1.0.0-py3-none-any.whl", "").version == "1.0.0"
    assert FileEntry("foo_bar-2.0-1-cp311-cp311-manylinux_2_17_x86_64.whl", "").version == "2.0"
    assert FileEntry("foo-bar-1.0.post1.tar.gz", "").version == "1.0.post1"
    assert FileEntry("foo_bar-3.1.zip", "").version == "3.1"
    assert FileEntry("foo_bar-1.2-py3.8.egg", "").version == "1.2"
    assert FileEntry("foo-bar-junk.tar.gz", "").version is None
    assert FileEntry("foo-bar-0.9.win32.exe", "").version is None
    assert FileEntry("foo-bar-1.0-py3.8.egg", "").version is None  # hyphenated egg name: ambiguous
    assert FileEntry("README", "").version is None


# --------------------------------------------------------------------------- HTML parsing


def test_parse_html_pep503_592_658_714() -> None:
    entries = parse_html(UPSTREAM_HTML, PAGE)
    assert [e.filename for e in entries] == [
        "Foo_Bar-1.0-py3-none-any.whl",
        "foo-bar-1.0.tar.gz",
        "foo_bar-2.0rc1-py3-none-any.whl",
        "foo-bar-0.9.win32.exe",
        "foo-bar-junk.tar.gz",
    ]
    wheel, sdist, rc, exe, _junk = entries
    # relative hrefs resolve against the page; the hash fragment moves into ``hashes``
    assert wheel.url == "https://upstream.example/packages/ab/Foo_Bar-1.0-py3-none-any.whl"
    assert wheel.hashes == {"sha256": "aaaa"}
    assert wheel.requires_python == ">=3.8,<4"  # entities decoded
    assert wheel.yanked is False
    assert wheel.core_metadata == {"sha256": "bbbb"}
    assert wheel.version == "1.0"
    assert sdist.url == "https://files.example/foo-bar-1.0.tar.gz"
    assert sdist.hashes == {"md5": "cccc"}
    assert sdist.yanked == 'broken & "bad"'
    assert sdist.core_metadata is True  # legacy data-dist-info-metadata
    assert rc.url == "https://upstream.example/simple/foo-bar/foo_bar-2.0rc1-py3-none-any.whl"
    assert rc.yanked is True  # attribute without value
    assert rc.core_metadata is False
    assert exe.url == "https://upstream.example/x/foo-bar-0.9.win32.exe"
    assert exe.size is None and exe.upload_time is None


def test_parse_html_prefers_core_metadata_and_honours_base() -> None:
    body = (
        b'<html><head><base href="https://mirror.example/pkgs/"></head><body>'
        b'<a href="a-1.0-py3-none-any.whl" data-core-metadata="sha256=new" '
        b'data-dist-info-metadata="sha256=old">a-1.0-py3-none-any.whl</a>'
        b'<a href="b-1.0.tar.gz" data-yanked="">b-1.0.tar.gz</a></body></html>'
    )
    a, b = parse_html(body, PAGE)
    assert a.url == "https://mirror.example/pkgs/a-1.0-py3-none-any.whl"
    assert a.core_metadata == {"sha256": "new"}
    assert b.yanked is True  # empty reason still means yanked


def test_parse_html_uses_url_when_text_is_empty() -> None:
    (entry,) = parse_html(b'<a href="/p/c%2Bd-1.0.tar.gz#sha256=ee"></a>', PAGE)
    assert entry.filename == "c+d-1.0.tar.gz"
    assert entry.hashes == {"sha256": "ee"}


# --------------------------------------------------------------------------- JSON parsing


def test_parse_json_pep691_700_714() -> None:
    doc = {
        "meta": {"api-version": "1.1"},
        "name": "foo-bar",
        "versions": ["1.0"],
        "files": [
            {
                "filename": "foo_bar-1.0-py3-none-any.whl",
                "url": "../../packages/foo_bar-1.0-py3-none-any.whl",
                "hashes": {"sha256": "aaaa"},
                "requires-python": ">=3.9",
                "yanked": False,
                "core-metadata": {"sha256": "bbbb"},
                "dist-info-metadata": {"sha256": "zzzz"},
                "size": 1234,
                "upload-time": "2024-01-02T03:04:05.000000Z",
            },
            {
                "filename": "foo_bar-1.0.tar.gz",
                "url": "https://files.example/foo_bar-1.0.tar.gz",
                "hashes": {},
                "yanked": "security issue",
                "dist-info-metadata": True,
                "size": 99,
            },
            {"filename": "foo_bar-0.1.tar.gz", "url": "x", "hashes": {"sha256": "1"}, "yanked": True,
             "requires-python": None},
        ],
    }
    wheel, sdist, old = parse_json(orjson.dumps(doc), PAGE)
    assert wheel == FileEntry(
        filename="foo_bar-1.0-py3-none-any.whl",
        url="https://upstream.example/packages/foo_bar-1.0-py3-none-any.whl",
        hashes={"sha256": "aaaa"},
        requires_python=">=3.9",
        yanked=False,
        core_metadata={"sha256": "bbbb"},
        size=1234,
        upload_time="2024-01-02T03:04:05.000000Z",
    )
    assert sdist.yanked == "security issue" and sdist.core_metadata is True and sdist.size == 99
    assert sdist.upload_time is None and sdist.requires_python is None
    assert old.url == PAGE + "x" and old.yanked is True and old.core_metadata is False


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"files": 3}'])
def test_parse_json_rejects_non_pep691(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        parse_json(body, PAGE)


# --------------------------------------------------------------------------- rendering / round trips


def test_html_round_trip() -> None:
    entries = parse_html(UPSTREAM_HTML, PAGE)
    page = render_project_html("Foo_Bar", entries, link)
    assert b'<meta name="pypi:repository-version" content="1.1">' in page
    again = parse_html(page, "https://proxy.example/simple/foo-bar/")
    assert [e.filename for e in again] == [e.filename for e in entries]
    for before, after in zip(entries, again):
        assert after.url == f"https://proxy.example/local/files/{before.filename}"
        assert after.hashes == dict(before.hashes)
        assert after.requires_python == before.requires_python
        assert after.yanked == before.yanked
        assert after.core_metadata == before.core_metadata


def test_render_html_escapes_and_emits_both_metadata_attributes() -> None:
    entry = FileEntry(
        "a-1.0-py3-none-any.whl",
        "",
        hashes={"sha256": "ff", "md5": "00"},
        requires_python='>=3.8,<4"',
        yanked="<b>bad</b> & worse",
        core_metadata={"sha256": "ee"},
    )
    page = render_project_html("a", [entry], link).decode()
    assert 'href="/local/files/a-1.0-py3-none-any.whl#sha256=ff"' in page
    assert 'data-requires-python="&gt;=3.8,&lt;4&quot;"' in page
    assert 'data-yanked="&lt;b&gt;bad&lt;/b&gt; &amp; worse"' in page
    assert 'data-core-metadata="sha256=ee"' in page
    assert 'data-dist-info-metadata="sha256=ee"' in page
    plain = render_project_html("a", [FileEntry("a-1.0.tar.gz", "", hashes={"sha256": "11"})], link).decode()
    assert "data-yanked" not in plain and "metadata=" not in plain and "data-requires-python" not in plain
    true_meta = render_project_html("a", [FileEntry("a-1.0.tar.gz", "", core_metadata=True)], link).decode()
    assert 'data-core-metadata="true"' in true_meta and 'data-dist-info-metadata="true"' in true_meta


def test_html_to_json_round_trip() -> None:
    entries = parse_html(UPSTREAM_HTML, PAGE)
    doc = orjson.loads(render_project_json("Foo_Bar", entries, link))
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "foo-bar"
    # PEP 700: versions sorted by PEP 440; files without a parsable version add none
    assert doc["versions"] == ["1.0", "2.0rc1"]
    first = doc["files"][0]
    assert first == {
        "filename": "Foo_Bar-1.0-py3-none-any.whl",
        "url": "/local/files/Foo_Bar-1.0-py3-none-any.whl",
        "hashes": {"sha256": "aaaa"},
        "requires-python": ">=3.8,<4",
        "yanked": False,
        "core-metadata": {"sha256": "bbbb"},
        "dist-info-metadata": {"sha256": "bbbb"},
    }
    assert doc["files"][1]["yanked"] == 'broken & "bad"'
    assert doc["files"][1]["core-metadata"] is True
    assert doc["files"][2]["yanked"] is True
    again = parse_json(render_project_json("foo-bar", entries, link), "https://proxy.example/simple/foo-bar/")
    assert [(e.filename, e.yanked, e.core_metadata, e.requires_python) for e in again] == [
        (e.filename, e.yanked, e.core_metadata, e.requires_python) for e in entries
    ]


def test_render_json_size_upload_time_and_version_order() -> None:
    files = [
        FileEntry("x-10.0.tar.gz", "", size=5, upload_time="2024-01-01T00:00:00Z"),
        FileEntry("x-9.0.tar.gz", "", size=4),
        FileEntry("x-1.0a1.tar.gz", "", size=3),
        FileEntry("x-9.0-py3-none-any.whl", "", size=2),
    ]
    doc = orjson.loads(render_project_json("X", files, link))
    assert doc["versions"] == ["1.0a1", "9.0", "10.0"]
    assert doc["files"][0]["size"] == 5 and doc["files"][0]["upload-time"] == "2024-01-01T00:00:00Z"
    assert "upload-time" not in doc["files"][1]
    assert sorted(doc["versions"], key=Version) == doc["versions"]


def test_root_pages() -> None:
    page = render_root_html(["Foo_Bar", "a&b"]).decode()
    assert '<a href="foo-bar/">Foo_Bar</a>' in page
    assert "a&amp;b" in page
    assert 'content="1.1"' in page
    doc = orjson.loads(render_root_json(["Foo_Bar", "baz"]))
    assert doc == {"meta": {"api-version": "1.1"}, "projects": [{"name": "Foo_Bar"}, {"name": "baz"}]}


# --------------------------------------------------------------------------- PEP 691 negotiation

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ("html", CONTENT_TYPE_TEXT_HTML)),
        ("", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("*/*", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("text/*", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("text/html", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", ("html", CONTENT_TYPE_TEXT_HTML)),
        (PIP_ACCEPT, ("json", CONTENT_TYPE_JSON)),
        ("application/vnd.pypi.simple.v1+json", ("json", CONTENT_TYPE_JSON)),
        ("application/vnd.pypi.simple.latest+json", ("json", CONTENT_TYPE_JSON)),
        ("application/vnd.pypi.simple.v1+html", ("html", CONTENT_TYPE_HTML)),
        ("application/vnd.pypi.simple.latest+html", ("html", CONTENT_TYPE_HTML)),
        ("application/*", ("html", CONTENT_TYPE_HTML)),
        # explicit types tie at q=1: JSON preferred
        ("application/vnd.pypi.simple.v1+html, application/vnd.pypi.simple.v1+json", ("json", CONTENT_TYPE_JSON)),
        # q decides
        ("application/vnd.pypi.simple.v1+json;q=0.2, text/html;q=0.5", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("text/html;q=0.1, application/vnd.pypi.simple.v1+json;q=0.9", ("json", CONTENT_TYPE_JSON)),
        # q=0 excludes, also against a wildcard (most specific range wins, RFC 9110)
        ("application/vnd.pypi.simple.v1+json;q=0, */*", ("html", CONTENT_TYPE_TEXT_HTML)),
        ("text/html;q=0, application/vnd.pypi.simple.v1+html;q=0, */*;q=0.5", ("json", CONTENT_TYPE_JSON)),
        ("TEXT/HTML ; Q=0.5", ("html", CONTENT_TYPE_TEXT_HTML)),
        # an element with a malformed q is ignored
        ("application/vnd.pypi.simple.v1+json;q=abc, text/html;q=0.1", ("html", CONTENT_TYPE_TEXT_HTML)),
    ],
)
def test_negotiate(accept: str | None, expected: tuple[str, str]) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "image/png",
        "text/html;q=0",
        "application/vnd.pypi.simple.v2+json",
        "application/vnd.pypi.simple.v1+json;q=0, application/vnd.pypi.simple.v1+html;q=0, text/html;q=0",
        "*/*;q=0",
    ],
)
def test_negotiate_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate(accept)
    assert http_status(info.value) == 406
    assert "application/vnd.pypi.simple.v1+json" in info.value.message


# --------------------------------------------------------------------------- upload validation


def inspect(path: Path, **overrides: str) -> Distribution:
    return inspect_distribution(path, path.name, fx.twine_fields(path, **overrides), fx.file_digests(path))


def test_inspect_wheel(tmp_path: Path) -> None:
    path = fx.make_wheel(tmp_path, "My.Pkg", "1.0.0", requires_python=">=3.8", requires_dist=["attrs>=20"])
    assert path.name == "my_pkg-1.0.0-py3-none-any.whl"
    dist = inspect(path)
    assert dist.name == "my-pkg"
    assert dist.display_name == "My.Pkg"
    assert dist.version == "1.0.0"
    assert dist.filename == path.name
    assert dist.requires_python == ">=3.8"
    assert dist.packagetype == "bdist_wheel"
    assert dist.metadata.startswith(b"Metadata-Version: 2.1\nName: My.Pkg\n")
    assert b"Requires-Dist: attrs>=20" in dist.metadata


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_inspect_sdist(tmp_path: Path, fmt: str) -> None:
    path = fx.make_sdist(tmp_path, "Other_Pkg", "2.0rc1", fmt=fmt)  # type: ignore[arg-type]
    assert path.name == f"other_pkg-2.0rc1.{fmt}"
    dist = inspect(path)
    assert (dist.name, dist.display_name, dist.version, dist.packagetype) == ("other-pkg", "Other_Pkg", "2.0rc1", "sdist")
    assert dist.requires_python is None
    assert b"Name: Other_Pkg" in dist.metadata


def test_inspect_accepts_equivalent_spellings_and_computes_missing_digests(tmp_path: Path) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    fields = fx.twine_fields(path, name="PKG", version="1.0.0")  # same project, same PEP 440 version
    dist = inspect_distribution(path, path.name, fields, {})  # digests computed when not given
    assert dist.version == "1.0"
    bare = {"name": "pkg", "version": "1.0"}  # no digests declared: nothing to compare
    assert inspect_distribution(path, path.name, bare, {}).name == "pkg"


def test_require_fields_names_every_missing_field() -> None:
    with pytest.raises(BadRequest, match=r"missing required form field\(s\): :action, version, content"):
        require_fields({"name": "x", "version": " "}, (":action", "name", "version", "content"))
    require_fields({":action": "file_upload", "name": "x", "version": "1"})


def _rejected(path: Path, fields: dict[str, str], digests: dict[str, str] | None = None,
              filename: str | None = None) -> str:
    with pytest.raises(BadRequest) as info:
        inspect_distribution(path, path.name if filename is None else filename, fields, fx.file_digests(path) if digests is None else digests)
    assert http_status(info.value) == 400
    return info.value.message


def test_reject_not_a_zip_wheel(tmp_path: Path) -> None:
    path = fx.make_not_a_zip_wheel(tmp_path, "pkg", "1.0")
    message = _rejected(path, {"name": "pkg", "version": "1.0"})
    assert "not a zip archive" in message and path.name in message


def test_reject_not_a_gzip_sdist(tmp_path: Path) -> None:
    path = fx.make_not_a_gzip_sdist(tmp_path, "pkg", "1.0")
    assert "not a gzip-compressed tar archive" in _rejected(path, {"name": "pkg", "version": "1.0"})


def test_reject_zip_disguised_as_tar_gz(tmp_path: Path) -> None:
    wheel = fx.make_wheel(tmp_path / "w", "pkg", "1.0")
    path = tmp_path / "pkg-1.0.tar.gz"
    path.write_bytes(wheel.read_bytes())
    assert "not a gzip-compressed tar archive" in _rejected(path, {"name": "pkg", "version": "1.0"})


def test_reject_missing_metadata(tmp_path: Path) -> None:
    path = fx.make_wheel_without_metadata(tmp_path, "pkg", "1.0")
    assert "has no pkg-1.0.dist-info/METADATA" in _rejected(path, {"name": "pkg", "version": "1.0"})
    sdist = fx.make_sdist(tmp_path, "pkg", "1.0", include_metadata=False)
    assert "has no <top>/PKG-INFO" in _rejected(sdist, {"name": "pkg", "version": "1.0"})


def test_reject_metadata_name_mismatch(tmp_path: Path) -> None:
    path = fx.make_mismatched_wheel(tmp_path, "pkg", "1.0", metadata_name="evil")
    message = _rejected(path, fx.twine_fields(path, name="pkg"))
    assert "METADATA Name 'evil' does not match the file name" in message


def test_reject_metadata_version_mismatch(tmp_path: Path) -> None:
    path = fx.make_mismatched_wheel(tmp_path, "pkg", "1.0", metadata_version="2.0")
    message = _rejected(path, fx.twine_fields(path, version="1.0"))
    assert "METADATA Version '2.0' does not match the file name" in message
    sdist = fx.make_sdist(tmp_path, "pkg", "1.0", metadata_version="1.1")
    assert "PKG-INFO Version '1.1'" in _rejected(sdist, {"name": "pkg", "version": "1.0"})


def test_reject_form_mismatch(tmp_path: Path) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    assert "form field name 'other'" in _rejected(path, fx.twine_fields(path, name="other"))
    assert "form field version '1.1'" in _rejected(path, fx.twine_fields(path, version="1.1"))
    assert "not a valid PEP 440 version" in _rejected(path, fx.twine_fields(path, version="one"))
    assert "form field filetype 'sdist'" in _rejected(path, fx.twine_fields(path, filetype="sdist"))
    assert "missing required form field(s): name, version" in _rejected(path, {":action": "file_upload"})


@pytest.mark.parametrize("field", ["sha256_digest", "md5_digest", "blake2_256_digest"])
def test_reject_digest_mismatch(tmp_path: Path, field: str) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    message = _rejected(path, fx.twine_fields(path, **{field: "0" * 32}))
    assert f"{field} does not match the uploaded file" in message


def test_reject_digest_mismatch_against_core_digests(tmp_path: Path) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    # the core's streamed digests are authoritative: bytes changed after twine hashed them
    actual = dict(fx.file_digests(path), sha256="f" * 64)
    assert "sha256_digest does not match" in _rejected(path, fx.twine_fields(path), actual)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("pkg-1.0.exe", "unsupported distribution file type"),
        ("pkg-1.0.tar.bz2", "unsupported distribution file type"),
        ("pkg-1.0-py3-none.whl", "invalid distribution file name"),
        ("pkg.tar.gz", "invalid distribution file name"),
        ("../pkg-1.0-py3-none-any.whl", "invalid distribution file name"),
        ("", "invalid distribution file name"),
    ],
)
def test_reject_bad_filenames(tmp_path: Path, filename: str, expected: str) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    assert expected in _rejected(path, {"name": "pkg", "version": "1.0"}, filename=filename)


def test_reject_wheel_renamed_to_other_project(tmp_path: Path) -> None:
    path = fx.make_wheel(tmp_path, "pkg", "1.0")
    renamed = tmp_path / "other-1.0-py3-none-any.whl"
    renamed.write_bytes(path.read_bytes())
    assert "has no other-1.0.dist-info/METADATA" in _rejected(renamed, {"name": "other", "version": "1.0"})


# --------------------------------------------------------------------------- real installs with pip


def _pip_env() -> dict[str, str]:
    """HELPERS.md: isolate pip from the machine's config (extra indexes, find-links)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", *args],
        env=_pip_env(), capture_output=True, text=True, timeout=240, check=False,
    )


def _import_value(target: Path, module: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}; print({module}.VALUE)"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def test_make_wheel_installs_with_pip_find_links(tmp_path: Path) -> None:
    dists = tmp_path / "dists"
    fx.make_wheel(dists, "cg-dep", "0.1", module_body="VALUE = 'dep'\n")
    fx.make_wheel(dists, "CG.App", "1.2.3", requires_dist=["cg-dep>=0.1"], module_body="VALUE = 'app'\n")
    target = tmp_path / "target"
    result = _pip("install", "--no-index", "--find-links", str(dists), "--target", str(target), "cg.app==1.2.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _import_value(target, "cg_app") == "app"
    assert _import_value(target, "cg_dep") == "dep"  # Requires-Dist was honoured
    assert (target / "cg_app-1.2.3.dist-info" / "RECORD").is_file()


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 over tmp_path/www (directory index.html served)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_static_simple_index_installs_with_pip(tmp_path: Path, static_server: tuple[str, Path]) -> None:
    url, root = static_server
    build = tmp_path / "build"
    good = fx.make_wheel(build, "cg-lib", "1.0", module_body="VALUE = 'one'\n")
    newer = fx.make_wheel(build, "cg-lib", "2.0", module_body="VALUE = 'two'\n")
    future = fx.make_wheel(build, "cg-lib", "3.0", requires_python=">=99", module_body="VALUE = 'three'\n")
    layout = fx.write_simple_index(root, [good, newer, future], yanked={newer.name: "broken"})
    assert layout == {"cg-lib": [good.name, newer.name, future.name]}
    assert (root / "files" / f"{good.name}.metadata").read_bytes() == fx.read_dist_info(good).metadata
    # the page parses with our own parser: hashes, yanked, requires-python, PEP 658 metadata
    page_url = f"{url}/simple/cg-lib/"
    entries = parse_html((root / "simple" / "cg-lib" / "index.html").read_bytes(), page_url)
    assert [e.yanked for e in entries] == [False, "broken", False]
    assert entries[2].requires_python == ">=99"
    assert entries[0].url == f"{url}/files/{good.name}"
    assert entries[0].core_metadata and entries[0].hashes["sha256"] == fx.file_digests(good)["sha256"]
    target = tmp_path / "target"
    # yanked 2.0 and requires-python 3.0 are both skipped: pip picks 1.0
    result = _pip("install", "--index-url", f"{url}/simple/", "--target", str(target), "cg-lib")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _import_value(target, "cg_lib") == "one"


def test_rendered_page_installs_with_pip(tmp_path: Path, static_server: tuple[str, Path]) -> None:
    """Our render_project_html output (with metadata attributes) is what pip consumes."""
    url, root = static_server
    wheel = fx.make_wheel(root / "f", "cg-rendered", "0.5", module_body="VALUE = 'rendered'\n")
    info = fx.read_dist_info(wheel)
    (root / "f" / f"{wheel.name}.metadata").write_bytes(info.metadata)
    entry = FileEntry(
        wheel.name,
        "",
        hashes={"sha256": fx.file_digests(wheel)["sha256"]},
        requires_python=">=3.8",
        core_metadata={"sha256": hashlib.sha256(info.metadata).hexdigest()},
        size=wheel.stat().st_size,
    )
    page = root / "simple" / "cg-rendered"
    page.mkdir(parents=True)
    (page / "index.html").write_bytes(render_project_html("cg-rendered", [entry], lambda e: f"/f/{e.filename}"))
    target = tmp_path / "target"
    result = _pip("install", "--index-url", f"{url}/simple/", "--target", str(target), "cg-rendered")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _import_value(target, "cg_rendered") == "rendered"


def test_write_simple_index_json(tmp_path: Path) -> None:
    wheel = fx.make_wheel(tmp_path / "b", "cg-json", "1.0", requires_python=">=3.8")
    sdist = fx.make_sdist(tmp_path / "b", "cg-json", "1.0")
    fx.write_simple_index(tmp_path / "www", [wheel, sdist], fmt="json")
    body = (tmp_path / "www" / "simple" / "cg-json" / "index.json").read_bytes()
    entries = parse_json(body, "http://127.0.0.1/simple/cg-json/")
    assert [e.filename for e in entries] == [wheel.name, sdist.name]
    assert entries[0].size == wheel.stat().st_size and entries[0].requires_python == ">=3.8"
    assert entries[0].core_metadata and entries[1].core_metadata is False
    root_doc = orjson.loads((tmp_path / "www" / "simple" / "index.json").read_bytes())
    assert root_doc["projects"] == [{"name": "cg-json"}]
