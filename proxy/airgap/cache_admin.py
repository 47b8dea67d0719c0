"""``channelgate cache``: what the store holds, pruning, and re-hashing (issue 10, part 6).

- ``cache``: bytes per upstream (cached artifacts, by the provenance artifacts.py records,
  and index documents, by URL) and per channel (its uploads plus its upstreams' share).
- ``cache prune --older-than DAYS | --max-size SIZE``: removes cached upstream artifacts,
  least recently used first: last use is the later of the fetch and the last time the server
  served it (the store's use stamps, touched at most once an hour). Never an upload, never an index document (an
  offline site's indexes), never a file that an imported bundle brought (their manifests
  are kept through the Store: ``airgap/imported/`` in the store or the bucket): an
  air-gapped site could not fetch it again.
- ``cache verify``: verify.py.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from ..settings import ECOSYSTEMS, Settings
from ..store.protocols import Store
from ..store.s3 import open_store
from ..store.backends import catalog_reader
from .bundle import BundleError
from .manifest import ManifestReader

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.I)


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500M, 20G)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


@dataclass
class Usage:
    upstream_artifacts: dict[str, int] = field(default_factory=dict)
    upstream_indexes: dict[str, int] = field(default_factory=dict)
    channel_uploads: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)


def _store(settings: Settings) -> Store:
    """The configured Store (filesystem or S3): blobs are listed and removed through it."""
    return open_store(settings, clean=False)


def usage(settings: Settings) -> Usage:
    store = _store(settings)
    out = Usage()
    for blob in store.blobs("cache"):
        name = store.origin(blob.sha256) or "(unknown upstream)"
        out.upstream_artifacts[name] = out.upstream_artifacts.get(name, 0) + blob.size
    prefixes = {up.url + "/": name for name, up in settings.upstreams.items()}
    meta = store.area_dir("meta")
    for doc in (meta / "docs").glob("*.json") if (meta / "docs").is_dir() else ():
        try:
            data = json.loads(doc.read_bytes())
            body = meta / "bodies" / data["digest"][:2] / data["digest"]
            size = body.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            continue
        owner = next((n for p, n in prefixes.items() if str(data.get("url", "")).startswith(p)), "(unknown upstream)")
        out.upstream_indexes[owner] = out.upstream_indexes.get(owner, 0) + size
    with catalog_reader(settings) as catalog:
        for channel, policy in settings.channels.items():
            hosted = sum(u.size for eco in ECOSYSTEMS for u in catalog.list(channel, eco)) if catalog else 0
            out.channel_uploads[channel] = hosted
            out.channels[channel] = hosted + sum(
                out.upstream_artifacts.get(n, 0) + out.upstream_indexes.get(n, 0) for n in policy.upstreams)
    return out


def protected(store: Store) -> set[str]:
    """sha256s of the cached artifacts imported bundles brought (their manifests are kept
    through the Store: with S3, in the bucket, whichever replica imported them)."""
    keep: set[str] = set()
    for path in store.imported():
        try:
            reader, fh = ManifestReader.open(path)
            with fh:
                keep.update(e.name.rsplit("/", 1)[-1] for e in reader.entries()
                            if e.member and e.name.startswith("cache/sha256/"))
        except BundleError:
            continue
    return keep


def prune(settings: Settings, *, older_than_days: float | None, max_size: int | None) -> tuple[int, int]:
    """Remove cached artifacts unused for ``older_than_days`` and/or, least recently used
    first, down to a total size; (files, bytes) removed."""
    store = _store(settings)
    keep = protected(store)
    entries = []
    total = 0
    for blob in store.blobs("cache"):
        total += blob.size
        if blob.sha256 not in keep:
            used = max(blob.mtime, store.last_used(blob.sha256) or 0.0)  # a fetch is a use
            entries.append((used, blob.size, blob.sha256))
    entries.sort()
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed = freed = 0
    for used, size, sha256 in entries:  # least recently used first
        old = cutoff is not None and used < cutoff
        over = max_size is not None and total > max_size
        if not old and not over:
            break  # nothing later was used longer ago, and the size fits
        store.remove("cache", sha256)
        total -= size
        removed += 1
        freed += size
    return removed, freed
