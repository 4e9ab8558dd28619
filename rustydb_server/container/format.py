"""The backup file format: one self-describing file per backup.

Its structures and the sealing of one chunk record, as pure code (bytes in,
objects out; no files): ``writer.py`` and ``reader.py`` move these bytes to
and from a file. All integers are big-endian unless noted; "sha256" is
SHA-256, "crc" is CRC-32C, "xxh3" is XXH3-128.

File layout::

    header   magic "RDBBAK01" | u16 format (3; 1 and 2 are still read) | u16 reserved (0)
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

Key hierarchy (format 3). The key file's key, or the passphrase stretched by
the KDF in ``params``, is the key-encryption key (KEK); ``wrapped_key`` is the
file's random data key sealed with AES-256-GCM (random 12-byte nonce || 32
bytes || 16-byte tag) under ``HKDF-SHA256(KEK, info = "rustydb backup key
wrap v3" || core_hash)`` (``crypto.file_wrapping_key``). A process writes every
file under one KEK and so one set of KDF parameters (one salt), so reading an
archive of many segments runs the KDF once per salt, not once per segment;
the per-file HKDF keeps each wrap under a key of its own. Formats 1 and 2
sealed the data key under the KEK itself and gave each file a salt of its own.

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
  so ``rotate_key`` (rotate.py) can rewrap the data key and keep every chunk byte-identical.
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
  accidental damage at a small fraction of the cost of format 1's SHA-256,
  which took about a fifth of a backup's CPU outside compression.
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
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import xxhash

from rustydb_server import codecs, crypto
from rustydb_server.crc import crc32c
from rustydb_server.crypto import SecretKey
from rustydb_server.datadir import DataDirError, validate_database_name

from .errors import UnsafeEntryNameError, UnsupportedFormatError

MAGIC = b"RDBBAK01"
END_MAGIC = b"RDBEND01"
FORMAT_VERSION = 3
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


class BackupType(StrEnum):
    """What a backup file holds: the header's ``type``."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    PITR_BASE = "pitr-base"
    WAL_SEGMENT = "wal-segment"  # one archived WAL segment (archive/segment_file.py)

    @property
    def is_full_base(self) -> bool:
        """Holds every database whole: restored on its own, and a differential's base."""
        return self in (BackupType.FULL, BackupType.PITR_BASE)

    @property
    def needs_parent(self) -> bool:
        """Holds net changes only: applied on top of the backup it was taken from."""
        return self in (BackupType.INCREMENTAL, BackupType.DIFFERENTIAL)

    @classmethod
    def taken_by_server(cls) -> tuple[BackupType, ...]:
        """The types a server backs its databases up as (``--type``, ``backup_type``)."""
        return tuple(t for t in cls if t is not cls.WAL_SEGMENT)


@dataclass(frozen=True)
class Digest:
    """The hash a format version digests entries and the whole file with
    (see the module doc)."""

    field: str  # the entry digest's key in the index
    new: Callable[..., Any]  # new(data=b"") -> a hash object with update/digest
    slow: bool  # worth a thread of its own while restoring

    @staticmethod
    def footer_bytes(h) -> bytes:
        return h.digest().ljust(FOOTER_DIGEST_SIZE, b"\0")


DIGESTS = {
    1: Digest("sha256", hashlib.sha256, slow=True),
    2: Digest("xxh3_128", xxhash.xxh3_128, slow=False),
    3: Digest("xxh3_128", xxhash.xxh3_128, slow=False),
}

# The first format whose data key is wrapped under a per-file key derived from
# the KEK (see "Key hierarchy" above); older files wrap under the KEK itself.
FIRST_PER_FILE_WRAP = 3


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
    backup_type: BackupType
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


def pack_msgpack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_msgpack(data: bytes) -> Any:
    # unpackb bounds every container length by len(data), so no huge allocations.
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def hash_core(core_bytes: bytes, version: int = FORMAT_VERSION) -> bytes:
    return hashlib.sha256(MAGIC + struct.pack(">H", version) + core_bytes).digest()


def wrap_aad(core_hash: bytes, params_bytes: bytes) -> bytes:
    return WRAP_AAD_PREFIX + core_hash + params_bytes


def index_aad(core_hash: bytes) -> bytes:
    return b"I" + core_hash


def chunk_aad(core_hash: bytes, entry_index: int, chunk_index: int, flags: int, raw_len: int, name: bytes) -> bytes:
    return b"C" + core_hash + struct.pack(">IIBI", entry_index, chunk_index, flags, raw_len) + name


def pack_record(flags: int, entry_index: int, chunk_index: int, raw_len: int, stored_len: int, check: int) -> bytes:
    head = RECORD.pack(RECORD_MAGIC, flags, 0, entry_index, chunk_index, raw_len, stored_len, check, 0)
    return head[:RECORD_CRC_SPAN] + struct.pack(">I", crc32c(head[:RECORD_CRC_SPAN]))


def pack_footer(index_offset: int, index_len: int, index_crc: int, digest: bytes) -> bytes:
    body = FOOTER.pack(index_offset, index_len, index_crc, digest, 0, 0, END_MAGIC)
    return body[:FOOTER_CRC_SPAN] + struct.pack(">I", crc32c(body[:FOOTER_CRC_SPAN])) + END_MAGIC


def pack_header(core_bytes: bytes, keywrap_bytes: bytes, version: int = FORMAT_VERSION) -> bytes:
    prefix = PREFIX.pack(MAGIC, version, 0, len(core_bytes), len(keywrap_bytes))
    body = prefix + core_bytes + keywrap_bytes
    return body + hashlib.sha256(body).digest()


def wrapping_key(kek: SecretKey, core_hash: bytes, version: int) -> SecretKey:
    """The key a file of format ``version`` wraps its data key under."""
    return crypto.file_wrapping_key(kek, core_hash) if version >= FIRST_PER_FILE_WRAP else kek


def pack_keywrap(
    core_hash: bytes, params: dict, kek: SecretKey, data_key: SecretKey, version: int = FORMAT_VERSION
) -> bytes:
    params_bytes = pack_msgpack(params)
    wrapped = crypto.wrap_key(wrapping_key(kek, core_hash, version), data_key, wrap_aad(core_hash, params_bytes))
    return pack_msgpack({"params": params_bytes, "wrapped_key": wrapped})


def unwrap_data_key(kek: SecretKey, wrapped: bytes, core_hash: bytes, params_bytes: bytes, version: int) -> SecretKey:
    """The data key of a file of format ``version``; WrongKeyError if ``kek``
    (or the header the wrap is bound to) does not match."""
    return crypto.unwrap_key(wrapping_key(kek, core_hash, version), wrapped, wrap_aad(core_hash, params_bytes))


def public_encryption(params: dict) -> dict:
    out = {"cipher": crypto.CIPHER}
    for key, value in params.items():
        out[key] = value.hex() if isinstance(value, bytes) else value
    return out


def header_core(header: BackupHeader, nonce_prefix: bytes | None, version: int = FORMAT_VERSION) -> dict:
    return {
        "format": version,
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


def check_header_fields(h: BackupHeader) -> None:
    """Raise ValueError naming the first field that is not as the format requires."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"backup header field {what}")

    need(isinstance(h.backup_id, str), "backup_id must be a string")
    try:
        uuid.UUID(h.backup_id)
    except ValueError:
        raise ValueError(f"backup header field backup_id {h.backup_id!r} is not a UUID") from None
    types = tuple(t.value for t in BackupType)
    need(h.backup_type in types, f"type {h.backup_type!r} is not one of {types}")
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
        try:  # the one check of a database name, as the manifest's (a tool opens it by this name)
            validate_database_name(db["name"])
        except DataDirError:
            raise ValueError(f"backup header field databases[] names {db['name']!r}, not a database name") from None
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


@dataclass(frozen=True)
class ParsedHeader:
    """A header's core and keywrap, checked; the key parameters are public."""

    header: BackupHeader
    nonce_prefix: bytes | None
    key_params: dict | None = None
    params_bytes: bytes | None = None  # key_params as stored: the key wrap's AAD covers them
    wrapped_key: bytes | None = None


def parse_header(core_bytes: bytes, keywrap_bytes: bytes, version: int) -> ParsedHeader:
    """The header stored as ``core_bytes`` and ``keywrap_bytes`` by a file of
    format ``version``; raises (any exception) if a field is missing or wrong."""
    core = unpack_msgpack(core_bytes)
    keywrap = unpack_msgpack(keywrap_bytes) if keywrap_bytes else None
    if core.get("format") != version:
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
    check_header_fields(header)
    header.backup_type = BackupType(header.backup_type)
    nonce_prefix = core["nonce_prefix"]
    if not core["encrypted"]:
        if keywrap is not None or nonce_prefix is not None:
            raise ValueError("unencrypted but carries key material")
        return ParsedHeader(header, nonce_prefix)
    if core["cipher"] != crypto.CIPHER:
        raise ValueError(f"unknown cipher {core['cipher']!r}")
    if not isinstance(nonce_prefix, bytes) or len(nonce_prefix) != crypto.NONCE_PREFIX_SIZE:
        raise ValueError("bad nonce prefix")
    if not isinstance(keywrap, dict):
        raise ValueError("encrypted but no wrapped key")
    wrapped = keywrap["wrapped_key"]
    params_bytes = keywrap["params"]
    key_params = unpack_msgpack(params_bytes)
    if not isinstance(key_params, dict) or not isinstance(wrapped, bytes):
        raise ValueError("bad key parameters")
    header.encryption = public_encryption(key_params)
    return ParsedHeader(header, nonce_prefix, key_params, params_bytes, wrapped)


@dataclass(frozen=True)
class ChunkContext:
    """What encoding and decoding a chunk needs; immutable, shared by threads."""

    core_hash: bytes
    codec: str
    chunk_size: int
    aead: Any  # AESGCM or None
    nonce_prefix: bytes | None
    level: int | None = None


def seal_record(
    ctx: ChunkContext, entry_index: int, name: bytes, chunk_index: int, seq: int, flags: int, data
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
    return pack_record(flags, entry_index, chunk_index, raw_len, len(stored), check), stored


class FormatDamage(Exception):
    """Bytes that are not as the format says; the reader adds which backup and where."""

    def __init__(self, reason: str, *, entry: str | None = None) -> None:
        super().__init__(reason)
        self.entry = entry


def open_record(
    ctx: ChunkContext,
    entry_index: int,
    name: bytes,
    chunk_index: int,
    seq: int,
    flags: int,
    raw_len: int,
    check: int,
    stored: bytes,
) -> bytes:
    """Check, decrypt and decompress one stored chunk; FormatDamage says what is wrong."""
    aad = chunk_aad(ctx.core_hash, entry_index, chunk_index, flags, raw_len, name)
    payload = stored
    if ctx.aead is not None:
        if crc32c(stored, crc32c(aad)) != check:
            raise FormatDamage("stored bytes do not match their checksum (damaged, or moved here)")
        try:
            payload = crypto.open_chunk(ctx.aead, ctx.nonce_prefix, seq, stored, aad)
        except crypto.AuthenticationError:
            raise FormatDamage("chunk failed authentication (tampered, moved, or from another backup)") from None
    if flags & FLAG_COMPRESSED:
        try:
            plain = codecs.decompress(ctx.codec, payload, raw_len)
        except codecs.CodecError as exc:
            raise FormatDamage(f"does not decompress: {exc}") from None
    else:
        plain = payload
    if len(plain) != raw_len:
        raise FormatDamage(f"holds {len(plain)} bytes, its record says {raw_len}")
    if ctx.aead is None and crc32c(plain, crc32c(aad)) != check:
        raise FormatDamage("data does not match its checksum (damaged, or moved here)")
    return plain


def seal_index(ctx: ChunkContext, index_bytes: bytes) -> bytes:
    """The index as stored: sealed under the data key when encrypted."""
    if ctx.aead is None:
        return index_bytes
    return crypto.seal_chunk(ctx.aead, ctx.nonce_prefix, crypto.INDEX_SEQ, index_bytes, index_aad(ctx.core_hash))


def open_index(ctx: ChunkContext, stored: bytes) -> bytes:
    if ctx.aead is None:
        return stored
    try:
        return crypto.open_chunk(ctx.aead, ctx.nonce_prefix, crypto.INDEX_SEQ, stored, index_aad(ctx.core_hash))
    except crypto.AuthenticationError:
        raise FormatDamage("index failed authentication") from None


# -- prefix, record heads, index and footer --------------------------------------


def unpack_prefix(prefix: bytes) -> tuple[int, int, int]:
    """(format version, core length, keywrap length) from the header's first bytes."""
    magic, version, _reserved, core_len, keywrap_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FormatDamage("not a RustyDB backup file (bad magic)")
    if core_len > MAX_HEADER_PART or keywrap_len > MAX_HEADER_PART:
        raise FormatDamage("header damaged: impossible header length")
    return version, core_len, keywrap_len


def check_header_sum(header_bytes: bytes, version: int) -> None:
    """Check the header's own sha256, then that its format is one this release reads."""
    if hashlib.sha256(header_bytes[:-HEADER_SUM_SIZE]).digest() != header_bytes[-HEADER_SUM_SIZE:]:
        raise FormatDamage(
            "header damaged: header checksum mismatch"
            + ("" if version in DIGESTS else f" (format version reads {version})")
        )
    if version not in DIGESTS:
        # The prefix and the header checksum keep their place in every
        # format, so a header that checks out is a newer format, not damage.
        raise UnsupportedFormatError(
            f"the file is in backup format {version}, newer than this RustyDB reads "
            f"({', '.join(map(str, DIGESTS))}); it was written by a newer release: verify "
            "and restore it with that release or a later one"
        )


@dataclass(frozen=True)
class RecordHead:
    flags: int
    raw_len: int
    stored_len: int
    check: int


def unpack_record_head(
    head: bytes, entry_index: int, chunk_index: int, *, last: bool, chunk_size: int, encrypted: bool
) -> RecordHead:
    """The head of a chunk record found where chunk ``chunk_index`` of entry
    ``entry_index`` belongs, checked against that place."""
    magic, flags, reserved, e_idx, c_idx, raw_len, stored_len, check, head_crc = RECORD.unpack(head)
    if crc32c(head[:RECORD_CRC_SPAN]) != head_crc or magic != RECORD_MAGIC:
        raise FormatDamage("chunk header missing or damaged (header checksum mismatch)")
    if e_idx != entry_index or c_idx != chunk_index:
        raise FormatDamage(
            f"found chunk {c_idx} of entry #{e_idx} where chunk {chunk_index} of entry #{entry_index} "
            "belongs (chunks reordered, duplicated or dropped)"
        )
    if bool(flags & FLAG_LAST) != last or flags & ~KNOWN_FLAGS or reserved:
        raise FormatDamage("chunk flags wrong: the last-chunk mark is missing or misplaced (truncated or spliced)")
    max_stored = chunk_size + (crypto.TAG_SIZE if encrypted else 0)
    if raw_len > chunk_size or (not last and raw_len != chunk_size) or stored_len > max_stored:
        raise FormatDamage(f"chunk sizes impossible (raw {raw_len}, stored {stored_len}, chunk size {chunk_size})")
    return RecordHead(flags, raw_len, stored_len, check)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    offset: int  # of its first chunk record, from the start of the body
    span: int  # bytes of its chunk records, heads included
    chunks: int
    raw_size: int
    digest: bytes  # of its plaintext (DIGESTS of the file's format)


def pack_index(entries: list[IndexEntry], version: int = FORMAT_VERSION) -> bytes:
    digest_field = DIGESTS[version].field
    return pack_msgpack(
        {
            "chunks": sum(e.chunks for e in entries),
            "entries": [
                {
                    "name": e.name,
                    "offset": e.offset,
                    "span": e.span,
                    "chunks": e.chunks,
                    "raw_size": e.raw_size,
                    digest_field: e.digest,
                }
                for e in entries
            ],
        }
    )


def parse_index(index_bytes: bytes, version: int, chunk_size: int) -> list[IndexEntry]:
    """The entries of an index, each checked to follow the previous one and to
    fit its chunk count; FormatDamage names what is wrong (and where the index
    is merely malformed, any exception does)."""
    index = unpack_msgpack(index_bytes)
    entries: list[IndexEntry] = []
    names: set[str] = set()
    expect_offset = seq = 0
    digest_field = DIGESTS[version].field
    for e in index["entries"]:
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
            raise FormatDamage(f"index holds an {exc}") from None
        if name in names:
            raise FormatDamage(f"index lists entry {name!r} twice")
        names.add(name)
        ints = (offset, span, chunks, raw_size)
        if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(digest, bytes):
            raise FormatDamage("index damaged: bad field types", entry=name)
        if offset != expect_offset or chunks < 1 or span < chunks * RECORD.size:
            raise FormatDamage("index damaged: entry does not follow the previous one", entry=name)
        if not (chunks - 1) * chunk_size <= raw_size <= chunks * chunk_size:
            raise FormatDamage("index damaged: raw size does not fit the chunk count", entry=name)
        entries.append(IndexEntry(name, offset, span, chunks, raw_size, digest))
        expect_offset += span
        seq += chunks
    if index["chunks"] != seq:
        raise FormatDamage("index damaged: chunk total does not match its entries")
    return entries


@dataclass(frozen=True)
class Footer:
    index_offset: int  # absolute
    index_len: int
    index_crc: int
    digest: bytes  # of every byte before the footer


def unpack_footer(footer: bytes) -> Footer:
    index_offset, index_len, index_crc, digest, _reserved, footer_crc, end_magic = FOOTER.unpack(footer)
    if end_magic != END_MAGIC:
        raise FormatDamage("file is truncated or incomplete: no end marker at the end of the file")
    if crc32c(footer[:FOOTER_CRC_SPAN]) != footer_crc:
        raise FormatDamage("footer damaged: footer checksum mismatch")
    return Footer(index_offset, index_len, index_crc, digest)
