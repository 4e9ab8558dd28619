"""Noticing an engine that cannot commit: its locks held or waited for too long.

A request that took a commit lock twice once hung every commit while health
said "healthy". Now a lock held, or waited for, longer than
engine_stall_timeout makes Engine.stall() say which and why, and health
unhealthy; long work that is still working (VACUUM) is not a stall.
"""

from __future__ import annotations

import threading

from rustydb_server import datadir as dd
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.lockwatch import WatchedLock
from rustydb_server.health import health_report
from rustydb_server.lifecycle import RUNNING, Lifecycle
from rustydb_server.settings import Settings
from tests.support.backups import run_sql


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def open_engine(path, clock, timeout=60):
    settings = Settings.load(None, path, {"wal_segment_size": 65536, "engine_stall_timeout": timeout})
    return Engine.open(dd.DataDir(path), settings, clock=clock), settings


def hold_in_thread(lock, purpose="a test thread"):
    """Hold ``lock`` in another thread until the returned event is set."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with lock.held(purpose):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(10)
    return release, thread


def test_a_commit_lock_held_too_long_is_a_stall_and_health_says_so(tmp_path):
    clock = FakeClock()
    engine, settings = open_engine(str(tmp_path / "data"), clock)
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY)")
        handle = engine.get_database("rustydb")
        release, holder = hold_in_thread(handle.commit_lock)
        # a commit comes in and waits behind the holder
        committed = threading.Event()

        def commit():
            run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")
            committed.set()

        committer = threading.Thread(target=commit, daemon=True)
        committer.start()
        clock.now += 60
        assert engine.stall() is None  # not longer than the bound yet
        lifecycle = Lifecycle()
        lifecycle.phase = RUNNING
        assert health_report(settings, lifecycle, engine)["status"] == "healthy"
        clock.now += 1
        reason = engine.stall()
        assert reason == 'the commit lock of database "rustydb" has been held by a test thread for 61 s'
        report = health_report(settings, lifecycle, engine)
        assert report["status"] == "unhealthy" and report["error"] == reason
        assert not committed.is_set()
        release.set()
        holder.join(10)
        assert committed.wait(10)  # the waiting commit goes on
        assert engine.stall() is None
        assert health_report(settings, lifecycle, engine)["status"] == "healthy"
        assert run_sql(engine, "rustydb", "SELECT count(*) FROM t") == [[1]]
    finally:
        engine.close()


def test_zero_disables_the_check(tmp_path):
    clock = FakeClock()
    engine, _ = open_engine(str(tmp_path / "data"), clock, timeout=0)
    try:
        release, holder = hold_in_thread(engine.get_database("rustydb").commit_lock)
        clock.now += 10_000
        assert engine.stall() is None
        release.set()
        holder.join(10)
    finally:
        engine.close()


def test_the_checkpoint_lock_held_too_long_is_a_stall(tmp_path):
    clock = FakeClock()
    engine, _ = open_engine(str(tmp_path / "data"), clock)
    try:
        release, holder = hold_in_thread(engine._checkpoint_lock, "a checkpoint")
        clock.now += 120
        assert engine.stall() == "the checkpoint lock has been held by a checkpoint for 120 s"
        release.set()
        holder.join(10)
        assert engine.stall() is None
    finally:
        engine.close()


def test_a_wait_longer_than_the_bound_is_a_stall():
    clock = FakeClock()
    lock = WatchedLock("the lock", "a caller", clock)
    release, holder = hold_in_thread(lock, "a first holder")

    def wait():
        lock.acquire("a commit")
        lock.release()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    while not lock._waiters:
        threading.Event().wait(0.001)
    clock.now += 61
    assert lock.stall(60) == "the lock has been held by a first holder for 61 s"
    # as if the lock had just passed to another holder, the waiter left behind
    lock._holder.since = clock.now
    assert lock.stall(60) == "a commit has waited 61 s for the lock"
    release.set()
    holder.join(10)
    waiter.join(10)
    assert lock.stall(60) is None


def test_long_work_that_says_so_is_no_stall_nor_are_the_waits_behind_it():
    clock = FakeClock()
    lock = WatchedLock("the commit lock", "a commit", clock)
    holding, release = threading.Event(), threading.Event()

    def vacuum():
        with lock.held("VACUUM", bounded=False):
            holding.set()
            release.wait(30)

    long_work = threading.Thread(target=vacuum, daemon=True)
    long_work.start()
    assert holding.wait(10)
    got_it, let_go = threading.Event(), threading.Event()

    def commit():
        with lock.held("a commit"):
            got_it.set()
            let_go.wait(30)

    committer = threading.Thread(target=commit, daemon=True)
    committer.start()
    while not lock._waiters:
        threading.Event().wait(0.001)
    clock.now += 3600
    assert lock.stall(60) is None
    release.set()
    assert got_it.wait(10)
    # the commit's own hold counts from when it got the lock
    assert lock.stall(60) is None
    clock.now += 61
    assert lock.stall(60) == "the commit lock has been held by a commit for 61 s"
    let_go.set()
    committer.join(10)
    long_work.join(10)
