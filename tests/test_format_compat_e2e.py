"""Backups written by an earlier format stay readable, verifiable and restorable.

tests/data/format1/ holds files written by RustyDB with backup format 1 (entry
digests in SHA-256), before format 2 moved them to XXH3-128: a full backup
(lz4, encrypted with backup.key) of 500 accounts, then an incremental (zstd,
not encrypted) that updated 50 balances, deleted 10 accounts and created a
table ``notes`` with one row. They are the bytes an operator's old backups
hold; they are never regenerated.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct

import crc32c
import msgpack
import pytest

from rustydb_server.container import format as F
from rustydb_server.container.errors import BackupCorruptError
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.rotate import rotate_key
from rustydb_server.keys import KeyFileSource
from tests.support.servers import ServerProcess, run_tool

DATA = os.path.join(os.path.dirname(__file__), "data", "format1")


@pytest.fixture
def old(tmp_path):
    """Copies of the format-1 files, with the key file 0600 as the tools require."""
    for name in ("full.backup", "incr.backup", "backup.key"):
        shutil.copy(os.path.join(DATA, name), tmp_path / name)
    os.chmod(tmp_path / "backup.key", 0o600)
    return tmp_path


def key_source(path) -> KeyFileSource:
    return KeyFileSource.from_file(str(path))


def test_format_1_files_are_what_this_test_claims():
    for name in ("full.backup", "incr.backup"):
        with open(os.path.join(DATA, name), "rb") as f:
            assert struct.unpack(">H", f.read(10)[8:])[0] == 1, name
    assert F.FORMAT_VERSION == 3


def test_format_1_entries_read_and_check_their_sha256(old):
    with open(old / "full.backup", "rb") as f:
        r = BackupReader(f, key=key_source(old / "backup.key"))
        (info,) = r.entries()
        data = b"".join(r.read_entry(info.name))
        assert info.digest == hashlib.sha256(data).hexdigest()
        assert data.startswith(b"SQLite format 3\0")
        assert r.verify().encryption_ok


def test_format_1_entry_digest_mismatch_is_still_detected(old):
    raw = (old / "incr.backup").read_bytes()
    lay = BackupReader(io.BytesIO(raw)).layout
    index = msgpack.unpackb(raw[lay.index_offset : lay.index_offset + lay.index_len])
    index["entries"][0]["sha256"] = bytes(32)
    new_index = msgpack.packb(index)
    head_body = raw[: lay.index_offset]
    digest = hashlib.sha256(head_body + new_index).digest()
    bad = head_body + new_index + F.pack_footer(lay.index_offset, len(new_index), crc32c.crc32c(new_index), digest)
    with pytest.raises(BackupCorruptError, match="does not match its sha256 digest"):
        BackupReader(io.BytesIO(bad)).verify()


def test_rotating_the_key_of_a_format_1_backup_keeps_it_format_1(old, tmp_path):
    new_key = tmp_path / "new.key"
    new_key.write_text("cd" * 32 + "\n")
    os.chmod(new_key, 0o600)
    rotate_key(str(old / "full.backup"), key_source(old / "backup.key"), key_source(new_key))
    with open(old / "full.backup", "rb") as f:
        assert struct.unpack(">H", f.read(10)[8:])[0] == 1
        assert BackupReader(f, key=key_source(new_key)).verify().encryption_ok


def test_format_1_chain_verifies_and_restores_with_the_tools(old, tmp_path):
    key_env = {"RUSTYDB_BACKUP_KEY_FILE": str(old / "backup.key")}
    for name in ("full.backup", "incr.backup"):
        out = run_tool("rusty-db-backup", "--verify", str(old / name), env=key_env, check=True)
        assert "Backup is valid" in out.stdout
    info = json.loads(run_tool("rusty-db-backup", "--info", str(old / "incr.backup"), "--json", check=True).stdout)
    assert info["type"] == "incremental"

    data_dir = tmp_path / "restored"
    run_tool(
        "rusty-db-restore",
        "--input",
        str(old / "full.backup"),
        "--data-dir",
        str(data_dir),
        "--integrity-check",
        env=key_env,
        check=True,
    )
    run_tool(
        "rusty-db-restore",
        "--input",
        str(old / "incr.backup"),
        "--data-dir",
        str(data_dir),
        "--incremental",
        check=True,
    )
    with ServerProcess(str(data_dir)) as srv:
        out = srv.sql("SELECT count(*), sum(balance) FROM accounts").stdout
        assert "490" in out and "1203000" in out
        assert "written after the full backup" in srv.sql("SELECT body FROM notes").stdout


def test_a_file_from_a_newer_format_is_not_called_damaged(old, tmp_path):
    raw = bytearray((old / "incr.backup").read_bytes())
    body_start = BackupReader(io.BytesIO(bytes(raw))).layout.body_start
    raw[8:10] = struct.pack(">H", 4)  # as a newer release would write it: header checksum right
    raw[body_start - 32 : body_start] = hashlib.sha256(raw[: body_start - 32]).digest()
    newer = tmp_path / "newer.backup"
    newer.write_bytes(bytes(raw))
    for proc in (
        run_tool("rusty-db-backup", "--verify", str(newer)),
        run_tool("rusty-db-backup", "--info", str(newer)),
        run_tool("rusty-db-restore", "--input", str(newer), "--data-dir", str(tmp_path / "d")),
    ):
        assert proc.returncode == 1, proc.stderr
        assert "backup format 4, newer than this RustyDB reads (1, 2, 3)" in proc.stderr
        assert "damaged" not in proc.stderr and "Traceback" not in proc.stderr
