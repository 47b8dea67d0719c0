"""An upstream filter over a parsed conda subdir (DESIGN, "Air-gap", upstream filters).

The merge drops entries by sorted position (merge_plan.py, ``excluded``): this gives the
positions a filter rejects, per extension. Names alone are decided from the name table
(no record is read); version specs, licenses and ``latest`` read the records of the names
that survive, and ``latest`` counts versions across ``.conda`` and ``.tar.bz2`` together.
"""
from __future__ import annotations

import orjson

from ...filters import UpstreamFilter
from .merge_plan import positions_of
from .sections import EXTENSIONS, Repodata


def filtered_positions(flt: UpstreamFilter | None, repodata: Repodata) -> dict[str, set[int]]:
    """Per extension, the sorted positions that ``flt`` keeps out of the merge."""
    out: dict[str, set[int]] = {ext: set() for ext in EXTENSIONS}
    if flt is None:
        return out
    rejected = {nid for nid, name in enumerate(repodata.name_table) if not flt.allows_name(name)}
    for ext in EXTENSIONS:
        out[ext].update(positions_of(repodata.sections[ext], rejected))
    if not flt.per_record:
        return out
    candidates: list[tuple[str, int, str, str, str | None]] = []  # (ext, position, name, version, license)
    for ext in EXTENSIONS:
        section = repodata.sections[ext]
        for s, _key, record in section.entries():
            if s in out[ext]:
                continue
            try:
                data = orjson.loads(record)
            except orjson.JSONDecodeError:
                out[ext].add(s)
                continue
            license = data.get("license")
            candidates.append((ext, s, str(data.get("name", "")), str(data.get("version", "")),
                               license if isinstance(license, str) else None))
    kept = {(c[0], c[1]) for c in flt.select(candidates, name=lambda c: c[2], version=lambda c: c[3],
                                               license=lambda c: c[4])}
    for ext, s, *_ in candidates:
        if (ext, s) not in kept:
            out[ext].add(s)
    return out
