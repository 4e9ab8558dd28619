"""Incremental and differential backups end to end, with the guide's commands."""

from __future__ import annotations

import json
import os
import time

import apsw
import pytest

from rustydb_client import client as rc
from tests.support.servers import free_port, run_tool


def dump(conn_or_path) -> dict:
    """Every user table of the default database: {table: rows}, plus the schema."""
    if isinstance(conn_or_path, str):
        db = apsw.Connection(os.path.join(conn_or_path, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
        q = lambda sql: [list(r) for r in db.execute(sql).fetchall()]  # noqa: E731
    else:
        q = lambda sql: conn_or_path.execute(sql).rows  # noqa: E731
    tables = [
        r[0]
        for r in q(
            "SELECT name FROM sqlite_schema WHERE type='table' AND "
            "name NOT LIKE 'sqlite_%' AND name != '__rustydb_state' "
            "ORDER BY name"
        )
    ]
    out = {"schema": q("SELECT type, name, sql FROM sqlite_schema WHERE name != '__rustydb_state' ORDER BY name")}
    for t in tables:
        out[t] = q(f'SELECT rowid, * FROM "{t}" ORDER BY rowid')
    return out


def backup(srv, path, *args):
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--output", str(path), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def restore(*args, check=True):
    proc = run_tool("rusty-db-restore", *map(str, args))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def restore_in_order(data, full, *incrementals):
    """The guide's incremental restore: the full backup, then each file with --incremental."""
    restore("--input", full, "--data-dir", data)
    for path in incrementals:
        restore("--input", path, "--data-dir", data, "--incremental")


def workload_step(c, step):
    """Inserts, updates, deletes and DDL, different each step."""
    c.execute(f"INSERT INTO items(name, qty) VALUES ('s{step}-a', {step}), ('s{step}-b', 1)")
    for _ in range(10):  # one row updated many times: stored once in the incremental
        c.execute(f"UPDATE items SET qty = qty + 1 WHERE name = 's{step}-a'")
    c.execute(f"DELETE FROM items WHERE qty = 1 AND name LIKE 's{step - 1}-%'")
    c.execute(f"INSERT INTO plain VALUES ({step}, 'no primary key')")
    c.execute(f"INSERT INTO items(name, qty) VALUES ('temp{step}', 0)")
    c.execute(f"DELETE FROM items WHERE name = 'temp{step}'")  # never in the backup
    if step == 2:
        c.execute("ALTER TABLE items ADD COLUMN colour TEXT DEFAULT 'red'")
        c.execute("UPDATE items SET colour = 'blue' WHERE qty > 5")
    if step == 3:
        c.execute("CREATE INDEX items_qty ON items(qty)")
        c.execute("CREATE TABLE extra(k TEXT PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO extra VALUES ('x', x'00ff')")


@pytest.fixture
def primary(server_factory, monkeypatch):
    # the tools take the key from the environment, as an operator's cron job would
    monkeypatch.setenv("RUSTYDB_BACKUP_PASSPHRASE", "correct horse battery staple")
    srv = server_factory(name="primary").start()
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    srv.sql("CREATE TABLE plain(a, b);")
    srv.sql("INSERT INTO items(name, qty) VALUES ('seed', 3);")
    return srv


def test_full_then_incrementals_restore_equals_live(primary, tmp_path):
    srv = primary
    c = rc.connect(port=srv.port)
    full = tmp_path / "full_20251207_000000.backup"
    backup(srv, full, "--type", "full", "--compress")
    incrs = []
    for step in range(1, 4):
        workload_step(c, step)
        path = tmp_path / f"incr_2025120{step + 7}_000000.backup"
        info = backup(srv, path, "--type", "incremental", "--compress", "--encrypt")
        incrs.append(path)
    expected = dump(c)
    # the guide's incremental restore, in order
    data = tmp_path / "rusty-db"
    restore_in_order(data, full, *incrs)
    assert dump(str(data)) == expected
    # --info and --verify work on incrementals
    proc = run_tool("rusty-db-backup", "--info", str(incrs[-1]), "--json")
    meta = json.loads(proc.stdout)
    assert meta["type"] == "incremental" and meta["parent_id"]
    proc = run_tool("rusty-db-backup", "--verify", str(incrs[-1]))
    assert proc.returncode == 0 and "Backup is valid" in proc.stdout
    # the restored directory starts and takes writes
    assert info["type"] == "incremental"
    c.close()


def test_an_incremental_larger_than_a_frame_streams_and_restores(primary, tmp_path):
    """One table's net changes of ~20 MB, more than a wire frame may hold (16 MiB)."""
    srv = primary
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    srv.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO items(name, qty) SELECT hex(randomblob(500)), i FROM n;"
    )
    incr = tmp_path / "incr.backup"
    info = backup(srv, incr, "--type", "incremental", "--compress")
    assert info["type"] == "incremental"
    with rc.connect(port=srv.port) as c:
        expected = dump(c)
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected


def test_wrong_order_duplicate_and_wrong_base_are_refused(primary, tmp_path):
    srv = primary
    c = rc.connect(port=srv.port)
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    workload_step(c, 1)
    i1 = tmp_path / "i1.backup"
    backup(srv, i1, "--type", "incremental")
    workload_step(c, 2)
    i2 = tmp_path / "i2.backup"
    backup(srv, i2, "--type", "incremental")
    data = tmp_path / "d"
    restore("--input", full, "--data-dir", data)
    proc = restore("--input", i2, "--data-dir", data, "--incremental", check=False)
    assert proc.returncode == 1 and "in order" in proc.stderr
    restore("--input", i1, "--data-dir", data, "--incremental")
    proc = restore("--input", i1, "--data-dir", data, "--incremental", check=False)
    assert proc.returncode == 1 and "already applied" in proc.stderr
    # an incremental of another full backup
    other_full = tmp_path / "full2.backup"
    backup(srv, other_full, "--type", "full")
    workload_step(c, 3)
    i3 = tmp_path / "i3.backup"
    backup(srv, i3, "--type", "incremental")
    proc = restore("--input", i3, "--data-dir", data, "--incremental", check=False)
    assert proc.returncode == 1 and "must be applied on top of" in proc.stderr
    c.close()


def test_differentials_and_chain_dir(primary, tmp_path):
    srv = primary
    c = rc.connect(port=srv.port)
    chain = tmp_path / "chain"
    chain.mkdir()
    full = chain / "full.backup"
    backup(srv, full, "--type", "full")
    workload_step(c, 1)
    backup(srv, chain / "i1.backup", "--type", "incremental")
    workload_step(c, 2)
    diff = chain / "diff.backup"
    backup(srv, diff, "--type", "differential")
    workload_step(c, 3)
    last = chain / "i2.backup"
    backup(srv, last, "--type", "incremental")
    expected_end = dump(c)
    # full + differential = state at the differential
    d1 = tmp_path / "d1"
    restore_in_order(d1, full, diff)
    d2 = tmp_path / "d2"
    restore_in_order(d2, full, chain / "i1.backup")
    # d1 (full + diff) and the chain up to step 2 agree on the data
    # (the differential was taken after step 2; the chain's i1 after step 1 only)
    assert dump(str(d1))["items"] != dump(str(d2))["items"]
    # the chain found automatically from the last file: i2's parent is the
    # differential (the previous backup of any type), whose base is the full
    d3 = tmp_path / "d3"
    proc = restore("--input", last, "--data-dir", d3, "--chain-dir", chain, "--json")
    assert [os.path.basename(p) for p in json.loads(proc.stdout)["chain"]] == [
        "full.backup",
        "diff.backup",
        "i2.backup",
    ]
    assert dump(str(d3)) == expected_end
    # a differential goes onto its full backup only
    proc = restore("--input", diff, "--data-dir", d2, "--incremental", check=False)
    assert proc.returncode == 1 and "differential" in proc.stderr
    c.close()


def test_incremental_after_its_wal_is_gone_refuses(primary, tmp_path):
    srv = primary
    c = rc.connect(port=srv.port)
    backup(srv, tmp_path / "full.backup", "--type", "full")
    workload_step(c, 1)
    c.close()
    srv.stop()
    # simulate the WAL being lost (an operator deleted it, or a disk was replaced)
    wal = os.path.join(srv.data_dir, "wal")
    for n in os.listdir(wal):
        if len(n) == 24:
            os.unlink(os.path.join(wal, n))
    with open(os.path.join(srv.data_dir, "control"), "rb"):
        pass
    srv.start()  # recovery finds no WAL to replay: the databases are already durable
    proc = run_tool(
        "rusty-db-backup", "--port", str(srv.port), "--type", "incremental", "--output", str(tmp_path / "i.backup")
    )
    assert proc.returncode == 1
    assert "full backup" in proc.stderr
    assert not (tmp_path / "i.backup").exists()
    time.sleep(0)


def test_incremental_reads_wal_the_server_removed_from_the_archive(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTYDB_BACKUP_PASSPHRASE", "pw")
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="arch", extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    srv.sql("CREATE TABLE plain(a, b);")
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    c = rc.connect(port=srv.port)
    for i in range(300):  # several 64 kB segments of WAL
        c.execute(f"INSERT INTO items(name, qty) VALUES ('{'x' * 300}{i}', {i})")
    srv.wait_archived()
    srv.sql("CHECKPOINT;")  # archived segments may now leave the server
    local = [n for n in os.listdir(os.path.join(srv.data_dir, "wal")) if len(n) == 24]
    archived = [n for n in os.listdir(archive) if n.endswith(".walz")]
    assert len(archived) > len(local)  # some WAL the incremental needs is only archived
    # A restart forgets the changes tracked since the full backup, so the
    # incremental has to read the WAL, part of it from the archive.
    c.close()
    srv.stop()
    srv.start()
    c = rc.connect(port=srv.port)
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    expected = dump(c)
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected
    c.close()


def test_tracked_and_wal_incrementals_restore_the_same(server_factory, tmp_path):
    """Live, the server answers from the changes it tracked since the full
    backup; after a restart it reads the WAL. Same parent, same data."""
    srv = server_factory(name="track").start()
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    srv.sql("INSERT INTO items(name, qty) VALUES ('a', 1), ('b', 2), ('c', 3);")
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    c = rc.connect(port=srv.port)
    for i in range(20):
        c.execute(f"UPDATE items SET qty = qty + {i} WHERE id = {1 + i % 3}")
        c.execute(f"INSERT INTO items(name, qty) VALUES ('n{i}', {i})")
    c.execute("DELETE FROM items WHERE name = 'b'")
    c.execute("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'x'")
    expected = dump(c)
    c.close()
    tracked = tmp_path / "tracked.backup"
    backup(srv, tracked, "--type", "incremental")
    srv.stop()
    srv.start()
    from_wal = tmp_path / "wal.backup"
    backup(srv, from_wal, "--type", "incremental", "--base-backup", str(full))
    sources = [json.loads(line)["source"] for line in srv.log().splitlines() if '"incremental computed"' in line]
    assert sources == ["tracked", "wal"]
    for name, incr in (("a", tracked), ("b", from_wal)):
        data = tmp_path / f"restored-{name}"
        restore_in_order(data, full, incr)
        assert dump(str(data)) == expected


def test_a_failed_apply_leaves_a_directory_that_must_be_restored_again(primary, tmp_path):
    """Pages are written in place as an incremental is applied, so one that
    fails half-way cannot be rolled back: nothing may then use the directory."""
    srv = primary
    srv.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) "
        "INSERT INTO items(name, qty) SELECT hex(randomblob(100)), i FROM n;"
    )
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    with rc.connect(port=srv.port) as c:
        c.execute("UPDATE items SET qty = -qty")  # ~6 MB of pages, more than the apply caches
        c.execute("CREATE TABLE extra(k)")
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    data = tmp_path / "d"
    restore("--input", full, "--data-dir", data)
    # The restored directory is not the state the incremental was taken from:
    # its last step (the CREATE TABLE) fails after the updates were applied.
    db_path = str(data / "databases" / "rustydb.sqlite")
    db = apsw.Connection(db_path)
    db.execute("CREATE TABLE extra(k)")
    db.close()
    proc = restore("--input", incr, "--data-dir", data, "--incremental", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot apply the backup to database 'rustydb'" in proc.stderr
    assert "is left half-changed" in proc.stderr and "restore" in proc.stderr
    db = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    negative = db.execute("SELECT count(*) FROM items WHERE qty < 0").fetchall()[0][0]
    db.close()
    assert negative > 0  # it really is half-changed
    proc = restore("--input", incr, "--data-dir", data, "--incremental", check=False)
    assert proc.returncode == 1
    assert "did not finish" in proc.stderr and "restore the chain again" in proc.stderr
    proc = run_tool(
        "rusty-db-server", "--data-dir", str(data), "--port", str(free_port()), "--http-port", str(free_port())
    )
    assert proc.returncode != 0 and "restore it again" in proc.stderr
    proc = run_tool(
        "rusty-db-export", "--input-dir", str(data), "--table", "items", "--output", str(tmp_path / "items.sql")
    )
    assert proc.returncode == 1 and "did not finish" in proc.stderr
    assert not (tmp_path / "items.sql").exists()
    # restoring the chain again works
    restore("--input", full, "--data-dir", data, "--force")
    restore("--input", incr, "--data-dir", data, "--incremental")
    with rc.connect(port=srv.port) as c:
        assert dump(str(data)) == dump(c)


def test_applying_without_sync_never_fsyncs_the_database(primary, tmp_path):
    """A --chain-dir restore syncs each database once, after the last incremental;
    SQLite leaving WAL mode must not sync the whole freshly written file first."""
    from rustydb_server.container.reader import BackupReader
    from rustydb_server.restore.incremental import apply_incremental

    srv = primary
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    with rc.connect(port=srv.port) as c:
        workload_step(c, 1)
        expected = dump(c)
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    data = tmp_path / "d"
    restore("--input", full, "--data-dir", data)
    synced = []
    base = apsw.vfs_names()[0]

    class File(apsw.VFSFile):
        def __init__(self, vfs, name, flags):
            self.path = name.filename() if isinstance(name, apsw.URIFilename) else name
            super().__init__(vfs, name, flags)

        def xSync(self, flags):
            synced.append(self.path)
            return super().xSync(flags)

    class CountingVFS(apsw.VFS):
        def __init__(self):
            super().__init__("counting-sync", base, makedefault=True)

        def xOpen(self, name, flags):
            return File(base, name, flags)

    vfs = CountingVFS()
    try:
        with open(incr, "rb") as f:
            apply_incremental(BackupReader(f), str(data), staging=True)
    finally:
        vfs.unregister()
    assert not [p for p in synced if p.endswith(".sqlite")]
    assert dump(str(data)) == expected


def test_an_incremental_with_vacuum_and_bulk_changes_restores_both_ways(primary, tmp_path):
    """VACUUM in the range, and more changed pages than the apply's page cache
    holds (so pages are written to the file mid-apply): both restore paths
    give the live database."""
    srv = primary
    chain = tmp_path / "chain"
    chain.mkdir()
    full = chain / "full.backup"
    srv.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) "
        "INSERT INTO items(name, qty) SELECT hex(randomblob(100)), i FROM n;"
    )
    backup(srv, full, "--type", "full")
    with rc.connect(port=srv.port) as c:
        c.execute("UPDATE items SET qty = qty + 1 WHERE id % 3 = 0")
        c.execute("DELETE FROM items WHERE id % 7 = 0")
        c.execute("VACUUM")
        c.execute("UPDATE items SET name = 'after vacuum' WHERE id % 11 = 0")
        c.execute("INSERT INTO plain VALUES (1, 'x')")
        expected = dump(c)
    incr = chain / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    d1 = tmp_path / "d1"
    restore_in_order(d1, full, incr)
    assert dump(str(d1)) == expected
    d2 = tmp_path / "d2"
    restore("--input", incr, "--chain-dir", chain, "--data-dir", d2)
    assert dump(str(d2)) == expected
    db = apsw.Connection(str(d2 / "databases" / "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    db.close()
