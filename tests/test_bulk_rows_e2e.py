"""Bulk inserts logged as rows steps, through a real server and the real tools.

A bulk INSERT ... SELECT in a transaction with other changes, then: the WAL
holds a rows step for it; rusty-db-waldump lists its rows as inserts; UNDO
TRANSACTION removes exactly them; point-in-time recovery from a base backup
and the archive stops exactly after it; a table restore brings the table back
as it was after it; and a server killed (SIGKILL) then started again serves
the same rows.
"""

from __future__ import annotations

import json

import pytest

from rustydb_client import client as rc
from rustydb_server import datadir as dd
from rustydb_server.engine import database
from rustydb_server.wal import reader
from rustydb_server.wal import record as walrec
from tests.support.servers import ServerProcess, restore_to_target, run_tool

ROWS = 20_000
GEN = "WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i+1 FROM s WHERE i < {hi}) "
CHECK = "SELECT count(*), sum(id), sum(length(v)), sum(n), max(id) FROM items"


def bulk(conn, lo: int, n: int) -> None:
    conn.execute(GEN.format(lo=lo, hi=lo + n - 1) + "INSERT INTO items SELECT i, 'row ' || i, i % 97 FROM s")


def rows_steps(data_dir: str) -> list[tuple[int, str]]:
    """(txid, table) of every rows step in a data directory's WAL."""
    d = dd.DataDir(data_dir)
    c = d.read_control()
    found = []
    for entry in reader.read_wal(d.wal_dir, timeline=c.timeline, segment_size=c.segment_size, start_lsn=c.segment_size):
        rec = walrec.decode_record(entry.body)
        if isinstance(rec, walrec.TxRecord):
            found += [(rec.txid, p) for kind, p in rec.steps if kind == "rows"]
    return found


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulk")
    archive = root / "archive"
    archive.mkdir()
    conf = root / "rustydb.toml"
    conf.write_text("wal_segment_size = '1MB'\narchive_timeout = '1s'\n")
    srv = ServerProcess(str(root / "data"), extra_args=["--config", str(conf)]).start()
    try:
        srv.sql("ALTER SYSTEM SET archive_mode = on;")
        srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
        with rc.connect(port=srv.port) as c:
            c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
            c.execute("CREATE TABLE other(x)")
            c.execute("INSERT INTO items VALUES (1, 'first', 0)")
            base = root / "base.backup"
            run_tool(
                "rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True
            )
            c.execute("BEGIN")
            txid = c.execute("SELECT txid_current()").rows[0][0]
            c.execute("INSERT INTO other VALUES ('beside')")
            bulk(c, 2, ROWS)
            c.execute("COMMIT")
            after_bulk = c.execute(CHECK).rows[0]
            bulk(c, ROWS + 2, 500)  # a later autocommit bulk insert
            c.execute("UPDATE items SET v = 'later' WHERE id % 1000 = 0")
            final = c.execute(CHECK).rows[0]
        srv.wait_archived()
        yield {
            "srv": srv,
            "root": root,
            "archive": archive,
            "base": base,
            "txid": txid,
            "after_bulk": after_bulk,
            "final": final,
        }
    finally:
        srv.stop()


def test_the_bulk_transaction_is_logged_as_a_rows_step(loaded):
    steps = rows_steps(loaded["srv"].data_dir)
    assert [t for t, _ in steps].count(loaded["txid"]) == 1
    assert len(steps) == 2  # the later autocommit one too


def test_waldump_lists_the_rows_as_inserts(loaded):
    proc = run_tool("rusty-db-waldump", "--data-dir", loaded["srv"].data_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    items = [t for t in json.loads(proc.stdout)["transactions"] if t["txid"] == loaded["txid"]]
    assert [i["tables"] for i in items] == [
        {"items": {"insert": ROWS, "update": 0, "delete": 0}, "other": {"insert": 1, "update": 0, "delete": 0}}
    ]


def test_point_in_time_recovery_stops_right_after_the_bulk_transaction(loaded, tmp_path):
    data = tmp_path / "pitr"
    proc = restore_to_target(loaded["base"], loaded["archive"], data, "--recovery-target-txid", str(loaded["txid"]))
    assert proc.returncode == 0, proc.stderr
    conn = database.open_connection(str(data / "databases" / "rustydb.sqlite"))
    try:
        assert tuple(conn.execute(CHECK).fetchall()[0]) == tuple(loaded["after_bulk"])
    finally:
        conn.close()


def test_undo_of_the_bulk_transaction_removes_exactly_its_rows(loaded):
    srv = loaded["srv"]
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE DATABASE undo_bulk")
        c.execute("USE undo_bulk")
        c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        c.execute("INSERT INTO items VALUES (1, 'first', 0)")
        c.execute("BEGIN")
        txid = c.execute("SELECT txid_current()").rows[0][0]
        bulk(c, 2, 3000)
        c.execute("COMMIT")
        result = c.execute(f"UNDO TRANSACTION {txid}")
        assert result.status == "UNDO" and result.rows[0][1:] == ["items", 3000]
        assert c.execute(CHECK).rows[0] == [1, 1, 5, 0, 1]


def test_a_killed_server_restarts_with_the_bulk_rows(loaded):
    srv = loaded["srv"]
    srv.kill()
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert c.execute(CHECK).rows[0] == loaded["final"]


def test_a_table_restore_to_the_bulk_transaction_brings_back_its_rows(loaded, tmp_path):
    out = tmp_path / "items"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(loaded["base"]),
        "--archive-dir",
        str(loaded["archive"]),
        "--table",
        "items",
        "--data-dir",
        str(out),
        "--as-of",
        f"txid:{loaded['txid']}",
        "--json",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == ROWS + 1
    conn = database.open_connection(str(out / "databases" / "rustydb.sqlite"))
    try:
        assert tuple(conn.execute(CHECK).fetchall()[0]) == tuple(loaded["after_bulk"])
        tables = conn.execute(
            f"SELECT name FROM sqlite_schema WHERE type = 'table' AND name != '{database.STATE_TABLE}'"
        ).fetchall()
        assert tables == [("items",)]  # the table asked for alone
    finally:
        conn.close()
