"""rusty-db-backup --verify FILE (tools/backup/verify.py): every chunk and digest checked,
damage named by entry and chunk, keys from --key-file, the environment or a passphrase."""

from __future__ import annotations

import json
import os

from rustydb_server.keys import KeyFileSource, PassphraseSource
from tests.support.backups import NO_KEYS, assert_clean_error, copy_file, flip_byte_in_chunk, write_backup
from tests.support.servers import run_tool


def test_verify_prints_the_guides_lines_for_an_unencrypted_backup(plain_backup):
    proc = run_tool("rusty-db-backup", "--verify", plain_backup[0], check=True)
    # An unencrypted backup must not claim "Encryption verified".
    assert proc.stdout.splitlines() == [
        "✓ Checksum verified",
        "✓ Encryption: not encrypted",
        "✓ File structure valid",
        "Backup is valid",
    ]


def test_verify_names_entry_and_chunk_of_a_flipped_byte(plain_backup, tmp_path):
    path = copy_file(plain_backup[0], str(tmp_path / "bad.backup"))
    entry, chunk = flip_byte_in_chunk(path, entry_index=1)
    proc = run_tool("rusty-db-backup", "--verify", path)
    assert_clean_error(proc)
    assert plain_backup[1]["backup_id"] in proc.stderr
    assert f"entry {entry!r}" in proc.stderr and f"chunk {chunk}" in proc.stderr
    assert "Backup is valid" not in proc.stdout
    report = json.loads(run_tool("rusty-db-backup", "--verify", path, "--json").stdout)
    assert report["valid"] is False
    assert (report["entry"], report["chunk"]) == (entry, chunk)


def test_verify_refuses_a_truncated_file(plain_backup, tmp_path):
    with open(plain_backup[0], "rb") as f:
        data = f.read()
    path = str(tmp_path / "cut.backup")
    with open(path, "wb") as f:
        f.write(data[: len(data) - 100])
    proc = run_tool("rusty-db-backup", "--verify", path)
    assert_clean_error(proc)
    assert "truncated" in proc.stderr


def test_verify_of_a_missing_file_is_a_clean_error(tmp_path):
    proc = run_tool("rusty-db-backup", "--verify", str(tmp_path / "nope.backup"))
    assert_clean_error(proc)
    assert "nope.backup" in proc.stderr


def test_encrypted_backup_with_a_key_file(source, tmp_path):
    key_path = str(tmp_path / "backup.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "enc.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path), codec="zstd")

    no_key = run_tool("rusty-db-backup", "--verify", out, env=NO_KEYS)
    assert_clean_error(no_key)
    assert "--key-file" in no_key.stderr

    good = run_tool(
        "rusty-db-backup", "--verify", out, "--key-file", key_path, "--threads", "2", env=NO_KEYS, check=True
    )
    assert good.stdout.splitlines() == [
        "✓ Checksum verified",
        "✓ Encryption verified",
        "✓ File structure valid",
        "Backup is valid",
    ]
    by_env = run_tool(
        "rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_KEY_FILE": key_path}, check=True
    )
    assert "✓ Encryption verified" in by_env.stdout


def test_passphrase_backup_and_a_wrong_key(source, tmp_path):
    out = str(tmp_path / "pass.backup")
    write_backup(source, out, key=PassphraseSource("correct horse"))
    good = run_tool(
        "rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "correct horse"}, check=True
    )
    assert "Backup is valid" in good.stdout

    wrong = run_tool("rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "battery staple"})
    assert_clean_error(wrong)
    assert "battery staple" not in wrong.stderr + wrong.stdout  # secrets are never echoed
    assert "Backup is valid" not in wrong.stdout

    no_key = run_tool("rusty-db-backup", "--verify", out, env=NO_KEYS)
    assert_clean_error(no_key)
    assert "RUSTYDB_BACKUP_PASSPHRASE" in no_key.stderr

    key_path = str(tmp_path / "other.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    mismatch = run_tool("rusty-db-backup", "--verify", out, "--key-file", key_path, env=NO_KEYS)
    assert_clean_error(mismatch)
    assert "passphrase" in mismatch.stderr


def test_a_key_file_readable_by_others_is_refused(source, tmp_path):
    key_path = str(tmp_path / "open.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "enc.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path))
    os.chmod(key_path, 0o644)
    proc = run_tool("rusty-db-backup", "--verify", out, "--key-file", key_path, env=NO_KEYS)
    assert_clean_error(proc)
    assert "chmod 600" in proc.stderr
