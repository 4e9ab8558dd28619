"""rusty-db-backup --query FILE SQL (tools/backup/query.py): a read-only query on a
backup in place, decrypting only the chunks it reads; the module form runs it too."""

from __future__ import annotations

import json
import subprocess
import sys

from rustydb_server.keys import PassphraseSource
from tests.support.backups import CUSTOMERS, NO_KEYS, assert_clean_error, write_backup
from tests.support.servers import run_tool


def test_query_prints_the_rows_as_json(plain_backup):
    path, _ = plain_backup
    proc = run_tool("rusty-db-backup", "--query", path, "SELECT count(*), max(id) FROM customers", "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["columns"] == ["count(*)", "max(id)"] and out["rows"] == [[CUSTOMERS, CUSTOMERS]]
    assert 0 < out["chunks_decoded"] <= out["chunks_total"]


def test_query_picks_the_database_and_prints_a_table(plain_backup):
    proc = run_tool(
        "rusty-db-backup",
        "--query",
        plain_backup[0],
        "SELECT amount FROM orders ORDER BY id",
        "-d",
        "sales",
        check=True,
    )
    assert [line.split() for line in proc.stdout.splitlines()[2:5]] == [["10"], ["20"], ["30"]]
    assert "of database sales)" in proc.stderr


def test_query_of_a_database_the_backup_lacks_names_the_ones_it_holds(plain_backup):
    proc = run_tool("rusty-db-backup", "--query", plain_backup[0], "SELECT 1", "--database", "nope")
    assert_clean_error(proc)
    assert "rustydb" in proc.stderr and "sales" in proc.stderr


def test_query_cannot_write(plain_backup):
    proc = run_tool("rusty-db-backup", "--query", plain_backup[0], "DELETE FROM notes")
    assert_clean_error(proc)
    assert "query failed" in proc.stderr


def test_query_of_an_incremental_backup_points_to_the_full_one(source, tmp_path):
    out = str(tmp_path / "incr.backup")
    write_backup(source, out, backup_type="incremental")
    proc = run_tool("rusty-db-backup", "--query", out, "SELECT 1")
    assert_clean_error(proc)
    assert "incremental backup" in proc.stderr and "--chain-dir" in proc.stderr


def test_query_of_an_encrypted_backup_needs_its_key(source, tmp_path):
    out = str(tmp_path / "p.backup")
    write_backup(source, out, key=PassphraseSource("query me"))
    assert_clean_error(run_tool("rusty-db-backup", "--query", out, "SELECT 1", env=NO_KEYS))
    proc = run_tool(
        "rusty-db-backup",
        "--query",
        out,
        "SELECT body FROM notes ORDER BY id",
        "--json",
        env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "query me"},
        check=True,
    )
    assert json.loads(proc.stdout)["rows"] == [["hello"], ["world"]]


def test_the_module_form_runs_a_query(plain_backup):
    """``python -m rustydb_server.tools.backup_main --query`` once failed with a NameError."""
    proc = subprocess.run(
        [sys.executable, "-m", "rustydb_server.tools.backup_main", "--query", plain_backup[0], "SELECT 7", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == [[7]]
