"""The backup file format: one self-describing file per backup.

Pure writer and reader over file-like objects (``read``/``seek``/``write``);
no sockets, no paths except ``rotate_key``. All integers are big-endian
unless noted; "sha256" is SHA-256, "crc" is CRC-32C, "xxh3" is XXH3-128.

File layout::

    header   magic "RDBBAK01" | u16 format (2; 1 is still read) | u16 reserved (0)
             | u32 core_len | u32 keywrap_len
             | core     (msgpack map, core_len bytes)
             | keywrap  (msgpack map, keywrap_len bytes; 0 bytes if not encrypted)
             | sha256 of every header byte before it (32)
    body     chunk records, entry after entry, chunks in order (below)
    index    msgpack map; sealed with AES-256-GCM when encrypted
    footer   (64 bytes, fixed) u64 index_offset (absolute) | u32 index_len
             | u32 index crc | digest of every byte before the footer (32:
             xxh3, then 16 zero bytes; format 1: sha256)
             | u32 reserved (0) | u32 crc of the 52 footer bytes before it
             | magic "RDBEND01"

core: ``format, backup_id, type, created_us, server_version, system_id,
start_lsn, end_lsn, timeline, parent_id, base_full_id, databases ([{name,
tables: [{name, rows}], size_bytes}]), extra, compression, chunk_size,
encrypted, cipher, nonce_prefix``. keywrap: ``{params: bin (msgpack of the
public key parameters: {kdf: "keyfile", fingerprint} or {kdf: "scrypt", salt,
n, r, p} or {kdf: "argon2id", salt, iterations, memory_kib, lanes}),
wrapped_key: bin (60 bytes)}``. The header is readable without a key
(``--info``).

Chunk record (28-byte head, then ``stored_len`` bytes)::

    "CK" | u8 flags (1 = LAST, 2 = COMPRESSED) | u8 reserved (0)
    | u32 entry_index | u32 chunk_index | u32 raw_len | u32 stored_len
    | u32 check | u32 crc of the 24 head bytes before it

Stored bytes are the chunk compressed (only if that made it smaller, flag
COMPRESSED), then, if encrypted, sealed: AES-256-GCM ciphertext || 16-byte tag.
Every entry has at least one chunk; every chunk but the last of an entry holds
exactly ``chunk_size`` raw bytes; only the last has LAST.

What binds what:

- ``core_hash = sha256(magic || u16 format || core)``. It leaves out the keywrap,
  so ``rotate_key`` can rewrap the data key and keep every chunk byte-identical.
- chunk AAD = ``"C" || core_hash || u32 entry_index || u32 chunk_index || u8 flags
  || u32 raw_len || entry name (utf-8)``; chunk nonce = ``nonce_prefix ||
  u64 seq`` with seq the chunk's position in the whole backup (see crypto.py).
  Changing the header, moving, duplicating, dropping or splicing a chunk (even
  from another backup under the same key file: each backup has its own data
  key) or flipping LAST fails authentication.
- key wrap AAD = ``"RDBBAK01 wrap" || core_hash || keywrap.params``: lowering the
  KDF parameters or editing the header makes the unwrap fail.
- index AAD = ``"I" || core_hash``, nonce seq 2**64 - 1. The index lists entry
  names, body-relative offsets, spans, chunk counts, raw sizes and the digest
  of each entry's plaintext (``xxh3_128``; format 1 had ``sha256``); it is
  sealed so those digests do not leak.
- The entry digest checks the whole decode end to end (a codec bug, a chunk
  lost between reader and writer); the footer's digest, every byte around
  the chunks too. Neither is what resists forgery: with encryption, GCM and
  the AAD above do that; without, nothing can (anyone could recompute any
  unkeyed hash). So format 2 uses XXH3-128 for both, 128 bits against
  accidental damage at ~25 GB/s, where format 1's SHA-256 ran at ~1.8 GB/s
  and cost the backup about a fifth of its CPU outside compression.
- ``check``: without encryption, crc(AAD || plaintext), so a chunk from
  another place fails its own checksum; with encryption, crc(AAD || stored),
  which says "damaged on disk" before decryption and leaks nothing about the
  plaintext. Without encryption the format detects damage, not forgery.

Offsets in the index are relative to the body start, so rotating a key (whose
new header may differ in length) leaves the index byte-identical too.

Every format keeps the prefix and the header's sha256 where they are, so a
reader tells a newer format (its header checks out) from a damaged version
field (it does not).
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import msgpack
import xxhash

from rustydb_server import codecs, crypto
from rustydb_server.crc import crc32c
from rustydb_server.crypto import SecretKey, WrongKeyError
from rustydb_server.fileops import REAL, FileOps
from rustydb_server.keys import KeySource, NoKeyError

MAGIC = b"RDBBAK01"
END_MAGIC = b"RDBEND01"
FORMAT_VERSION = 2
BACKUP_TYPES = ("full", "incremental", "differential", "pitr-base", "wal-segment")
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
MAX_HEADER_PART = 16 << 20
MAX_INDEX_SIZE = 256 << 20

PREFIX = struct.Struct(">8sHHII")
HEADER_SUM_SIZE = 32
RECORD = struct.Struct(">2sBBIIIIII")
RECORD_CRC_SPAN = RECORD.size - 4
RECORD_MAGIC = b"CK"
FOOTER = struct.Struct(">QII32sII8s")
FOOTER_CRC_SPAN = 52
FOOTER_DIGEST_SIZE = 32

FLAG_LAST = 1
FLAG_COMPRESSED = 2
KNOWN_FLAGS = FLAG_LAST | FLAG_COMPRESSED

WRAP_AAD_PREFIX = b"RDBBAK01 wrap"


@dataclass(frozen=True)
class _Digest:
    """The hash a format version digests entries and the whole file with
    (see the module doc)."""

    field: str  # the entry digest's key in the index
    new: Callable[..., Any]  # new(data=b"") -> a hash object with update/digest
    slow: bool  # worth a thread of its own while restoring

    @staticmethod
    def footer_bytes(h) -> bytes:
        return h.digest().ljust(FOOTER_DIGEST_SIZE, b"\0")


DIGESTS = {
    1: _Digest("sha256", hashlib.sha256, slow=True),
    2: _Digest("xxh3_128", xxhash.xxh3_128, slow=False),
}


def _thread_pool(workers: int, name: str, **kwargs):
    # Imported on first use: concurrent.futures pulls in logging, about 7 ms
    # of every tool's start, and reading a table out of a backup uses no pool.
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix=name, **kwargs)


class BackupError(Exception):
    """Base class for backup container errors."""


class BackupCorruptError(BackupError):
    """The file is damaged, truncated or tampered with; names what and where."""

    def __init__(
        self,
        backup_id: str | None,
        reason: str,
        *,
        entry: str | None = None,
        chunk: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.backup_id = backup_id
        self.reason = reason
        self.entry = entry
        self.chunk = chunk
        self.offset = offset
        where = [f"backup {backup_id or '(unknown id)'}"]
        if entry is not None:
            where.append(f"entry {entry!r}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if offset is not None:
            where.append(f"at byte {offset}")
        super().__init__(f"{', '.join(where)}: {reason}")


class UnsupportedFormatError(BackupError):
    """A backup in a format this release cannot read (written by a newer one):
    not damaged, and not to be given up on."""


class EntryNotFoundError(BackupError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class UnsafeEntryNameError(BackupError, ValueError):
    pass


def safe_entry_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path ("a/b.c"), else raise.

    Names come from backup files and are never trusted as paths: no absolute
    paths, no "." or ".." components, no empty components, no backslashes
    (Windows separators), no NUL or other control characters.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeEntryNameError(f"unsafe entry name {name!r}: empty or not text")
    if len(name.encode("utf-8", "surrogatepass")) > 4096:
        raise UnsafeEntryNameError(f"unsafe entry name {name[:64]!r}...: too long")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise UnsafeEntryNameError(f"unsafe entry name {name!r}: control character")
    if "\\" in name:
        raise UnsafeEntryNameError(f"unsafe entry name {name!r}: backslash")
    if name.startswith("/"):
        raise UnsafeEntryNameError(f"unsafe entry name {name!r}: absolute path")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeEntryNameError(f"unsafe entry name {name!r}: {part or 'empty'!r} component")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeEntryNameError(f"unsafe entry name {name!r}: not valid unicode") from None
    return name


@dataclass
class BackupHeader:
    """Backup metadata. ``compression``, ``chunk_size`` and ``encryption`` are
    set by the writer from its own arguments (values passed in are replaced)."""

    backup_id: str
    backup_type: str
    created_us: int
    server_version: str = ""
    system_id: str = ""
    start_lsn: int = 0
    end_lsn: int = 0
    timeline: int = 1
    parent_id: str | None = None
    base_full_id: str | None = None
    databases: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    compression: str = "none"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Public key parameters only ({"cipher", "kdf", ...}; salt as hex), never key bytes.
    encryption: dict | None = None

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def table_count(self) -> int:
        return sum(len(db.get("tables", [])) for db in self.databases)


def new_header(backup_type: str, **fields: Any) -> BackupHeader:
    """A header with a fresh UUID4 id and the current UTC time in microseconds."""
    return BackupHeader(
        backup_id=str(uuid.uuid4()),
        backup_type=backup_type,
        created_us=time.time_ns() // 1000,
        **fields,
    )


@dataclass(frozen=True)
class EntryInfo:
    name: str
    index: int
    raw_size: int
    chunks: int
    stored_size: int  # bytes in the body, chunk record heads included
    digest: str  # hex, of the entry's plaintext (DIGESTS of the file's format)
    offset: int  # absolute file offset of the first chunk record
    first_seq: int  # position of the first chunk in the backup (nonce counter)


@dataclass(frozen=True)
class BackupSummary:
    size_bytes: int
    digest: str  # hex, the footer's digest of every byte before the footer
    entries: list[EntryInfo]


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


# -- small pure helpers ------------------------------------------------------


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    # unpackb bounds every container length by len(data), so no huge allocations.
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _core_hash(core_bytes: bytes, version: int = FORMAT_VERSION) -> bytes:
    return hashlib.sha256(MAGIC + struct.pack(">H", version) + core_bytes).digest()


def _wrap_aad(core_hash: bytes, params_bytes: bytes) -> bytes:
    return WRAP_AAD_PREFIX + core_hash + params_bytes


def _index_aad(core_hash: bytes) -> bytes:
    return b"I" + core_hash


def chunk_aad(core_hash: bytes, entry_index: int, chunk_index: int, flags: int, raw_len: int, name: bytes) -> bytes:
    return b"C" + core_hash + struct.pack(">IIBI", entry_index, chunk_index, flags, raw_len) + name


def _pack_record(flags: int, entry_index: int, chunk_index: int, raw_len: int, stored_len: int, check: int) -> bytes:
    head = RECORD.pack(RECORD_MAGIC, flags, 0, entry_index, chunk_index, raw_len, stored_len, check, 0)
    return head[:RECORD_CRC_SPAN] + struct.pack(">I", crc32c(head[:RECORD_CRC_SPAN]))


def _public_encryption(params: dict) -> dict:
    out = {"cipher": crypto.CIPHER}
    for key, value in params.items():
        out[key] = value.hex() if isinstance(value, bytes) else value
    return out


def _header_core(header: BackupHeader, nonce_prefix: bytes | None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "backup_id": header.backup_id,
        "type": header.backup_type,
        "created_us": header.created_us,
        "server_version": header.server_version,
        "system_id": header.system_id,
        "start_lsn": header.start_lsn,
        "end_lsn": header.end_lsn,
        "timeline": header.timeline,
        "parent_id": header.parent_id,
        "base_full_id": header.base_full_id,
        "databases": header.databases,
        "extra": header.extra,
        "compression": header.compression,
        "chunk_size": header.chunk_size,
        "encrypted": nonce_prefix is not None,
        "cipher": crypto.CIPHER if nonce_prefix is not None else None,
        "nonce_prefix": nonce_prefix,
    }


def _check_header_fields(h: BackupHeader) -> None:
    """Raise ValueError naming the first field that is not as the format requires."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"backup header field {what}")

    need(isinstance(h.backup_id, str), "backup_id must be a string")
    try:
        uuid.UUID(h.backup_id)
    except ValueError:
        raise ValueError(f"backup header field backup_id {h.backup_id!r} is not a UUID") from None
    need(h.backup_type in BACKUP_TYPES, f"type {h.backup_type!r} is not one of {BACKUP_TYPES}")
    for name in ("created_us", "start_lsn", "end_lsn", "timeline"):
        value = getattr(h, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"{name} must be an int >= 0")
    need(h.start_lsn <= h.end_lsn, "start_lsn must not exceed end_lsn")
    for name in ("server_version", "system_id"):
        need(isinstance(getattr(h, name), str), f"{name} must be a string")
    for name in ("parent_id", "base_full_id"):
        need(getattr(h, name) is None or isinstance(getattr(h, name), str), f"{name} must be a string or None")
    need(isinstance(h.extra, dict), "extra must be a map")
    need(isinstance(h.databases, list), "databases must be a list")
    for db in h.databases:
        need(isinstance(db, dict) and isinstance(db.get("name"), str), "databases[] needs a name")
        tables = db.get("tables", [])
        need(isinstance(tables, list), f"databases[{db['name']}].tables must be a list")
        for t in tables:
            need(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("rows", 0), int),
                f"databases[{db['name']}].tables[] needs a name and an int row count",
            )
        need(isinstance(db.get("size_bytes", 0), int), f"databases[{db['name']}].size_bytes must be an int")
    need(h.compression in codecs.CODECS, f"compression {h.compression!r} unknown")
    need(isinstance(h.chunk_size, int) and 1 <= h.chunk_size <= MAX_CHUNK_SIZE, "chunk_size out of range")


# -- chunk codec (runs on worker threads) -------------------------------------


@dataclass(frozen=True)
class _ChunkContext:
    """What encoding and decoding a chunk needs; immutable, shared by threads."""

    core_hash: bytes
    codec: str
    chunk_size: int
    aead: Any  # AESGCM or None
    nonce_prefix: bytes | None
    level: int | None = None


def _seal_record(
    ctx: _ChunkContext, entry_index: int, name: bytes, chunk_index: int, seq: int, flags: int, data
) -> tuple[bytes, bytes | memoryview]:
    """Compress, encrypt and checksum one chunk; returns (record head, stored bytes)."""
    raw_len = len(data)
    stored = data
    if ctx.codec != "none" and raw_len:
        packed = codecs.compress(ctx.codec, data, ctx.level)
        if len(packed) < raw_len:  # incompressible data is stored as is
            stored = packed
            flags |= FLAG_COMPRESSED
    aad = chunk_aad(ctx.core_hash, entry_index, chunk_index, flags, raw_len, name)
    if ctx.aead is not None:
        stored = crypto.seal_chunk(ctx.aead, ctx.nonce_prefix, seq, stored, aad)
        check = crc32c(stored, crc32c(aad))
    else:
        check = crc32c(data, crc32c(aad))
    return _pack_record(flags, entry_index, chunk_index, raw_len, len(stored), check), stored


class _ChunkDamage(Exception):
    pass


def _open_record(
    ctx: _ChunkContext,
    entry_index: int,
    name: bytes,
    chunk_index: int,
    seq: int,
    flags: int,
    raw_len: int,
    check: int,
    stored: bytes,
) -> bytes:
    """Check, decrypt and decompress one stored chunk; _ChunkDamage says what is wrong."""
    aad = chunk_aad(ctx.core_hash, entry_index, chunk_index, flags, raw_len, name)
    payload = stored
    if ctx.aead is not None:
        if crc32c(stored, crc32c(aad)) != check:
            raise _ChunkDamage("stored bytes do not match their checksum (damaged, or moved here)")
        try:
            payload = crypto.open_chunk(ctx.aead, ctx.nonce_prefix, seq, stored, aad)
        except crypto.AuthenticationError:
            raise _ChunkDamage("chunk failed authentication (tampered, moved, or from another backup)") from None
    if flags & FLAG_COMPRESSED:
        try:
            plain = codecs.decompress(ctx.codec, payload, raw_len)
        except codecs.CodecError as exc:
            raise _ChunkDamage(f"does not decompress: {exc}") from None
    else:
        plain = payload
    if len(plain) != raw_len:
        raise _ChunkDamage(f"holds {len(plain)} bytes, its record says {raw_len}")
    if ctx.aead is None and crc32c(plain, crc32c(aad)) != check:
        raise _ChunkDamage("data does not match its checksum (damaged, or moved here)")
    return plain


# -- writer -------------------------------------------------------------------


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


def _build_header_bytes(core_bytes: bytes, keywrap_bytes: bytes, version: int = FORMAT_VERSION) -> bytes:
    prefix = PREFIX.pack(MAGIC, version, 0, len(core_bytes), len(keywrap_bytes))
    body = prefix + core_bytes + keywrap_bytes
    return body + hashlib.sha256(body).digest()


def _build_keywrap(core_hash: bytes, params: dict, kek: SecretKey, data_key: SecretKey) -> bytes:
    params_bytes = _pack(params)
    wrapped = crypto.wrap_key(kek, data_key, _wrap_aad(core_hash, params_bytes))
    return _pack({"params": params_bytes, "wrapped_key": wrapped})


class BackupWriter:
    """Writes one backup to ``fileobj`` (already open for writing, positioned at 0).

    The caller owns durability: write to a temporary name, ``finish()``, fsync,
    rename. With ``threads > 1`` chunks are compressed, encrypted and
    checksummed on a thread pool, and one more thread hashes them and writes
    the records in order, so the caller's thread only hands data over.
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
    ) -> None:
        codecs.check_codec(codec)
        if threads < 1:
            raise ValueError("threads must be >= 1")
        header = replace(header, compression=codec, chunk_size=chunk_size, encryption=None)
        _check_header_fields(header)
        self._out = fileobj
        self._chunk_size = chunk_size
        nonce_prefix = aead = None
        if key is not None:
            params, kek = key.kek_for_new_backup()
            data_key = crypto.generate_data_key()
            nonce_prefix = crypto.generate_nonce_prefix()
            aead = crypto.cipher_for(data_key)
            header.encryption = _public_encryption(params)
        core_bytes = _pack(_header_core(header, nonce_prefix))
        if len(core_bytes) > MAX_HEADER_PART:
            raise ValueError(f"backup {header.backup_id}: header is too large ({len(core_bytes)} bytes)")
        core_hash = _core_hash(core_bytes)
        keywrap = _build_keywrap(core_hash, params, kek, data_key) if key is not None else b""
        self.header = header
        self._ctx = _ChunkContext(core_hash, codec, chunk_size, aead, nonce_prefix, level)
        self._file_hash = DIGESTS[FORMAT_VERSION].new()
        self._pos = 0
        self._emit_bytes(_build_header_bytes(core_bytes, keywrap))
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
            self._pool = _thread_pool(threads, "backup-chunk", initializer=lower_thread_priority, initargs=(nice,))
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
        entry = _OpenEntry(len(self._entries), name, name.encode("utf-8"), DIGESTS[FORMAT_VERSION].new())
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

    def add_entry(self, name: str, chunks: Iterable[bytes]) -> None:
        self.begin_entry(name)
        for data in chunks:
            self.write(data)
        self.end_entry()

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
            self._write_record(entry, *_seal_record(*args))
            return
        # The writer thread always drains the queue, even after it failed, so
        # this put cannot block for good.
        self._queue.put((entry, data, self._pool.submit(_seal_record, *args)))
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
        index = {
            "chunks": self._seq,
            "entries": [
                {
                    "name": e.name,
                    "offset": e.offset,
                    "span": e.span,
                    "chunks": e.chunks,
                    "raw_size": e.raw_size,
                    DIGESTS[FORMAT_VERSION].field: e.digest.digest(),
                }
                for e in self._entries
            ],
        }
        index_bytes = _pack(index)
        if self._ctx.aead is not None:
            index_bytes = crypto.seal_chunk(
                self._ctx.aead, self._ctx.nonce_prefix, crypto.INDEX_SEQ, index_bytes, _index_aad(self._ctx.core_hash)
            )
        index_offset = self._pos
        self._emit_bytes(index_bytes)
        digest = DIGESTS[FORMAT_VERSION].footer_bytes(self._file_hash)
        footer = _pack_footer(index_offset, len(index_bytes), crc32c(index_bytes), digest)
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


def lower_thread_priority(nice: int, *, whole_process: bool = False) -> None:
    """Raise the calling thread's niceness to ``nice``; never lower it.

    On Linux niceness is per thread, and threads started later inherit it.
    Elsewhere it is the whole process's, so it is changed only when the
    caller says the whole process is meant (a backup tool, not the server).
    Only for threads that end with the backup: raising niceness back needs
    privileges a service user does not have.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    if sys.platform.startswith("linux"):
        who = threading.get_native_id()
    elif whole_process:
        who = 0
    else:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, who) < nice:
            os.setpriority(os.PRIO_PROCESS, who, nice)
    except OSError:
        pass  # refused: the backup still runs, at normal priority


def _first_seqs(counts: list[int]) -> list[int]:
    out, total = [], 0
    for n in counts:
        out.append(total)
        total += n
    return out


def _pack_footer(index_offset: int, index_len: int, index_crc: int, digest: bytes) -> bytes:
    body = FOOTER.pack(index_offset, index_len, index_crc, digest, 0, 0, END_MAGIC)
    return body[:FOOTER_CRC_SPAN] + struct.pack(">I", crc32c(body[:FOOTER_CRC_SPAN])) + END_MAGIC


# -- reader -------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
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
        self._pool = _thread_pool(1, "backup-hash") if threaded else None
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
        # its 8 KiB buffer for every 28-byte chunk head after a seek (15 ms of
        # a table restore's 45 ms for a 1 GiB backup's 1,026 heads).
        try:
            self._fd: int | None = fileobj.fileno()
        except (AttributeError, OSError):  # io.BytesIO and the like
            self._fd = None
        self._label = None
        # Structure problems found before the chunks are walked: raised at once by
        # entries()/read_entry(), but only after the chunk walk by verify(), so
        # that its message can name the entry and chunk that moved.
        self._layout_problems: list[BackupCorruptError] = []
        self._layout = self._read_layout()
        self._key_params: dict | None = None
        self._wrapped: bytes | None = None
        self.header, nonce_prefix = self._parse_header()
        self._core_hash = _core_hash(self._layout.core_bytes, self._layout.version)
        self._nonce_prefix = nonce_prefix
        self._data_key: SecretKey | None = None
        aead = None
        if key is not None and self.header.encrypted:
            self._data_key = self._unwrap(key)
            aead = crypto.cipher_for(self._data_key)
        self._ctx = _ChunkContext(self._core_hash, self.header.compression, self.header.chunk_size, aead, nonce_prefix)
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

    def _read_layout(self) -> _Layout:
        size = self._f.seek(0, os.SEEK_END)
        if size < PREFIX.size:
            raise self._corrupt(f"file is only {size} bytes: not a complete RustyDB backup")
        prefix = self._read_at(0, PREFIX.size, "header")
        magic, version, _reserved, core_len, keywrap_len = PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise self._corrupt("not a RustyDB backup file (bad magic)")
        if core_len > MAX_HEADER_PART or keywrap_len > MAX_HEADER_PART:
            raise self._corrupt("header damaged: impossible header length")
        body_start = PREFIX.size + core_len + keywrap_len + HEADER_SUM_SIZE
        if body_start + FOOTER.size > size:
            raise self._corrupt("file ends inside the header or has no footer (truncated)")
        rest = self._read_at(PREFIX.size, body_start - PREFIX.size, "header")
        header_bytes = prefix + rest
        if hashlib.sha256(header_bytes[:-HEADER_SUM_SIZE]).digest() != header_bytes[-HEADER_SUM_SIZE:]:
            raise self._corrupt(
                "header damaged: header checksum mismatch"
                + ("" if version in DIGESTS else f" (format version reads {version})"),
                offset=0,
            )
        if version not in DIGESTS:
            # The prefix and the header checksum keep their place in every
            # format, so a header that checks out is a newer format, not damage.
            raise UnsupportedFormatError(
                f"the file is in backup format {version}, newer than this RustyDB reads "
                f"({', '.join(map(str, DIGESTS))}); it was written by a newer release: verify "
                "and restore it with that release or a later one"
            )
        core_bytes = rest[:core_len]
        keywrap_bytes = rest[core_len : core_len + keywrap_len]
        try:  # name the backup in every later error
            self._label = str(_unpack(core_bytes)["backup_id"])
        except Exception:
            pass
        footer_at = size - FOOTER.size
        footer = self._read_at(footer_at, FOOTER.size, "footer")
        index_offset, index_len, index_crc, digest, _r, footer_crc, end_magic = FOOTER.unpack(footer)
        if end_magic != END_MAGIC:
            raise self._corrupt(
                "file is truncated or incomplete: no end marker at the end of the file", offset=footer_at
            )
        if crc32c(footer[:FOOTER_CRC_SPAN]) != footer_crc:
            raise self._corrupt("footer damaged: footer checksum mismatch", offset=footer_at)
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
        return _Layout(
            version,
            header_bytes,
            core_bytes,
            keywrap_bytes,
            body_start,
            index_offset,
            index_len,
            index_crc,
            digest,
            size,
        )

    def _parse_header(self) -> tuple[BackupHeader, bytes | None]:
        lay = self._layout
        try:
            core = _unpack(lay.core_bytes)
            keywrap = _unpack(lay.keywrap_bytes) if lay.keywrap_bytes else None
            if core.get("format") != lay.version:
                raise ValueError("format field does not match")
            header = BackupHeader(
                backup_id=core["backup_id"],
                backup_type=core["type"],
                created_us=core["created_us"],
                server_version=core["server_version"],
                system_id=core["system_id"],
                start_lsn=core["start_lsn"],
                end_lsn=core["end_lsn"],
                timeline=core["timeline"],
                parent_id=core["parent_id"],
                base_full_id=core["base_full_id"],
                databases=core["databases"],
                extra=core["extra"],
                compression=core["compression"],
                chunk_size=core["chunk_size"],
            )
            _check_header_fields(header)
            nonce_prefix = core["nonce_prefix"]
            if core["encrypted"]:
                if core["cipher"] != crypto.CIPHER:
                    raise ValueError(f"unknown cipher {core['cipher']!r}")
                if not isinstance(nonce_prefix, bytes) or len(nonce_prefix) != crypto.NONCE_PREFIX_SIZE:
                    raise ValueError("bad nonce prefix")
                if not isinstance(keywrap, dict):
                    raise ValueError("encrypted but no wrapped key")
                self._wrapped = keywrap["wrapped_key"]
                self._params_bytes = keywrap["params"]
                self._key_params = _unpack(self._params_bytes)
                if not isinstance(self._key_params, dict) or not isinstance(self._wrapped, bytes):
                    raise ValueError("bad key parameters")
                header.encryption = _public_encryption(self._key_params)
            elif keywrap is not None or nonce_prefix is not None:
                raise ValueError("unencrypted but carries key material")
        except Exception as exc:
            raise self._corrupt(f"header damaged: {type(exc).__name__}: {exc}") from None
        return header, nonce_prefix

    def _unwrap(self, key: KeySource) -> SecretKey:
        try:
            kek = key.kek_for(self._key_params)  # a key file's fingerprint is checked here
            return crypto.unwrap_key(kek, self._wrapped, _wrap_aad(self._core_hash, self._params_bytes))
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
        lay = self._layout
        return self._read_at(lay.index_offset, lay.index_len, "index")

    def _load_index(self, raw: bytes | None = None, *, strict: bool = True) -> list[EntryInfo]:
        if self._entries is None:
            self._entries = self._read_index(raw)
        if strict and self._layout_problems:
            raise self._layout_problems[0]
        return self._entries

    def _read_index(self, raw: bytes | None) -> list[EntryInfo]:
        self._require_key()
        lay = self._layout
        raw = self._read_index_bytes() if raw is None else raw
        if crc32c(raw) != lay.index_crc:
            raise self._corrupt("index damaged: index checksum mismatch", offset=lay.index_offset)
        if self._ctx.aead is not None:
            try:
                raw = crypto.open_chunk(
                    self._ctx.aead, self._nonce_prefix, crypto.INDEX_SEQ, raw, _index_aad(self._core_hash)
                )
            except crypto.AuthenticationError:
                raise self._corrupt("index failed authentication", offset=lay.index_offset) from None
        try:
            return self._parse_index(_unpack(raw))
        except BackupCorruptError:
            raise
        except Exception as exc:
            raise self._corrupt(f"index damaged: {type(exc).__name__}: {exc}", offset=lay.index_offset) from None

    def _parse_index(self, index: dict) -> list[EntryInfo]:
        lay = self._layout
        entries: list[EntryInfo] = []
        names: set[str] = set()
        expect_offset, seq = 0, 0
        cs = self.header.chunk_size
        digest_field = DIGESTS[lay.version].field
        for i, e in enumerate(index["entries"]):
            name, offset, span, chunks, raw_size, digest = (
                e["name"],
                e["offset"],
                e["span"],
                e["chunks"],
                e["raw_size"],
                e[digest_field],
            )
            try:
                safe_entry_name(name)
            except UnsafeEntryNameError as exc:
                raise self._corrupt(f"index holds an {exc}") from None
            if name in names:
                raise self._corrupt(f"index lists entry {name!r} twice")
            names.add(name)
            ints = (offset, span, chunks, raw_size)
            if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(digest, bytes):
                raise self._corrupt("index damaged: bad field types", entry=name)
            if offset != expect_offset or chunks < 1 or span < chunks * RECORD.size:
                raise self._corrupt("index damaged: entry does not follow the previous one", entry=name)
            if not (chunks - 1) * cs <= raw_size <= chunks * cs:
                raise self._corrupt("index damaged: raw size does not fit the chunk count", entry=name)
            entries.append(EntryInfo(name, i, raw_size, chunks, span, digest.hex(), lay.body_start + offset, seq))
            expect_offset += span
            seq += chunks
        if lay.body_start + expect_offset != lay.index_offset:
            self._layout_problems.append(
                self._corrupt(
                    "chunk data and index do not line up (chunks appended, dropped or truncated)",
                    offset=lay.body_start + expect_offset,
                )
            )
        if index["chunks"] != seq:
            raise self._corrupt("index damaged: chunk total does not match its entries")
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
        kind = DIGESTS[self._layout.version]
        hasher = _OrderedHash(kind.new(), threaded=threads > 1 and kind.slow)
        total = 0
        pool = _thread_pool(threads, "backup-read") if threads > 1 else None
        pending: deque = deque()
        try:
            for job in self._chunk_jobs(info, tap):
                if pool is None:
                    pending.append((job, None))
                else:
                    pending.append((job, pool.submit(_open_record, *job[0])))
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
            return _open_record(*args) if future is None else future.result()
        except _ChunkDamage as exc:
            raise self._corrupt(str(exc), entry=info.name, chunk=chunk, offset=offset) from None

    def _check_head(self, info: EntryInfo, chunk: int, pos: int) -> tuple[bytes, int, int, int, int]:
        """Read and check the record head of ``chunk`` at ``pos``; returns
        (head, flags, raw_len, stored_len, check). Raises naming entry and chunk."""
        end = info.offset + info.stored_size
        cs = self.header.chunk_size
        max_stored = cs + (crypto.TAG_SIZE if self.header.encrypted else 0)

        def bad(reason: str) -> BackupCorruptError:
            return self._corrupt(reason, entry=info.name, chunk=chunk, offset=pos)

        if pos + RECORD.size > end:
            raise bad("entry ends before its last chunk (chunks dropped or truncated)")
        head = self._read_at(pos, RECORD.size, f"chunk {chunk} of entry {info.name!r}")
        magic, flags, reserved, e_idx, c_idx, raw_len, stored_len, check, head_crc = RECORD.unpack(head)
        if crc32c(head[:RECORD_CRC_SPAN]) != head_crc or magic != RECORD_MAGIC:
            raise bad("chunk header missing or damaged (header checksum mismatch)")
        if e_idx != info.index or c_idx != chunk:
            raise bad(
                f"found chunk {c_idx} of entry #{e_idx} where chunk {chunk} of entry #{info.index} "
                "belongs (chunks reordered, duplicated or dropped)"
            )
        last = chunk == info.chunks - 1
        if bool(flags & FLAG_LAST) != last or flags & ~KNOWN_FLAGS or reserved:
            raise bad("chunk flags wrong: the last-chunk mark is missing or misplaced (truncated or spliced)")
        if raw_len > cs or (not last and raw_len != cs) or stored_len > max_stored:
            raise bad(f"chunk sizes impossible (raw {raw_len}, stored {stored_len}, chunk size {cs})")
        if pos + RECORD.size + stored_len > end:
            raise bad("chunk runs past the end of its entry (truncated or spliced)")
        return head, flags, raw_len, stored_len, check

    def _chunk_jobs(self, info: EntryInfo, tap) -> Iterator[tuple]:
        """Read the entry's records in order, checking structure; yields decode jobs."""
        pos, end = info.offset, info.offset + info.stored_size
        name_bytes = info.name.encode("utf-8")
        for chunk in range(info.chunks):
            head, flags, raw_len, stored_len, check = self._check_head(info, chunk, pos)
            stored = self._read_at(pos + RECORD.size, stored_len, f"chunk {chunk} of entry {info.name!r}")
            if tap is not None:
                tap(head)
                tap(stored)
            args = (self._ctx, info.index, name_bytes, chunk, info.first_seq + chunk, flags, raw_len, check, stored)
            yield args, chunk, pos
            pos += RECORD.size + stored_len
        if pos != end:
            raise self._corrupt("extra bytes after the entry's last chunk", entry=info.name, offset=pos)

    # random access (one chunk at a time, for reading a backup without restoring it)

    def chunk_offsets(self, info: EntryInfo) -> list[int]:
        """The file offset of every chunk record of ``info``, found by walking
        the record heads only (each checked; no chunk data is read)."""
        self._require_key()
        offsets, pos = [], info.offset
        for chunk in range(info.chunks):
            stored_len = self._check_head(info, chunk, pos)[3]
            offsets.append(pos)
            pos += RECORD.size + stored_len
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
        _head, flags, raw_len, stored_len, check = self._check_head(info, chunk_index, offset)
        stored = self._read_at(offset + RECORD.size, stored_len, f"chunk {chunk_index} of entry {info.name!r}")
        args = (
            self._ctx,
            info.index,
            info.name.encode("utf-8"),
            chunk_index,
            info.first_seq + chunk_index,
            flags,
            raw_len,
            check,
            stored,
        )
        return self._finish_job(info, (args, chunk_index, offset), None)

    # verification

    def verify(self, progress: Callable[[int, int], None] | None = None, *, threads: int = 1) -> VerifyReport:
        """Check structure, every chunk and the whole-file digest; writes nothing.
        Raises BackupCorruptError (naming entry and chunk) at the first damage."""
        self._require_key()
        lay = self._layout
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
        if self._layout_problems:
            raise self._layout_problems[0]
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


def read_header(fileobj: BinaryIO) -> BackupHeader:
    """The header alone (for ``--info``): no key needed."""
    return BackupReader(fileobj).header


# -- key rotation -------------------------------------------------------------


def rotate_key(
    path: str, old_key: KeySource, new_key: KeySource, fileops: FileOps = REAL, *, block_size: int = 1 << 20
) -> BackupSummary:
    """Re-wrap the backup's data key under ``new_key``; chunks and index are
    copied byte for byte. The new file replaces ``path`` atomically (temporary
    name, fsync, rename, fsync dir); the old file's digest is checked during
    the copy so a damaged backup is never re-blessed with a fresh digest."""
    with open(path, "rb") as f:
        reader = BackupReader(f, key=old_key)  # WrongKeyError here if old_key is wrong
        if not reader.header.encrypted:
            raise BackupError(f"backup {reader.header.backup_id} is not encrypted; there is no key to rotate")
        if reader._layout_problems:
            raise reader._layout_problems[0]
        lay = reader._layout
        params, kek = new_key.kek_for_new_backup()
        keywrap = _build_keywrap(reader._core_hash, params, kek, reader.data_key)
        header_bytes = _build_header_bytes(lay.core_bytes, keywrap, lay.version)
        shift = len(header_bytes) - lay.body_start
        tmp = f"{path}.rotate.{os.getpid()}.tmp"
        fd = fileops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            kind = DIGESTS[lay.version]
            old_hash, new_hash = kind.new(lay.header_bytes), kind.new(header_bytes)
            fileops.write_all(fd, header_bytes)
            f.seek(lay.body_start)
            remaining = lay.file_size - FOOTER.size - lay.body_start
            while remaining:
                block = f.read(min(block_size, remaining))
                if not block:
                    raise reader._corrupt("file shrank while rotating its key")
                old_hash.update(block)
                new_hash.update(block)
                fileops.write_all(fd, block)
                remaining -= len(block)
            if kind.footer_bytes(old_hash) != lay.digest:
                raise reader._corrupt("whole-file digest mismatch; not rotating a damaged backup")
            new_digest = kind.footer_bytes(new_hash)
            footer = _pack_footer(lay.index_offset + shift, lay.index_len, lay.index_crc, new_digest)
            fileops.write_all(fd, footer)
            fileops.fsync(fd)
        except BaseException:
            fileops.close(fd)
            try:
                fileops.unlink(tmp)
            except OSError:
                pass
            raise
        fileops.close(fd)
    fileops.rename(tmp, path)
    fileops.fsync_dir(os.path.dirname(os.path.abspath(path)))
    with open(path, "rb") as f:
        entries = BackupReader(f, key=new_key).entries()
    return BackupSummary(len(header_bytes) + (lay.file_size - lay.body_start), new_digest.hex(), entries)
