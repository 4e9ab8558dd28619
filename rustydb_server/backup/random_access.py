"""Random access into one entry of a backup: read any byte range, decoding
only the chunks that cover it.

Every chunk of an entry but the last holds exactly ``chunk_size`` raw bytes
(the container guarantees it and checks it in each record head), so byte
``n`` lives in chunk ``n // chunk_size``. Where each chunk's record sits in the
file is found once, by walking the record heads (28 bytes each) without
reading chunk data. Decoded chunks are kept in a small LRU cache because
SQLite reads neighbouring pages in bursts.

Each chunk is checked (and authenticated when the backup is encrypted) as it
is decoded. The entry's digest cannot be checked without reading it
all; with encryption that is no loss, since every chunk is bound to its entry,
position and the last-chunk flag.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import BinaryIO

from .container import BackupReader, EntryInfo

DEFAULT_CACHE_CHUNKS = 8


class EntryReader:
    """Byte-range reads from one entry of ``reader``; thread-safe.

    ``chunks_decoded`` counts chunks decoded (cache misses), so callers and
    tests can see how little of the backup a query touched.
    """

    def __init__(
        self,
        reader: BackupReader,
        entry_name: str,
        *,
        cache_chunks: int = DEFAULT_CACHE_CHUNKS,
        owned_file: BinaryIO | None = None,
    ) -> None:
        if cache_chunks < 1:
            raise ValueError("cache_chunks must be >= 1")
        self.reader = reader
        self.info: EntryInfo = reader.entry(entry_name)
        self.chunk_size = reader.header.chunk_size
        self._offsets = reader.chunk_offsets(self.info)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = cache_chunks
        # BackupReader seeks and reads one shared file object: one caller at a time.
        self._lock = threading.Lock()
        self._owned_file = owned_file
        self.chunks_decoded = 0

    @property
    def size(self) -> int:
        return self.info.raw_size

    @property
    def chunk_count(self) -> int:
        return self.info.chunks

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; shorter only at the entry's end."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        end = min(offset + length, self.info.raw_size)
        if offset >= end:
            return b""
        cs = self.chunk_size
        parts = []
        with self._lock:
            for chunk in range(offset // cs, (end - 1) // cs + 1):
                data = self._chunk(chunk)
                base = chunk * cs
                parts.append(data[max(offset - base, 0) : end - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _chunk(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is not None:
            self._cache.move_to_end(index)
            return data
        data = self.reader.read_chunk(self.info, index, self._offsets[index])
        self.chunks_decoded += 1
        self._cache[index] = data
        if len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return data

    def close(self) -> None:
        """Drop the cache, and close the backup file if this reader owns it."""
        with self._lock:
            self._cache.clear()
            if self._owned_file is not None:
                self._owned_file.close()
                self._owned_file = None

    def __enter__(self) -> EntryReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_entry(path: str, entry_name: str, *, key=None, cache_chunks: int = DEFAULT_CACHE_CHUNKS) -> EntryReader:
    """An EntryReader over the backup file at ``path``, owning the open file."""
    f = open(path, "rb")
    try:
        return EntryReader(BackupReader(f, key=key), entry_name, cache_chunks=cache_chunks, owned_file=f)
    except BaseException:
        f.close()
        raise
