"""The file operations that durability depends on, behind one small interface.

Every writer whose output must survive a crash (WAL, control file, archive,
backups) goes through a ``FileOps`` object instead of calling ``os`` directly,
so tests can replace it with one that fails an fsync, runs out of space or
cuts a write short, and check what the caller did about it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

#: Start writing a large file's pages to disk after this many new bytes.
FLUSH_AFTER = 8 << 20

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait
_sync_file_range = None  # resolved on first use: a ctypes function, or False


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Linux ``sync_file_range(..., SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = _load_sync_file_range()
    if _sync_file_range:
        # Advisory: an error here (a filesystem without support) changes
        # nothing, because the fsync that follows is what makes data durable.
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # <linux/fs.h>
_renameat2 = None  # resolved on first use: a ctypes function, or False


def _exchange(a: str, b: str) -> None:
    """Linux ``renameat2(a, b, RENAME_EXCHANGE)``: swap two paths in one step.

    Raises OSError(ENOSYS) where the call does not exist, and whatever the
    kernel says (EINVAL: a filesystem without support) where it fails.
    """
    global _renameat2
    if _renameat2 is None:
        _renameat2 = _load_renameat2()
    if not _renameat2:
        raise OSError(errno.ENOSYS, "renameat2 is not available here")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class FileOps:
    """Real file operations. Subclass and override to inject faults.

    An error of an operation on a descriptor names the file it was opened
    as (``OSError.filename``), as errors of operations on paths do, so every
    message built from it can say which file failed.
    """

    #: the path each open descriptor was opened as (subclasses need not call __init__)
    _names: dict[int, str] | None = None
    #: the SQLite VFS the engine opens its databases through (None: SQLite's
    #: default). A test registers one that records what SQLite synced, to
    #: simulate a power cut on SQLite's files as this class does on ours.
    sqlite_vfs: str | None = None

    def named(self, error: OSError, fd: int) -> OSError:
        """``error`` of an operation on ``fd``, naming the file ``fd`` was opened as."""
        if error.filename is None and self._names is not None:
            name = self._names.get(fd)
            if name is not None:
                error.filename = name
        return error

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = os.open(path, flags, mode)
        if self._names is None:
            self._names = {}
        self._names[fd] = os.fsdecode(path)
        return fd

    def close(self, fd: int) -> None:
        if self._names is not None:
            self._names.pop(fd, None)
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        try:
            return os.write(fd, data)
        except OSError as e:
            raise self.named(e, fd) from None

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        try:
            return os.pwrite(fd, data, offset)
        except OSError as e:
            raise self.named(e, fd) from None

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        try:
            return os.pread(fd, size, offset)
        except OSError as e:
            raise self.named(e, fd) from None

    def fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            raise self.named(e, fd) from None

    def fdatasync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:
            raise self.named(e, fd) from None

    def ftruncate(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            raise self.named(e, fd) from None

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)
        if self._names:  # a file still open (a new WAL segment) is named by its new name
            src, dst = os.fsdecode(src), os.fsdecode(dst)
            for fd, name in list(self._names.items()):
                if name == src:
                    self._names[fd] = dst

    def exchange(self, a: str, b: str) -> None:
        """Swap what ``a`` and ``b`` name, atomically (Linux ``RENAME_EXCHANGE``).

        OSError where the system or filesystem cannot: callers fall back to renames.
        """
        _exchange(a, b)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.filename is None:
                e.filename = path
            raise

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Ask the kernel to start writing this range to disk now, without waiting.

        Only a hint: durability still comes from fsync. It matters for files of
        hundreds of MB on a machine with plenty of memory: left alone, the
        kernel keeps them dirty until the final fsync, which then writes
        everything after all the CPU work is done instead of alongside it
        (PostgreSQL's ``*_flush_after`` and RocksDB's ``bytes_per_sync``).
        """
        _start_writeback(fd, offset, length)

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
            n = self.write(fd, view[:WRITE_PIECE])
            view = view[n:]

    def pwrite_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.pwrite(fd, view[:WRITE_PIECE], offset)
            view = view[n:]
            offset += n

    def write_file_atomic(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Replace ``path`` with ``data``: temp name, fsync, rename, fsync dir."""
        with self.replace_file(path, mode) as fd:
            self.write_all(fd, data)

    @contextlib.contextmanager
    def replace_file(self, path: str, mode: int = 0o600) -> Iterator[int]:
        """Replace ``path`` with what the block writes to the yielded descriptor:
        temp name, fsync, rename, fsync dir. If the block raises, ``path`` is
        left as it was and the temporary file is removed."""
        directory = os.path.dirname(os.path.abspath(path))
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            yield fd
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


# Large writes reach the kernel in pieces of at most this size. Linux caches a
# file in folios as large as the writes that filled it, and both filling large
# folios and later small writes into them (an incremental applied on top) cost
# far more; smaller pieces cost more syscalls. Figures: docs/internals.md,
# "Measured choices".
WRITE_PIECE = 256 * 1024


class WriteBehind:
    """Starts writeback of a file written front to back, every ``every`` bytes.

    Call ``wrote(n)`` after each write; the caller still fsyncs at the end.
    """

    def __init__(self, fileops: FileOps, fd: int, *, every: int | None = None, start: int = 0):
        self.fileops = fileops
        self.fd = fd
        self.every = FLUSH_AFTER if every is None else every
        self.pos = start
        self.flushed = start

    def wrote(self, n: int) -> None:
        self.pos += n
        if self.pos - self.flushed >= self.every:
            self.fileops.start_writeback(self.fd, self.flushed, self.pos - self.flushed)
            self.flushed = self.pos


REAL = FileOps()
