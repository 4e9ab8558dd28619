"""A backup in a repository read as a file: range reads, never the whole object.

``RepositoryFile`` is a read-only, seekable file object over
``Repository.get_range``, for BackupReader (which reads a backup by offset:
its header, its index at the end, then the chunks it needs). Reads are
fetched in blocks of BLOCK bytes and the last few blocks kept, so reading a
header or walking a table's chunks costs a few requests, and verifying a
whole backup reads it once, block after block. --info reads only the head
and tail; a table restore only that database's chunks.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict

BLOCK = 4 << 20
KEEP_BLOCKS = 4


class RepositoryFile(io.RawIOBase):
    def __init__(self, repo, key: str, size: int | None = None, *, block: int = BLOCK):
        super().__init__()
        self.repo = repo
        self.key = key
        if size is None:
            info = repo.stat(key)
            if info is None:
                from ..repository.base import ObjectNotFound

                raise ObjectNotFound(f"repository {repo.url}: no object {key}")
            size = info.size
        self.size = size
        self.name = f"{repo.url}/{key}"
        self._block = block
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def pread(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts = []
        pos = offset
        while pos < end:
            index = pos // self._block
            block = self._get_block(index)
            start = pos - index * self._block
            piece = block[start : start + (end - pos)]
            if not piece:
                break
            parts.append(piece)
            pos += len(piece)
        return b"".join(parts)

    def _get_block(self, index: int) -> bytes:
        with self._lock:
            block = self._cache.get(index)
            if block is not None:
                self._cache.move_to_end(index)
                return block
        offset = index * self._block
        block = self.repo.get_range(self.key, offset, min(self._block, self.size - offset))
        with self._lock:
            self._cache[index] = block
            while len(self._cache) > KEEP_BLOCKS:
                self._cache.popitem(last=False)
        return block
