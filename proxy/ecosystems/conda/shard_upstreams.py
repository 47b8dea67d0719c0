"""Upstream channels that offer only CEP-16 sharded repodata, read into ``Repodata``.

CEP-16 (conda/ceps cep-0016.md): ``<subdir>/repodata_shards.msgpack.zst`` maps each package
name to the sha256 of its shard; ``info.shards_base_url`` (shards) and ``info.base_url``
(package files) are relative to the index URL. A shard's URL embeds the sha256 of its
compressed bytes, so a shard is immutable.

- ``fetch_shards``: every shard of an index through the metadata cache (stored on disk,
  served offline and to air-gapped sites), at most ``SHARD_CONCURRENCY`` at a time. A
  shard whose hash this process already holds is read from its stored body without
  asking the cache at all (no revalidation: content-addressed), so a refresh of the index
  fetches only the shards whose hash changed. Each body's sha256 (``Doc.digest``, computed
  by the cache) must equal the index's.
- ``repodata_from_shards`` (in a thread): parses the shards (hashes checked again, raw-byte
  ``sha256``/``md5`` turned into hex, upstream links dropped: cep16.py ``parse_shard``)
  and writes the records as sections on disk, in shard order and compressed in shared chunks
  meanwhile, the format parse.py gives a ``repodata.json`` — so merge, render and
  re-sharding treat both kinds of upstream alike.
  ``info.base_url`` is the index's own; ``UpstreamSubdir.file_url`` resolves it against the
  index URL (the ``UpstreamSubdir``'s url), where CEP-16 says it is relative to.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...cache import Doc, MetadataCache
from ...errors import InvalidInput, NotFound, UpstreamError
from ...memo import Memo
from ...settings import UpstreamSettings
from .cep16 import ShardIndex, parse_shard
from .sections import EXTENSIONS, MAX_DECOMPRESSED, REPODATA_VERSION, Repodata, SectionBuilder
from .section_files import SectionFiles

SHARD_CONCURRENCY = 16  # shard requests in flight per upstream index build


@dataclass(frozen=True)
class StoredShard:
    name: str
    sha256: str  # lower-case hex, from the index
    body_path: str  # the compressed shard as the metadata cache stored it


async def fetch_shards(
    meta: MetadataCache,
    up: UpstreamSettings,
    index_url: str,
    index: ShardIndex,
    known: Memo[str, Doc],
    *,
    concurrency: int = SHARD_CONCURRENCY,
) -> list[StoredShard]:
    """Every shard of ``index`` stored locally (``known``: sha256 -> the cache's Doc).

    Raises UpstreamError/UpstreamTimeout when a shard cannot be fetched, and UpstreamError
    when the upstream lists a shard it does not serve or serves other bytes than its hash.
    """
    names = sorted(index.shards)
    out: dict[str, StoredShard] = {}
    pending: list[str] = []
    for name in names:
        sha = index.shards[name]
        doc = known.get(sha)
        if doc is not None and Path(doc.body_path).exists():
            out[name] = StoredShard(name, sha, doc.body_path)
        else:
            pending.append(name)

    async def one(name: str) -> None:
        sha = index.shards[name]
        url = index.shard_url(index_url, name)
        try:
            doc = await meta.get(up, url, hashed=True)  # checked against its sha256 below
        except NotFound:
            raise UpstreamError(f"upstream {up.name} lists a shard for {name!r} but does not serve it") from None
        if doc.digest != sha:  # Doc.digest is the sha256 of the stored body
            raise UpstreamError(f"upstream {up.name}: the shard of {name!r} does not match its sha256")
        known.put(sha, doc)
        out[name] = StoredShard(name, sha, doc.body_path)

    queue = iter(pending)

    async def worker() -> None:
        for name in queue:  # the workers share one iterator: each name is taken once
            await one(name)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return [out[name] for name in names]


def repodata_from_shards(index: ShardIndex, shards: Iterable[StoredShard], workdir: Path, *,
                         limit: int = MAX_DECOMPRESSED) -> Repodata:
    """The records of every shard as a ``Repodata`` whose sections live in ``workdir``
    (files removed when it is garbage-collected). Raises InvalidInput when a shard is not
    valid (wrong hash, not zstd/msgpack), as parse.py does for invalid repodata, and when
    the shards decompress to more than ``limit`` bytes in all (``server.limits.index_unpacked_mb``,
    the bound of a ``repodata.json.zst``: DESIGN "every decompression is bounded")."""
    budget = limit
    with SectionFiles(workdir, compress=True) as files:
        builders = {ext: SectionBuilder(ext, files.outputs[ext]) for ext in EXTENSIONS}
        name_ids: dict[str, int] = {}
        removed: set[str] = set()
        for stored in shards:
            try:
                shard = parse_shard(Path(stored.body_path).read_bytes(), expected_sha256=stored.sha256,
                                    limit=budget)
            except InvalidInput as exc:
                raise InvalidInput(f"shard of {stored.name!r}: {exc}") from None
            budget -= shard.size
            if budget < 0:  # pragma: no cover - parse_shard reads at most ``budget``
                raise InvalidInput("the shards exceed the size limit")
            removed.update(shard.removed)
            per_ext: dict[str, tuple[list[bytes], list[int], list[bytes], list[int]]] = {
                ext: ([], [], [], []) for ext in EXTENSIONS
            }
            for filename, name, raw in sorted(shard.records):  # a shard's files in order
                pieces, lengths, keys, nids = per_ext[".conda" if filename.endswith(".conda") else ".tar.bz2"]
                key = filename.encode()
                piece = b',"' + key + b'":' + raw  # parse_shard keeps only JSON-safe file names
                pieces.append(piece)
                lengths.append(len(piece))
                keys.append(key)
                nids.append(name_ids.setdefault(name, len(name_ids)))
            for ext, (pieces, lengths, keys, nids) in per_ext.items():
                builders[ext].add_block(pieces, lengths, keys, nids)
        # in shard order (by name), which is not always file-name order: merges copy them so
        sections = files.sections(builders)
        # kept relative: UpstreamSubdir.file_url resolves it against the index URL (CEP-16),
        # so upstreams serving the same index bytes can share this parse (memoised by digest)
        base_url = index.info.get("base_url")
        info = {"subdir": index.info.get("subdir"), "base_url": base_url if isinstance(base_url, str) else ""}
        return Repodata(info, tuple(sorted(removed)), REPODATA_VERSION, list(name_ids), sections)


__all__ = ["SHARD_CONCURRENCY", "StoredShard", "fetch_shards", "repodata_from_shards"]
