"""Writing one backup to a file object: entries cut into chunks, each sealed
on worker threads and written in order, then the index and footer."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from rustydb_server import codecs, crypto
from rustydb_server.crc import crc32c
from rustydb_server.keys import KeySource

from .errors import BackupError
from .format import (
    DEFAULT_CHUNK_SIZE,
    DIGESTS,
    FLAG_LAST,
    FORMAT_VERSION,
    MAX_HEADER_PART,
    BackupHeader,
    BackupSummary,
    ChunkContext,
    EntryInfo,
    IndexEntry,
    check_header_fields,
    hash_core,
    header_core,
    pack_footer,
    pack_header,
    pack_index,
    pack_keywrap,
    pack_msgpack,
    public_encryption,
    safe_entry_name,
    seal_index,
    seal_record,
)
from .threads import lower_thread_priority, thread_pool

WRITABLE_VERSIONS = (2, FORMAT_VERSION)


@dataclass
class _OpenEntry:
    index: int
    name: str
    name_bytes: bytes
    digest: Any
    chunks: int = 0
    raw_size: int = 0
    offset: int = -1
    span: int = 0


class BackupWriter:
    """Writes one backup to ``fileobj`` (already open for writing, positioned at 0).

    The caller owns durability: write to a temporary name, ``finish()``, fsync,
    rename. With ``threads > 1`` chunks are compressed, encrypted and
    checksummed on a thread pool, and one more thread hashes them and writes
    the records in order, so the caller's thread only hands data over.

    ``version`` is the format written: the current one, or 2 (the layout
    before the key hierarchy) for tests and benchmarks that compare the two.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        header: BackupHeader,
        *,
        key: KeySource | None = None,
        codec: str = "lz4",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        threads: int = 1,
        level: int | None = None,
        nice: int = 0,
        version: int = FORMAT_VERSION,
    ) -> None:
        codecs.check_codec(codec)
        if version not in WRITABLE_VERSIONS:
            raise ValueError(f"cannot write backup format {version} (writes {WRITABLE_VERSIONS})")
        if threads < 1:
            raise ValueError("threads must be >= 1")
        header = replace(header, compression=codec, chunk_size=chunk_size, encryption=None)
        check_header_fields(header)
        self._out = fileobj
        self._chunk_size = chunk_size
        nonce_prefix = aead = None
        if key is not None:
            params, kek = key.kek_for_new_backup()
            data_key = crypto.generate_data_key()
            nonce_prefix = crypto.generate_nonce_prefix()
            aead = crypto.cipher_for(data_key)
            header.encryption = public_encryption(params)
        core_bytes = pack_msgpack(header_core(header, nonce_prefix, version))
        if len(core_bytes) > MAX_HEADER_PART:
            raise ValueError(f"backup {header.backup_id}: header is too large ({len(core_bytes)} bytes)")
        core_hash = hash_core(core_bytes, version)
        keywrap = pack_keywrap(core_hash, params, kek, data_key, version) if key is not None else b""
        self.header = header
        self._ctx = ChunkContext(core_hash, codec, chunk_size, aead, nonce_prefix, level)
        self._version = version
        self._digest = DIGESTS[version]
        self._file_hash = self._digest.new()
        self._pos = 0
        self._emit_bytes(pack_header(core_bytes, keywrap, version))
        self._body_start = self._pos
        self._seq = 0
        self._entries: list[_OpenEntry] = []
        self._names: set[str] = set()
        self._entry: _OpenEntry | None = None
        self._buf = bytearray()
        self._held: Any = None  # a full chunk kept back until we know whether it is the last
        self._pool = None
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._abandoned = False
        self._finished = False
        if threads > 1:
            self._pool = thread_pool(threads, "backup-chunk", initializer=lower_thread_priority, initargs=(nice,))
            self._nice = nice
            # Bounded: at most this many chunks wait between the caller and the file.
            self._queue: queue.Queue = queue.Queue(maxsize=2 * threads)
            self._writer = threading.Thread(target=self._write_loop, name="backup-writer", daemon=True)
            self._writer.start()

    # entries

    def begin_entry(self, name: str) -> None:
        if self._entry is not None:
            raise BackupError(f"backup {self.header.backup_id}: entry {self._entry.name!r} is still open")
        safe_entry_name(name)
        if name in self._names:
            raise BackupError(f"backup {self.header.backup_id}: duplicate entry name {name!r}")
        self._names.add(name)
        entry = _OpenEntry(len(self._entries), name, name.encode("utf-8"), self._digest.new())
        self._entries.append(entry)
        self._entry = entry

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` to the open entry. Chunks outlive this call on worker
        threads, so anything but ``bytes`` or a read-only memoryview is copied
        first; a read-only view is taken as a promise that its buffer does not
        change (a received frame's body, which nothing else holds)."""
        if self._entry is None:
            raise BackupError(f"backup {self.header.backup_id}: write() outside an entry")
        if not isinstance(data, bytes) and not (isinstance(data, memoryview) and data.readonly):
            data = bytes(data)
        view = memoryview(data)
        size = self._chunk_size
        while view:
            if self._held is not None:  # more data follows, so the held chunk is not the last
                self._submit(self._held, last=False)
                self._held = None
            if self._buf:
                take = size - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) == size:
                    self._held, self._buf = self._buf, bytearray()
            elif len(view) >= size:
                self._held, view = view[:size], view[size:]  # no copy for whole chunks
            else:
                self._buf += view
                view = view[:0]

    def end_entry(self) -> EntryInfo | None:
        if self._entry is None:
            raise BackupError(f"backup {self.header.backup_id}: end_entry() without begin_entry()")
        final = self._held if self._held is not None else self._buf
        self._held, self._buf = None, bytearray()
        self._submit(final, last=True)  # an empty entry still gets one (empty) LAST chunk
        self._entry = None

    # chunks

    def _submit(self, data, last: bool) -> None:
        entry = self._entry
        flags = FLAG_LAST if last else 0
        seq = self._seq
        self._seq += 1
        chunk_index = entry.chunks
        entry.chunks += 1
        entry.raw_size += len(data)
        args = (self._ctx, entry.index, entry.name_bytes, chunk_index, seq, flags, data)
        if self._pool is None:
            entry.digest.update(data)
            self._write_record(entry, *seal_record(*args))
            return
        # The writer thread always drains the queue, even after it failed, so
        # this put cannot block for good.
        self._queue.put((entry, data, self._pool.submit(seal_record, *args)))
        if self._writer_error is not None:
            raise self._writer_error

    def _write_loop(self) -> None:
        """Digest each chunk and write its record, in submission order."""
        lower_thread_priority(self._nice)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._writer_error is not None or self._abandoned:
                continue  # failed or abandoned: drain until the owner stops us
            entry, data, future = item
            try:
                entry.digest.update(data)
                self._write_record(entry, *future.result())
            except BaseException as e:  # handed to the caller's thread
                self._writer_error = e

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def _write_record(self, entry: _OpenEntry, head: bytes, stored) -> None:
        if entry.offset < 0:
            entry.offset = self._pos - self._body_start
        self._emit_bytes(head)
        self._emit_bytes(stored)
        entry.span += len(head) + len(stored)

    def _emit_bytes(self, data) -> None:
        self._out.write(data)
        self._file_hash.update(data)
        self._pos += len(data)

    # finish

    def finish(self) -> BackupSummary:
        """Write the index and footer; returns the file's size and digest."""
        if self._entry is not None:
            raise BackupError(f"backup {self.header.backup_id}: entry {self._entry.name!r} was not ended")
        if self._finished:
            raise BackupError(f"backup {self.header.backup_id}: finish() called twice")
        try:
            self._stop_writer()
        finally:
            self.close()
        if self._writer_error is not None:
            raise self._writer_error
        index = [IndexEntry(e.name, e.offset, e.span, e.chunks, e.raw_size, e.digest.digest()) for e in self._entries]
        index_bytes = seal_index(self._ctx, pack_index(index, self._version))
        index_offset = self._pos
        self._emit_bytes(index_bytes)
        digest = self._digest.footer_bytes(self._file_hash)
        footer = pack_footer(index_offset, len(index_bytes), crc32c(index_bytes), digest)
        self._emit_bytes(footer)
        if hasattr(self._out, "flush"):
            self._out.flush()
        self._finished = True
        entries = [
            EntryInfo(
                e.name, e.index, e.raw_size, e.chunks, e.span, e.digest.hexdigest(), self._body_start + e.offset, first
            )
            for e, first in zip(self._entries, _first_seqs([e.chunks for e in self._entries]))
        ]
        return BackupSummary(self._pos, digest.hex(), entries)

    def close(self) -> None:
        """Stop the worker threads (finish() does this; call it when abandoning)."""
        self._abandoned = True  # chunks still queued are not written
        self._stop_writer()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_seqs(counts: list[int]) -> list[int]:
    out, total = [], 0
    for n in counts:
        out.append(total)
        total += n
    return out
