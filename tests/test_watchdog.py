"""The systemd watchdog component on trio's mock clock."""

from __future__ import annotations

import threading

import trio

from rustydb_server import datadir as dd
from rustydb_server.engine.instance import Engine
from rustydb_server.settings import Settings
from rustydb_server.watchdog import Watchdog
from tests.support.backups import run_sql


class Notifier:
    def __init__(self, interval):
        self.interval = interval
        self.pings: list[float] = []
        self.statuses: list[str] = []

    def watchdog_interval(self):
        return self.interval

    def watchdog(self):
        self.pings.append(trio.current_time())

    def status(self, text):
        self.statuses.append(text)


async def test_pings_every_interval(nursery, autojump_clock):
    notifier = Notifier(10.0)
    await nursery.start(Watchdog(notifier).run)
    await trio.sleep(35)
    assert notifier.pings == [0.0, 10.0, 20.0, 30.0]


async def test_without_a_watchdog_it_ends_at_once(autojump_clock):
    notifier = Notifier(None)
    async with trio.open_nursery() as nursery:
        await nursery.start(Watchdog(notifier).run)
    assert notifier.pings == []


async def test_no_pings_while_the_engine_is_stalled(nursery, autojump_clock):
    notifier = Notifier(10.0)
    stalled = {"reason": None}
    await nursery.start(Watchdog(notifier, lambda: stalled["reason"]).run)
    await trio.sleep(15)
    stalled["reason"] = "the commit lock of database rustydb has been held by a commit for 61 s"
    await trio.sleep(30)
    assert notifier.pings == [0.0, 10.0]  # none at 20, 30, 40: systemd's WatchdogSec restarts it
    assert notifier.statuses == ["stalled: " + stalled["reason"]]
    stalled["reason"] = None
    await trio.sleep(20)
    assert notifier.pings == [0.0, 10.0, 50.0, 60.0]
    assert notifier.statuses[-1] == "ready"


async def test_a_real_engine_whose_commit_lock_a_thread_holds_stops_the_pings(nursery, autojump_clock, tmp_path):
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 65536, "engine_stall_timeout": 60})
    engine = Engine.open(dd.DataDir(path), settings, clock=autojump_clock.current_time)
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY)")
        notifier = Notifier(10.0)
        await nursery.start(Watchdog(notifier, engine.stall).run)
        handle = engine.get_database("rustydb")
        holding, release = threading.Event(), threading.Event()

        def hold():
            with handle.commit_lock.held("a test thread"):
                holding.set()
                release.wait(30)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        await trio.to_thread.run_sync(holding.wait, 10)
        held_since = handle.commit_lock._holder.since
        await trio.sleep(100)
        # pinged while held up to the bound, then never again while held
        assert notifier.pings and all(p <= held_since + 60 for p in notifier.pings)
        assert notifier.pings[-1] >= held_since + 50
        assert "held by a test thread" in notifier.statuses[0]
        release.set()
        await trio.to_thread.run_sync(holder.join, 10)
        before = len(notifier.pings)
        await trio.sleep(20)
        assert len(notifier.pings) > before  # the engine goes on: pings again
        run_sql(engine, "rustydb", "INSERT INTO t VALUES (1)")  # and commits
    finally:
        engine.close()
