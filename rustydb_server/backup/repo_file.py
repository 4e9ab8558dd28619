"""A backup in a repository read as a file: range reads, never the whole object.

``RepositoryFile`` is a read-only, seekable file object over
``Repository.get_range``, for BackupReader (which reads a backup by offset:
its header, its index at the end, then the chunks it needs). Reads are
fetched in blocks of BLOCK bytes and the last few blocks kept, so reading a
header or walking a table's chunks costs a few requests, and verifying a
whole backup reads it once, block after block; with ``readahead`` (a whole
restore straight from an object store) the next blocks are fetched in
parallel while one is used. --info reads only the head
and tail; a table restore only that database's chunks.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

BLOCK = 4 << 20
KEEP_BLOCKS = 4


class RepositoryFile(io.RawIOBase):
    def __init__(
        self,
        repo,
        key: str,
        size: int | None = None,
        *,
        block: int = BLOCK,
        readahead: int = 0,
        shared: dict[int, bytes] | None = None,
    ):
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
        # Read ahead (a whole restore reads the backup front to back): the next
        # ``readahead`` blocks are fetched in parallel while the current one is used.
        self._readahead = max(0, readahead)
        self._keep = KEEP_BLOCKS + self._readahead
        self._ahead: dict[int, Future] = {}
        self._last: int | None = None  # the block read last: reading ahead starts once reads go block after block
        self._pool = ThreadPoolExecutor(self._readahead, thread_name_prefix="repo-read") if self._readahead else None
        # The first and last blocks (header, index), kept across the opens of one object
        # (the restore reads the header for the key, then the whole backup).
        self._shared = shared

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # a block being fetched is dropped
            self._pool = None
            self._ahead.clear()
        super().close()

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

    def _fetch(self, index: int) -> bytes:
        offset = index * self._block
        return self.repo.get_range(self.key, offset, min(self._block, self.size - offset))

    def _get_block(self, index: int) -> bytes:
        with self._lock:
            block = self._cache.get(index)
            if block is not None:
                self._cache.move_to_end(index)
                self._read_ahead(index)
                return block
            pending = self._ahead.pop(index, None)
            self._read_ahead(index)
        block = self._shared.get(index) if self._shared is not None and pending is None else None
        if block is None:
            block = pending.result() if pending is not None else self._fetch(index)
        with self._lock:
            self._cache[index] = block
            if self._shared is not None and index in (0, (self.size - 1) // self._block):
                self._shared[index] = block
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return block

    def _read_ahead(self, index: int) -> None:
        """(With the lock held) start fetching the blocks after ``index`` not held or coming yet,
        once the reads go front to back (not for a header, then the index at the end)."""
        last = (self.size - 1) // self._block
        # Block after block; or back to the first block once the index at the end is read
        # (a backup's entries start right after its header): a restore reads on from there.
        sequential = self._last is not None and (index == self._last + 1 or (index == 0 and self._last == last > 0))
        self._last = index
        if self._pool is None or not (sequential or self._ahead):
            return
        for n in range(index + 1, min(index + self._readahead, last) + 1):
            if n not in self._cache and n not in self._ahead:
                self._ahead[n] = self._pool.submit(self._fetch, n)
        for n in [n for n in self._ahead if n < index]:  # a seek back: no longer wanted
            self._ahead.pop(n).cancel()
