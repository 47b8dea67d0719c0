"""An upstream filter over a parsed conda subdir (DESIGN, "Air-gap", upstream filters).

The merge drops entries by sorted position (merge_plan.py, ``excluded``): this gives the
positions a filter rejects, per extension. Names alone are decided from the name table
(no record is read); version specs, licenses and ``latest`` read the records of the names
that survive, and ``latest`` counts versions across ``.conda`` and ``.tar.bz2`` together.
"""
from __future__ import annotations

import orjson

from ...settings import UpstreamSettings
from ...sources import Fields, upstream_allows, upstream_records
from .merge_plan import positions_of
from .sections import EXTENSIONS, Repodata


_Candidate = tuple[str, int, str, str, "str | None"]  # (ext, position, name, version, license)
FIELDS: Fields[_Candidate] = Fields(name=lambda c: c[2], version=lambda c: c[3], license=lambda c: c[4])


def filtered_positions(up: UpstreamSettings, repodata: Repodata) -> dict[str, set[int]]:
    """Per extension, the sorted positions that ``up``'s filter keeps out of the merge (the
    filter itself is applied by sources.py)."""
    out: dict[str, set[int]] = {ext: set() for ext in EXTENSIONS}
    flt = up.filter
    if flt is None:
        return out
    rejected = {nid for nid, name in enumerate(repodata.name_table) if not upstream_allows(up, name)}
    for ext in EXTENSIONS:
        out[ext].update(positions_of(repodata.sections[ext], rejected))
    if not flt.per_record:
        return out
    candidates: list[_Candidate] = []
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
    kept = {(c[0], c[1]) for c in upstream_records(up, candidates, FIELDS)}
    for ext, s, *_ in candidates:
        if (ext, s) not in kept:
            out[ext].add(s)
    return out
