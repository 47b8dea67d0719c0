"""Per-replica temp space (issue 13 part 4; DESIGN, "Scale-out on existing engines").

Replicas may share one ``storage.path`` (a volume, or the same host). Each process writes its
temp files (downloads in progress, uploads being checked, atomic small writes) only under its
own ``tmp/r-<host>-<pid>-<random>/``, and holds an exclusive ``flock`` on that directory's
``.owner`` file for as long as it runs. The kernel drops the lock when the process ends in any
way (exit, crash, ``kill -9``); on NFS, Linux maps ``flock`` to NFSv4 byte-range locks, which
the server drops when a client is gone. So a lock that can be taken is proof that the owner is
gone. (``flock``, not ``lockf``: its locks belong to the open file, so a second look from the
same process neither succeeds nor drops the owner's lock.)

The start-up sweep removes only such directories. A directory whose lock is held (a sibling
replica mid-download), a directory without an ``.owner`` file (``channelgate import``'s
staging) and loose files are left alone: no replica ever touches another's temp files.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PREFIX = "r-"
OWNER = ".owner"


class ScratchSpace:
    """This process's directory under ``tmp_root``, claimed on first use, removed on ``release``."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self._dir: Path | None = None
        self._owner: IO[bytes] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The directory (claimed now if need be; again in a forked child, which holds no lock)."""
        if self._dir is not None and self._pid == os.getpid():
            return self._dir
        with self._lock:
            if self._dir is None or self._pid != os.getpid():
                self._dir, self._owner = _claim(self.tmp_root)
                self._pid = os.getpid()
            return self._dir

    def sweep(self) -> int:
        """Remove the directories of replicas that are gone (never this process's own)."""
        return sweep(self.tmp_root, keep=self._dir if self._pid == os.getpid() else None)

    def release(self) -> None:
        """Remove this process's directory (at shutdown: nothing in it is worth keeping)."""
        with self._lock:
            if self._dir is not None and self._pid == os.getpid():
                shutil.rmtree(self._dir, ignore_errors=True)
                if self._owner is not None:
                    self._owner.close()
            self._dir = self._owner = None


def _claim(tmp_root: Path) -> tuple[Path, IO[bytes]]:
    """A new directory with its ``.owner`` locked. It is made under a hidden name and renamed
    once locked, so a sweep never sees an ``r-`` directory whose lock is not yet held."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:40]
    name = f"{PREFIX}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = tmp_root / f".new-{name}"
    staging.mkdir()
    owner = open(staging / OWNER, "wb")  # noqa: SIM115 - held open for the process's life
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    owner.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
    owner.flush()
    final = tmp_root / name
    os.rename(staging, final)
    return final, owner


def owner_gone(directory: Path) -> bool:
    """True when ``directory``'s ``.owner`` lock can be taken: the process that held it ended."""
    try:
        fh = open(directory / OWNER, "rb")  # noqa: SIM115
    except OSError:
        return False  # no owner file: not a replica's directory, or not ours to judge
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.ENOLCK):
                log.warning("cannot tell whether %s is still in use: %s", directory.name, exc)
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def sweep(tmp_root: Path, keep: Path | None = None) -> int:
    """Remove the temp directories of replicas that are gone; returns how many. ``keep``: this
    process's own directory (never judged, whatever the lock says)."""
    removed = 0
    try:
        entries = list(tmp_root.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry != keep and entry.name.startswith(PREFIX) and entry.is_dir() and owner_gone(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed the temp files of %d replica(s) that are gone", removed)
    return removed


__all__ = ["ScratchSpace", "owner_gone", "sweep"]
