"""In-process: the engine after a commit's WAL record is durable and SQLite fails.

The transaction is committed once its record is durable. The engine applies
it from the WAL and answers committed, or says ``committed_not_applied``;
checkpoints and clean stops keep replaying it until it is applied; a backup
snapshot never misses it; VACUUM gets the same treatment.
"""

from __future__ import annotations

import apsw
import pytest

from rustydb_server import datadir as dd
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.engine.instance import Engine, EngineError
from rustydb_server.engine.sqlite_steps import SqliteSteps
from rustydb_server.settings import Settings
from tests.support.backups import run_sql


class Faults(SqliteSteps):
    def __init__(self):
        self.on: set[str] = set()

    def commit(self, conn, lsn, txid, commit_time_us):
        if "commit" in self.on:
            raise apsw.FullError("database or disk is full (injected)")
        super().commit(conn, lsn, txid, commit_time_us)

    def vacuum(self, conn, lsn, txid, commit_time_us):
        if "vacuum" in self.on:
            raise apsw.IOError("disk I/O error (injected)")
        super().vacuum(conn, lsn, txid, commit_time_us)

    def apply(self, conn, lsn, record):
        if "apply" in self.on:
            raise apsw.FullError("database or disk is full (injected)")
        super().apply(conn, lsn, record)


def open_engine(path):
    engine = Engine.open(dd.DataDir(path), Settings.load(None, path, {"wal_segment_size": 65536}))
    engine.sqlite_steps = Faults()
    return engine


def count(engine):
    return run_sql(engine, "rustydb", "SELECT count(*) FROM t")[0][0]


def test_applied_from_the_wal_at_once_the_commit_is_answered_committed(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(v)")
        engine.sqlite_steps.on = {"commit"}
        run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")  # no error: it is committed and applied
        assert count(engine) == 1 and engine.pending_databases() == []
    finally:
        engine.close()


def test_not_applicable_yet_it_is_reported_committed_kept_through_checkpoints_and_stops(tmp_path):
    path = str(tmp_path / "data")
    engine = open_engine(path)
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(v)")
        engine.sqlite_steps.on = {"commit", "apply"}
        with pytest.raises(EngineError) as info:
            run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")
        assert info.value.code == "committed_not_applied"
        assert str(info.value).startswith("transaction ") and " IS committed" in str(info.value)
        assert engine.pending_databases() == ["rustydb"]
        pending_lsn = engine.get_database("rustydb").pending[0][0]
        assert count(engine) == 0  # reads go on, without it for now
        with pytest.raises(EngineError) as refused:
            run_sql(engine, "rustydb", "INSERT INTO t VALUES (2)")
        assert refused.value.code == "catching_up"
        # a backup would miss it: refused until it is applied
        with pytest.raises(EngineError) as backup:
            Snapshot(engine, ["rustydb"], scratch_dir=str(tmp_path / "scratch")).close()
        assert backup.value.code == "catching_up"
        # a checkpoint keeps recovery's start at its record
        assert engine.checkpoint("requested")["complete"]
        assert engine.control.redo_lsn <= pending_lsn
    finally:
        engine.close()  # its shutdown checkpoint too
    engine = open_engine(path)
    try:
        assert count(engine) == 1  # replayed, once
    finally:
        engine.close()


def test_a_checkpoint_applies_what_is_pending_once_it_can(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(v)")
        engine.sqlite_steps.on = {"commit", "apply"}
        with pytest.raises(EngineError):
            run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")
        engine.sqlite_steps.on = set()
        engine.checkpoint("time", skip_if_idle=True)
        assert engine.pending_databases() == [] and count(engine) == 1
    finally:
        engine.close()


def test_a_vacuum_that_fails_after_it_was_logged_is_applied_from_the_wal(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(v)")
        run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")
        engine.sqlite_steps.on = {"vacuum"}
        run_sql(engine, "rustydb", "VACUUM")  # committed: logged, then applied from the WAL
        assert engine.pending_databases() == [] and count(engine) == 1
    finally:
        engine.close()
