"""The writer's output stays byte-for-byte what it was, and files it wrote read back.

tests/data/format2/ holds backups in format 2 written by the code at commit
ce47124, before the container became a package: the same header and entries
(a 5000-byte random entry followed by compressible text, an empty entry and a
short one; 1 KiB chunks) unencrypted with "none" and "lz4", and encrypted with
backup.key and zstd; and, written at commit d75ce66 (the last before format 3's
key hierarchy), the same encrypted with the passphrase PASSPHRASE
(sealed-scrypt-zstd.backup: its own scrypt salt, the data key wrapped under
the KEK itself). They are never regenerated: a difference is a change of
format. Format 3 changed only the version and, for encrypted files, how the
data key is wrapped; the writer still writes format 2 byte for byte.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from dataclasses import replace

import pytest

from rustydb_server import crypto
from rustydb_server.container import format as F
from rustydb_server.container.format import BackupHeader
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.rotate import rotate_key
from rustydb_server.container.writer import BackupWriter
from rustydb_server.keys import KeyFileSource, PassphraseSource

DATA = os.path.join(os.path.dirname(__file__), "data", "format2")
DIGESTS = {
    "plain-none.backup": "a53b36dc2c378a15ef0ec93321c98010",
    "plain-lz4.backup": "f4e31f95cd01a203e96a691b1a5e230c",
    "sealed-zstd.backup": "47d6a0b73dcd14924b4ffa1564c1d74d",
    "sealed-scrypt-zstd.backup": "5cd44ceffab5f3c6d50330b86dcdb052",
}
PASSPHRASE = "format 2 fixture passphrase"


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


def write(codec: str, key=None, version: int = F.FORMAT_VERSION) -> bytes:
    out = io.BytesIO()
    w = BackupWriter(out, header(), key=key, codec=codec, chunk_size=1024, version=version)
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


def as_format_3(core_bytes: bytes) -> bytes:
    assert core_bytes.count(b"\xa6format\x02") == 1  # msgpack: "format": 2
    return core_bytes.replace(b"\xa6format\x02", b"\xa6format\x03")


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_an_unencrypted_backup_in_format_2_is_written_byte_for_byte_as_before(codec):
    assert write(codec, version=2) == fixture(f"plain-{codec}.backup")


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_format_3_changes_only_the_version_of_an_unencrypted_backup(codec):
    old, new = fixture(f"plain-{codec}.backup"), write(codec)
    lay_old, lay_new = BackupReader(io.BytesIO(old)).layout, BackupReader(io.BytesIO(new)).layout
    assert (lay_old.version, lay_new.version) == (2, 3)
    assert lay_new.core_bytes == as_format_3(lay_old.core_bytes)
    # the same records (their checks bind the header hash, so those differ) and entries
    assert len(new) == len(old) and record_heads(new) == record_heads(old)
    r_old, r_new = BackupReader(io.BytesIO(old)), BackupReader(io.BytesIO(new))
    assert [(e.name, e.digest, e.stored_size) for e in r_new.entries()] == [
        (e.name, e.digest, e.stored_size) for e in r_old.entries()
    ]


@pytest.mark.parametrize("version", [2, 3])
def test_an_encrypted_backup_has_the_same_header_fields_and_chunk_layout_as_before(key, version):
    old = fixture("sealed-zstd.backup")
    new = write("zstd", key, version)
    assert len(new) == len(old)  # same header, keywrap, chunk and index sizes: only random bytes differ
    got_old, got_new = BackupReader(io.BytesIO(old), key=key), BackupReader(io.BytesIO(new), key=key)
    assert got_new.header == got_old.header
    old_core = got_old.layout.core_bytes if version == 2 else as_format_3(got_old.layout.core_bytes)
    assert got_new.layout.core_bytes[:-4] == old_core[:-4]  # all but the nonce prefix
    assert record_heads(new, key) == record_heads(old, key)
    assert [(e.name, e.raw_size, e.chunks, e.stored_size, e.digest, e.offset) for e in got_new.entries()] == [
        (e.name, e.raw_size, e.chunks, e.stored_size, e.digest, e.offset) for e in got_old.entries()
    ]


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_files_written_before_read_back_and_verify(name, key):
    data = fixture(name)
    k = PassphraseSource(PASSPHRASE) if "scrypt" in name else key if name.startswith("sealed") else None
    r = BackupReader(io.BytesIO(data), key=k)
    codec = name.rsplit("-", 1)[1].split(".")[0]
    encryption = {"cipher": "AES-256-GCM", "kdf": "keyfile", "fingerprint": key.fingerprint} if k else None
    if "scrypt" in name:
        encryption = {"cipher": "AES-256-GCM", "kdf": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": ANY_SALT}
    assert r.header == replace(header(), compression=codec, chunk_size=1024, encryption=encryption)
    want = {n: b"".join(p) for n, p in entries()}
    assert {e.name: b"".join(r.read_entry(e.name)) for e in r.entries()} == want
    report = r.verify()
    assert report.encryption_ok == (k is not None) and report.raw_bytes == sum(map(len, want.values()))
    assert report.file_bytes == len(data)
    assert data[-F.FOOTER.size :][16:32].hex() == DIGESTS[name]


class _AnySalt:
    def __eq__(self, other):
        return isinstance(other, str) and len(bytes.fromhex(other)) == 16


ANY_SALT = _AnySalt()


def test_a_format_2_passphrase_file_is_refused_under_another_passphrase_saying_so():
    with pytest.raises(crypto.WrongKeyError, match="does not match"):
        BackupReader(io.BytesIO(fixture("sealed-scrypt-zstd.backup")), key=PassphraseSource("not the passphrase"))


def test_an_old_passphrase_file_rotates_to_a_new_passphrase_and_stays_format_2(tmp_path):
    path = tmp_path / "sealed.backup"
    path.write_bytes(fixture("sealed-scrypt-zstd.backup"))
    new_key = PassphraseSource("the new passphrase")
    rotate_key(str(path), PassphraseSource(PASSPHRASE), new_key)
    with open(path, "rb") as f:
        r = BackupReader(f, key=new_key)
        assert r.layout.version == 2 and r.verify().encryption_ok
        assert b"".join(r.read_entry("databases/rustydb.sqlite")) == b"".join(entries()[0][1])


def test_an_old_encrypted_file_rotates_to_a_new_key(key, tmp_path):
    path = tmp_path / "sealed.backup"
    path.write_bytes(fixture("sealed-zstd.backup"))
    new_key = KeyFileSource(bytes(range(32)), "/keys/new.key")
    rotate_key(str(path), key, new_key)
    with open(path, "rb") as f:
        r = BackupReader(f, key=new_key)
        assert r.verify().encryption_ok
        assert b"".join(r.read_entry("databases/rustydb.sqlite")) == b"".join(entries()[0][1])
