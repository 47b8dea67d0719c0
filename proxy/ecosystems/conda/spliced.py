"""``repodata.json.zst`` spliced from blocks compressed once (issue 15 part 5).

A merged ``repodata.json`` is mostly its upstreams' sections copied as they listed them
(merge_plan.py); channels over one upstream differ only around their own uploads and the
names the merge rule keeps from it. Compressing every channel's document whole costs ~0.6 s
of CPU per channel for a conda-forge-sized subdir. Here a large upstream section is
compressed once, in chunks of ``CHUNK`` bytes of its data (its entries as listed), each
chunk a run of zstd blocks that decodes the same wherever it stands in a frame, while the
section is parsed (section_files.py); kept with the parsed section and shared by every merge
of it (``compressed_section``). A
merged document is then one zstd frame (RFC 8878): a header with the content size, the
chunks that lie whole inside the plan's layout copied as they are, blocks compressed for the
rest (head, uploads, the ends of runs that start or stop inside a chunk), and an empty last
block. One frame: conda
(python-zstandard's ``stream_reader``, which stops after the first frame) and rattler read it
like any other (tests/test_conda_spliced.py).

Why the blocks are position-independent: they are the second and later jobs of zstd's
multi-threaded compression with no overlap (``overlap_log=1``: ZSTDMT_computeOverlapSize
gives 0). zstd compresses such a job in parallel with the jobs before it, so it cannot
depend on them: it references no byte before its start, begins with fresh entropy tables,
and its repeat offsets are invalidated (``ZSTD_invalidateRepCodes``). The first job, a lead
of zeros (``LEAD``), is dropped; the blocks up to the job boundary must decode to exactly
the lead (``SpliceError`` otherwise: the caller compresses the document whole instead).
"""
from __future__ import annotations

import logging
import os
import weakref
from array import array
from pathlib import Path

import zstandard

from .merge_plan import SECTION_SEPARATOR, ZSTD_LEVEL, ZSTD_THREADS, Plan, renamed_when_whole
from .sections import EXTENSIONS, READ_CHUNK, Section, copy_range

log = logging.getLogger(__name__)
LEAD = (1 << 20) + 4096  # the zstd job size; not a multiple of the 128 KiB block: a boundary there is the job's
CHUNK = 2 * LEAD  # bytes of sorted entries per shared chunk (two jobs: both threads busy)
WINDOW_LOG = 20  # no match reaches further back than 1 MiB (and never out of its job)
MIN_SHARED = 2 * CHUNK  # sections smaller than this are compressed with each document
FLUSH_AT = 4 * LEAD  # bytes of a document's own pieces compressed at a time
RAW_BELOW = 4096  # own pieces shorter than this are stored as raw blocks
MAGIC = b"\x28\xb5\x2f\xfd"
FRAME_END = b"\x01\x00\x00"  # an empty raw block, the last one
MAX_BLOCK = 128 << 10
WINDOW_DESCRIPTOR = (WINDOW_LOG - 10) << 3  # RFC 8878 3.1.1.1.2: 2**WINDOW_LOG, no mantissa


class SpliceError(Exception):
    """zstd did not lay the blocks out as expected: compress the document whole."""


def _block_length(data: bytes | bytearray, pos: int) -> tuple[int, bool]:
    """(bytes of the block at ``pos`` with its header, whether it is the last one)."""
    if pos + 3 > len(data):
        raise SpliceError("truncated zstd block header")
    header = int.from_bytes(data[pos:pos + 3], "little")
    kind, size = (header >> 1) & 3, header >> 3
    if kind == 3:
        raise SpliceError("reserved zstd block type")
    return 3 + (1 if kind == 1 else size), bool(header & 1)


def _header_size(frame: bytes) -> int:
    """Size of a frame header without a dictionary id or checksum (RFC 8878 3.1.1.1)."""
    if frame[:4] != MAGIC:
        raise SpliceError("not a zstd frame")
    descriptor = frame[4]
    if descriptor & 0x23 or descriptor & 0x04:  # single segment, dictionary id, checksum
        raise SpliceError("unexpected zstd frame header")
    return 6 + (0, 2, 4, 8)[descriptor >> 6]


def raw_blocks(data: bytes | bytearray | memoryview) -> bytes:
    out = bytearray()
    for start in range(0, len(data), MAX_BLOCK):
        piece = data[start:start + MAX_BLOCK]
        out += (len(piece) << 3).to_bytes(3, "little") + piece  # type 0 (raw), not last
    return bytes(out)


class BlockCompressor:
    """zstd blocks, without a frame, that decode to given bytes after any other blocks."""

    def __init__(self, level: int, threads: int) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=max(1, threads), job_size=LEAD, overlap_log=1, window_log=WINDOW_LOG,
            write_checksum=0, write_content_size=0, write_dict_id=0)
        self._cctx = zstandard.ZstdCompressor(compression_params=params)
        self._lead = bytes(LEAD)
        self._lead_blocks = b""  # what the lead compresses to, once its boundary was checked
        self._buffer: bytearray | None = None  # blocks_once: the lead, then a chunk

    @staticmethod
    def _past_lead(frame: bytes, pos: int) -> int:
        """Where the lead's blocks end: they are decoded one by one up to the job boundary."""
        decoder = zstandard.ZstdDecompressor().decompressobj()
        decoded = len(decoder.decompress(frame[:pos]))
        while decoded < LEAD:
            length, last = _block_length(frame, pos)
            decoded += len(decoder.decompress(frame[pos:pos + length]))
            pos += length
            if last:
                break
        if decoded != LEAD:
            raise SpliceError("the lead does not end on a block boundary")
        return pos

    def blocks(self, data: bytes | bytearray | memoryview) -> bytes:
        if not data:
            return b""
        cobj = self._cctx.compressobj()
        frame = cobj.compress(self._lead) + cobj.compress(data) + cobj.flush()
        return self._after_lead(frame)

    def blocks_once(self, data: bytes | memoryview) -> bytes:
        """``blocks``, in one compress call over a buffer that keeps the lead: a thread beside
        a parse (section_files.py) takes the GIL twice per chunk, not four times (each time may
        wait a switch interval behind the parser)."""
        if self._buffer is None:
            self._buffer = bytearray(LEAD + CHUNK)
        size = len(data)
        view = memoryview(self._buffer)[:LEAD + size]
        view[LEAD:] = data
        return self._after_lead(self._cctx.compress(view))

    def _after_lead(self, frame: bytes) -> bytes:
        pos = _header_size(frame)
        known = self._lead_blocks
        if known and frame.startswith(known, pos):
            pos += len(known)
        else:
            pos = self._past_lead(frame, pos)
            self._lead_blocks = frame[_header_size(frame):pos]
        at, last_at = pos, -1
        while at < len(frame):
            length, last = _block_length(frame, at)
            if last:
                last_at = at
            at += length
        if at != len(frame) or last_at < 0 or last_at + _block_length(frame, last_at)[0] != len(frame):
            raise SpliceError("unexpected zstd block layout")
        view = memoryview(frame)  # after the lead; the last flag cleared: the frame goes on
        return b"".join((view[pos:last_at], bytes([frame[last_at] & 0xFE]), view[last_at + 1:]))


def frame_header(content_size: int) -> bytes:
    """A frame header with an 8-byte content size, a window, no checksum (RFC 8878)."""
    return MAGIC + bytes([0xC0, WINDOW_DESCRIPTOR]) + content_size.to_bytes(8, "little")


class CompressedSection:
    """A section's data (its entries as listed), compressed in chunks of ``CHUNK`` bytes into one file."""

    def __init__(self, path: Path, size: int, zoffsets: array[int]) -> None:
        self.path = path
        self.size = size
        self.zoffsets = zoffsets  # chunk k's blocks are [zoffsets[k], zoffsets[k+1]) of the file
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, _close, self.fd, path)

    @property
    def chunks(self) -> int:
        return len(self.zoffsets) - 1

    def chunk_bytes(self, k: int) -> bytes:
        """Chunk ``k`` decompressed."""
        start, stop = self.zoffsets[k], self.zoffsets[k + 1]
        blocks = os.pread(self.fd, stop - start, start)
        frame = MAGIC + bytes([0x00, WINDOW_DESCRIPTOR]) + blocks + FRAME_END
        return zstandard.ZstdDecompressor().decompress(frame, max_output_size=CHUNK)


def _close(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


def compressed_section(section: Section) -> CompressedSection | None:
    """The section's shared chunks, compressed while it was parsed (section_files.py); None
    for small or in-memory sections. Raises the SpliceError that stopped its compression."""
    found = section.compressed
    if isinstance(found, SpliceError):
        raise found
    return found if isinstance(found, CompressedSection) else None


class _Writer:
    """A frame being written: its own bytes gathered and compressed, shared chunks copied."""

    def __init__(self, fd: int, compressor: BlockCompressor) -> None:
        self.fd = fd
        self.compressor = compressor
        self.pending = bytearray()
        self.size = 0
        self._decoded: tuple[CompressedSection, int, bytes] | None = None

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def literal(self, data: bytes | memoryview) -> None:
        self.pending += data
        self.size += len(data)
        if len(self.pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            pending = bytes(self.pending)
            self._put(raw_blocks(pending) if len(pending) < RAW_BELOW else self.compressor.blocks(pending))
            self.pending.clear()

    def section_range(self, comp: CompressedSection, start: int, stop: int) -> None:
        """Bytes [start, stop) of the section's data: whole chunks copied."""
        while start < stop:
            k = start // CHUNK
            whole_to = comp.chunks if stop >= comp.size else stop // CHUNK
            if start == k * CHUNK and whole_to > k:
                self.flush()
                first, last = comp.zoffsets[k], comp.zoffsets[whole_to]
                copy_range(comp.fd, self.fd, first, last - first)
                moved = min(whole_to * CHUNK, comp.size) - start
                self.size += moved
                start += moved
                continue
            decoded = self._decoded
            if decoded is None or decoded[0] is not comp or decoded[1] != k:
                decoded = self._decoded = (comp, k, comp.chunk_bytes(k))
            end = min(stop, (k + 1) * CHUNK)
            self.literal(memoryview(decoded[2])[start - k * CHUNK:end - k * CHUNK])
            start = end


def write_zst(plan: Plan, zst_path: Path, tmp_dir: Path, *, level: int = ZSTD_LEVEL, threads: int = ZSTD_THREADS) -> bool:
    """Write ``plan``'s ``repodata.json.zst``: spliced from shared chunks when a section is
    large enough (returns True), else compressed whole (False)."""
    try:
        if write_spliced(plan, zst_path, tmp_dir, level=level, threads=threads):
            return True
    except SpliceError as exc:  # zstd laid its blocks out otherwise: not expected, never fatal
        log.warning("compressing the merged repodata whole: %s", exc)
    plan.write(None, zst_path, tmp_dir, level=level, threads=threads)
    return False


def write_spliced(plan: Plan, zst_path: Path, tmp_dir: Path, *, level: int, threads: int) -> bool:
    """Write ``plan``'s ``repodata.json.zst`` from shared chunks; False (nothing written)
    when no section of it is large enough to share."""
    shared: dict[tuple[str, int], CompressedSection] = {}
    for ext in EXTENSIONS:
        used: dict[int, int] = {}
        for j, a, b in plan.layout(ext):
            offsets = plan.sections[ext][j].offsets
            used[j] = used.get(j, 0) + offsets[b] - offsets[a]
        for j, size in used.items():
            section = plan.sections[ext][j]
            if size * 2 < section.offsets[-1]:
                continue  # e.g. a filter keeps a few names: compressing those is cheaper than
                # decoding the chunks they lie in
            comp = compressed_section(section)
            if comp is not None:
                shared[(ext, j)] = comp
    if not shared:
        return False
    total = plan.size()
    compressor = BlockCompressor(level, threads)
    with renamed_when_whole(zst_path, tmp_dir) as fd:
        os.write(fd, frame_header(total))
        out = _Writer(fd, compressor)
        out.literal(plan.head())
        for n, ext in enumerate(EXTENSIONS):
            if n:
                out.literal(SECTION_SEPARATOR)
            _section(out, plan, ext, shared)
        out.literal(plan.tail())
        out.flush()
        os.write(fd, FRAME_END)
        if out.size != total:
            raise RuntimeError(f"merged repodata is {out.size} bytes, planned {total}")
    return True


def _section(out: _Writer, plan: Plan, ext: str, shared: dict[tuple[str, int], CompressedSection]) -> None:
    first = 1  # the section's first entry drops its leading comma
    for j, a, b in plan.layout(ext):
        section = plan.sections[ext][j]
        start, stop = section.offsets[a] + first, section.offsets[b]
        first = 0
        comp = shared.get((ext, j))
        if comp is not None:
            out.section_range(comp, start, stop)
            continue
        while start < stop:
            data = section.data.read(start, min(stop - start, READ_CHUNK))
            start += len(data)
            out.literal(data)


__all__ = ["CHUNK", "BlockCompressor", "CompressedSection", "SpliceError", "compressed_section", "write_spliced", "write_zst"]
