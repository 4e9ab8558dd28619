"""Reading and checking a backup file: its header without a key, its entries
decoded whole (restore) or byte range by byte range (a query against a
backup), and a verification of every byte.

Random access: every chunk of an entry but the last holds exactly
``chunk_size`` raw bytes (the format guarantees it and each record head is
checked for it), so byte ``n`` of an entry lives in chunk ``n // chunk_size``.
Where each chunk's record sits in the file is found once, by walking the
record heads (28 bytes each) without reading chunk data. A chunk read alone
is checked (and authenticated when the backup is encrypted) as it is decoded;
only the entry's digest needs the whole entry, which with encryption is no
loss, since every chunk is bound to its entry, position and the last-chunk flag.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rustydb_server import crypto
from rustydb_server.crc import crc32c
from rustydb_server.crypto import SecretKey, WrongKeyError
from rustydb_server.keys import KeySource, NoKeyError

from .errors import BackupCorruptError, EntryNotFoundError
from .format import (
    DIGESTS,
    FOOTER,
    HEADER_SUM_SIZE,
    MAX_INDEX_SIZE,
    PREFIX,
    RECORD,
    ChunkContext,
    EntryInfo,
    FormatDamage,
    RecordHead,
    check_header_sum,
    hash_core,
    open_index,
    open_record,
    parse_header,
    parse_index,
    unpack_footer,
    unpack_msgpack,
    unpack_prefix,
    unpack_record_head,
    unwrap_data_key,
)
from .threads import thread_pool

DEFAULT_CACHE_CHUNKS = 8


@dataclass(frozen=True)
class VerifyReport:
    backup_id: str
    encrypted: bool
    entries: int
    chunks: int
    raw_bytes: int
    file_bytes: int
    checksum_ok: bool = True  # whole-file digest and every chunk's checksum
    encryption_ok: bool = False  # every chunk and the index authenticated
    structure_ok: bool = True


@dataclass(frozen=True)
class Layout:
    """Where things are in a file, from its header and footer."""

    version: int
    header_bytes: bytes
    core_bytes: bytes
    keywrap_bytes: bytes
    body_start: int
    index_offset: int
    index_len: int
    index_crc: int
    digest: bytes
    file_size: int


class _OrderedHash:
    """One hash fed on a thread of its own, in order.

    hashlib releases the GIL on large buffers, so while one chunk is hashed
    the caller's thread is already writing it (restore) and the workers decode
    the next ones; a few chunks at most wait. Unthreaded, it hashes inline.
    """

    def __init__(self, hasher, *, threaded: bool) -> None:
        self._hasher = hasher
        self._pool = thread_pool(1, "backup-hash") if threaded else None
        self._pending: deque = deque()

    def update(self, data) -> None:
        if self._pool is None:
            self._hasher.update(data)
            return
        self._pending.append(self._pool.submit(self._hasher.update, data))
        while len(self._pending) > 4:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class BackupReader:
    """Reads and checks a backup. The header needs no key; entries of an
    encrypted backup need ``key`` (a wrong key fails here, before any data)."""

    def __init__(self, fileobj: BinaryIO, *, key: KeySource | None = None) -> None:
        self._f = fileobj
        # Positioned reads where there is a descriptor: a buffered file refills
        # its 8 KiB buffer for every 28-byte chunk head after a seek, a third
        # of a table restore's time.
        try:
            self._fd: int | None = fileobj.fileno()
        except (AttributeError, OSError):  # io.BytesIO and the like
            self._fd = None
        self._label = None
        # Structure problems found before the chunks are walked: raised at once by
        # entries()/read_entry(), but only after the chunk walk by verify(), so
        # that its message can name the entry and chunk that moved.
        self._layout_problems: list[BackupCorruptError] = []
        self.layout = self._read_layout()
        try:
            parsed = parse_header(self.layout.core_bytes, self.layout.keywrap_bytes, self.layout.version)
        except Exception as exc:
            raise self._corrupt(f"header damaged: {type(exc).__name__}: {exc}") from None
        self.header = parsed.header
        self._key_params = parsed.key_params
        self._params_bytes = parsed.params_bytes
        self._wrapped = parsed.wrapped_key
        self.core_hash = hash_core(self.layout.core_bytes, self.layout.version)
        nonce_prefix = parsed.nonce_prefix
        self._data_key: SecretKey | None = None
        aead = None
        if key is not None and self.header.encrypted:
            self._data_key = self._unwrap(key)
            aead = crypto.cipher_for(self._data_key)
        self._ctx = ChunkContext(self.core_hash, self.header.compression, self.header.chunk_size, aead, nonce_prefix)
        self._entries: list[EntryInfo] | None = None

    # header and footer

    def _corrupt(self, reason: str, **where) -> BackupCorruptError:
        return BackupCorruptError(self._label, reason, **where)

    def _read_at(self, offset: int, size: int, what: str) -> bytes:
        if self._fd is None:
            self._f.seek(offset)
            data = self._f.read(size)
        else:
            data = os.pread(self._fd, size, offset)
            while len(data) < size:  # short only at the end of the file, or on a signal
                more = os.pread(self._fd, size - len(data), offset + len(data))
                if not more:
                    break
                data += more
        if len(data) != size:
            raise self._corrupt(f"file ends inside the {what} (truncated)", offset=offset)
        return data

    def _read_layout(self) -> Layout:
        size = self._f.seek(0, os.SEEK_END)
        if size < PREFIX.size:
            raise self._corrupt(f"file is only {size} bytes: not a complete RustyDB backup")
        prefix = self._read_at(0, PREFIX.size, "header")
        try:
            version, core_len, keywrap_len = unpack_prefix(prefix)
        except FormatDamage as exc:
            raise self._corrupt(str(exc)) from None
        body_start = PREFIX.size + core_len + keywrap_len + HEADER_SUM_SIZE
        if body_start + FOOTER.size > size:
            raise self._corrupt("file ends inside the header or has no footer (truncated)")
        rest = self._read_at(PREFIX.size, body_start - PREFIX.size, "header")
        header_bytes = prefix + rest
        try:
            check_header_sum(header_bytes, version)
        except FormatDamage as exc:
            raise self._corrupt(str(exc), offset=0) from None
        core_bytes = rest[:core_len]
        keywrap_bytes = rest[core_len : core_len + keywrap_len]
        try:  # name the backup in every later error
            self._label = str(unpack_msgpack(core_bytes)["backup_id"])
        except Exception:
            pass
        footer_at = size - FOOTER.size
        try:
            footer = unpack_footer(self._read_at(footer_at, FOOTER.size, "footer"))
        except FormatDamage as exc:
            raise self._corrupt(str(exc), offset=footer_at) from None
        index_offset, index_len = footer.index_offset, footer.index_len
        if index_len > MAX_INDEX_SIZE or footer_at - index_len < body_start:
            raise self._corrupt("footer damaged: index length does not fit the file", offset=footer_at)
        if index_offset != footer_at - index_len:
            # The index ends where the footer starts, so its position is known
            # anyway; a mismatch means bytes were added or removed in the body.
            # Keep going so verify() can name the entry and chunk concerned.
            self._layout_problems.append(
                self._corrupt(
                    f"body has {footer_at - index_len - index_offset:+d} bytes against the footer's "
                    "record (chunks added, dropped or truncated)",
                    offset=index_offset,
                )
            )
            index_offset = footer_at - index_len
        return Layout(
            version,
            header_bytes,
            core_bytes,
            keywrap_bytes,
            body_start,
            index_offset,
            index_len,
            footer.index_crc,
            footer.digest,
            size,
        )

    def _unwrap(self, key: KeySource) -> SecretKey:
        try:
            kek = key.kek_for(self._key_params)  # a key file's fingerprint is checked here
            return unwrap_data_key(kek, self._wrapped, self.core_hash, self._params_bytes, self.layout.version)
        except WrongKeyError as exc:
            if key.kind == "keyfile" and self._key_params.get("fingerprint") == getattr(key, "fingerprint", None):
                # The right key (its fingerprint matches) failed to unwrap: the
                # authenticated header fields were changed, not the key.
                raise self._corrupt(
                    "header failed authentication: it was altered after the backup was written"
                ) from None
            raise WrongKeyError(f"backup {self._label}: {exc}") from None
        except crypto.CryptoError as exc:
            raise self._corrupt(f"header damaged: key parameters invalid: {exc}") from None

    @property
    def data_key(self) -> SecretKey | None:
        return self._data_key

    def _require_key(self) -> None:
        if self.header.encrypted and self._data_key is None:
            raise NoKeyError(
                f"backup {self._label} is encrypted: supply its key file (--key-file or "
                "RUSTYDB_BACKUP_KEY_FILE) or passphrase (RUSTYDB_BACKUP_PASSPHRASE)"
            )

    # index

    def _read_index_bytes(self) -> bytes:
        lay = self.layout
        return self._read_at(lay.index_offset, lay.index_len, "index")

    def check_layout(self) -> None:
        """Raise the first structure problem found in the header, footer and index."""
        if self._layout_problems:
            raise self._layout_problems[0]

    def _load_index(self, raw: bytes | None = None, *, strict: bool = True) -> list[EntryInfo]:
        if self._entries is None:
            self._entries = self._read_index(raw)
        if strict:
            self.check_layout()
        return self._entries

    def _read_index(self, raw: bytes | None) -> list[EntryInfo]:
        self._require_key()
        lay = self.layout
        raw = self._read_index_bytes() if raw is None else raw
        if crc32c(raw) != lay.index_crc:
            raise self._corrupt("index damaged: index checksum mismatch", offset=lay.index_offset)
        try:
            raw = open_index(self._ctx, raw)
        except FormatDamage as exc:
            raise self._corrupt(str(exc), offset=lay.index_offset) from None
        try:
            index = parse_index(raw, lay.version, self.header.chunk_size)
        except FormatDamage as exc:
            raise self._corrupt(str(exc), entry=exc.entry) from None
        except Exception as exc:
            raise self._corrupt(f"index damaged: {type(exc).__name__}: {exc}", offset=lay.index_offset) from None
        entries, seq = [], 0
        for i, e in enumerate(index):
            entries.append(
                EntryInfo(e.name, i, e.raw_size, e.chunks, e.span, e.digest.hex(), lay.body_start + e.offset, seq)
            )
            seq += e.chunks
        body_end = lay.body_start + sum(e.span for e in index)
        if body_end != lay.index_offset:
            self._layout_problems.append(
                self._corrupt(
                    "chunk data and index do not line up (chunks appended, dropped or truncated)", offset=body_end
                )
            )
        return entries

    def entries(self) -> list[EntryInfo]:
        return list(self._load_index())

    def entry(self, name: str) -> EntryInfo:
        for e in self._load_index():
            if e.name == name:
                return e
        raise EntryNotFoundError(f"backup {self._label} has no entry {name!r}")

    # chunks

    def read_entry(self, name: str, *, threads: int = 1) -> Iterator[bytes]:
        """Yield the entry's plaintext chunk by chunk, each checked (and
        authenticated when encrypted). The entry's size and digest are checked
        after its last chunk: treat the data as untrusted until iteration ends
        without an exception."""
        return self._decode_entry(self.entry(name), threads)

    def _decode_entry(
        self, info: EntryInfo, threads: int, tap: Callable[[bytes], None] | None = None
    ) -> Iterator[bytes]:
        kind = DIGESTS[self.layout.version]
        hasher = _OrderedHash(kind.new(), threaded=threads > 1 and kind.slow)
        total = 0
        pool = thread_pool(threads, "backup-read") if threads > 1 else None
        pending: deque = deque()
        try:
            for job in self._chunk_jobs(info, tap):
                if pool is None:
                    pending.append((job, None))
                else:
                    pending.append((job, pool.submit(open_record, *job[0])))
                while len(pending) > (2 * threads if pool else 0):
                    plain = self._finish_job(info, *pending.popleft())
                    hasher.update(plain)
                    total += len(plain)
                    yield plain
            while pending:
                plain = self._finish_job(info, *pending.popleft())
                hasher.update(plain)
                total += len(plain)
                yield plain
            digest = hasher.hexdigest()
        finally:
            hasher.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if total != info.raw_size:
            raise self._corrupt(f"entry holds {total} bytes, the index says {info.raw_size}", entry=info.name)
        if digest != info.digest:
            raise self._corrupt(f"entry data does not match its {kind.field} digest in the index", entry=info.name)

    def _finish_job(self, info: EntryInfo, job, future) -> bytes:
        args, chunk, offset = job
        try:
            return open_record(*args) if future is None else future.result()
        except FormatDamage as exc:
            raise self._corrupt(str(exc), entry=info.name, chunk=chunk, offset=offset) from None

    def _check_head(self, info: EntryInfo, chunk: int, pos: int) -> tuple[bytes, RecordHead]:
        """Read and check the record head of ``chunk`` at ``pos``. Raises naming entry and chunk."""
        end = info.offset + info.stored_size

        def bad(reason: str) -> BackupCorruptError:
            return self._corrupt(reason, entry=info.name, chunk=chunk, offset=pos)

        if pos + RECORD.size > end:
            raise bad("entry ends before its last chunk (chunks dropped or truncated)")
        head = self._read_at(pos, RECORD.size, f"chunk {chunk} of entry {info.name!r}")
        try:
            record = unpack_record_head(
                head,
                info.index,
                chunk,
                last=chunk == info.chunks - 1,
                chunk_size=self.header.chunk_size,
                encrypted=self.header.encrypted,
            )
        except FormatDamage as exc:
            raise bad(str(exc)) from None
        if pos + RECORD.size + record.stored_len > end:
            raise bad("chunk runs past the end of its entry (truncated or spliced)")
        return head, record

    def _chunk_jobs(self, info: EntryInfo, tap) -> Iterator[tuple]:
        """Read the entry's records in order, checking structure; yields decode jobs."""
        pos, end = info.offset, info.offset + info.stored_size
        name_bytes = info.name.encode("utf-8")
        for chunk in range(info.chunks):
            head, record = self._check_head(info, chunk, pos)
            stored = self._read_at(pos + RECORD.size, record.stored_len, f"chunk {chunk} of entry {info.name!r}")
            if tap is not None:
                tap(head)
                tap(stored)
            seq = info.first_seq + chunk
            yield (
                (self._ctx, info.index, name_bytes, chunk, seq, record.flags, record.raw_len, record.check, stored),
                chunk,
                pos,
            )
            pos += RECORD.size + record.stored_len
        if pos != end:
            raise self._corrupt("extra bytes after the entry's last chunk", entry=info.name, offset=pos)

    # random access (one chunk at a time, for reading a backup without restoring it)

    def chunk_offsets(self, info: EntryInfo) -> list[int]:
        """The file offset of every chunk record of ``info``, found by walking
        the record heads only (each checked; no chunk data is read)."""
        self._require_key()
        offsets, pos = [], info.offset
        for chunk in range(info.chunks):
            offsets.append(pos)
            pos += RECORD.size + self._check_head(info, chunk, pos)[1].stored_len
        if pos != info.offset + info.stored_size:
            raise self._corrupt("extra bytes after the entry's last chunk", entry=info.name, offset=pos)
        return offsets

    def read_chunk(self, info: EntryInfo, chunk_index: int, offset: int) -> bytes:
        """Decode one chunk whose record starts at ``offset`` (from chunk_offsets):
        head checked, then decrypted/decompressed and checked exactly as
        read_entry does. The entry's whole digest is not checked (only a full
        read can); with encryption each chunk is still authenticated, bound to
        its entry, position and the last-chunk flag."""
        self._require_key()
        if not 0 <= chunk_index < info.chunks:
            raise IndexError(f"entry {info.name!r} has {info.chunks} chunks, not chunk {chunk_index}")
        record = self._check_head(info, chunk_index, offset)[1]
        stored = self._read_at(offset + RECORD.size, record.stored_len, f"chunk {chunk_index} of entry {info.name!r}")
        args = (
            self._ctx,
            info.index,
            info.name.encode("utf-8"),
            chunk_index,
            info.first_seq + chunk_index,
            record.flags,
            record.raw_len,
            record.check,
            stored,
        )
        return self._finish_job(info, (args, chunk_index, offset), None)

    # verification

    def verify(self, progress: Callable[[int, int], None] | None = None, *, threads: int = 1) -> VerifyReport:
        """Check structure, every chunk and the whole-file digest; writes nothing.
        Raises BackupCorruptError (naming entry and chunk) at the first damage."""
        self._require_key()
        lay = self.layout
        kind = DIGESTS[lay.version]
        file_hash = kind.new(lay.header_bytes)
        index_raw = self._read_index_bytes()
        entries = self._load_index(index_raw, strict=False)
        done = lay.body_start
        raw_bytes = chunks = 0

        def tap(data: bytes) -> None:
            nonlocal done
            file_hash.update(data)
            done += len(data)

        for info in entries:
            for plain in self._decode_entry(info, threads, tap):
                raw_bytes += len(plain)
                chunks += 1
                if progress is not None:
                    progress(done, lay.file_size)
        self.check_layout()
        file_hash.update(index_raw)
        if kind.footer_bytes(file_hash) != lay.digest:
            raise self._corrupt("whole-file digest mismatch (damage outside any chunk, or in the footer)")
        if progress is not None:
            progress(lay.file_size, lay.file_size)
        return VerifyReport(
            backup_id=self.header.backup_id,
            encrypted=self.header.encrypted,
            entries=len(entries),
            chunks=chunks,
            raw_bytes=raw_bytes,
            file_bytes=lay.file_size,
            encryption_ok=self.header.encrypted,
        )


class EntryReader:
    """Byte-range reads from one entry of ``reader``; thread-safe.

    Decoded chunks are kept in a small LRU cache because SQLite reads
    neighbouring pages in bursts. ``chunks_decoded`` counts chunks decoded (cache misses), so callers and
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
