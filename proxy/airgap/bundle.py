"""The bundle format (DESIGN, "Air-gap": export and import).

A bundle is one uncompressed tar (package files are compressed already), written and read
as a stream. Its members are store paths, relative to ``storage.path``, and nothing else:

    uploads/sha256/ab/<sha256>       hosted uploads
    cache/sha256/ab/<sha256>         cached upstream artifacts
    cache/refs/<key digest>          alias -> sha256 (artifacts an upstream declares by MD5)
    cache/origin/<sha256>            the upstream a cached artifact came from
    meta/bodies/ab/<sha256>          cached upstream index documents
    meta/docs/<key>.json             their descriptors (relocatable: no path inside)
    catalog/uploads.jsonl            the exported channels' catalog rows, one JSON object a line
    catalog/packages.jsonl           their package settings: privacy, metadata, locked labels
                                     (package_settings.py; since version 2)
    manifest.json                    last: format, channels, and the sha256 and size of every member

``manifest.json`` is written beside the bundle too (``BUNDLE.manifest.json``): ``--since``
reads it to write only what the earlier bundle lacks. Its ``known`` map carries everything
the importing site holds after importing the chain, so increments chain.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

FORMAT = "channelgate-bundle"
VERSION = 2  # 2: catalog/packages.jsonl (a version 1 importer would drop privacy: it refuses)
READABLE = (1, 2)  # a version 1 bundle or manifest still imports, and still serves as a --since base
MANIFEST = "manifest.json"
CATALOG = "catalog/uploads.jsonl"
PACKAGES = "catalog/packages.jsonl"
IMPORTED = "airgap/imported"  # in the store: the manifests of imported bundles
_HEX64 = "[0-9a-f]{64}"
MEMBER_RE = re.compile(
    rf"^(?:(?:uploads|cache)/sha256/[0-9a-f]{{2}}/{_HEX64}|cache/(?:refs|origin)/{_HEX64}|meta/bodies/[0-9a-f]{{2}}/{_HEX64}"
    rf"|meta/docs/{_HEX64}\.json|catalog/(?:uploads|packages)\.jsonl)$"
)
CONTENT_ADDRESSED = re.compile(rf"^(?:uploads/sha256|cache/sha256|meta/bodies)/[0-9a-f]{{2}}/({_HEX64})$")


class BundleError(Exception):
    """A bundle that cannot be imported (not a bundle, tampered, truncated, wrong version)."""


@dataclass(frozen=True, slots=True)
class Member:
    sha256: str
    size: int


@dataclass
class Manifest:
    channels: list[str]
    members: dict[str, Member] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)  # name -> sha256, this bundle and its bases
    created: float = field(default_factory=time.time)
    since: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "created": self.created, "channels": self.channels,
            "since": self.since,
            "members": {n: {"sha256": m.sha256, "size": m.size} for n, m in sorted(self.members.items())},
            "known": dict(sorted(self.known.items())),
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BundleError("the manifest is not JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BundleError("not a channelgate bundle manifest")
        if raw.get("version") not in READABLE:
            raise BundleError(f"bundle format version {raw.get('version')!r} is not supported (this is {VERSION})")
        members: dict[str, Member] = {}
        for name, entry in _mapping(raw.get("members")).items():
            if not MEMBER_RE.match(name) or not isinstance(entry, dict):
                raise BundleError(f"the manifest lists an unexpected member {name!r}")
            sha, size = entry.get("sha256"), entry.get("size")
            if not (isinstance(sha, str) and re.fullmatch(_HEX64, sha)) or not isinstance(size, int) or size < 0:
                raise BundleError(f"the manifest entry of {name!r} is malformed")
            members[name] = Member(sha, size)
        known = {str(k): str(v) for k, v in _mapping(raw.get("known")).items()}
        channels = [str(c) for c in raw.get("channels") or []]
        return cls(channels, members, known, float(raw.get("created") or 0), raw.get("since"))

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        try:
            return cls.from_bytes(path.read_bytes())
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}") from None


def _mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BundleError("the manifest is malformed")
    return value


def store_members(root: Path, uploads: set[str], upstreams: set[str],
                  url_prefixes: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """(member name, file) for what serving the exported channels needs, in a stable order:
    the ``uploads`` blobs (sha256s their catalog rows name), the cached artifacts of their
    ``upstreams`` (by the provenance in ``cache/origin``; an artifact cached before that was
    recorded goes along, as it may be needed), every alias, and the cached index documents
    of those upstreams (``url_prefixes``), with their bodies."""
    for name, path in _files(root, "uploads/sha256"):
        if path.name in uploads:
            yield name, path
    for name, path in _files(root, "cache/sha256"):
        origin = _origin(root, path.name)
        if origin is None or origin in upstreams:
            yield name, path
            if origin is not None:
                yield f"cache/origin/{path.name}", root / "cache" / "origin" / path.name
    yield from _files(root, "cache/refs")
    bodies: set[str] = set()
    docs = root / "meta" / "docs"
    for path in sorted(docs.glob("*.json")) if docs.is_dir() else ():
        try:
            descriptor = json.loads(path.read_bytes())
            digest, url = descriptor.get("digest"), str(descriptor.get("url", ""))
        except (OSError, ValueError, AttributeError):
            continue  # a damaged descriptor is not carried over
        if not url.startswith(url_prefixes):
            continue
        if isinstance(digest, str) and re.fullmatch(_HEX64, digest):
            bodies.add(digest)
            yield f"meta/docs/{path.name}", path
    for digest in sorted(bodies):
        body = root / "meta" / "bodies" / digest[:2] / digest
        if body.is_file():
            yield f"meta/bodies/{digest[:2]}/{digest}", body


def _origin(root: Path, sha256: str) -> str | None:
    try:
        return (root / "cache" / "origin" / sha256).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _files(root: Path, area: str) -> Iterator[tuple[str, Path]]:
    base = root / area
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*")):
        if path.is_file():
            name = path.relative_to(root).as_posix()
            if MEMBER_RE.match(name):
                yield name, path
