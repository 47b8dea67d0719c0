"""A throwaway PostgreSQL cluster for the tests (Debian's postgresql): ``initdb`` in a temp
directory, ``postgres`` on a free 127.0.0.1 port with its socket directory inside it. As
root, the server runs as the ``postgres`` system user (initdb refuses root) in a directory
that user owns."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def pg_tool(name: str) -> str | None:
    """The newest installed PostgreSQL's ``name`` (initdb, pg_ctl, postgres are not on PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


def missing_tools() -> str | None:
    """Why a cluster cannot be made here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres", "createdb"):
        if pg_tool(tool) is None:
            return f"{tool} is not installed (.ci/run installs postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run the server as"
    return None


class PgCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="channelgate-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the postgres system user, in a directory it owns
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120, cwd=self.dir)

    def start(self) -> "PgCluster":
        self._run(str(pg_tool("initdb")), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(str(pg_tool("pg_ctl")), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w",
                  "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._run(str(pg_tool("createdb")), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(pg_tool("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
