"""The backup reader: any bytes as a backup file, plain or encrypted.

Contract: opening, listing, reading every entry (whole and by byte range),
verifying, and reading the manifest raise only the container's BackupError,
the key errors (CryptoError: a wrong or missing key) and ManifestError; a
backup that verifies reads back whole, the same bytes either way; a manifest
read from it writes back the same map (a nil optional key written as absent).

The input's first byte chooses the key offered (its low two bits: none, the
key file the seeds were sealed with, the passphrase they were sealed with, or
another key file) and, with bit 2, a structured input: an unencrypted
backup's header core and index (msgpack), then its chunk records, put
together with every checksum and offset right, so the fuzzer gets past the
checksums to the header, manifest, index and record parsers.
"""

from __future__ import annotations

import io
import struct

from rustydb_server.backup.manifest import DatabaseEntry, Manifest, ManifestError, TableRows, database_entry
from rustydb_server.container.errors import BackupError
from rustydb_server.container.format import (
    DIGESTS,
    FORMAT_VERSION,
    HEADER_SUM_SIZE,
    PREFIX,
    RECORD,
    RECORD_CRC_SPAN,
    BackupType,
    pack_footer,
    pack_header,
    safe_entry_name,
)
from rustydb_server.container.reader import BackupReader, EntryReader
from rustydb_server.container.writer import BackupWriter
from rustydb_server.crc import crc32c
from rustydb_server.crypto import CryptoError
from rustydb_server.datadir import validate_database_name
from rustydb_server.keys import KeyFileSource, PassphraseSource

KEY = KeyFileSource(bytes(range(32)), "/keys/fuzz.key")
OTHER_KEY = KeyFileSource(bytes(range(1, 33)), "/keys/other.key")
# A cheap scrypt, as the seeds were sealed with: the fuzzer runs it per input.
PASSPHRASE = PassphraseSource("fuzz", n=2**10, r=8, p=1)
KEYS = (None, KEY, PASSPHRASE, OTHER_KEY)
DOCUMENTED = (BackupError, CryptoError, ManifestError)


def _read(data: bytes, key) -> None:
    try:
        reader = BackupReader(io.BytesIO(data), key=key)
    except DOCUMENTED:
        return
    # Every name a tool could build a path or open a database from was checked by the parser.
    for db in reader.header.databases:
        validate_database_name(db["name"])
    try:
        manifest = Manifest.from_header(reader.header)
    except ManifestError:
        pass
    else:
        assert Manifest.from_dict(manifest.to_dict()) == manifest
        assert manifest.to_dict() == _without_nil_options(reader.header.extra["manifest"])
    contents: dict[str, bytes] = {}
    try:
        for info in reader.entries():
            safe_entry_name(info.name)
            contents[info.name] = b"".join(reader.read_entry(info.name))
    except DOCUMENTED:
        contents = {}
    try:
        reader.verify()
    except DOCUMENTED:
        return
    # It verified: every entry reads back, whole and by range, the same bytes.
    again = BackupReader(io.BytesIO(data), key=key)
    for info in again.entries():
        whole = b"".join(again.read_entry(info.name))
        assert contents.get(info.name, whole) == whole
        with EntryReader(again, info.name, cache_chunks=2) as ranges:
            assert ranges.read(0, info.raw_size + 1) == whole
            assert ranges.read(info.raw_size // 3, 700) == whole[info.raw_size // 3 : info.raw_size // 3 + 700]


def assemble(data: bytes) -> bytes:
    """A file from (u16 core length, core, u16 index length, index, chunk records),
    its header sum, record head crcs, footer and whole-file digest made right."""
    parts = []
    for _ in range(2):
        (n,) = struct.unpack_from(">H", data.ljust(2, b"\0"))
        parts.append(data[2 : 2 + n])
        data = data[2 + n :]
    core, index = parts
    body = bytearray(data)
    pos = 0
    while pos + RECORD.size <= len(body):
        struct.pack_into(">I", body, pos + RECORD_CRC_SPAN, crc32c(bytes(body[pos : pos + RECORD_CRC_SPAN])))
        (stored_len,) = struct.unpack_from(">I", body, pos + 20)
        pos += RECORD.size + stored_len
    head = pack_header(core, b"")
    digest = DIGESTS[FORMAT_VERSION].new(head + bytes(body) + index)
    footer = pack_footer(len(head) + len(body), len(index), crc32c(index), DIGESTS[FORMAT_VERSION].footer_bytes(digest))
    return head + bytes(body) + index + footer


def disassemble(file: bytes) -> bytes:
    """The structured input ``assemble`` makes ``file`` (an unencrypted backup) from."""
    _magic, _version, _reserved, core_len, keywrap_len = PREFIX.unpack_from(file)
    assert keywrap_len == 0
    core = file[PREFIX.size : PREFIX.size + core_len]
    body_start = PREFIX.size + core_len + HEADER_SUM_SIZE
    reader = BackupReader(io.BytesIO(file))
    index = file[reader.layout.index_offset : reader.layout.index_offset + reader.layout.index_len]
    body = file[body_start : reader.layout.index_offset]
    return struct.pack(">H", len(core)) + core + struct.pack(">H", len(index)) + index + body


# Optional manifest keys: a nil one reads as absent, and is written back absent.
_OPTIONAL = frozenset({"parent_id", "base_full_id", "wal_records", "all_databases"})
_OPTIONAL_PER_DATABASE = frozenset({"applied_lsn", "transactions"})


def _without_nil_options(manifest: dict) -> dict:
    out = {k: v for k, v in manifest.items() if not (v is None and k in _OPTIONAL)}
    out["databases"] = [
        {k: v for k, v in db.items() if not (v is None and k in _OPTIONAL_PER_DATABASE)} for db in out["databases"]
    ]
    return out


def check(data: bytes) -> None:
    mode = data[0] if data else 0
    key = KEYS[mode % len(KEYS)]
    _read(assemble(data[1:]) if mode & 4 else data[1:], key)


def make_manifest(backup_id: str, names: list[str]) -> Manifest:
    backup_type = BackupType("full")
    return Manifest(
        backup_id=backup_id,
        backup_type=backup_type,
        system_id=0x5EED,
        timeline=1,
        segment_size=64 * 1024,
        start_lsn=65600,
        end_lsn=70000,
        next_txid=3,
        last_commit_time_us=1_700_000_000_000_000,
        server_version="0.1.0",
        created_us=1_700_000_000_000_000,
        databases=tuple(
            DatabaseEntry(name, database_entry(backup_type, name), (TableRows("t", 2),), 4096, applied_lsn=69000)
            for name in names
        ),
        all_databases=True,
    )


def write_backup(manifest: Manifest, entries: dict[str, bytes], *, key=None, chunk_size: int = 512) -> bytes:
    buf = io.BytesIO()
    writer = BackupWriter(buf, manifest.to_header(), key=key, codec="lz4", chunk_size=chunk_size)
    for name, content in entries.items():
        writer.begin_entry(name)
        writer.write(content)
        writer.end_entry()
    writer.finish()
    return buf.getvalue()


def seeds() -> list[bytes]:
    manifest = make_manifest("00000000-0000-4000-8000-000000000001", ["main"])
    entries = {
        "databases/main.sqlite": b"SQLite format 3\x00" + bytes(range(256)) * 6,
        "wal/000000010000000000000001": b"\x02" * 700,
    }
    files = [write_backup(manifest, entries, key=KEYS[i]) for i in range(3)]
    return [bytes([i]) + f for i, f in enumerate(files)] + [bytes([4]) + disassemble(files[0])]


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
