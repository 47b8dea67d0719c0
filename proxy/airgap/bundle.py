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
                                     (manifest.py: one entry a line, streamed)

``manifest.json`` is written beside the bundle too (``BUNDLE.manifest.json``): ``--since``
reads it to write only what the earlier bundle lacks. Its ``known`` map carries everything
the importing site holds after importing the chain, so increments chain.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from ..store.protocols import Store

FORMAT = "channelgate-bundle"
VERSION = 3  # 2: catalog/packages.jsonl (a version 1 importer would drop privacy: it refuses);
#              3: the manifest one entry a line, written and read as a stream (manifest.py)
READABLE = (1, 2, 3)  # an older bundle or manifest still imports, and still serves as a --since base
MANIFEST = "manifest.json"
CATALOG = "catalog/uploads.jsonl"
PACKAGES = "catalog/packages.jsonl"
_HEX64 = "[0-9a-f]{64}"
MEMBER_RE = re.compile(
    rf"^(?:(?:uploads|cache)/sha256/[0-9a-f]{{2}}/{_HEX64}|cache/(?:refs|origin)/{_HEX64}|meta/bodies/[0-9a-f]{{2}}/{_HEX64}"
    rf"|meta/docs/{_HEX64}\.json|catalog/(?:uploads|packages)\.jsonl)$"
)
CONTENT_ADDRESSED = re.compile(rf"^(?:uploads/sha256|cache/sha256|meta/bodies)/[0-9a-f]{{2}}/({_HEX64})$")


class BundleError(Exception):
    """A bundle that cannot be imported (not a bundle, tampered, truncated, wrong version)."""


def store_members(store: "Store", uploads: set[str], upstreams: set[str],
                  url_prefixes: tuple[str, ...]) -> Iterator[tuple[str, str | bytes]]:
    """(member name, local file or the member's bytes) for what serving the exported channels
    needs, asked of the Store (filesystem or S3: a blob only the bucket holds is fetched to
    this replica's copy first): the ``uploads`` blobs (sha256s their catalog rows name), the
    cached artifacts of their ``upstreams`` (by provenance; an artifact cached before that
    was recorded goes along, as it may be needed), every alias, and the cached index
    documents of those upstreams (``url_prefixes``), with their bodies."""
    for sha256 in sorted(uploads):
        upload = store.find("uploads", sha256)
        if upload is not None:
            yield f"uploads/sha256/{sha256[:2]}/{sha256}", str(upload)
    for blob in store.blobs("cache"):
        origin = store.origin(blob.sha256)
        if origin is None or origin in upstreams:
            cached = store.find("cache", blob.sha256)
            if cached is None:
                continue  # pruned meanwhile
            yield f"cache/sha256/{blob.sha256[:2]}/{blob.sha256}", str(cached)
            if origin is not None:
                yield f"cache/origin/{blob.sha256}", origin.encode()
    for digest, sha256 in store.refs():
        yield f"cache/refs/{digest}", sha256.encode()
    meta = store.area_dir("meta")
    for name, path in _files(meta.parent, "meta/docs"):
        try:
            with open(path, "rb") as fh:
                descriptor = json.loads(fh.read())
            digest, url = descriptor.get("digest"), str(descriptor.get("url", ""))
        except (OSError, ValueError, AttributeError):
            continue  # a damaged descriptor is not carried over
        if not url.startswith(url_prefixes) or not (isinstance(digest, str) and re.fullmatch(_HEX64, digest)):
            continue
        body = f"{meta}/bodies/{digest[:2]}/{digest}"
        if os.path.isfile(body):  # (a body two descriptors share goes once: the ledger knows it)
            yield f"meta/bodies/{digest[:2]}/{digest}", body
            yield name, path


def _files(root: Path, area: str) -> Iterator[tuple[str, str]]:
    """The files under ``root/area``, depth first in name order: one directory listed at a
    time (os.scandir), so memory is one directory's names, not the store's. Plain strings
    until the end: pathlib's parsing was most of the walk's cost."""
    prefix = f"{root}/"
    stack = [f"{root}/{area}"]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        for entry in reversed(entries):
            if entry.is_file(follow_symlinks=False):
                name = entry.path[len(prefix):]
                if MEMBER_RE.match(name):
                    yield name, entry.path
