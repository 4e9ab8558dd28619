"""Group commit end to end: SQLite commits before the WAL flush, nobody hears of it before.

A real server (tests/support/faulty_server.py) whose WAL fdatasync waits on a
fault file: a commit is then made in SQLite, its WAL record written and not
durable. Its client has no answer, and a reader whose snapshot holds the row
has none either. kill -9 there: recovery discards SQLite's -wal (no
checkpoint was running) and replays our WAL, so the database holds exactly
what the WAL holds, and no client was ever told of anything else.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import threading
import time

import apsw

from rustydb_client import client as rc

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def test_kill_9_between_the_sqlite_commit_and_the_wal_flush_tells_no_client_anything_recovery_lacks(
    server_factory, tmp_path
):
    faults = tmp_path / "faults"
    faults.mkdir()
    srv = server_factory(
        command=[sys.executable, "-m", "tests.support.faulty_server"],
        env={**os.environ, "RUSTYDB_FAULT_DIR": str(faults), "PYTHONPATH": ROOT},
    ).start()
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (1)")
    (faults / "flush-stall").touch()
    answers: dict[str, object] = {}

    def run(who, sql):
        try:
            with rc.connect(port=srv.port) as c:
                answers[who] = c.execute(sql)
        except (rc.ClientError, OSError) as e:
            answers[who] = e

    writer = threading.Thread(target=run, args=("writer", "INSERT INTO t VALUES (2)"), daemon=True)
    writer.start()
    deadline = time.monotonic() + 30
    while not (faults / "flush-stalled").exists():
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.02)
    # SQLite has committed row 2: a copy of the database with its -wal shows it.
    db = os.path.join(srv.data_dir, "databases", "rustydb.sqlite")
    copy = str(tmp_path / "copy.sqlite")
    for suffix in ("", "-wal"):
        shutil.copy(db + suffix, copy + suffix)
    assert apsw.Connection(copy).execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,)]

    reader = threading.Thread(target=run, args=("reader", "SELECT id FROM t ORDER BY id"), daemon=True)
    reader.start()
    reader.join(1.0)  # it waits for the flush: no answer while the flush cannot run
    assert answers == {}
    srv.kill()
    writer.join(10)
    reader.join(10)
    assert not any(isinstance(a, rc.Result) for a in answers.values()), answers
    assert set(answers) == {"writer", "reader"}

    (faults / "flush-stall").unlink()
    srv.start()
    log = srv.log()
    assert "sqlite_wals_discarded=1" in log or '"sqlite_wals_discarded": 1' in log, log
    with rc.connect(port=srv.port) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM t ORDER BY id").rows]
    # kill -9 keeps the page cache: the written WAL record survived and was
    # replayed; SQLite's own copy of the commit was thrown away with its -wal.
    assert ids == [1, 2]
    assert srv.stop() == 0
