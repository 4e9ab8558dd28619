"""The backup snapshot: pages streamed straight from the database file, or copied.

A snapshot streams a database file as it is when a checkpoint under the
paused writers brought every committed frame into it; these tests check that
the bytes streamed are exactly the snapshot while writers and checkpoints go
on, and that a reader pinning an older snapshot makes it fall back to a copy.
"""

from __future__ import annotations

import threading

import apsw
import pytest

from rustydb_server import datadir as dd
from rustydb_server.backup.snapshot import Snapshot, _file_mismatch
from rustydb_server.engine import database
from rustydb_server.engine.instance import Engine, EngineError
from rustydb_server.engine.session import SqlSession
from rustydb_server.settings import Settings


def open_engine(path: str) -> Engine:
    return Engine.open(dd.DataDir(path), Settings.load(None, path, {"wal_segment_size": 1 << 20}))


def run_sql(engine: Engine, sql: str, db: str = "rustydb"):
    from rustydb_client.sqlsplit import leading_keywords

    session = SqlSession(engine, db, 1)
    _result, rows, _fin = session.run(sql, leading_keywords(sql, 2), 1_000_000)
    return rows


def insert_rows(engine: Engine, first: int, count: int) -> None:
    run_sql(
        engine,
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c "
        f"WHERE i < {count - 1}) INSERT INTO t SELECT {first} + i, "
        "hex(randomblob(200)) FROM c",
    )


def streamed_rows(snap: Snapshot, name: str, scratch: str, tmp_path) -> list:
    """Write what the snapshot streams for ``name`` to a file and read it back."""
    path = tmp_path / f"{name}-streamed.sqlite"
    with open(path, "wb") as f:
        for chunk in snap.stream_database(name, scratch):
            f.write(chunk)
    conn = apsw.Connection(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT id FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def engine(tmp_path):
    eng = open_engine(str(tmp_path / "data"))
    run_sql(eng, "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
    insert_rows(eng, 0, 2000)
    yield eng
    eng.close()


def test_file_streamed_as_is_holds_the_snapshot_while_writers_and_checkpoints_go_on(engine, tmp_path):
    scratch = engine.datadir.join("backup_tmp")
    snap = Snapshot(engine, ["rustydb"], scratch_dir=scratch)
    try:
        assert snap.direct == {"rustydb"}  # no scratch copy
        # Commits and checkpoints after the snapshot must not reach the stream.
        run_sql(engine, "DELETE FROM t WHERE id < 500")
        insert_rows(engine, 10_000, 3000)
        engine.checkpoint("test")
        rows = streamed_rows(snap, "rustydb", scratch, tmp_path)
    finally:
        snap.close()
    assert rows == [(i,) for i in range(2000)]


def test_a_reader_on_an_older_snapshot_makes_the_backup_copy_pages_instead(engine, tmp_path):
    path = engine.get_database("rustydb").path
    old_reader = database.open_connection(path)
    old_reader.execute("BEGIN")
    assert old_reader.execute("SELECT count(*) FROM t").fetchall() == [(2000,)]
    insert_rows(engine, 5000, 100)  # frames the old reader keeps out of the file
    scratch = engine.datadir.join("backup_tmp")
    snap = Snapshot(engine, ["rustydb"], scratch_dir=scratch)
    try:
        assert snap.direct == set()
        insert_rows(engine, 9000, 100)
        rows = streamed_rows(snap, "rustydb", scratch, tmp_path)
    finally:
        snap.close()
        old_reader.execute("ROLLBACK")
        old_reader.close()
    assert rows == [(i,) for i in range(2000)] + [(i,) for i in range(5000, 5100)]


def test_row_counts_agree_with_the_pages_streamed_while_the_file_grows_and_shrinks(engine, tmp_path):
    """Rows are counted through a memory map of the file; commits, VACUUMs and
    checkpoints running meanwhile must neither change what it sees nor truncate
    it under the map (which would kill the server with SIGBUS)."""
    stop = threading.Event()
    failures = []

    def churn():
        i = 0
        try:
            while not stop.is_set():
                insert_rows(engine, 100_000 + i * 1000, 400)
                run_sql(engine, "DELETE FROM t WHERE id >= 100000")
                run_sql(engine, "VACUUM")
                engine.checkpoint("test")
                i += 1
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for n in range(6):
            snap = Snapshot(engine, ["rustydb"], scratch_dir=engine.datadir.join("backup_tmp"))
            try:
                counted = {t.name: t.rows for t in snap.databases[0].tables}
                (tmp_path / str(n)).mkdir()
                rows = streamed_rows(snap, "rustydb", str(tmp_path / "scratch"), tmp_path / str(n))
            finally:
                snap.close()
            assert counted["t"] == len(rows)
    finally:
        stop.set()
        worker.join()
    assert not failures


def test_file_mismatch_names_what_disagrees():
    head = bytearray(100)
    head[:16] = b"SQLite format 3\0"
    head[16:18] = (4096).to_bytes(2, "big")
    head[24:28] = head[92:96] = (7).to_bytes(4, "big")
    head[28:32] = (10).to_bytes(4, "big")
    assert _file_mismatch(40960, bytes(head), 4096, 10) is None
    assert "snapshot has 10 pages" in _file_mismatch(4096, bytes(head), 4096, 10)
    assert "header says 10 pages" in _file_mismatch(1 << 20, bytes(head), 4096, 11)
    assert "page size" in _file_mismatch(1 << 20, bytes(head), 1024, 10)
    assert _file_mismatch(1 << 20, b"not sqlite" * 10, 4096, 10) == "no SQLite header"
    stale = bytearray(head)
    stale[92:96] = (6).to_bytes(4, "big")  # the in-header size is not trusted then
    assert _file_mismatch(1 << 20, bytes(stale), 4096, 11) is None


def fd_is_open(fd: int) -> bool:
    import os

    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_file_range_is_the_snapshot_and_its_descriptor_outlives_the_snapshot(engine, tmp_path):
    import os

    snap = Snapshot(engine, ["rustydb"], scratch_dir=engine.datadir.join("backup_tmp"))
    try:
        file_range = snap.file_range("rustydb")
        run_sql(engine, "DELETE FROM t WHERE id < 500")  # after the snapshot
        engine.checkpoint("test")
        copy = tmp_path / "range.sqlite"
        copy.write_bytes(os.pread(file_range.fd, file_range.size, 0))
    finally:
        snap.close()
    conn = apsw.Connection(str(copy))
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(2000,)]
    conn.close()
    # Closing it would drop SQLite's POSIX locks on the file: it stays open
    # for as long as the database exists.
    assert fd_is_open(file_range.fd)


def test_dropping_a_database_closes_its_descriptor_after_the_last_backup_using_it(engine):
    engine.create_database("gone")
    handle = engine.get_database("gone")
    snap = Snapshot(engine, ["gone"], scratch_dir=engine.datadir.join("backup_tmp"))
    file_range = snap.file_range("gone")
    engine.drop_database("gone")
    assert fd_is_open(file_range.fd)  # the snapshot still sends from it
    snap.close()
    assert not fd_is_open(file_range.fd)
    with pytest.raises(EngineError):
        handle.acquire_read_fd()


def test_a_database_named_twice_is_snapshotted_once_without_deadlock(engine, tmp_path):
    """A backup request naming a database twice took its commit lock twice: the
    server hung. Every name is taken once, in order, whatever the request says."""
    outcome = {}

    def take():
        snap = Snapshot(engine, ["rustydb", "rustydb"], scratch_dir=str(tmp_path / "scratch"))
        try:
            outcome["names"] = snap.names
        finally:
            snap.close()

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the snapshot deadlocked on a database named twice"
    assert outcome["names"] == ["rustydb"]
    insert_rows(engine, 10_000, 1)  # commits go on
