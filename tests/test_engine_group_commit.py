"""In-process: the engine's group commit and the rules that keep it safe.

A commit writes its WAL record, lets SQLite commit (synchronous=OFF) and waits
outside its database's commit lock for the one flush that covers every record
written meanwhile. SQLite never checkpoints by itself; the engine does, after
a flush with the database's commits paused, naming the database in the
control file while it copies. A long reader never makes a checkpoint wait:
it ends incomplete, and the database's commits are made durable before
SQLite commits them until one completes. Recovery discards SQLite's -wal
unless the control file says a checkpoint was copying it.
"""

from __future__ import annotations

import os
import threading
import time

import apsw

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.engine import database
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.fileops import FileOps
from rustydb_server.settings import Settings


class CountingFileOps(FileOps):
    """Counts WAL flushes (each made slow, so commits pile up behind it) and
    keeps every control file written, decoded."""

    def __init__(self, flush_seconds: float = 0.0):
        self.flushes = 0
        self.flush_seconds = flush_seconds
        self.controls: list[dd.Control] = []
        self.lock = threading.Lock()

    def fdatasync(self, fd):
        with self.lock:
            self.flushes += 1
        time.sleep(self.flush_seconds)
        super().fdatasync(fd)

    def write_file_atomic(self, path, data, mode=0o600):
        super().write_file_atomic(path, data, mode)
        if os.path.basename(path) == dd.CONTROL_FILE:
            self.controls.append(dd.Control.decode(data, path))


def open_engine(path, fileops=None):
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20})
    if fileops is None:
        return Engine.open(dd.DataDir(path), settings)
    return Engine.open(dd.DataDir(path, fileops), settings, fileops=fileops)


def run(session, sql):
    _run, rows, _finished = session.run(sql, leading_keywords(sql, 2), 100_000)
    return rows


def test_one_flush_covers_the_commits_of_every_session_that_arrived_meanwhile(tmp_path):
    fileops = CountingFileOps(flush_seconds=0.005)
    engine = open_engine(str(tmp_path / "data"), fileops)
    try:
        setup = SqlSession(engine, "rustydb", 1)
        run(setup, "CREATE TABLE t(id INTEGER PRIMARY KEY, who INTEGER)")
        sessions = [SqlSession(engine, "rustydb", 2 + n) for n in range(4)]
        flushes_before = fileops.flushes
        late = []
        real_commit = engine.commit

        def commit(*args):
            lsn, txid, at = real_commit(*args)
            # The session answers when this returns: its record is durable by then.
            if engine.wal.flushed_lsn <= lsn:
                late.append(lsn)
            return lsn, txid, at

        engine.commit = commit

        def commits(n, session):
            for i in range(25):
                run(session, f"INSERT INTO t VALUES ({n * 1000 + i}, {n})")

        threads = [threading.Thread(target=commits, args=(n, s)) for n, s in enumerate(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        flushes = fileops.flushes - flushes_before
        assert run(setup, "SELECT count(*) FROM t") == [[100]]
        assert late == []
        # 100 commits from 4 sessions on one database: while one flush runs,
        # the others commit in SQLite and wait for the next, which covers them all.
        assert flushes < 100, flushes
    finally:
        engine.close()


def test_each_commit_is_durable_when_it_returns_and_sqlite_committed_it_before_the_flush(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    order = []
    try:
        s = SqlSession(engine, "rustydb", 1)
        run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
        real_flush = engine.flush_wal

        def flush(upto=None):
            # SQLite already committed: a second connection sees the row.
            other = SqlSession(engine, "rustydb", 2)
            other.engine = engine
            order.append(("flush", other.conn.execute("SELECT count(*) FROM t").fetchall()[0][0]))
            other.close()
            return real_flush(upto)

        engine.flush_wal = flush
        run(s, "INSERT INTO t VALUES (1)")
        del engine.flush_wal
        assert order == [("flush", 1)]
        assert engine.wal.flushed_lsn == engine.wal.end_lsn
    finally:
        engine.close()


def test_sessions_commit_without_syncing_and_nothing_checkpoints_but_the_engine(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        s = SqlSession(engine, "rustydb", 1)
        authorizer, s.conn.authorizer = s.conn.authorizer, None  # it refuses these pragmas to clients
        assert s.conn.execute("PRAGMA synchronous").fetchall() == [(0,)]  # OFF
        assert s.conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
        s.conn.authorizer = authorizer
        run(s, "CREATE TABLE t(v)")
        for _ in range(50):
            run(s, "INSERT INTO t VALUES (randomblob(4000))")
        # Nothing reached the database file: it is as the last checkpoint left it.
        path = engine.get_database("rustydb").path
        size_before = os.path.getsize(path)
        s.close()  # the last connection closes: SQLite does not checkpoint either
        assert os.path.getsize(path) == size_before
        assert os.path.getsize(path + "-wal") > 50 * 4000
    finally:
        engine.close()


def test_a_checkpoint_names_each_database_in_the_control_file_while_it_copies(tmp_path):
    fileops = CountingFileOps()
    engine = open_engine(str(tmp_path / "data"), fileops)
    try:
        engine.create_database("other")
        for name in ("rustydb", "other"):
            s = SqlSession(engine, name, 1)
            run(s, "CREATE TABLE t(v)")
            run(s, "INSERT INTO t VALUES (1)")
            s.close()
        fileops.controls.clear()
        assert engine.checkpoint()["complete"]
        marks = [c.checkpointing for c in fileops.controls]
        # start and end of each database's copy, then the moved redo point
        assert marks == [["rustydb"], [], ["other"], [], []]
        assert engine.datadir.read_control().checkpointing == []
    finally:
        engine.close()


def test_a_checkpoint_of_an_idle_database_writes_no_control_file_one_with_frames_still_gets_its_marks(tmp_path):
    """Nothing beyond what a completed checkpoint copied: no mark, no copy; any frame: both marks."""
    fileops = CountingFileOps()
    engine = open_engine(str(tmp_path / "data"), fileops)
    try:
        s = SqlSession(engine, "rustydb", 1)
        run(s, "CREATE TABLE t(v)")
        handle = engine.get_database("rustydb")

        def checkpoint_one():
            fileops.controls.clear()
            engine.checkpoint_ahead(handle)
            with handle.commit_lock:
                complete = engine.checkpoint_database(handle)
            return complete, [c.checkpointing for c in fileops.controls]

        for _ in range(3):
            run(s, "INSERT INTO t VALUES (randomblob(3000))")
            assert database.wal_frames_to_copy(handle.path) > 0
            assert checkpoint_one() == (True, [["rustydb"], []])
            assert database.wal_frames_to_copy(handle.path) == 0
            # Idle since: twice over, no control file write, and complete.
            assert checkpoint_one() == (True, [])
            assert checkpoint_one() == (True, [])
        # A database whose last checkpoint did not complete goes the whole way
        # even when idle, which clears its state.
        handle.durable_first = True
        assert checkpoint_one() == (True, [["rustydb"], []])
        assert not handle.durable_first
        s.close()
        # Crash now: recovery discards SQLite's -wal and the file holds every row.
        engine.close(clean=False)
        engine = open_engine(str(tmp_path / "data"))
        s = SqlSession(engine, "rustydb", 1)
        assert run(s, "SELECT count(*) FROM t") == [[3]]
        s.close()
    finally:
        engine.close()


def test_a_backup_snapshot_of_an_idle_database_writes_no_control_file_and_still_sends_the_file(tmp_path):
    fileops = CountingFileOps()
    engine = open_engine(str(tmp_path / "data"), fileops)
    try:
        s = SqlSession(engine, "rustydb", 1)
        run(s, "CREATE TABLE t(v)")
        scratch = str(tmp_path / "scratch")
        for rows in (1, 2):
            run(s, "INSERT INTO t VALUES (randomblob(3000))")
            fileops.controls.clear()
            with Snapshot(engine, ["rustydb"], scratch_dir=scratch) as snap:
                assert snap.direct == {"rustydb"}
                # Frames to copy: named before the copy, cleared after it.
                assert [c.checkpointing for c in fileops.controls] == [["rustydb"], []]
                assert snap.databases[0].tables[0].rows == rows
            fileops.controls.clear()
            with Snapshot(engine, ["rustydb"], scratch_dir=scratch) as snap:
                assert snap.direct == {"rustydb"}
                assert fileops.controls == []
                assert snap.databases[0].tables[0].rows == rows
        s.close()
    finally:
        engine.close()


class WalReadsVFS(apsw.VFS):
    """SQLite's default VFS, counting the bytes read from each -wal file."""

    def __init__(self, name: str):
        self.name = name
        self.wal_bytes_read = 0
        super().__init__(name, "")

    def xOpen(self, name, flags):
        return _CountingFile(self, name, flags)


class _CountingFile(apsw.VFSFile):
    def __init__(self, vfs: WalReadsVFS, name, flags):
        self.vfs = vfs
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        self.wal = bool(path) and path.endswith("-wal")
        super().__init__("", name, flags)

    def xRead(self, amount, offset):
        if self.wal:
            self.vfs.wal_bytes_read += amount
        return super().xRead(amount, offset)


def test_checkpoints_and_snapshots_of_an_idle_database_read_none_of_sqlites_wal_after_its_clients_left(tmp_path):
    """The engine keeps its checkpoint connection open: had every connection
    closed, the next one would rebuild SQLite's wal-index by reading the whole
    -wal (0.3 s at each backup's start after a 256 MB load)."""
    fileops = FileOps()
    vfs = WalReadsVFS("walreads")
    fileops.sqlite_vfs = vfs.name
    engine = open_engine(str(tmp_path / "data"), fileops)
    try:
        s = SqlSession(engine, "rustydb", 1)
        run(s, "CREATE TABLE t(v)")
        for _ in range(20):
            run(s, "INSERT INTO t VALUES (randomblob(20000))")
        s.close()
        assert engine.checkpoint()["complete"]  # copies the 400 KB, reading the -wal
        assert os.path.getsize(engine.get_database("rustydb").path + "-wal") > 400_000
        vfs.wal_bytes_read = 0
        assert engine.checkpoint()["complete"]
        with Snapshot(engine, ["rustydb"], scratch_dir=str(tmp_path / "scratch")) as snap:
            assert snap.direct == {"rustydb"}
        assert vfs.wal_bytes_read == 0
    finally:
        engine.close()
        vfs.unregister()


def test_a_long_reader_never_makes_a_checkpoint_wait_its_database_commits_durable_first_until_one_completes(
    tmp_path,
):
    """Single-threaded: a checkpoint that waited for the reader would never return."""
    path = str(tmp_path / "data")
    engine = open_engine(path)
    try:
        writer = SqlSession(engine, "rustydb", 1)
        reader = SqlSession(engine, "rustydb", 2)
        run(writer, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
        run(writer, "INSERT INTO t VALUES (1)")
        run(reader, "BEGIN")
        assert run(reader, "SELECT count(*) FROM t") == [[1]]  # holds its snapshot
        for i in range(2, 40):
            run(writer, f"INSERT INTO t VALUES ({i})")
        result = engine.checkpoint()
        assert result == {"complete": False, "databases": ["rustydb"]}
        handle = engine.get_database("rustydb")
        assert handle.durable_first
        assert engine.datadir.read_control().checkpointing == ["rustydb"]  # recovery keeps its -wal
        # Commits go on, each made durable before SQLite commits it.
        flushed_at_sqlite_commit = []
        real_commit = engine.sqlite_steps.commit

        class Steps(type(engine.sqlite_steps)):
            def commit(self, conn, lsn, txid, commit_time_us):
                flushed_at_sqlite_commit.append(engine.wal.flushed_lsn > lsn)
                real_commit(conn, lsn, txid, commit_time_us)

        engine.sqlite_steps = Steps()
        run(writer, "INSERT INTO t VALUES (100)")
        assert flushed_at_sqlite_commit == [True]
        run(reader, "COMMIT")
        assert engine.checkpoint()["complete"]
        assert not handle.durable_first
        assert engine.datadir.read_control().checkpointing == []
        run(writer, "INSERT INTO t VALUES (101)")
        assert flushed_at_sqlite_commit == [True, False]  # group commit again
    finally:
        engine.close()


def test_recovery_discards_sqlites_wal_unless_a_checkpoint_was_copying_it(tmp_path):
    path = str(tmp_path / "data")
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    for i in range(10):
        run(s, f"INSERT INTO t VALUES ({i})")
    s.close()
    engine.close(clean=False)  # a crash: no checkpoint, SQLite's -wal holds the commits
    wal = os.path.join(path, "databases", "rustydb.sqlite-wal")
    assert os.path.getsize(wal) > 0
    engine = open_engine(path)
    try:
        assert engine.recovery_stats["sqlite_wals_discarded"] == 1
        assert engine.recovery_stats["replayed_records"] >= 10  # all back from our WAL
        s = SqlSession(engine, "rustydb", 1)
        assert run(s, "SELECT count(*) FROM t") == [[10]]
        run(s, "INSERT INTO t VALUES (10)")
        s.close()
    finally:
        engine.close(clean=False)
    # The control file says a checkpoint was copying: the -wal is kept.
    ddir = dd.DataDir(path)
    control = ddir.read_control()
    control.checkpointing = ["rustydb"]
    ddir.write_control(control)
    engine = open_engine(path)
    try:
        assert engine.recovery_stats["sqlite_wals_discarded"] == 0
        assert engine.recovery_stats["sqlite_wals_kept"] == ["rustydb"]
        s = SqlSession(engine, "rustydb", 1)
        assert run(s, "SELECT count(*) FROM t") == [[11]]
        s.close()
        assert engine.datadir.read_control().checkpointing == []  # recovery checkpointed it whole
    finally:
        engine.close()


def test_a_dropped_database_leaves_no_checkpoint_mark_for_one_created_under_its_name(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        engine.create_database("x")
        writer, reader = SqlSession(engine, "x", 1), SqlSession(engine, "x", 2)
        run(writer, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
        run(reader, "BEGIN")
        run(reader, "SELECT count(*) FROM t")
        run(writer, "INSERT INTO t VALUES (1)")
        assert not engine.checkpoint()["complete"]
        assert engine.datadir.read_control().checkpointing == ["x"]
        reader.close()
        writer.close()
        engine.drop_database("x")
        assert engine.datadir.read_control().checkpointing == []
        engine.create_database("x")
        assert not engine.get_database("x").durable_first
    finally:
        engine.close()
