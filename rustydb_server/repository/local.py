"""A repository in a local directory: one file per object, written durably.

A key ``a/b/c`` is the file ``ROOT/a/b/c``. A put writes a hidden temporary
file beside the target (``.c.part-<random>``), fsyncs it, then renames it
into place (or, with ``if_absent``, hard-links it, which never replaces an
existing file) and fsyncs the directory, all through ``fileops``: a crash
leaves either the whole object or none, and at worst a temporary file that
``list`` never shows and the next put of the same key does not mind.
Missing directories (the root too) are made with mode 0700.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Iterable, Iterator

from .. import fileops as _fileops
from .base import (
    Hashing,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    RepositoryError,
    check_key,
    check_prefix,
    check_range,
    sha256_of,
)

_TEMP = re.compile(r"\..+\.part-[0-9a-f]{16}")
#: link() errors of file systems that have no hard links (FAT, some network and FUSE file systems)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}


def is_temporary(name: str) -> bool:
    """Whether a file name is a put's temporary file (never an object)."""
    return _TEMP.fullmatch(name) is not None


class LocalRepository:
    def __init__(self, root: str, fileops: _fileops.FileOps = _fileops.REAL):
        self.root = os.path.abspath(root)
        self.url = self.root
        self.fileops = fileops

    def __repr__(self) -> str:
        return f"LocalRepository({self.root!r})"

    # ------------------------------------------------------------ helpers
    def path(self, key: str) -> str:
        """The file that holds ``key``."""
        return os.path.join(self.root, *check_key(key).split("/"))

    def _error(self, what: str, key: str, e: OSError, cls=RepositoryError) -> RepositoryError:
        reason = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            todo = "free space there or choose another repository"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            todo = f"give the directory to the server's user (uid {os.geteuid()}) or choose another repository"
        else:
            todo = "check the directory and its disk"
        return cls(f"repository {self.url}: cannot {what} {key}: {reason}; {todo}")

    def _makedirs(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent != directory:
            self._makedirs(parent)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            return
        self.fileops.fsync_dir(parent)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime, etag=None)

    # --------------------------------------------------------------- write
    def put_stream(self, key: str, chunks: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        target = self.path(key)
        directory = os.path.dirname(target)
        tmp = os.path.join(directory, f".{os.path.basename(target)}.part-{secrets.token_hex(8)}")
        fops = self.fileops
        hashing = Hashing(chunks)
        try:
            self._makedirs(directory)
            fd = fops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise self._error("write", key, e) from None
        linked = False
        try:
            try:
                behind = _fileops.WriteBehind(fops, fd)
                for chunk in hashing:
                    fops.write_all(fd, chunk)
                    behind.wrote(len(chunk))
                fops.fsync(fd)
            finally:
                fops.close(fd)
            if if_absent:
                try:
                    os.link(tmp, target)  # never replaces: EEXIST if the key is taken
                    linked = True
                except FileExistsError:
                    return self._same_or_exists(key, target, hashing.size, hashing.hexdigest())
                except OSError as e:
                    if e.errno not in _NO_HARD_LINKS:
                        raise
                    # A file system without hard links: look, then rename (a
                    # writer racing for the same key is not excluded there).
                    if os.path.lexists(target):
                        return self._same_or_exists(key, target, hashing.size, hashing.hexdigest())
                    fops.rename(tmp, target)
            else:
                fops.rename(tmp, target)
            fops.fsync_dir(directory)
            return self._info(key, os.stat(target))
        except OSError as e:
            raise self._error("write", key, e) from None
        finally:
            if linked or os.path.lexists(tmp):
                try:
                    fops.unlink(tmp)
                except OSError:
                    pass

    def _same_or_exists(self, key: str, target: str, size: int, digest: str) -> ObjectInfo:
        st = os.stat(target)
        if st.st_size == size:
            with open(target, "rb") as f:
                _, theirs = sha256_of(iter(lambda: f.read(1 << 20), b""))
            if theirs == digest:
                return self._info(key, st)
        raise ObjectExists(
            f"repository {self.url}: {key} already exists with different content ({st.st_size} bytes); "
            "it is never overwritten: another server may be writing to the same repository"
        )

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        return self.put_stream(key, [data], if_absent=if_absent)

    def delete(self, key: str) -> None:
        target = self.path(key)
        try:
            self.fileops.unlink(target)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        except OSError as e:
            raise self._error("delete", key, e) from None
        try:
            self.fileops.fsync_dir(os.path.dirname(target))
        except OSError as e:
            raise self._error("delete", key, e) from None

    # ---------------------------------------------------------------- read
    def _open(self, key: str):
        try:
            f = open(self.path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"repository {self.url}: no object {key}") from None
        except OSError as e:
            raise self._error("read", key, e) from None
        return f

    def open_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        f = self._open(key)  # a missing key fails here, not at the first chunk
        return self._chunks(f, key, chunk_size)

    def _chunks(self, f, key: str, chunk_size: int) -> Iterator[bytes]:
        with f:
            while True:
                try:
                    chunk = f.read(chunk_size)
                except OSError as e:
                    raise self._error("read", key, e) from None
                if not chunk:
                    return
                yield chunk

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(key, offset, length)
        with self._open(key) as f:
            try:
                return os.pread(f.fileno(), length, offset) if length else b""
            except OSError as e:
                raise self._error("read", key, e) from None

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            try:
                return f.read()
            except OSError as e:
                raise self._error("read", key, e) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error("look at", key, e) from None
        if not os.path.isfile(self.path(key)):
            return None
        return self._info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Walk only below the deepest directory the prefix names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base and any(part in ("", ".", "..") for part in base.split("/")):
            return iter(())  # no key has such a part: and the walk must never leave the root
        start = os.path.join(self.root, *base.split("/")) if base else self.root
        found: list[ObjectInfo] = []
        try:
            walk = list(os.walk(start, onerror=_raise))
        except FileNotFoundError:
            return iter(())
        except OSError as e:
            raise self._error("list", prefix or "(all keys)", e) from None
        for dirpath, _dirs, files in walk:
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if is_temporary(name):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted meanwhile
                found.append(self._info(key, st))
        found.sort(key=lambda i: i.key)
        return iter(found)

    def free_bytes(self) -> int | None:
        path = self.root
        while not os.path.isdir(path):
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize


def _raise(e: OSError) -> None:
    raise e
