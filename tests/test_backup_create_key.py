"""rusty-db-backup --create-key-file (tools/backup/create_key.py)."""

from __future__ import annotations

import os
import stat

from tests.support.backups import assert_clean_error
from tests.support.servers import run_tool


def test_key_file_is_0600_and_never_overwritten(tmp_path):
    key_path = str(tmp_path / "backup.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(key_path) as f:
        before = f.read()
    proc = run_tool("rusty-db-backup", "--create-key-file", key_path)
    assert_clean_error(proc)
    assert "already exists" in proc.stderr
    with open(key_path) as f:
        assert f.read() == before
