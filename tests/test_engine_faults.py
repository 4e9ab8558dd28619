"""The engine under injected faults: a full WAL disk, a failed fsync, a corrupt WAL.

These drive the real Engine and SqlSession (no server process) with a FileOps
that fails on command, so each fault lands exactly where the test wants it.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from rustydb_server import datadir as dd
from rustydb_server.engine import instance
from rustydb_server.engine.instance import Engine, EngineError, FatalWalError
from rustydb_server.engine.observer import EngineObserver
from rustydb_server.engine.session import SqlSession
from rustydb_server.fileops import FileOps
from rustydb_server.settings import Settings
from rustydb_server.wal import segment as walseg

SEGMENT = 64 * 1024


class FaultyOps(FileOps):
    def __init__(self):
        self.disk_full = False
        self.fail_fdatasync = False
        self._segment_tmp_fds: set[int] = set()

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        if path.endswith(".tmp"):
            self._segment_tmp_fds.add(fd)
        return fd

    def close(self, fd):
        self._segment_tmp_fds.discard(fd)
        super().close(fd)

    def write(self, fd, data):
        if self.disk_full and fd in self._segment_tmp_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)

    def fdatasync(self, fd):
        if self.fail_fdatasync:
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)


def open_engine(path, ops=None, observer=None) -> Engine:
    settings = Settings.load(None, str(path), {"wal_segment_size": SEGMENT})
    return Engine.open(dd.DataDir(str(path)), settings, ops or FileOps(), observer=observer)


def run(session: SqlSession, sql: str):
    from rustydb_client.sqlsplit import leading_keywords

    r = session.start(sql, leading_keywords(sql, 2))
    rows = session.fetch(r, 100000) if r.columns is not None else []
    session.finish(r)
    return rows


def test_full_wal_disk_fails_the_commit_then_recovers_by_itself(tmp_path):
    ops = FaultyOps()
    engine = open_engine(tmp_path / "d", ops)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)")
    ops.disk_full = True
    # enough rows that the record needs a new segment, which cannot be created
    # (random text: a bulk insert's rows step is compressed)
    with pytest.raises(EngineError) as e:
        run(
            s,
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<2000) "
            "INSERT INTO t SELECT i, hex(randomblob(50)) FROM c",
        )
    assert e.value.code == "disk_full"
    assert "nothing was committed" in str(e.value)
    assert run(s, "SELECT count(*) FROM t") == [[0]]  # reads keep working, nothing visible
    ops.disk_full = False  # space is back
    run(
        s,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<2000) "
        "INSERT INTO t SELECT i, hex(randomblob(50)) FROM c",
    )
    assert run(s, "SELECT count(*) FROM t") == [[2000]]
    s.close()
    engine.close()
    # and everything is in the WAL: replay onto the first state gives the same
    engine = open_engine(tmp_path / "d")
    s = SqlSession(engine, "rustydb", 2)
    assert run(s, "SELECT count(*) FROM t") == [[2000]]
    s.close()
    engine.close()


def test_failed_fsync_is_fatal_never_retried(tmp_path):
    ops = FaultyOps()
    stopped = []

    class Observer(EngineObserver):
        def wal_failed(self, reason):
            stopped.append(reason)

    engine = open_engine(tmp_path / "d", ops, Observer())
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(x)")
    run(s, "INSERT INTO t VALUES (1)")
    ops.fail_fdatasync = True
    with pytest.raises(FatalWalError):
        run(s, "INSERT INTO t VALUES (2)")
    assert stopped and engine.fatal_error
    ops.fail_fdatasync = False  # even if the disk "works" again, the WAL is not trusted
    with pytest.raises((FatalWalError, EngineError)):
        run(s, "INSERT INTO t VALUES (3)")
    s.conn.close()  # the process would die here; nothing is cleaned up
    s.conn = None
    engine.close(clean=False)
    engine = open_engine(tmp_path / "d")
    s = SqlSession(engine, "rustydb", 2)
    values = [r[0] for r in run(s, "SELECT x FROM t ORDER BY x")]
    assert values in ([1], [1, 2])  # unacknowledged: wholly present or absent, never 3
    s.close()
    engine.close()


expected_nopk: list = []


def _engine_with_unapplied_wal(tmp_path):
    """A data directory whose databases are older than its WAL, so recovery must replay."""
    path = tmp_path / "d"
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    s.close()
    engine.checkpoint()
    saved = tmp_path / "saved"
    shutil.copytree(path / "databases", saved)
    s = SqlSession(engine, "rustydb", 2)
    for i in range(300):
        run(s, f"INSERT INTO t(v) VALUES ('{'x' * 200}{i}')")
    run(s, "UPDATE t SET v = 'changed' WHERE id % 3 = 0")
    run(s, "ALTER TABLE t ADD COLUMN extra INTEGER DEFAULT 7")
    run(s, "DELETE FROM t WHERE id > 290")
    # a table without a primary key is captured by rowid, and VACUUM renumbers
    # those rowids: replay must renumber them the same way
    run(s, "CREATE TABLE nopk(a, b)")
    run(
        s,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<50) "
        "INSERT INTO nopk SELECT i, i * 2 FROM c",
    )
    run(s, "DELETE FROM nopk WHERE a % 2 = 0")
    run(s, "VACUUM")
    run(s, "UPDATE nopk SET b = -1 WHERE rowid <= 5")
    nopk = run(s, "SELECT rowid, a, b FROM nopk ORDER BY rowid")
    assert nopk[0] == [1, 1, -1]  # renumbered by VACUUM
    expected = run(s, "SELECT * FROM t ORDER BY id")
    expected_nopk.clear()
    expected_nopk.extend(nopk)
    s.close()
    engine.close(clean=False)
    shutil.rmtree(path / "databases")
    shutil.copytree(saved, path / "databases")
    return path, expected


def test_recovery_replays_changesets_and_ddl_in_order(tmp_path):
    path, expected = _engine_with_unapplied_wal(tmp_path)
    engine = open_engine(path)
    assert engine.recovery_stats["replayed_records"] >= 303
    s = SqlSession(engine, "rustydb", 3)
    assert run(s, "SELECT * FROM t ORDER BY id") == expected
    assert run(s, "SELECT rowid, a, b FROM nopk ORDER BY rowid") == expected_nopk
    s.close()
    engine.close()


def test_corrupt_record_before_the_tail_stops_recovery_naming_segment(tmp_path):
    path, _ = _engine_with_unapplied_wal(tmp_path)
    segs = walseg.list_segments(str(path / "wal"))
    assert len(segs) >= 2
    _, _, name = segs[0]  # records after the redo point, with valid ones after them
    seg_path = path / "wal" / name
    data = bytearray(seg_path.read_bytes())
    data[20_000] ^= 0x55
    seg_path.write_bytes(bytes(data))
    with pytest.raises(walseg.WalCorruptError) as e:
        open_engine(path)
    assert name in str(e.value)


def test_torn_tail_is_truncated_and_earlier_records_kept(tmp_path):
    path, expected = _engine_with_unapplied_wal(tmp_path)
    segs = walseg.list_segments(str(path / "wal"))
    _, segno, name = segs[-1]
    seg_path = path / "wal" / name
    data = bytearray(seg_path.read_bytes())
    # find the end of written data and cut the last few bytes of the last record
    end = len(data.rstrip(b"\0"))
    for i in range(end - 6, end):
        data[i] = 0
    seg_path.write_bytes(bytes(data))
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 3)
    # the last record (the UPDATE of nopk) was torn away; everything before it is there
    assert run(s, "SELECT * FROM t ORDER BY id") == expected
    assert run(s, "SELECT count(*) FROM nopk WHERE b = -1") == [[0]]
    assert run(s, "SELECT count(*) FROM nopk") == [[25]]
    run(s, "INSERT INTO t(v) VALUES ('after recovery')")  # the WAL accepts new records
    s.close()
    engine.close()
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 4)
    assert run(s, "SELECT count(*) FROM t") == [[291]]
    s.close()
    engine.close()


def test_engine_error_names_missing_database_file(tmp_path):
    path, _ = _engine_with_unapplied_wal(tmp_path)
    os.unlink(path / "databases" / "rustydb.sqlite")
    with pytest.raises(instance.EngineError) as e:
        open_engine(path)
    assert "rustydb" in str(e.value) and "missing" in str(e.value)


def test_autoincrement_counters_survive_replay(tmp_path):
    path = tmp_path / "d"
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    s.close()
    engine.checkpoint()
    saved = tmp_path / "saved"
    shutil.copytree(path / "databases", saved)
    s = SqlSession(engine, "rustydb", 2)
    run(s, "INSERT INTO a(v) VALUES ('x'), ('y'), ('z')")
    run(s, "DELETE FROM a WHERE id > 1")  # ids 2 and 3 are used up for good
    s.close()
    engine.close(clean=False)
    shutil.rmtree(path / "databases")
    shutil.copytree(saved, path / "databases")
    engine = open_engine(path)  # replays the WAL onto the old files
    s = SqlSession(engine, "rustydb", 3)
    run(s, "INSERT INTO a(v) VALUES ('new')")
    assert run(s, "SELECT id FROM a ORDER BY id") == [[1], [4]]
    s.close()
    engine.close()
