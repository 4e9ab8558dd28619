"""Bulk loads end to end: a transaction of 200,000 rows and one of many
statements with DDL between them, through a real server.

Their WAL records span many 1 MB segments and are written from the
changeset's own buffer, each new segment created holding its fragment. What
must hold is what holds for any commit: after kill -9 the acknowledged load
is there, replayed from the WAL when the database files lack it; PITR to a
restore point after it and an incremental taken after it give exactly the
live data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import apsw
import pytest

from rustydb_client import client as rc
from tests.support.servers import restore_to_target, run_tool

ROWS = 200_000
GEN = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {n}) "
TABLES = ("bulk", "many")


def load(conn) -> None:
    """One 200,000-row INSERT ... SELECT, then one transaction of many
    statements: inserts, an update of rows it inserted, an index created
    between them (a DDL step inside the transaction), more inserts."""
    conn.execute(GEN.format(n=ROWS) + "INSERT INTO bulk SELECT i, 'customer-' || i, i * 1.25, randomblob(i % 7) FROM s")
    conn.execute("BEGIN")
    for start in range(0, 20_000, 1000):
        values = ",".join(f"({i}, 'item-{i}', {i % 97})" for i in range(start, start + 1000))
        conn.execute(f"INSERT INTO many VALUES {values}")
    conn.execute("UPDATE many SET qty = qty + 1000 WHERE id % 3 = 0")
    conn.execute("CREATE INDEX many_qty ON many(qty)")
    conn.execute(GEN.format(n=5000) + "INSERT INTO many SELECT 100000 + i, 'late-' || i, i FROM s")
    conn.execute("DELETE FROM bulk WHERE id % 1000 = 0")
    conn.execute("COMMIT")


def digest(rows_by_table: dict) -> str:
    h = hashlib.sha256()
    for name in TABLES:
        h.update(name.encode())
        for row in rows_by_table[name]:
            h.update(repr(list(row)).encode())
    return h.hexdigest()


def live_digest(conn) -> str:
    return digest({t: conn.execute(f"SELECT * FROM {t} ORDER BY id").rows for t in TABLES})


def file_digest(data_dir) -> str:
    db = apsw.Connection(os.path.join(str(data_dir), "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert db.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'many_qty'").fetchall() == [(1,)]
        return digest({t: db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES})
    finally:
        db.close()


@pytest.fixture
def primary(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "rustydb.toml"
    # 1 MB segments: the 200,000-row record spans about ten of them. No
    # checkpoint moves the redo point past the load while the test runs.
    conf.write_text("wal_segment_size = '1MB'\ncheckpoint_timeout = '1h'\ncheckpoint_wal_size = '1GB'\n")
    srv = server_factory(name="primary", extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE bulk(id INTEGER PRIMARY KEY, name TEXT, amount REAL, tag BLOB);")
    srv.sql("CREATE TABLE many(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    return srv, archive


def test_an_acknowledged_bulk_load_survives_kill_9_and_replays_from_the_wal(primary, tmp_path):
    srv, _ = primary
    # The database files as they were before the load, copied while the
    # server is stopped: put back after the kill, recovery has only the WAL
    # to find the load in.
    srv.stop()
    before = tmp_path / "databases-before"
    shutil.copytree(os.path.join(srv.data_dir, "databases"), before)
    srv.start()
    with rc.connect(port=srv.port) as c:
        load(c)  # every COMMIT acknowledged
        expected = live_digest(c)
        assert c.execute("SELECT count(*) FROM bulk").rows == [[ROWS - ROWS // 1000]]
    srv.kill()
    shutil.rmtree(os.path.join(srv.data_dir, "databases"))
    shutil.copytree(before, os.path.join(srv.data_dir, "databases"))
    srv.start()
    recovery = srv.health()["recovery"]
    assert recovery["replayed_records"] >= 2, recovery
    with rc.connect(port=srv.port) as c:
        assert live_digest(c) == expected
    srv.stop()
    assert file_digest(srv.data_dir) == expected


def test_pitr_and_an_incremental_see_a_bulk_load_exactly(primary, tmp_path):
    srv, archive = primary
    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    full = tmp_path / "full.backup"
    proc = run_tool("rusty-db-backup", "--type", "full", "--output", str(full), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    with rc.connect(port=srv.port) as c:
        load(c)
        at_point = live_digest(c)
        c.execute("CREATE RESTORE POINT 'after_load'")
        c.execute("UPDATE bulk SET name = 'changed after the restore point' WHERE id < 10")
        incremental = tmp_path / "incr.backup"
        proc = run_tool(
            "rusty-db-backup", "--type", "incremental", "--output", str(incremental), "--port", str(srv.port), "--json"
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1])["type"] == "incremental"
        live = live_digest(c)
    srv.wait_archived(60)

    out = tmp_path / "pitr"
    proc = restore_to_target(base, archive, out, "--recovery-target-name", "after_load")
    assert proc.returncode == 0, proc.stderr
    assert file_digest(out) == at_point

    data = tmp_path / "incr-restored"
    for args in (("--input", full, "--data-dir", data), ("--input", incremental, "--data-dir", data, "--incremental")):
        proc = run_tool("rusty-db-restore", *map(str, args))
        assert proc.returncode == 0, proc.stderr
    assert file_digest(data) == live
