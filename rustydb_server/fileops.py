"""The file operations that durability depends on, behind one small interface.

Every writer whose output must survive a crash (WAL, control file, archive,
backups) goes through a ``FileOps`` object instead of calling ``os`` directly,
so tests can replace it with one that fails an fsync, runs out of space or
cuts a write short, and check what the caller did about it.
"""

from __future__ import annotations

import os


class FileOps:
    """Real file operations. Subclass and override to inject faults."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- composed helpers: built only from the primitives above, so a fault
    # injected in a primitive shows up here too.

    def fsync_file(self, path: str) -> None:
        """fsync a file written earlier (possibly by someone else, e.g. SQLite)."""
        fd = self.open(path, os.O_RDONLY, 0)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            view = view[n:]

    def pwrite_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def write_file_atomic(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Replace ``path`` with ``data``: temp name, fsync, rename, fsync dir."""
        directory = os.path.dirname(os.path.abspath(path))
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            self.write_all(fd, data)
            self.fsync(fd)
        except BaseException:
            self.close(fd)
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        self.close(fd)
        self.rename(tmp, path)
        self.fsync_dir(directory)


REAL = FileOps()
