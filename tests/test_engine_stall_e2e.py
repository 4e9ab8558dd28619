"""A stalled engine does not keep SIGTERM from stopping the server.

A commit that never returns holds its database's commit lock for good (a real
server whose SQLite commit step stalls, through the engine's seam:
tests/support/faulty_server.py); other commits wait behind it. SIGTERM must
still stop the server within its shutdown_timeout, abandoning that work:
the exit code says it was not a clean stop and the log says why. Nothing
acknowledged is lost: the stalled commit's WAL record is durable and the
next start replays it.
"""

from __future__ import annotations

import pathlib
import sys
import threading

from rustydb_client import client as rc
from rustydb_server.run import EXIT_ABANDONED, StopGuard
from tests.test_engine_stall import FakeClock, hold_in_thread, open_engine

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def test_sigterm_stops_a_server_whose_commit_lock_is_held_forever(server_factory, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text("shutdown_timeout = 2\nengine_stall_timeout = 1\n")
    srv = server_factory(
        command=[sys.executable, "-m", "tests.support.faulty_server"],
        env={"RUSTYDB_FAULT_DIR": str(faults), "PYTHONPATH": ROOT},
        extra_args=["--config", str(conf)],
    ).start()
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (1)")
    (faults / "commit-stall").touch()
    answers = {}

    def commit(n):
        try:
            with rc.connect(port=srv.port) as c:
                answers[n] = c.execute(f"INSERT INTO t VALUES ({n})").status
        except (rc.ClientError, OSError) as e:
            answers[n] = e

    stuck = [threading.Thread(target=commit, args=(n,), daemon=True) for n in (2, 3)]
    for t in stuck:
        t.start()
    while srv.health()["status"] == "healthy":  # the engine_stall_timeout of 1 s passes
        threading.Event().wait(0.1)
    assert "commit lock" in srv.health()["error"]
    code = srv.stop(timeout=60)
    assert code != 0
    log = srv.log()
    assert "Traceback" not in log
    for t in stuck:
        t.join(10)
    assert not any(isinstance(a, str) for a in answers.values()), answers  # neither was acknowledged
    (faults / "commit-stall").unlink()
    srv.start()
    with rc.connect(port=srv.port) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM t ORDER BY id").rows]
    # 1 was acknowledged; the stalled one's WAL record was durable, so it is committed;
    # the other waited for SQLite's write lock and committed nothing
    assert ids[0] == 1 and len(ids) == 2
    assert srv.stop() == 0
    assert "the stop cannot finish" in log and 'the commit lock of database \\"rustydb\\" has been held' in log


def test_the_stop_guard_ends_a_stop_held_up_by_a_lock_taken_before_it_began(tmp_path):
    clock = FakeClock()
    engine, _ = open_engine(str(tmp_path / "data"), clock)
    exits = []
    try:
        release, holder = hold_in_thread(engine.get_database("rustydb").commit_lock)
        clock.now += 1  # the stop begins after the commit took its lock
        guard = StopGuard(engine, after=0, exit=exits.append, poll=0.01)
        guard.start()
        clock.now += 30
        guard._thread.join(10)
        assert exits == [EXIT_ABANDONED]
        release.set()
        holder.join(10)
    finally:
        engine.close()


def test_the_stop_guard_lets_work_begun_during_the_stop_finish(tmp_path):
    clock = FakeClock()
    engine, _ = open_engine(str(tmp_path / "data"), clock)
    exits = []
    try:
        guard = StopGuard(engine, after=0, exit=exits.append, poll=0.01)
        guard.start()
        clock.now += 1  # a shutdown checkpoint takes the lock after the stop began
        release, holder = hold_in_thread(engine._checkpoint_lock, "a checkpoint")
        clock.now += 600
        guard._finished.wait(0.3)  # some rounds of the guard's look
        assert exits == [] and guard._thread.is_alive()
        release.set()
        holder.join(10)
        guard.done()
        guard._thread.join(10)
        assert exits == [] and not guard._thread.is_alive()
    finally:
        engine.close()
