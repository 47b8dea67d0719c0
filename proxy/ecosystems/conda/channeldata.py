"""``channeldata.json`` for a channel (conda docs "Channels and generating an index"):
``{"channeldata_version": 1, "packages": {name: {...}}, "subdirs": [...]}``, from the
records (``CondaRecord``: ``(filename, name, record_json_bytes)``) of every subdir.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .sections import CondaRecord
from .version import VersionOrder, version_key_or_none

CHANNELDATA_VERSION = 1


def record_facts(raw: bytes) -> tuple[str, int, int]:
    """(version, build_number, timestamp) of one record; tolerant of missing fields."""
    record = orjson.loads(raw)
    version = record.get("version")
    build_number = record.get("build_number", 0)
    timestamp = record.get("timestamp", 0)
    return (
        version if isinstance(version, str) else "",
        build_number if isinstance(build_number, int) and not isinstance(build_number, bool) else 0,
        int(timestamp) if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool) else 0,
    )


def _seconds(timestamp: float) -> int:
    """conda timestamps may be ms; channeldata uses seconds (conda-build#1988)."""
    value = int(timestamp)
    return value // 1000 if value > 253402300799 else value


def render_channeldata(by_subdir: Mapping[str, Iterable[CondaRecord]]) -> bytes:
    """``channeldata.json`` for a channel: its subdirs, and per name the newest version,
    the subdirs it is built for, its newest timestamp (seconds) and its license."""
    subdirs_of: dict[str, set[str]] = {}
    newest_ts: dict[str, int] = {}
    newest: dict[str, tuple[VersionOrder, bytes]] = {}
    parsed: dict[str, VersionOrder | None] = {}
    for subdir, records in by_subdir.items():
        for _fn, name, raw in records:
            version, _bn, timestamp = record_facts(raw)
            subdirs_of.setdefault(name, set()).add(subdir)
            newest_ts[name] = max(newest_ts.get(name, 0), _seconds(timestamp))
            if version not in parsed:
                parsed[version] = version_key_or_none(version)
            order = parsed[version]
            if order is not None and (name not in newest or newest[name][0] < order):
                newest[name] = (order, raw)
    packages: dict[str, dict[str, Any]] = {}
    for name in sorted(subdirs_of):
        entry: dict[str, Any] = {"subdirs": sorted(subdirs_of[name]), "timestamp": newest_ts[name], "version": None}
        if name in newest:
            record = orjson.loads(newest[name][1])
            entry["version"] = record.get("version")
            for key in ("license", "license_family"):
                if isinstance(record.get(key), str):
                    entry[key] = record[key]
        packages[name] = entry
    doc = {"channeldata_version": CHANNELDATA_VERSION, "packages": packages, "subdirs": sorted(by_subdir)}
    return orjson.dumps(doc)
