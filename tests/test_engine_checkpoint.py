"""Engine.checkpoint: a timed checkpoint on an idle server logs nothing."""

from __future__ import annotations

from rustydb_server import datadir as dd
from tests.support.backups import open_engine, run_sql


def test_a_checkpoint_with_nothing_logged_since_the_last_is_skipped_when_asked(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        run_sql(engine, dd.DEFAULT_DATABASE, "CREATE TABLE t(a)")
        assert engine.checkpoint("time", skip_if_idle=True)["complete"]
        end = engine.wal.end_lsn
        assert engine.checkpoint("time", skip_if_idle=True) == {"complete": True, "skipped": True, "reason": "time"}
        assert engine.wal.end_lsn == end  # no checkpoint record: the archiver has nothing new to switch out
        # CHECKPOINT and the shutdown checkpoint always run
        assert "skipped" not in engine.checkpoint("requested")
        assert engine.wal.end_lsn > end
        end = engine.wal.end_lsn
        run_sql(engine, dd.DEFAULT_DATABASE, "INSERT INTO t VALUES (1)")
        assert "skipped" not in engine.checkpoint("time", skip_if_idle=True)  # a write came in
        assert engine.wal.end_lsn > end
    finally:
        engine.close()
