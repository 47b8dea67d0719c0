"""Merged subdir indexes from parsed sources, and their sharing across channels.

``assemble`` plans one merged index (merge_plan.py) from a channel's uploads and its parsed
upstream documents. ``SharedBuilds`` keys every built index by the content of its inputs
(``share_key``: the subdir, the ``IndexKey`` — upstream document digests with their filter
policy, the channel's uploaded names, ``upstream_allow`` — and a digest of the uploads'
records): channels whose inputs are the same, e.g. several channels mirroring one upstream
with no uploads of their own, get the very same ``SubdirIndex``, built and compressed once
(a conda-forge-sized ``repodata.json.zst`` costs ~0.7 s of CPU each time). ETags already
derive from the inputs, so a shared index answers the same ETag on every channel.
"""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from pathlib import Path

import orjson

from ...memo import SingleFlight
from ...merge import MergeRule
from ...store.catalog import Upload
from .filtered import filtered_positions
from .merge_plan import build_plan, merge_sources, positions_of
from .sections import EXTENSIONS, CondaRecord, Repodata
from .subdir_index import IndexKey, ShardBasis, SubdirIndex, UpstreamSubdir, new_workdir


def normalize(name: str) -> str:
    """conda package names compare lower-case (merge key and dependency-confusion rule)."""
    return name.lower()


def local_record(upload: Upload) -> CondaRecord:
    """An upload as a merge source entry; its repodata record is ``Upload.index_fields``."""
    return upload.filename, upload.name, orjson.dumps(dict(upload.index_fields), option=orjson.OPT_SORT_KEYS)


def share_key(subdir: str, key: IndexKey, uploads: list[Upload]) -> tuple[str, IndexKey, str]:
    """What a merged index's bytes derive from: equal keys, equal documents."""
    digest = hashlib.sha256()
    for upload in sorted(uploads, key=lambda u: u.path):
        filename, name, record = local_record(upload)
        digest.update(orjson.dumps([filename, name]) + record + b"\n")
    return subdir, key, digest.hexdigest()


class SharedBuilds:
    """Built indexes by ``share_key``, while any channel still holds them (weak values), and
    one build per key at a time (a build that several channels ask for at once is shared)."""

    def __init__(self) -> None:
        self._built: weakref.WeakValueDictionary[Hashable, SubdirIndex] = weakref.WeakValueDictionary()
        self._flight: SingleFlight[Hashable, SubdirIndex] = SingleFlight()

    def get(self, key: Hashable) -> SubdirIndex | None:
        return self._built.get(key)

    async def build(self, key: Hashable, make: Callable[[], Awaitable[SubdirIndex]]) -> SubdirIndex:
        found = self._built.get(key)
        if found is not None:
            return found

        async def work() -> SubdirIndex:
            index = await make()
            self._built[key] = index
            return index

        return await self._flight.run(key, work)

    def cancel_all(self) -> None:
        self._flight.cancel_all()


def assemble(key: IndexKey, subdir: str, uploads: list[Upload], ups: list[UpstreamSubdir], *, tmp_dir: Path,
             executor: Executor, slow_executor: Executor) -> SubdirIndex:
    """Plan the merge (in the executor): a few binary searches per upload."""
    local = [local_record(u) for u in uploads]
    blocked = MergeRule(frozenset(key.names), frozenset(key.allow)).blocked
    cuts: list[tuple[Repodata, dict[str, list[int]]]] = []
    for up in ups:
        ids = up.repodata.name_ids(blocked)
        filtered = filtered_positions(up.upstream, up.repodata)
        cut = {ext: positions_of(up.repodata.sections[ext], ids) for ext in EXTENSIONS}
        cuts.append((up.repodata, {ext: sorted(set(c) | filtered[ext]) if filtered[ext] else c for ext, c in cut.items()}))
    sources, tables, excluded = merge_sources(local, cuts)
    skip = {ext: [set(e) for e in excluded[ext]] for ext in EXTENSIONS}
    removed = _removed(ups, {u.filename for u in uploads}, skip)
    plan = build_plan(sources, tables, excluded, info={"subdir": subdir}, removed=removed)
    workdir = new_workdir(tmp_dir)
    by_name: dict[str, set[tuple[str, str]]] = {}
    for u in uploads:
        by_name.setdefault(normalize(u.name), set()).add((u.path, u.sha256))
    basis = ShardBasis(key.upstreams, {n: frozenset(v) for n, v in by_name.items()}, frozenset(blocked))
    return SubdirIndex(key=key, subdir=subdir, plan=plan, local={u.filename: u for u in uploads}, upstreams=ups,
                       excluded=skip, workdir=workdir, tmp_dir=tmp_dir, executor=executor,
                       shard_basis=basis, slow_executor=slow_executor)


def _removed(ups: list[UpstreamSubdir], local_files: set[str], skip: dict[str, list[set[int]]]) -> list[str]:
    """The upstreams' ``removed`` file names that no source of the merge still offers."""
    out: set[str] = set()
    for up in ups:
        for filename in up.repodata.removed:
            if filename in out or filename in local_files:
                continue
            ext = ".conda" if filename.endswith(".conda") else ".tar.bz2"
            present = False
            for j, other in enumerate(ups, start=1):
                s = other.repodata.find_memo(filename)
                if s >= 0 and s not in skip[ext][j]:
                    present = True
                    break
            if not present:
                out.add(filename)
    return sorted(out)


__all__ = ["SharedBuilds", "assemble", "local_record", "normalize", "share_key"]
