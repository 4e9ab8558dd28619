"""rusty-db-backup --info (tools/backup/info.py): a backup's metadata from its header alone."""

from __future__ import annotations

import json
import os
import re

from rustydb_server.keys import KeyFileSource
from tests.support.backups import CUSTOMERS, NO_KEYS, write_backup
from tests.support.servers import run_tool


def test_info_prints_the_guides_fields(plain_backup):
    path, manifest = plain_backup
    proc = run_tool("rusty-db-backup", "--info", path, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Backup ID: {manifest['backup_id']}"
    assert lines[1] == "Type: full"
    assert re.fullmatch(r"Created: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[2])
    assert re.fullmatch(r"Size: [\d.]+ (B|KB|MB) \(compressed\)", lines[3])
    assert lines[4] == "Encryption: none"
    assert lines[5] == "Databases: rustydb, sales"
    assert lines[6] == "Tables: 3"
    assert any(line.startswith("LSN range: ") for line in lines)


def test_info_json_matches_the_header(plain_backup):
    path, manifest = plain_backup
    info = json.loads(run_tool("rusty-db-backup", "--info", path, "--json", check=True).stdout)
    assert info["backup_id"] == manifest["backup_id"]
    assert info["type"] == "full"
    assert info["databases"] == ["rustydb", "sales"]
    assert info["tables"] == 3
    assert info["size_bytes"] == os.path.getsize(path)
    assert info["compression"] == "lz4" and info["compressed"] is True
    assert info["encryption"] == "none" and info["encrypted"] is False
    assert info["end_lsn"] == manifest["end_lsn"]
    counts = {t["name"]: t["rows"] for db in info["database_details"] for t in db["tables"]}
    assert counts == {"customers": CUSTOMERS, "notes": 2, "orders": 3}


def test_info_on_an_uncompressed_encrypted_backup_needs_no_key(source, tmp_path):
    key_path = str(tmp_path / "k.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "e.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path))
    proc = run_tool("rusty-db-backup", "--info", out, env=NO_KEYS, check=True)
    assert "Encryption: AES-256" in proc.stdout.splitlines()
    assert re.search(r"^Size: .* \(uncompressed\)$", proc.stdout, re.MULTILINE)
