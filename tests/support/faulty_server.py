"""rusty-db-server whose SQLite steps after a durable WAL record fail on demand.

Run as ``python -m tests.support.faulty_server ARGS`` (the server's own
arguments). The directory in ``RUSTYDB_FAULT_DIR`` holds the faults, one file
each, so a test switches them from outside the process:

* ``commit-once``: the next session commit fails before SQLite commits (an
  I/O error); the file is removed when it fires.
* ``commit-after-once``: the next session commit fails after SQLite committed.
* ``commit-full``: every session commit fails as on a full disk.
* ``apply-full``: applying a record from the WAL fails as on a full disk.
* ``commit-stall``: a session commit never returns while the file exists,
  holding its database's commit lock (a stalled engine).
* ``flush-stall``: every fdatasync of the WAL waits while the file exists,
  after creating ``flush-stalled`` (so a test knows a commit is there:
  SQLite has committed it, its WAL record is written but not durable).

It replaces the engine's ``sqlite_steps`` seam, the same one in-process
tests use (and the WAL's fdatasync on the FileOps the server uses), then
runs the real server.
"""

from __future__ import annotations

import os
import sys
import time

import apsw

from rustydb_server import fileops
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.sqlite_steps import SqliteSteps


class FaultySteps(SqliteSteps):
    def __init__(self, fault_dir: str):
        self.fault_dir = fault_dir

    def _on(self, name: str, once: bool = False) -> bool:
        path = os.path.join(self.fault_dir, name)
        if not os.path.exists(path):
            return False
        if once:
            os.unlink(path)
        return True

    def commit(self, conn, lsn, txid, commit_time_us):
        while self._on("commit-stall"):
            time.sleep(0.05)
        if self._on("commit-once", once=True):
            raise apsw.IOError("disk I/O error (injected)")
        if self._on("commit-full"):
            raise apsw.FullError("database or disk is full (injected)")
        super().commit(conn, lsn, txid, commit_time_us)
        if self._on("commit-after-once", once=True):
            raise apsw.IOError("disk I/O error after the commit (injected)")

    def apply(self, conn, lsn, record):
        if self._on("apply-full"):
            raise apsw.FullError("database or disk is full (injected)")
        super().apply(conn, lsn, record)


def stall_fdatasync(fault_dir: str):
    real = fileops.REAL.fdatasync

    def fdatasync(fd):
        if os.path.exists(os.path.join(fault_dir, "flush-stall")):
            open(os.path.join(fault_dir, "flush-stalled"), "w").close()
            while os.path.exists(os.path.join(fault_dir, "flush-stall")):
                time.sleep(0.05)
        real(fd)

    return fdatasync


def main() -> int:
    Engine.sqlite_steps = FaultySteps(os.environ["RUSTYDB_FAULT_DIR"])
    fileops.REAL.fdatasync = stall_fdatasync(os.environ["RUSTYDB_FAULT_DIR"])
    from rustydb_server.tools.server_main import main as server_main

    return server_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
