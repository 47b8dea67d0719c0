"""Staging one bundle member (importing.py): hash it while it is copied from the bundle to
a staging file, in a worker thread (os.preadv, hashlib and os.write release the GIL, so two
members proceed side by side), and flush the staged files once.

Each staged file's writeback starts when it is written (posix_fadvise DONTNEED starts it
without waiting, and drops the pages once clean), so the one flush at the end waits for
little, and a large import does not fill the page cache with data nothing reads again.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Staged:
    sha256: str
    size: int
    path: Path | None  # None: only hashed (the store holds this content already)


def stage(fd: int, offset: int, length: int, target: Path | None) -> Staged:
    """Bytes ``[offset, offset + length)`` of ``fd``: hashed, and copied to ``target``."""
    sha = hashlib.sha256()
    buffer = bytearray(min(length, CHUNK) or 1)
    view = memoryview(buffer)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) if target is not None else None
    done = 0
    try:
        while done < length:
            n = os.preadv(fd, [view[: min(CHUNK, length - done)]], offset + done)
            if n <= 0:
                break  # the bundle shrank under us: the size check says "truncated"
            chunk = view[:n]
            sha.update(chunk)
            if out is not None:
                written = 0
                while written < n:
                    written += os.write(out, chunk[written:])
            done += n
        if out is not None and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(out, 0, 0, os.POSIX_FADV_DONTNEED)  # start writeback now
    finally:
        if out is not None:
            os.close(out)
    return Staged(sha.hexdigest(), done, target)


def sync_filesystem(directory: Path) -> None:
    """Flush the staged files with one syncfs(2) of the store's file system (libc's: Python
    3.11 has no os.syncfs) instead of an fsync per member: thousands of small members cost
    more in fsyncs than in copying. Elsewhere than Linux, sync(2)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
