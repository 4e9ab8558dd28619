"""rusty-db-backup --rotate-key (tools/backup/rotate_key.py): re-wrapped data keys,
after which only the new key opens the backups."""

from __future__ import annotations

from rustydb_server.keys import KeyFileSource, PassphraseSource
from tests.support.backups import NO_KEYS, assert_clean_error, write_backup
from tests.support.servers import run_tool


def test_rotate_key_then_only_the_new_key_opens(source, tmp_path):
    old_key, new_key = str(tmp_path / "old.key"), str(tmp_path / "new.key")
    for path in (old_key, new_key):
        run_tool("rusty-db-backup", "--create-key-file", path, check=True)
    files = [str(tmp_path / f"b{i}.backup") for i in range(2)]
    for out in files:
        write_backup(source, out, key=KeyFileSource.from_file(old_key))

    proc = run_tool("rusty-db-backup", "--rotate-key", old_key, new_key, *files, env=NO_KEYS, check=True)
    assert proc.stdout.count("key rotated") == 2
    for out in files:
        assert_clean_error(run_tool("rusty-db-backup", "--verify", out, "--key-file", old_key, env=NO_KEYS))
        run_tool("rusty-db-backup", "--verify", out, "--key-file", new_key, env=NO_KEYS, check=True)
    # Rotating again with the (now wrong) old key fails for each file and says so.
    again = run_tool("rusty-db-backup", "--rotate-key", old_key, new_key, *files, env=NO_KEYS)
    assert_clean_error(again)
    assert all(f in again.stderr for f in files)


def test_rotate_a_passphrase_backup_to_a_key_file(source, tmp_path):
    out = str(tmp_path / "p.backup")
    write_backup(source, out, key=PassphraseSource("pw-one"))
    new_key = str(tmp_path / "new.key")
    run_tool("rusty-db-backup", "--create-key-file", new_key, check=True)
    run_tool(
        "rusty-db-backup",
        "--rotate-key",
        "-",
        new_key,
        out,
        env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "pw-one"},
        check=True,
    )
    run_tool("rusty-db-backup", "--verify", out, "--key-file", new_key, env=NO_KEYS, check=True)
