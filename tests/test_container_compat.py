"""The writer's output stays byte-for-byte what it was, and files it wrote read back.

tests/data/format2/ holds backups in format 2 written by the code at commit
ce47124, before the container became a package: the same header and entries
(a 5000-byte random entry followed by compressible text, an empty entry and a
short one; 1 KiB chunks) unencrypted with "none" and "lz4", and encrypted with
backup.key and zstd. They are never regenerated: a difference is a change of
format.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from dataclasses import replace

import pytest

from rustydb_server.container import format as F
from rustydb_server.container.format import BackupHeader
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.rotate import rotate_key
from rustydb_server.container.writer import BackupWriter
from rustydb_server.keys import KeyFileSource

DATA = os.path.join(os.path.dirname(__file__), "data", "format2")
DIGESTS = {
    "plain-none.backup": "a53b36dc2c378a15ef0ec93321c98010",
    "plain-lz4.backup": "f4e31f95cd01a203e96a691b1a5e230c",
    "sealed-zstd.backup": "47d6a0b73dcd14924b4ffa1564c1d74d",
}


def header() -> BackupHeader:
    return BackupHeader(
        backup_id="6f1c2a4e-0b7d-4c59-9a3e-2d8f5e7b1c90",
        backup_type="incremental",
        created_us=1_780_000_000_123_456,
        server_version="0.1.0",
        system_id="7305528163928576",
        start_lsn=4096,
        end_lsn=70000,
        timeline=2,
        parent_id="0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
        base_full_id="0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
        databases=[{"name": "rustydb", "tables": [{"name": "accounts", "rows": 500}], "size_bytes": 12288}],
        extra={"note": "written before the container became a package"},
    )


def entries() -> list[tuple[str, list[bytes]]]:
    rng = random.Random(2)
    noise = bytes(rng.randrange(256) for _ in range(5000))
    text = b"".join(b"account %d balance %d\n" % (i, i * 7) for i in range(400))
    return [("databases/rustydb.sqlite", [noise, text]), ("empty", []), ("manifest", [b'{"k": 1}'])]


def fixture(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def write(codec: str, key=None) -> bytes:
    out = io.BytesIO()
    w = BackupWriter(out, header(), key=key, codec=codec, chunk_size=1024)
    for name, parts in entries():
        w.begin_entry(name)
        for part in parts:
            w.write(part)
        w.end_entry()
    w.finish()
    return out.getvalue()


def record_heads(data: bytes, key=None) -> list[tuple]:
    """(entry, flags, entry index, chunk index, raw_len, stored_len) of every chunk, in file order."""
    r = BackupReader(io.BytesIO(data), key=key)
    out = []
    for e in r.entries():
        pos = e.offset
        for _ in range(e.chunks):
            _magic, flags, _r, e_idx, c_idx, raw_len, stored_len, _check, _crc = F.RECORD.unpack_from(data, pos)
            out.append((e.name, flags, e_idx, c_idx, raw_len, stored_len))
            pos += F.RECORD.size + stored_len
    return out


@pytest.fixture
def key(tmp_path) -> KeyFileSource:
    path = tmp_path / "backup.key"
    shutil.copy(os.path.join(DATA, "backup.key"), path)
    os.chmod(path, 0o600)
    return KeyFileSource.from_file(str(path))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_an_unencrypted_backup_is_written_byte_for_byte_as_before(codec):
    assert write(codec) == fixture(f"plain-{codec}.backup")


def test_an_encrypted_backup_has_the_same_header_fields_and_chunk_layout_as_before(key):
    old = fixture("sealed-zstd.backup")
    new = write("zstd", key)
    assert len(new) == len(old)  # same header, keywrap, chunk and index sizes: only random bytes differ
    got_old, got_new = BackupReader(io.BytesIO(old), key=key), BackupReader(io.BytesIO(new), key=key)
    assert got_new.header == got_old.header
    assert got_new.layout.core_bytes[:-4] == got_old.layout.core_bytes[:-4]  # all but the nonce prefix
    assert record_heads(new, key) == record_heads(old, key)
    assert [(e.name, e.raw_size, e.chunks, e.stored_size, e.digest, e.offset) for e in got_new.entries()] == [
        (e.name, e.raw_size, e.chunks, e.stored_size, e.digest, e.offset) for e in got_old.entries()
    ]


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_files_written_before_read_back_and_verify(name, key):
    data = fixture(name)
    k = key if name.startswith("sealed") else None
    r = BackupReader(io.BytesIO(data), key=k)
    codec = name.split("-")[1].split(".")[0]
    encryption = {"cipher": "AES-256-GCM", "kdf": "keyfile", "fingerprint": key.fingerprint} if k else None
    assert r.header == replace(header(), compression=codec, chunk_size=1024, encryption=encryption)
    want = {n: b"".join(p) for n, p in entries()}
    assert {e.name: b"".join(r.read_entry(e.name)) for e in r.entries()} == want
    report = r.verify()
    assert report.encryption_ok == (k is not None) and report.raw_bytes == sum(map(len, want.values()))
    assert report.file_bytes == len(data)
    assert data[-F.FOOTER.size :][16:32].hex() == DIGESTS[name]


def test_an_old_encrypted_file_rotates_to_a_new_key(key, tmp_path):
    path = tmp_path / "sealed.backup"
    path.write_bytes(fixture("sealed-zstd.backup"))
    new_key = KeyFileSource(bytes(range(32)), "/keys/new.key")
    rotate_key(str(path), key, new_key)
    with open(path, "rb") as f:
        r = BackupReader(f, key=new_key)
        assert r.verify().encryption_ok
        assert b"".join(r.read_entry("databases/rustydb.sqlite")) == b"".join(entries()[0][1])
