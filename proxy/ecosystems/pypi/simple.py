"""The PyPI simple repository API: parse upstream pages, render our own, negotiate formats.

Pure functions, no I/O. Specs implemented:
- PEP 503 (HTML simple API, name normalisation, ``#<hashname>=<hex>`` fragments,
  ``data-requires-python``), PEP 592 (``data-yanked``), PEP 629 (``pypi:repository-version``),
- PEP 658 / PEP 714 (``data-core-metadata``, legacy ``data-dist-info-metadata``; JSON
  ``core-metadata`` / ``dist-info-metadata``),
- PEP 691 (JSON simple API, content negotiation), PEP 700 (``versions``, ``size``, ``upload-time``).
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import orjson
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from proxy.errors import NotAcceptable, UpstreamError

__all__ = [
    "API_VERSION",
    "CONTENT_TYPE_HTML",
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_TEXT_HTML",
    "FileEntry",
    "is_project_name",
    "negotiate",
    "normalize",
    "parse_html",
    "parse_json",
    "render_project_html",
    "render_project_json",
    "render_root_html",
    "render_root_json",
    "version_from_filename",
]

API_VERSION = "1.1"  # PEP 700 raised the simple API to 1.1 (size, upload-time, versions)
CONTENT_TYPE_JSON = "application/vnd.pypi.simple.v1+json"
CONTENT_TYPE_HTML = "application/vnd.pypi.simple.v1+html"
CONTENT_TYPE_TEXT_HTML = "text/html; charset=utf-8"

# Hash names pip accepts in a PEP 503 fragment, in the order we prefer to emit them.
_FRAGMENT_HASHES = ("sha256", "sha384", "sha512", "sha224", "sha1", "md5")
_NORMALIZE_RE = re.compile(r"[-_.]+")
# PEP 508 names: ASCII letters and digits, with '.', '_' or '-' inside (normalised: [a-z0-9-])
_PROJECT_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return _NORMALIZE_RE.sub("-", name).lower()


def is_project_name(name: str) -> bool:
    """A valid PEP 508 project name (so its PEP 503 form is ``[a-z0-9-]`` and safe in a URL)."""
    return len(name) <= 200 and _PROJECT_NAME_RE.fullmatch(name) is not None


def version_from_filename(filename: str) -> str | None:
    """The (PEP 440 normalised) version in a distribution file name, or None if unparsable."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        if filename.endswith((".tar.gz", ".zip")):
            return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    # Legacy formats (.egg, .tar.bz2, .tgz, .exe, ...): "<name>-<version>[-<tags>].<ext>".
    stem = filename
    for ext in (".tar.bz2", ".tar.xz", ".tar", ".tgz", ".tbz", ".egg", ".exe", ".msi", ".rpm"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        return None
    parts = stem.split("-")
    candidates = [parts[1]] if filename.endswith(".egg") and len(parts) > 1 else parts[1:][::-1]
    for part in candidates:
        try:
            return str(Version(part))
        except InvalidVersion:
            continue
    return None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One distribution file of a project, as PEP 503/691 describe it."""

    filename: str
    url: str  # absolute upstream URL without fragment; "" for a local upload
    hashes: Mapping[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    yanked: bool | str = False  # PEP 592: a str is the reason (and means yanked)
    core_metadata: Mapping[str, str] | bool = False  # PEP 658/714
    size: int | None = None
    upload_time: str | None = None  # PEP 700: ISO 8601, e.g. 2023-01-01T12:00:00.000000Z
    version: str | None = field(init=False, compare=False, repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", version_from_filename(self.filename))

    @property
    def has_metadata(self) -> bool:
        return self.core_metadata is not False


# --------------------------------------------------------------------------- parsing


def _metadata_attr(value: str | None) -> Mapping[str, str] | bool:
    """PEP 658/714 attribute: ``true`` or ``<hashname>=<hexdigest>``."""
    if value is None:
        return False
    value = value.strip()
    if value.lower() == "true":
        return True
    name, sep, digest = value.partition("=")
    if sep and name and digest:
        return {name.strip().lower(): digest.strip()}
    return False


class _AnchorParser(HTMLParser):
    def __init__(self, page_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = page_url
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base":
            href = dict(attrs).get("href")
            if href:  # pip honours <base href> too
                self.base_url = urljoin(self.base_url, href)
        elif tag == "a":
            if self._current is not None:  # unclosed <a>: close it implicitly
                self._finish()
            self._current = dict(attrs)
            self._text = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self._finish()

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self._finish()

    def close(self) -> None:
        super().close()
        if self._current is not None:
            self._finish()

    def _finish(self) -> None:
        assert self._current is not None
        self.anchors.append((self._current, "".join(self._text).strip()))
        self._current = None
        self._text = []


def parse_html(body: bytes, page_url: str) -> list[FileEntry]:
    """Parse a PEP 503 project page into file entries (hrefs made absolute against page_url)."""
    parser = _AnchorParser(page_url)
    parser.feed(body.decode("utf-8", errors="replace"))
    parser.close()
    entries: list[FileEntry] = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(parser.base_url, href.strip()))
        filename = text or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if not filename:
            continue
        hashes: dict[str, str] = {}
        hash_name, sep, digest = fragment.partition("=")
        if sep and hash_name and digest:
            hashes[hash_name.lower()] = digest
        yanked: bool | str = False
        if "data-yanked" in attrs:  # PEP 592: the value, if any, is the reason
            yanked = attrs["data-yanked"] or True
        # PEP 714: prefer data-core-metadata, fall back on the PEP 658 name.
        meta_attr = attrs.get("data-core-metadata")
        if meta_attr is None:
            meta_attr = attrs.get("data-dist-info-metadata")
        requires_python = attrs.get("data-requires-python") or None
        entries.append(
            FileEntry(
                filename=filename,
                url=url,
                hashes=hashes,
                requires_python=requires_python,
                yanked=yanked,
                core_metadata=_metadata_attr(meta_attr),
            )
        )
    return entries


def _json_metadata(value: Any) -> Mapping[str, str] | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k).lower(): str(v) for k, v in value.items()}
    return False


def parse_json(body: bytes, page_url: str) -> list[FileEntry]:
    """Parse a PEP 691 project document (with PEP 700/714 keys) into file entries."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"upstream simple page is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise UpstreamError("upstream simple page is not a PEP 691 project document (no files list)")
    entries: list[FileEntry] = []
    for item in doc["files"]:
        if not isinstance(item, dict):
            continue
        filename, url = item.get("filename"), item.get("url")
        if not isinstance(filename, str) or not isinstance(url, str) or not filename:
            continue
        url = urldefrag(urljoin(page_url, url))[0]
        raw_hashes = item.get("hashes")
        hashes = (
            {str(k).lower(): str(v) for k, v in raw_hashes.items()} if isinstance(raw_hashes, dict) else {}
        )
        raw_yanked = item.get("yanked", False)
        yanked: bool | str = (raw_yanked or True) if isinstance(raw_yanked, str) else bool(raw_yanked)
        meta = item["core-metadata"] if "core-metadata" in item else item.get("dist-info-metadata", False)
        requires_python = item.get("requires-python")
        size = item.get("size")
        upload_time = item.get("upload-time")
        entries.append(
            FileEntry(
                filename=filename,
                url=url,
                hashes=hashes,
                requires_python=requires_python if isinstance(requires_python, str) and requires_python else None,
                yanked=yanked,
                core_metadata=_json_metadata(meta),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                upload_time=upload_time if isinstance(upload_time, str) else None,
            )
        )
    return entries


# --------------------------------------------------------------------------- rendering


def _fragment(hashes: Mapping[str, str]) -> str:
    for name in _FRAGMENT_HASHES:
        if hashes.get(name):
            return f"#{name}={hashes[name]}"
    return ""


def _metadata_value(meta: Mapping[str, str] | bool) -> str:
    if meta is True:
        return "true"
    assert isinstance(meta, Mapping)
    for name in _FRAGMENT_HASHES:
        if meta.get(name):
            return f"{name}={meta[name]}"
    return "true"


def render_project_html(
    project: str, files: Sequence[FileEntry], link_for: Callable[[FileEntry], str]
) -> bytes:
    """A PEP 503 project page (repository version 1.1), links from ``link_for``."""
    esc = html.escape
    title = esc(f"Links for {project}")
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="%s">' % API_VERSION,
        f"    <title>{title}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{title}</h1>",
    ]
    for entry in files:
        href = link_for(entry)
        if "#" not in href:
            href += _fragment(entry.hashes)
        attrs = [f'href="{esc(href)}"']
        if entry.requires_python:
            attrs.append(f'data-requires-python="{esc(entry.requires_python)}"')
        if entry.yanked is not False:
            reason = entry.yanked if isinstance(entry.yanked, str) else ""
            attrs.append(f'data-yanked="{esc(reason)}"')
        if entry.core_metadata is not False:
            value = esc(_metadata_value(entry.core_metadata))
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')  # PEP 714: keep the old name too
        lines.append(f"    <a {' '.join(attrs)}>{esc(entry.filename)}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def _sort_versions(versions: Iterable[str]) -> list[str]:
    def key(text: str) -> tuple[int, Version | str]:
        try:
            return (1, Version(text))
        except InvalidVersion:
            return (0, text)  # unparsable versions are kept, before all valid ones

    unique = set(versions)
    valid = sorted((v for v in unique if key(v)[0] == 1), key=Version)
    invalid = sorted(v for v in unique if key(v)[0] == 0)
    return invalid + valid


def render_project_json(
    project: str, files: Sequence[FileEntry], link_for: Callable[[FileEntry], str]
) -> bytes:
    """A PEP 691 project document, API version 1.1 (PEP 700 ``versions``, ``size``, ``upload-time``)."""
    out_files: list[dict[str, Any]] = []
    for entry in files:
        item: dict[str, Any] = {
            "filename": entry.filename,
            "url": link_for(entry),
            "hashes": dict(entry.hashes),
            "requires-python": entry.requires_python,
            "yanked": entry.yanked,
        }
        meta: Mapping[str, str] | bool = (
            entry.core_metadata if isinstance(entry.core_metadata, bool) else dict(entry.core_metadata)
        )
        item["core-metadata"] = meta
        item["dist-info-metadata"] = meta  # PEP 714: served under both keys
        if entry.size is not None:
            item["size"] = entry.size
        if entry.upload_time is not None:
            item["upload-time"] = entry.upload_time
        out_files.append(item)
    doc = {
        "meta": {"api-version": API_VERSION},
        "name": normalize(project),
        "versions": _sort_versions(e.version for e in files if e.version is not None),
        "files": out_files,
    }
    return orjson.dumps(doc)


def render_root_html(projects: Iterable[str]) -> bytes:
    """The PEP 503 ``/simple/`` page: one link per project, to ``<normalized>/``."""
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="%s">' % API_VERSION,
        "    <title>Simple index</title>",
        "  </head>",
        "  <body>",
    ]
    for name in projects:
        lines.append(f'    <a href="{html.escape(normalize(name))}/">{html.escape(name)}</a><br />')
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def render_root_json(projects: Iterable[str]) -> bytes:
    """The PEP 691 ``/simple/`` document."""
    doc = {"meta": {"api-version": API_VERSION}, "projects": [{"name": name} for name in projects]}
    return orjson.dumps(doc)


# --------------------------------------------------------------------------- negotiation

# (media type, kind, content type to answer with, matched by wildcards too), in server
# preference for exact matches. The ``latest`` aliases count only when named explicitly
# (PEP 691: a server answers with the concrete v1 type).
_OFFERS: tuple[tuple[str, Literal["json", "html"], str, bool], ...] = (
    ("application/vnd.pypi.simple.v1+json", "json", CONTENT_TYPE_JSON, True),
    ("application/vnd.pypi.simple.latest+json", "json", CONTENT_TYPE_JSON, False),
    ("application/vnd.pypi.simple.v1+html", "html", CONTENT_TYPE_HTML, True),
    ("application/vnd.pypi.simple.latest+html", "html", CONTENT_TYPE_HTML, False),
    ("text/html", "html", CONTENT_TYPE_TEXT_HTML, True),
)


def _parse_accept(accept: str) -> list[tuple[str, float]]:
    """RFC 9110 §12.5.1 media ranges with their q-values; malformed elements are ignored."""
    ranges: list[tuple[str, float]] = []
    for element in accept.split(","):
        parts = [p.strip() for p in element.split(";")]
        media = parts[0].lower()
        if not media or "/" not in media:
            continue
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if 0.0 <= q <= 1.0:
            ranges.append((media, q))
    return ranges


def _match(media_range: str, media_type: str) -> int:
    """Specificity of a match (2 exact, 1 ``type/*``, 0 ``*/*``), or -1 for no match."""
    if media_range == media_type:
        return 2
    if media_range == "*/*":
        return 0
    major, _, minor = media_range.partition("/")
    if minor == "*" and media_type.startswith(major + "/"):
        return 1
    return -1


def negotiate(accept: str | None) -> tuple[Literal["json", "html"], str]:
    """PEP 691 content negotiation: ``(kind, content type to send)``.

    Highest q wins; among equal q the most specific range that matched wins; among exact
    matches JSON is preferred, among wildcard matches HTML (so browsers and curl get HTML).
    No or empty header means HTML; nothing acceptable (all q=0) raises NotAcceptable.
    """
    if accept is None or not accept.strip():
        return "html", CONTENT_TYPE_TEXT_HTML
    ranges = _parse_accept(accept)
    if not ranges:
        return "html", CONTENT_TYPE_TEXT_HTML
    best: tuple[float, int, int] | None = None
    choice: tuple[Literal["json", "html"], str] | None = None
    for index, (media_type, kind, content_type, by_wildcard) in enumerate(_OFFERS):
        # RFC 9110: the most specific range matching an offer decides its q-value.
        matched = [(_match(r, media_type), q) for r, q in ranges]
        matched = [m for m in matched if m[0] == 2 or (by_wildcard and m[0] >= 0)]
        if not matched:
            continue
        specificity, q = max(matched, key=lambda m: (m[0], m[1]))
        if q <= 0.0:
            continue
        preference = -index if specificity == 2 else index  # wildcards: text/html first
        score = (q, specificity, preference)
        if best is None or score > best:
            best, choice = score, (kind, content_type)
    if choice is None:
        raise NotAcceptable(
            "no acceptable representation; offer application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html or text/html"
        )
    return choice
