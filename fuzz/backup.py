"""The backup reader: any bytes as a backup file, plain or encrypted.

Contract: opening, listing, reading every entry (whole and by byte range),
verifying, and reading the manifest raise only the container's BackupError,
the key errors (CryptoError: a wrong or missing key) and ManifestError; a
backup that verifies reads back whole, the same bytes either way; a manifest
read from it writes back the same map.

The input's first byte chooses the key offered: none, the key file the seeds
were sealed with, the passphrase they were sealed with, or another key file.
"""

from __future__ import annotations

import io

from rustydb_server.backup.manifest import DatabaseEntry, Manifest, ManifestError, TableRows, database_entry
from rustydb_server.container.errors import BackupError
from rustydb_server.container.format import BackupType
from rustydb_server.container.reader import BackupReader, EntryReader
from rustydb_server.container.writer import BackupWriter
from rustydb_server.crypto import CryptoError
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
    try:
        manifest = Manifest.from_header(reader.header)
    except ManifestError:
        pass
    else:
        assert Manifest.from_dict(manifest.to_dict()) == manifest
        assert manifest.to_dict() == reader.header.extra["manifest"]
    contents: dict[str, bytes] = {}
    try:
        for info in reader.entries():
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


def check(data: bytes) -> None:
    key = KEYS[data[0] % len(KEYS)] if data else None
    _read(data[1:], key)


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
    return [bytes([i]) + write_backup(manifest, entries, key=KEYS[i]) for i in range(3)]


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
