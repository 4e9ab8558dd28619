"""Table-level restore end to end: the guide's four steps, one command, chains, PITR."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time

import pytest

from rustydb_client import client as rc
from tests.support.servers import free_port, run_tool, tool


def rows_of(srv, table, database=None):
    args = ["--database", database] if database else []
    proc = srv.cli(*args, "--json", "--command", f"SELECT * FROM {table} ORDER BY 1")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["rows"]


@pytest.fixture
def shop(server_factory, tmp_path):
    srv = server_factory(name="prod").start()
    srv.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance REAL, photo BLOB);")
    srv.sql("CREATE INDEX customers_name ON customers(name);")
    srv.sql("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, total REAL);")
    srv.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 300) "
        "INSERT INTO customers SELECT i, 'customer ' || i, i * 1.25, "
        "CASE WHEN i % 3 = 0 THEN x'00ff10' END FROM c;"
    )
    srv.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 500) "
        "INSERT INTO orders SELECT i, i % 300, i * 2.5 FROM c;"
    )
    return srv


def test_guides_four_step_table_recovery(shop, tmp_path):
    srv = shop
    backup = tmp_path / "full_20251211_000000.backup"
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "full", "--output", str(backup), "--compress")
    assert proc.returncode == 0, proc.stderr
    before = rows_of(srv, "customers")
    # the accident: customers are damaged, orders keep changing
    srv.sql("DELETE FROM customers WHERE id > 10;")
    srv.sql("INSERT INTO orders VALUES (9999, 1, 1.0);")
    temp = tmp_path / "rusty-db" / "temp"
    # 1. Restore to temporary location (the guide's command, paths aside)
    proc = run_tool(
        "rusty-db-restore", "--input", str(backup), "--table", "customers", "--data-dir", str(temp), "--no-start"
    )
    assert proc.returncode == 0, proc.stderr
    # 2. Export restored table
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.run(
        [
            tool("rusty-db-export"),
            "--table",
            "customers",
            "--input-dir",
            str(temp),
            "--output",
            "customers_restored.sql",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    # 3. Import into production database (into a clean table: drop the damaged one)
    srv.sql("DROP TABLE customers;")
    with open(workdir / "customers_restored.sql") as script:
        proc = subprocess.run(
            [tool("rusty-db-cli"), "--port", str(srv.port)], stdin=script, capture_output=True, text=True
        )
    assert proc.returncode == 0, proc.stderr
    # 4. Clean up
    shutil.rmtree(temp)
    assert rows_of(srv, "customers") == before
    assert [9999, 1, 1.0] in rows_of(srv, "orders")  # the rest untouched
    schema = srv.sql("SELECT name FROM sqlite_schema WHERE tbl_name = 'customers' ORDER BY name;", "--csv").stdout
    assert "customers_name" in schema


def test_one_command_into_server_with_rename(shop, tmp_path):
    srv = shop
    backup = tmp_path / "b.backup"
    run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "full", "--output", str(backup), check=True)
    before = rows_of(srv, "customers")
    srv.sql("UPDATE customers SET balance = 0;")
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(backup),
        "--table",
        "customers",
        "--into-server",
        f":{srv.port}",
        "--rename-to",
        "customers_restored",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["imported_as"] == "customers_restored" and summary["rows"] == 300
    assert summary["chunks_decoded"] <= summary["chunks_total"]
    assert rows_of(srv, "customers_restored") == before
    assert all(r[2] == 0 for r in rows_of(srv, "customers"))


def test_into_server_failures_are_clear_and_leave_nothing_behind(shop, tmp_path, monkeypatch):
    srv = shop
    backup = tmp_path / "b.backup"
    run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "full", "--output", str(backup), check=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the import's SQL is written
    restore = ("rusty-db-restore", "--input", str(backup), "--table", "customers")
    # usage errors: exit 2, before anything is restored
    for bad in ("localhost", "127.0.0.1:abc", "127.0.0.1:70000"):
        proc = run_tool(*restore, "--into-server", bad)
        assert proc.returncode == 2 and "HOST:PORT" in proc.stderr, proc.stderr
    proc = run_tool(*restore, "--data-dir", str(tmp_path / "x"), "--rename-to", "c2")
    assert proc.returncode == 2 and "--into-server" in proc.stderr
    assert not (tmp_path / "x").exists()
    # nobody listening
    proc = run_tool(*restore, "--into-server", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "into the server at 127.0.0.1:" in proc.stderr
    # the server refuses (the table exists): rolled back, a clear message
    proc = run_tool(*restore, "--into-server", f":{srv.port}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "customers" in proc.stderr and "already exists" in proc.stderr
    assert len(rows_of(srv, "customers")) == 300
    # an unrelated file of the same name as an old import's is never touched
    (scratch / "customers.import.sql").write_text("keep me")
    proc = run_tool(
        *restore,
        "--data-dir",
        str(tmp_path / "d"),
        "--into-server",
        f":{srv.port}",
        "--rename-to",
        "customers",
    )
    assert proc.returncode == 1
    assert (scratch / "customers.import.sql").read_text() == "keep me"
    assert sorted(os.listdir(scratch)) == ["customers.import.sql"]


def test_missing_table_and_database_are_clear_errors(shop, tmp_path):
    srv = shop
    backup = tmp_path / "b.backup"
    run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "full", "--output", str(backup), check=True)
    proc = run_tool("rusty-db-restore", "--input", str(backup), "--table", "nope", "--data-dir", str(tmp_path / "t1"))
    assert proc.returncode == 1
    assert "customers" in proc.stderr and "orders" in proc.stderr
    assert not (tmp_path / "t1").exists()
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(backup),
        "--table",
        "customers",
        "--database",
        "nodb",
        "--data-dir",
        str(tmp_path / "t2"),
    )
    assert proc.returncode == 1 and "rustydb" in proc.stderr


def test_table_from_a_chain_and_at_a_pitr_target(shop, tmp_path, monkeypatch):
    srv = shop
    archive = tmp_path / "archive"
    archive.mkdir()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    chain = tmp_path / "chain"
    chain.mkdir()
    base = chain / "base.backup"
    run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "pitr-base", "--output", str(base), check=True)
    c = rc.connect(port=srv.port)
    c.execute("UPDATE customers SET balance = balance + 100 WHERE id <= 50")
    c.execute("ALTER TABLE customers ADD COLUMN tier TEXT DEFAULT 'bronze'")
    c.execute("UPDATE customers SET tier = 'gold' WHERE id % 10 = 0")
    c.execute("INSERT INTO orders VALUES (7777, 5, 5.0)")
    incr = chain / "incr.backup"
    run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "incremental", "--output", str(incr), check=True)
    at_incr = c.execute("SELECT * FROM customers ORDER BY id").rows
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    c.execute("DELETE FROM customers WHERE id > 200")
    srv.wait_archived()
    # from the chain (full + incremental): the table as of the incremental
    out = tmp_path / "from-chain"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(incr),
        "--table",
        "customers",
        "--chain-dir",
        str(chain),
        "--data-dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    got = _offline_rows(out, "customers")
    assert got == at_incr
    # from the pitr-base and the archive, at a time between the incremental and the delete
    out2 = tmp_path / "from-pitr"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--table",
        "customers",
        "--archive-dir",
        str(archive),
        "--recovery-target-time",
        dt.datetime.fromtimestamp(mark, dt.UTC).isoformat(),
        "--data-dir",
        str(out2),
    )
    assert proc.returncode == 0, proc.stderr
    assert _offline_rows(out2, "customers") == at_incr
    assert not os.path.exists(out2 / "databases" / "other.sqlite")
    c.close()


def _offline_rows(data_dir, table):
    import apsw

    db = apsw.Connection(str(data_dir / "databases" / "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type='table'").fetchall()]
        assert "orders" not in names  # only the table that was asked for
        return [list(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()]
    finally:
        db.close()


def test_query_a_backup_without_restoring_it(shop, tmp_path, monkeypatch):
    srv = shop
    monkeypatch.setenv("RUSTYDB_BACKUP_PASSPHRASE", "query me")
    backup = tmp_path / "b.backup"
    run_tool(
        "rusty-db-backup",
        "--port",
        str(srv.port),
        "--type",
        "full",
        "--output",
        str(backup),
        "--encrypt",
        "--compress",
        check=True,
    )
    proc = run_tool(
        "rusty-db-backup", "--query", str(backup), "SELECT name, balance FROM customers WHERE id = 42", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rows"] == [["customer 42", 52.5]] and out["columns"] == ["name", "balance"]
    proc = run_tool("rusty-db-backup", "--query", str(backup), "DELETE FROM customers")
    assert proc.returncode == 1 and "read" in proc.stderr.lower()
    proc = run_tool("rusty-db-backup", "--query", str(backup), "SELECT 1", "--database", "nope")
    assert proc.returncode == 1 and "rustydb" in proc.stderr


def test_awkward_table_names_back_up_restore_and_import(server_factory, tmp_path):
    """Names are data: quotes, spaces, brackets and non-ASCII in a table name
    break no backup, integrity check, table restore or import."""
    srv = server_factory(name="awkward").start()
    names = ['we"ird tab', "[br]", "naïve; DROP", "x'y"]
    for i, name in enumerate(names):
        q = '"' + name.replace('"', '""') + '"'
        srv.sql(f"CREATE TABLE {q}(id INTEGER PRIMARY KEY, v TEXT);")
        srv.sql(f"INSERT INTO {q} VALUES ({i}, 'row of {i}');")
    full = tmp_path / "full.backup"
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "full", "--output", str(full))
    assert proc.returncode == 0, proc.stderr
    proc = run_tool(
        "rusty-db-restore", "--input", str(full), "--data-dir", str(tmp_path / "whole"), "--integrity-check"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(full),
        "--table",
        names[0],
        "--into-server",
        f":{srv.port}",
        "--rename-to",
        'copy "1"',
    )
    assert proc.returncode == 0, proc.stderr
    with rc.connect(port=srv.port) as c:
        assert c.execute('SELECT * FROM "copy ""1"""').rows == [[0, "row of 0"]]
