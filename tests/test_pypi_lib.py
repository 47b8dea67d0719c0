"""Unit tests for the pure PyPI library: simple API (PEP 503/592/658/691/700/714) and uploads."""
from __future__ import annotations

import html
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
from proxy.errors import NotAcceptable, UpstreamError

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
    assert info.value.status == 406
    assert "application/vnd.pypi.simple.v1+json" in info.value.message
