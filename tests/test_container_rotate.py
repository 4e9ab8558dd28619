"""Rotating a backup's key: the data key re-wrapped, every chunk and the index
kept byte for byte, the file replaced atomically or not at all."""

import io
import os

import pytest
import xxhash

from rustydb_server.container.errors import BackupCorruptError, BackupError
from rustydb_server.container.format import FOOTER, RECORD, new_header
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.rotate import rotate_key
from rustydb_server.container.writer import BackupWriter
from rustydb_server.crypto import WrongKeyError
from rustydb_server.fileops import FileOps
from rustydb_server.keys import KeyFileSource, PassphraseSource

FAST = {"n": 2**10, "r": 8, "p": 1}
KEY = KeyFileSource(os.urandom(32), "/keys/a.key")
OTHER_KEY = KeyFileSource(os.urandom(32), "/keys/b.key")
ENTRIES = [
    ("databases/main.sqlite", [os.urandom(600), b"row,text,42\n" * 60]),  # random, then compressible
    ("manifest", [b'{"tables": 2}']),
]


def file_digest(data: bytes) -> bytes:
    """The footer's digest in format 2: XXH3-128, then 16 zero bytes."""
    return xxhash.xxh3_128(data).digest() + bytes(16)


def make_backup(entries, *, key=None):
    buf = io.BytesIO()
    w = BackupWriter(buf, new_header("full"), key=key, codec="lz4", chunk_size=256)
    for name, parts in entries:
        w.begin_entry(name)
        for part in parts:
            w.write(part)
        w.end_entry()
    w.finish()
    return buf.getvalue()


def read_all(data, key):
    r = BackupReader(io.BytesIO(data), key=key)
    return {e.name: b"".join(r.read_entry(e.name)) for e in r.entries()}


def flip(data, pos):
    b = bytearray(data)
    b[pos] ^= 1
    return bytes(b)


def span_bytes(data, key):
    lay = BackupReader(io.BytesIO(data), key=key).layout
    return data[lay.body_start : lay.index_offset + lay.index_len]


@pytest.mark.parametrize("new", [OTHER_KEY, PassphraseSource("new pw", **FAST)])
def test_rotate_key_rewraps_only(tmp_path, new):
    path = tmp_path / "b.backup"
    data = make_backup(ENTRIES, key=KEY)
    path.write_bytes(data)
    summary = rotate_key(str(path), KEY, new)
    rotated = path.read_bytes()
    assert bytes.fromhex(summary.digest) == file_digest(rotated[: -FOOTER.size])
    assert summary.size_bytes == len(rotated)
    assert span_bytes(rotated, new) == span_bytes(data, KEY)  # chunks and index byte-identical
    with pytest.raises(WrongKeyError):
        BackupReader(io.BytesIO(rotated), key=KEY)
    assert read_all(rotated, new) == {n: b"".join(p) for n, p in ENTRIES}
    assert BackupReader(io.BytesIO(rotated), key=new).verify().encrypted
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["b.backup"]


def test_rotate_key_refuses_wrong_key_damage_and_plain_backups(tmp_path):
    path = tmp_path / "b.backup"
    data = make_backup(ENTRIES, key=KEY)
    path.write_bytes(data)
    with pytest.raises(WrongKeyError):
        rotate_key(str(path), OTHER_KEY, KEY)
    start = BackupReader(io.BytesIO(data)).layout.body_start + RECORD.size  # the first chunk's body
    path.write_bytes(flip(data, start + 3))
    with pytest.raises(BackupCorruptError, match="digest"):
        rotate_key(str(path), KEY, OTHER_KEY)
    assert path.read_bytes() == flip(data, start + 3) and os.listdir(tmp_path) == ["b.backup"]
    path.write_bytes(make_backup(ENTRIES))
    with pytest.raises(BackupError, match="not encrypted"):
        rotate_key(str(path), KEY, OTHER_KEY)


def test_rotate_key_fsync_failure_leaves_the_original(tmp_path):
    class FailingFsync(FileOps):
        def fsync(self, fd):
            raise OSError(28, "No space left on device")

    path = tmp_path / "b.backup"
    data = make_backup(ENTRIES, key=KEY)
    path.write_bytes(data)
    with pytest.raises(OSError):
        rotate_key(str(path), KEY, OTHER_KEY, FailingFsync())
    assert path.read_bytes() == data and os.listdir(tmp_path) == ["b.backup"]
    assert BackupReader(io.BytesIO(data), key=KEY).verify()
