"""``current_repodata.json``: the newest records of a merged plan (conda's VersionOrder)."""
from __future__ import annotations

from typing import Any

import msgspec

from .merge_plan import Plan
from .sections import EXTENSIONS
from .version import VersionOrder, version_key_or_none


class _Facts(msgspec.Struct):
    version: Any = ""
    build_number: Any = 0


_FACTS = msgspec.json.Decoder(_Facts)


def current_subset(plan: Plan) -> Plan:
    """``current_repodata.json``'s selection of a plan: per name the newest version (conda's
    VersionOrder), then among those the highest ``build_number``; every record with that
    version and build number stays (all variants, both formats). Records whose version
    conda cannot parse are left out."""
    orders: dict[str, VersionOrder | None] = {}
    seen: list[tuple[str, int, int, str, VersionOrder, int]] = []
    best: dict[str, tuple[VersionOrder, int]] = {}
    for ext in EXTENSIONS:
        tables = plan.tables[ext]
        sources = plan.sections[ext]
        for j, s, _key, record in plan.entries(ext):
            try:
                facts = _FACTS.decode(record)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            version = facts.version if isinstance(facts.version, str) else ""
            bn = facts.build_number
            bn = bn if isinstance(bn, int) and not isinstance(bn, bool) else 0
            order = orders.get(version)
            if order is None:
                if version in orders:
                    continue
                order = orders[version] = version_key_or_none(version)
                if order is None:
                    continue
            name = tables[j][sources[j].nid(s)]
            seen.append((ext, j, s, name, order, bn))
            current = best.get(name)
            if current is None or current[0] < order or (current[0] == order and current[1] < bn):
                best[name] = (order, bn)
    keep: dict[str, list[tuple[int, int]]] = {ext: [] for ext in EXTENSIONS}
    for ext, j, s, name, order, bn in seen:
        if best[name] == (order, bn):
            keep[ext].append((j, s))
    return plan.subset(keep)


__all__ = ["current_subset"]
