"""Package settings in a bundle (``catalog/packages.jsonl``, bundle.py): for the exported
channels, every package row (privacy, summary, description, license, home page, release
notes) and every locked label, one JSON object a line (DESIGN, "Air-gap"; the tables are
store/packages.py's).

A private package must stay private on the importing site: without these rows it would come
back public there. Accounts are per site: no user, token or password travels in a bundle.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..settings import ECOSYSTEMS
from ..store.packages import PackageInfo
from ..store.protocols import Packages
from .bundle import PACKAGES, BundleError

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "channel": str, "ecosystem": str, "name": str, "private": bool, "summary": str, "description": str,
    "license": str, "home": str, "releases": dict, "created_at": (int, float),
}


@dataclass
class PackageSettings:
    """What a bundle says about its channels' packages: the rows, and each channel's locks."""

    packages: list[PackageInfo] = field(default_factory=list)
    locked: dict[str, set[str]] = field(default_factory=dict)


def dump(table: Packages, channels: list[str]) -> bytes:
    """The channels' package rows and locked labels as JSON lines, in a stable order (an
    unchanged state writes the same bytes, so ``--since`` leaves it out)."""
    lines = []
    for channel in sorted(channels):
        for info in sorted(table.of_channel(channel), key=lambda i: (i.ecosystem, i.name)):
            row = dataclasses.asdict(info)
            row["releases"] = {v: dict(notes) for v, notes in info.releases.items()}
            lines.append(json.dumps({"package": row}, sort_keys=True))
        for label in sorted(table.locked_labels(channel)):
            lines.append(json.dumps({"locked_label": {"channel": channel, "label": label}}, sort_keys=True))
    return "".join(line + "\n" for line in lines).encode()


def parse(data: bytes, channels: list[str]) -> PackageSettings:
    """Check every line before anything is published: a known shape, field types, and a
    channel the bundle carries. Every carried channel gets a (possibly empty) lock set."""
    settings = PackageSettings(locked={channel: set() for channel in channels})
    for number, line in enumerate(data.splitlines(), 1):
        try:
            raw: Any = json.loads(line)
        except ValueError:
            raise BundleError(f"{PACKAGES} line {number} is not JSON") from None
        if isinstance(raw, dict) and set(raw) == {"package"}:
            info = _package(raw["package"], number)
            channel = info.channel
            settings.packages.append(info)
        elif isinstance(raw, dict) and set(raw) == {"locked_label"} and _is_lock(raw["locked_label"]):
            channel, label = raw["locked_label"]["channel"], raw["locked_label"]["label"]
            settings.locked.setdefault(channel, set()).add(label)
        else:
            raise BundleError(f"{PACKAGES} line {number} is not a package setting")
        if channel not in channels:
            raise BundleError(f"{PACKAGES} line {number} names channel {channel!r}, which the bundle does not carry")
    return settings


def _is_lock(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"channel", "label"}
            and all(isinstance(v, str) and v for v in value.values()))


def _package(raw: Any, number: int) -> PackageInfo:
    if not isinstance(raw, dict) or set(raw) != set(_FIELDS):
        raise BundleError(f"{PACKAGES} line {number} is not a package row")
    for key, kind in _FIELDS.items():
        if not isinstance(raw[key], kind) or (kind is not bool and isinstance(raw[key], bool)):
            raise BundleError(f"{PACKAGES} line {number}: {key} is malformed")
    if raw["ecosystem"] not in ECOSYSTEMS or not raw["name"]:
        raise BundleError(f"{PACKAGES} line {number}: {raw['ecosystem']!r}/{raw['name']!r} is not a package")
    releases = raw["releases"]
    if not all(isinstance(notes, dict) and all(isinstance(v, str) for v in notes.values())
               for notes in releases.values()):
        raise BundleError(f"{PACKAGES} line {number}: releases is malformed")
    return PackageInfo(**{**raw, "created_at": float(raw["created_at"])})
