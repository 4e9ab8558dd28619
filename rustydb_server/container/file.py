"""A backup file on disk, written durably: temp name, fsync, rename, fsync dir.

A backup file exists under its final name only once it is complete; until then
it is ``<name>.partial`` (mode 0600), removed again if the backup fails, so no
file that looks complete is ever left by a failed backup.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from rustydb_server import fileops as _fileops

from .format import BackupHeader, BackupSummary
from .writer import BackupWriter

PARTIAL_SUFFIX = ".partial"


class Tee(Protocol):
    """Where a copy of the backup's bytes goes as the file is written (a streamed upload)."""

    def write(self, data) -> None: ...

    def end(self) -> None:
        """Every byte was written (called before the file is made durable)."""


class _FdFile:
    """The minimal file object BackupWriter needs, writing through FileOps."""

    def __init__(self, fd: int, fileops: _fileops.FileOps, tee: Callable[[bytes], None] | None = None):
        self.fd = fd
        self.fileops = fileops
        self._behind = _fileops.WriteBehind(fileops, fd)
        self._tee = tee

    def write(self, data) -> int:
        self.fileops.write_all(self.fd, data)
        self._behind.wrote(len(data))
        if self._tee is not None:
            self._tee(data)
        return len(data)


class BackupFile:
    """One backup being written to ``path``; ``commit()`` makes it appear, ``abort()`` not.

    ``tee``, if given, is handed every byte written to the file, in order, as
    it is written (a streamed upload of the same backup), and told when the
    last one was, before the file is fsynced.
    """

    def __init__(
        self,
        path: str,
        header: BackupHeader,
        *,
        key=None,
        codec: str = "lz4",
        threads: int = 1,
        nice: int = 0,
        fileops: _fileops.FileOps = _fileops.REAL,
        tee: Tee | None = None,
    ):
        self.path = os.path.abspath(path)
        self.tmp = self.path + PARTIAL_SUFFIX
        self.fileops = fileops
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory {directory} does not exist")
        if os.path.exists(self.path):
            raise FileExistsError(f"{self.path} already exists; choose another --output")
        # Set before anything can fail, so abort() always finds them.
        self._done = False
        self.writer = None
        self._tee = tee
        self._fd = fileops.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(self._fd, 0o600)
            self._out = _FdFile(self._fd, fileops, None if tee is None else tee.write)
            self.writer = BackupWriter(self._out, header, key=key, codec=codec, threads=threads, nice=nice)
        except BaseException:
            self.abort()
            raise
        self.header = self.writer.header

    def begin_entry(self, name: str) -> None:
        self.writer.begin_entry(name)

    def write(self, data) -> None:
        self.writer.write(data)

    def end_entry(self) -> None:
        self.writer.end_entry()

    def commit(self) -> BackupSummary:
        try:
            summary = self.writer.finish()
            if self._tee is not None:
                self._tee.end()
            self.fileops.fsync(self._fd)
            self.fileops.close(self._fd)
            self._fd = None
            if os.path.exists(self.path):
                raise FileExistsError(f"{self.path} appeared while the backup ran; not replaced")
            self.fileops.rename(self.tmp, self.path)
            self.fileops.fsync_dir(os.path.dirname(self.path))
        except BaseException:
            self.abort()
            raise
        self._done = True
        return summary

    def abort(self) -> None:
        if self._done:
            return
        writer = self.writer
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if self._fd is not None:
            try:
                self.fileops.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.abort()
