"""What a client hears when SQLite fails after a commit's WAL record is durable.

The record is durable, so the transaction is committed: recovery replays it.
It used to be answered ``commit_failed`` ("not acknowledged ... do not retry
it blindly") although it was there, and stayed there across restarts; a
client that retried committed it twice. Now the record is applied from the
WAL at once and the commit answered as committed; if even that fails (a full
disk), the answer is ``committed_not_applied``, saying it IS committed. A real
server, whose SQLite steps fail through the engine's seam
(tests/support/faulty_server.py).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from rustydb_client import client as rc

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


@pytest.fixture
def faulty(server_factory, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    srv = server_factory(
        command=[sys.executable, "-m", "tests.support.faulty_server"],
        env={"RUSTYDB_FAULT_DIR": str(faults), "PYTHONPATH": ROOT},
    )
    srv.start()
    yield srv, faults
    srv.stop()


def ids(conn, table="t"):
    return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id").rows]


@pytest.mark.parametrize("fault", ["commit-once", "commit-after-once"])
def test_a_failed_sqlite_commit_is_applied_from_the_wal_and_answered_committed(faulty, fault):
    srv, faults = faulty
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        (faults / fault).touch()
        result = c.execute("INSERT INTO t VALUES (1, 'durable')")
        assert not (faults / fault).exists(), "the fault did not fire"
        assert result.status == "INSERT 1"  # the truth: it is committed, and visible
        assert ids(c) == [1]
        # a client retrying anyway cannot add it twice
        with pytest.raises(rc.ServerError) as retry:
            c.execute("INSERT INTO t VALUES (1, 'durable')")
        assert "UNIQUE constraint failed" in str(retry.value)
        c.execute("INSERT INTO t VALUES (2, 'after')")  # commits go on
        assert ids(c) == [1, 2]
    assert "SQLite failed after the WAL record was durable" in srv.log()
    assert srv.health()["status"] == "healthy"
    srv.kill()  # recovery replays the WAL: still once
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert ids(c) == [1, 2]


def test_a_commit_sqlite_cannot_apply_yet_is_reported_committed_and_is_there_once(faulty):
    srv, faults = faulty
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER, v TEXT)")  # no key: a second copy would show
        c.execute("INSERT INTO t VALUES (1, 'before')")
        (faults / "commit-full").touch()
        (faults / "apply-full").touch()
        with pytest.raises(rc.ServerError) as answer:
            c.execute("INSERT INTO t VALUES (2, 'durable')")
        err = answer.value
        assert err.code == "committed_not_applied" and not err.fatal
        assert "IS committed" in err.message and "Do not run it again" in err.message
        assert "the disk is full" in err.message and "free disk space" in err.message
        assert "Traceback" not in err.message
        # reads go on (without it, until it is applied); writes wait for it
        assert ids(c) == [1]
        with pytest.raises(rc.ServerError) as refused:
            c.execute("INSERT INTO t VALUES (3, 'refused')")
        assert refused.value.code == "catching_up" and "free disk space" in refused.value.message
        health = srv.health()
        assert health["status"] == "healthy" and health["catching_up"] == ["rustydb"]
    # a clean stop (its checkpoint) while it is still not applied must not lose it
    assert srv.stop() == 0
    (faults / "commit-full").unlink()
    (faults / "apply-full").unlink()
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert ids(c) == [1, 2]
        c.execute("INSERT INTO t VALUES (3, 'after')")
        assert ids(c) == [1, 2, 3]
    assert "catching_up" not in srv.health()


def test_a_pending_commit_is_applied_at_the_next_write_once_space_is_back(faulty):
    srv, faults = faulty
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER, v TEXT)")
        (faults / "commit-full").touch()
        (faults / "apply-full").touch()
        with pytest.raises(rc.ServerError) as answer:
            c.execute("INSERT INTO t VALUES (1, 'durable')")
        assert answer.value.code == "committed_not_applied"
        (faults / "commit-full").unlink()
        (faults / "apply-full").unlink()  # space is back
        c.execute("INSERT INTO t VALUES (2, 'after')")
        assert ids(c) == [1, 2]
    srv.kill()
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert ids(c) == [1, 2]
