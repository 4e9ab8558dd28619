"""rusty-db-server whose disk is full while a flag file exists (run as ``python -m``).

The real server's main(), with the FileOps seam failing like a full disk: a
write to a file the server creates (a new WAL segment, the control file's or
rustydb.auto.toml's temporary copy) fails with ENOSPC while the file named by
``RUSTYDB_TEST_DISK_FULL_FLAG`` exists. Writes into files that already exist
(a preallocated WAL segment) and SQLite's own writes go on, as they do on a
real full disk for blocks already allocated. Creating or removing the flag
fills or frees the disk of a running server.
"""

from __future__ import annotations

import errno
import os
import sys

from rustydb_server import fileops

FLAG_ENV = "RUSTYDB_TEST_DISK_FULL_FLAG"


def install(flag: str) -> None:
    created: set[int] = set()
    real_open, real_close, real_write = fileops.FileOps.open, fileops.FileOps.close, fileops.FileOps.write

    def open_(self, path, flags, mode=0o600):
        fd = real_open(self, path, flags, mode)
        if flags & os.O_CREAT:
            created.add(fd)
        return fd

    def close(self, fd):
        created.discard(fd)
        real_close(self, fd)

    def write(self, fd, data):
        if fd in created and os.path.exists(flag):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, fd, data)

    fileops.FileOps.open = open_
    fileops.FileOps.close = close
    fileops.FileOps.write = write


if __name__ == "__main__":
    install(os.environ[FLAG_ENV])
    from rustydb_server.tools.server_main import main

    sys.exit(main())
