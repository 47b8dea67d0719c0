"""Parse ``repodata.json`` into sorted sections (sections.py), streaming, at C speed.

- The decompressed document streams through one reused buffer (``readinto``). Each window
  of whole ``"file": {record}`` entries is decoded by msgspec into ``Dict[str, Raw]``:
  ``Raw`` values are zero-copy slices, decoded at C speed. Window boundaries are found by
  a cheap byte search and *proved* by the decode: ``{`` + entries + ``}`` is valid JSON
  only when the cut falls between two entries of the section (a cut inside a string or a
  nested value leaves a string or a bracket open).
- A typical window (package file names, compact records with a name, no upstream links)
  is written out verbatim: only lengths and name ids are computed, with C-level map and
  accumulate. Other windows go record by record: unsafe file names and records without a
  string ``name`` are skipped, pretty-printed records compacted, and records that link to
  the upstream (``url``/``channel``: clients must fetch through channelgate) re-encoded
  without those keys.
- An upstream whose keys were not sorted keeps its order on disk, with a permutation
  (sections.py); merges copy its runs.
"""
from __future__ import annotations

import bz2
import io
import itertools
import json
import operator
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import orjson
import zstandard

from ...errors import BadRequest
from .readahead import ReadAhead
from .section_files import SectionFiles
from .sections import (
    EXTENSIONS,
    MAX_DECOMPRESSED,
    READ_CHUNK,
    REPODATA_VERSION,
    UPSTREAM_ONLY_KEYS,
    Data,
    Encoding,
    Repodata,
    Section,
    SectionBuilder,
    Sink,
    dump_record,
    is_package_filename,
)

SECTION_OF = {"packages": ".tar.bz2", "packages.conda": ".conda"}
WINDOW = 8 << 20

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BOUNDARY = re.compile(rb'\}[ \t\n\r]*,[ \t\n\r]*"')
_END_PAIR = re.compile(rb"\}[ \t\n\r]*\}")
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")


class _Named(msgspec.Struct):
    name: str
    url: Any = msgspec.UNSET  # present only in records that link to the upstream
    channel: Any = msgspec.UNSET


_ENTRIES = msgspec.json.Decoder(dict[str, msgspec.Raw])
_NAME_OF = operator.attrgetter("name")
_URL = operator.attrgetter("url")
_CHANNEL = operator.attrgetter("channel")
_NAME = msgspec.json.Decoder(_Named)
_STR = msgspec.json.Decoder(str)


def _all_package_filenames(keys: list[str]) -> tuple[bool, str]:
    """Whether every key is a package file name (C-speed passes over the joined keys), and
    the keys joined by ``/`` (a character no valid key holds)."""
    text = "/".join(keys) + "/"
    ok = (
        text.isprintable()
        and '"' not in text
        and "\\" not in text
        and text.count("/") == len(keys)
        and "/." not in "/" + text[:-1]
        and text.count(".conda/") + text.count(".tar.bz2/") == len(keys)
    )
    return ok, text


def _strip_links(raw: bytes) -> bytes:
    """The record without keys that point at the upstream (re-encoded only if it has any)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record = json.loads(raw)  # e.g. an integer beyond 64 bits
    if isinstance(record, dict) and any(k in record for k in UPSTREAM_ONLY_KEYS):
        for key in UPSTREAM_ONLY_KEYS:
            record.pop(key, None)
        return dump_record(record)
    return raw


# --------------------------------------------------------------------------- parsing


class _Buffer:
    """The decompressed document, read ahead into one reused bytearray (``readinto``: no
    copy and no fresh pages per window). The unread bytes are ``buf[pos:end]``; the byte
    before ``pos`` is always kept, so a window can be framed in place (``_Parser._window``).
    """

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.buf = bytearray(1 << 16)  # grows to about WINDOW + READ_CHUNK for large documents
        self.pos = 1
        self.end = 1
        self.eof = False
        self.total = 0

    def fill(self, size: int) -> None:
        """Make at least ``size`` unread bytes available unless the document ends first.
        May move the bytes: callers re-read ``buf``/``pos`` afterwards."""
        if self.end - self.pos >= size or self.eof:
            return
        buf = self.buf
        if self.pos + size > len(buf):  # move the unread bytes to the front, grow if needed
            keep = self.end - self.pos + 1
            buf[0:keep] = buf[self.pos - 1 : self.end]
            self.pos, self.end = 1, keep
            if size + 1 > len(buf):
                buf.extend(bytes(size + 1 + READ_CHUNK - len(buf)))
        view = memoryview(buf)
        try:
            while self.end - self.pos < size:
                got = self.stream.readinto(view[self.end : min(len(buf), self.end + READ_CHUNK)])  # type: ignore[attr-defined]
                if not got:
                    self.eof = True
                    return
                self.end += got
                self.total += got
                if self.total > self.limit:
                    raise BadRequest("decompressed repodata exceeds the size limit")
        finally:
            view.release()

    def peek(self) -> int:
        """The next byte that is not whitespace (the position moves onto it); -1 at the end."""
        while True:
            match = _WS.match(self.buf, self.pos, self.end)
            self.pos = match.end() if match else self.pos
            if self.pos < self.end:
                return self.buf[self.pos]
            if self.eof:
                return -1
            self.fill(READ_CHUNK)

    def expect(self, char: bytes) -> None:
        if self.peek() != char[0]:
            raise ValueError(f"expected {char.decode()!r} at offset {self.total - self.end + self.pos}")
        self.pos += 1

    def string(self) -> str:
        if self.peek() != ord('"'):
            raise ValueError("expected a key")
        size = 4096
        while True:
            self.fill(size)
            match = _STRING.match(self.buf, self.pos, min(self.end, self.pos + size))
            if match is not None:
                self.pos = match.end()
                return _STR.decode(match.group())
            if self.eof and self.pos + size >= self.end:
                raise ValueError("unterminated string")
            size *= 4

    def value(self) -> Any:
        """One JSON value of any kind (top-level ``info``, ``removed``...)."""
        self.peek()
        size = 1 << 16
        decoder = json.JSONDecoder()
        while True:
            self.fill(size)
            text = bytes(self.buf[self.pos : min(self.end, self.pos + size)]).decode("utf-8", "surrogateescape")
            whole = self.eof and self.pos + size >= self.end
            try:
                value, stop = decoder.raw_decode(text)
                complete = stop < len(text) or whole  # a number may go on in the next bytes
            except ValueError:
                if whole:
                    raise
                complete = False
            if complete:
                consumed = text[:stop].encode("utf-8")  # strict: refuses what is not UTF-8
                self.pos += len(consumed)
                return value
            size *= 4


class _Parser:
    def __init__(self, buffer: _Buffer, outputs: Mapping[str, Sink]) -> None:
        self.src = buffer
        self.builders = {ext: SectionBuilder(ext, outputs[ext]) for ext in EXTENSIONS}
        self.name_ids: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        self.removed: tuple[str, ...] = ()
        self.version = REPODATA_VERSION

    def parse(self) -> None:
        src = self.src
        src.expect(b"{")
        if src.peek() == ord("}"):
            src.pos += 1
        else:
            while True:
                key = src.string()
                src.expect(b":")
                if key in SECTION_OF:
                    src.expect(b"{")
                    self._section()
                else:
                    value = src.value()
                    if key == "info" and isinstance(value, dict):
                        self.info = value
                    elif key == "removed" and isinstance(value, list):
                        self.removed = tuple(v for v in value if isinstance(v, str))
                    elif key == "repodata_version" and isinstance(value, int):
                        self.version = value
                char = src.peek()
                src.pos += 1
                if char == ord(","):
                    continue
                if char == ord("}"):
                    break
                raise ValueError("expected ',' or '}' after a top-level value")
        if src.peek() != -1:
            raise ValueError("trailing data after the document")

    def _section(self) -> None:
        src = self.src
        if src.peek() == ord("}"):
            src.pos += 1
            return
        window = WINDOW
        while True:
            src.fill(window)
            ended = self._take(src)
            if ended is None:  # no whole entry in the window: a huge record, or garbage
                if src.eof:
                    raise ValueError("unterminated packages section")
                window *= 2
                continue
            if ended:
                return
            window = WINDOW

    def _take(self, src: _Buffer) -> bool | None:
        """Consume whole entries from the buffer: True when the section ended, False when
        more follow, None when nothing could be taken."""
        buf, pos, end = src.buf, src.pos, src.end
        hi = end
        for _ in range(16):
            brace = buf.rfind(b"}", pos, hi)
            if brace < 0:
                break
            hi = brace
            match = _BOUNDARY.match(buf, brace, end)
            if match is None:
                continue
            try:
                self._window(buf, pos, brace + 1, close=True)
            except msgspec.DecodeError as exc:
                hint = _TRAILING.search(str(exc))
                if hint is not None:  # the section ended inside this window
                    # "byte N" is 1-based in the window, which starts one byte before ``pos``
                    last = buf.rfind(b"}", pos, pos + int(hint.group(1)) - 2)
                    if last > pos and self._try_window(buf, pos, last):
                        src.pos = last + 1
                        return True
                continue
            src.pos = match.end() - 1  # the next entry's opening quote
            return False
        # no entry boundary: the section may end in the buffer (its last entry, then "}")
        for match in _END_PAIR.finditer(buf, pos, end):
            last = match.end() - 1
            if self._try_window(buf, pos, last):
                src.pos = last + 1
                return True
        return None

    def _try_window(self, buf: bytearray, start: int, stop: int) -> bool:
        try:
            self._window(buf, start, stop, close=False)
        except msgspec.DecodeError:
            return False
        return True

    def _window(self, buf: bytearray, start: int, stop: int, *, close: bool) -> None:
        """Decode buf[start:stop] framed as an object and keep its entries; DecodeError when
        the cut is not between two entries. The frame is made in place: the byte before
        ``start`` becomes ``{`` and, if ``close``, the byte at ``stop`` becomes ``}`` (else it
        is the section's own ``}``); both are restored when the decode fails."""
        before, after = buf[start - 1], buf[stop]
        buf[start - 1] = 0x7B
        if close:
            buf[stop] = 0x7D
        frame: bytes | memoryview = memoryview(buf)[start - 1 : stop + 1]
        try:
            pretty = buf.find(b"\n", start, stop) >= 0  # a newline outside strings: pretty-printed
            if pretty:
                frame = msgspec.json.format(frame, indent=-1)
            entries = _ENTRIES.decode(frame)
        except msgspec.DecodeError:
            buf[start - 1], buf[stop] = before, after
            raise
        if self._fast(frame, entries):
            return
        if not pretty:  # maybe spaces after ':' and ','; records are stored compact
            frame = msgspec.json.format(frame, indent=-1)
            entries = _ENTRIES.decode(frame)
            if self._fast(frame, entries):
                return
        self._slow(entries)

    def _fast(self, window: bytes | memoryview, entries: dict[str, msgspec.Raw]) -> bool:
        """The common window: every key a package file name of one extension, every record
        an object with a name and no upstream link, compact. Its entries are then the
        window's own bytes; only lengths and ids are computed, in C (map/accumulate)."""
        keys = list(entries)
        ok, text = _all_package_filenames(keys)
        if not ok:
            return False
        count = len(keys)
        ext = ".conda" if text.count(".conda/") == count else ".tar.bz2" if text.count(".tar.bz2/") == count else None
        if ext is None:
            return False
        values = list(entries.values())
        try:
            named = list(map(_NAME.decode, values))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        unset = {msgspec.UNSET}
        if set(map(_URL, named)) != unset or set(map(_CHANNEL, named)) != unset:
            return False
        key_bytes = text.encode().split(b"/")
        key_bytes.pop()
        lengths = list(map(operator.add, map(len, key_bytes), map(len, values)))
        if sum(lengths) + 4 * count != len(window) - 1:  # whitespace, escaped keys, duplicates
            return False
        names = list(map(_NAME_OF, named))
        ids = self.name_ids
        for name in set(names).difference(ids):
            ids[name] = len(ids)
        nids = list(map(ids.__getitem__, names))
        self.builders[ext].add_block([b",", memoryview(window)[1:-1]], list(map(operator.add, lengths, itertools.repeat(4, count))), key_bytes, nids)
        return True

    def _slow(self, entries: dict[str, msgspec.Raw]) -> None:
        """Record by record: skips entries that are not package records, strips links."""
        ids = self.name_ids
        parts: dict[str, tuple[list[Any], list[int], list[bytes], list[int]]] = {
            ext: ([], [], [], []) for ext in EXTENSIONS
        }
        for filename, raw in entries.items():
            if not is_package_filename(filename):
                continue
            try:
                named = _NAME.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not an object, or no string name
            name = named.name
            record: bytes | msgspec.Raw = raw
            if named.url is not msgspec.UNSET or named.channel is not msgspec.UNSET:
                record = _strip_links(bytes(raw))
            key = filename.encode()
            pieces, lengths, keys, nids = parts[".conda" if filename.endswith(".conda") else ".tar.bz2"]
            head = b',"' + key + b'":'
            pieces += (head, record)
            lengths.append(len(head) + len(record))
            keys.append(key)
            nids.append(ids.setdefault(name, len(ids)))
        for ext, (pieces, lengths, keys, nids) in parts.items():
            self.builders[ext].add_block(pieces, lengths, keys, nids)

    def result(self, sections: dict[str, Section]) -> Repodata:
        return Repodata(self.info, self.removed, self.version, list(self.name_ids), sections)


def _parse(stream: BinaryIO, outputs: Mapping[str, Sink], limit: int) -> _Parser:
    parser = _Parser(_Buffer(stream, limit), outputs)
    try:
        parser.parse()
    except (ValueError, IndexError, msgspec.DecodeError) as exc:
        raise BadRequest(f"repodata.json is not valid: {exc}") from None
    return parser


def parse_repodata(body: bytes, *, limit: int = MAX_DECOMPRESSED) -> Repodata:
    """Parse ``repodata.json`` bytes; the sections stay in memory (small documents).

    Records that are not objects, lack a string ``name`` or have an unsafe file name are
    skipped. Raises ``BadRequest`` when the document is not a repodata object.
    """
    outputs = {ext: io.BytesIO() for ext in EXTENSIONS}
    parser = _parse(io.BytesIO(body), outputs, limit)
    builders = parser.builders
    return parser.result({ext: builders[ext].finish(Data(blob=out.getvalue())) for ext, out in outputs.items()})


def open_body(source: Path | bytes, encoding: Encoding) -> BinaryIO:
    """A stream of the decompressed document stored at ``source``, or in these bytes."""
    if encoding == "bz2":  # BZ2File opens (and closes) a path itself
        return ReadAhead(bz2.BZ2File(io.BytesIO(source) if isinstance(source, bytes) else source))  # type: ignore[arg-type,return-value]
    raw: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    if encoding == "zstd":  # the stream closes ``raw``
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return ReadAhead(reader)  # type: ignore[arg-type,return-value]  # decoded on another core
    return raw


def parse_repodata_file(source: Path | bytes, encoding: Encoding, workdir: Path, *,
                        limit: int = MAX_DECOMPRESSED) -> Repodata:
    """Parse a stored ``repodata.json[.zst|.bz2]`` (or its bytes, while they are being stored)
    streaming: peak memory is a few windows plus the arrays; the sections are written to files
    in ``workdir`` (removed when the returned ``Repodata`` is garbage-collected), and large
    ones compressed in shared chunks meanwhile (section_files.py)."""
    with SectionFiles(workdir, compress=True) as files:
        with open_body(source, encoding) as body:
            try:
                parser = _parse(body, files.outputs, limit)
            except zstandard.ZstdError as exc:
                raise BadRequest(f"repodata.json.zst is not valid zstd ({exc})") from None
            except (OSError, EOFError) as exc:
                raise BadRequest(f"repodata.json is not readable ({exc})") from None
        return parser.result(files.sections(parser.builders))
