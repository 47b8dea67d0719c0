"""A bundle's manifest, written and read as a stream, and the on-disk ledger that export and
import keep instead of a dict in memory (bundle.py has the format; issue 10: "memory stays
flat however big the bundle is").

Version 3 of the manifest is still one JSON document (``json.loads`` reads it), laid out one
entry a line so that it is written while the bundle is, and read without holding it::

    {"format": "channelgate-bundle", "version": 3, "created": ..., "channels": [...], "since": ...,
    "members": {
    "cache/sha256/ab/<hex>": {"sha256": "<hex>", "size": 123}
    ,"meta/docs/<hex>.json": {"sha256": "<hex>", "size": 45}
    },
    "known": {
    "cache/sha256/ab/<hex>": "<hex>"
    }}

Versions 1 and 2 (one indented JSON document) are read whole, bounded by MAX_OLD.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .bundle import FORMAT, MEMBER_RE, READABLE, VERSION, BundleError

MAX_LINE = 64 * 1024  # no entry line is longer: a longer one is not a manifest of ours
MAX_OLD = 256 << 20  # a version 1 or 2 manifest is read whole
_HEX64 = re.compile("^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Header:
    channels: list[str]
    created: float
    since: str | None
    version: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One line: a member (``size`` >= 0) or, with ``size`` -1, a name the site holds."""

    name: str
    sha256: str
    size: int

    @property
    def member(self) -> bool:
        return self.size >= 0


class ManifestWriter:
    """Writes a manifest to ``path`` entry by entry: ``member`` for each member as the bundle
    takes it, then ``known`` once, then ``close``."""

    def __init__(self, path: Path, channels: list[str], since: str | None) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        head = {"format": FORMAT, "version": VERSION, "created": time.time(), "channels": channels, "since": since}
        self._fh.write(json.dumps(head)[:-1].encode() + b',\n"members": {')
        self._first = True
        self.members = 0
        self.bytes = 0

    def member(self, name: str, sha256: str, size: int) -> None:
        self._line(f'{json.dumps(name)}: {{"sha256": "{sha256}", "size": {size}}}')
        self.members += 1
        self.bytes += size

    def known(self, entries: Iterator[tuple[str, str]]) -> None:
        self._fh.write(b'\n},\n"known": {')
        self._first = True
        for name, sha256 in entries:
            self._line(f"{json.dumps(name)}: {json.dumps(sha256)}")

    def _line(self, text: str) -> None:
        self._fh.write(("\n" if self._first else "\n,").encode() + text.encode())
        self._first = False

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.write(b"\n}}\n")
            self._fh.close()


class ManifestReader:
    """``header`` at once; ``entries()`` streams members, then known names."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        first = fh.readline(MAX_LINE)
        self._old: dict[str, object] | None = None
        if first.strip() == b"{":  # version 1 or 2: one indented document
            self._old = _old(first + fh.read(MAX_OLD))
            self.header = _header(self._old)
        else:
            self.header = _header(_json(first.rstrip()[:-1] + b"}") if first.rstrip().endswith(b",") else None)
            self._expect(b'"members": {')

    @classmethod
    def open(cls, path: Path) -> tuple["ManifestReader", BinaryIO]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls(fh), fh
        except BaseException:
            fh.close()
            raise

    def entries(self) -> Iterator[Entry]:
        if self._old is not None:
            yield from _old_entries(self._old)
            return
        yield from self._section(member=True, end=b"},")
        self._expect(b'"known": {')
        yield from self._section(member=False, end=b"}}")

    def _section(self, *, member: bool, end: bytes) -> Iterator[Entry]:
        first = True
        while True:
            line = self._fh.readline(MAX_LINE).rstrip(b"\n")
            if line == end:
                return
            if not line or (not first and not line.startswith(b",")):
                raise BundleError("the manifest is malformed (truncated?)")
            raw = _json(b"{" + (line[1:] if not first else line) + b"}")
            first = False
            if not isinstance(raw, dict) or len(raw) != 1:
                raise BundleError("the manifest is malformed")
            ((name, value),) = raw.items()
            yield _member(name, value) if member else _known(name, value)

    def _expect(self, line: bytes) -> None:
        if self._fh.readline(MAX_LINE).rstrip(b"\n") != line:
            raise BundleError("the manifest is malformed")


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("the manifest is not JSON") from None


def _old(data: bytes) -> dict[str, object]:
    if len(data) > MAX_OLD:
        raise BundleError("the manifest is implausibly large")
    raw = _json(data)
    if not isinstance(raw, dict):
        raise BundleError("not a channelgate bundle manifest")
    return raw


def _header(raw: object) -> Header:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError("not a channelgate bundle manifest")
    version = raw.get("version")
    if version not in READABLE or not isinstance(version, int):
        raise BundleError(f"bundle format version {version!r} is not supported (this is {VERSION})")
    since = raw.get("since")
    created = raw.get("created")
    return Header([str(c) for c in raw.get("channels") or []],
                  float(created) if isinstance(created, (int, float)) else 0.0,
                  since if isinstance(since, str) else None, version)


def _old_entries(raw: dict[str, object]) -> Iterator[Entry]:
    for key, member in (("members", True), ("known", False)):
        section = raw.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise BundleError("the manifest is malformed")
        for name, value in section.items():
            yield _member(name, value) if member else _known(name, value)


def _member(name: str, value: object) -> Entry:
    if not MEMBER_RE.match(name) or not isinstance(value, dict):
        raise BundleError(f"the manifest lists an unexpected member {name!r}")
    sha, size = value.get("sha256"), value.get("size")
    if not (isinstance(sha, str) and _HEX64.match(sha)) or not isinstance(size, int) or isinstance(size, bool) \
            or size < 0:
        raise BundleError(f"the manifest entry of {name!r} is malformed")
    return Entry(name, sha, size)


def _known(name: str, value: object) -> Entry:
    if not isinstance(value, str):
        raise BundleError(f"the manifest's known entry of {name!r} is malformed")
    return Entry(name, value, -1)


class Ledger:
    """name -> (sha256, size, staged file, mark) in a SQLite file (scratch space, no
    journal, no fsync): lookups by name without holding every member in memory. ``add``
    buffers up to BATCH rows and writes them with one executemany (one INSERT per member
    was a tenth of an import's main-thread time); every read flushes first."""

    BATCH = 512

    def __init__(self, path: Path) -> None:
        self._pending: dict[str, tuple[str, str, int, str | None]] = {}
        self._db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE e (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,"
                         " staged TEXT, mark INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, sha256: str, size: int, staged: str | None = None) -> bool:
        """Record a new name; False when it is recorded already."""
        if name in self._pending:
            return False
        self._pending[name] = (name, sha256, size, staged)
        if len(self._pending) >= self.BATCH:
            return self._flush()
        return True

    def _flush(self) -> bool:
        """Write the buffered rows; False (and nothing written) when one of their names is
        recorded already (the caller refuses the bundle)."""
        if not self._pending:
            return True
        names = list(self._pending)
        marks = ",".join("?" * len(names))
        if self._db.execute(f"SELECT 1 FROM e WHERE name IN ({marks}) LIMIT 1", names).fetchone() is not None:
            return False
        self._db.executemany("INSERT INTO e (name, sha256, size, staged) VALUES (?,?,?,?)", self._pending.values())
        self._pending.clear()
        return True

    def duplicate(self) -> str | None:
        """After ``add`` or ``flush`` said False: a name recorded twice."""
        for name in self._pending:
            if self._db.execute("SELECT 1 FROM e WHERE name=?", (name,)).fetchone() is not None:
                return name
        return None

    def flush(self) -> bool:
        return self._flush()

    def put(self, name: str, sha256: str, size: int = -1) -> None:
        self._flush()
        self._db.execute("INSERT OR REPLACE INTO e (name, sha256, size) VALUES (?,?,?)", (name, sha256, size))

    def get(self, name: str) -> tuple[str, int, str | None, int] | None:
        self._flush()
        row = self._db.execute("SELECT sha256, size, staged, mark FROM e WHERE name=?", (name,)).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def mark(self, name: str) -> None:
        self._flush()
        self._db.execute("UPDATE e SET mark=1 WHERE name=?", (name,))

    def unmarked(self) -> str | None:
        self._flush()
        row = self._db.execute("SELECT name FROM e WHERE mark=0 LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def items(self) -> Iterator[tuple[str, str, int, str | None]]:
        """(name, sha256, size, staged), by name."""
        self._flush()
        yield from self._db.execute("SELECT name, sha256, size, staged FROM e ORDER BY name")
