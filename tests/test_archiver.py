"""The archiver in-process, on trio's mock clock: wake-ups, retry with backoff, archive_mode off."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from rustydb_server import datadir as dd
from rustydb_server import settings as settings_mod
from rustydb_server.archive import segment_file
from rustydb_server.archive.archiver import Archiver, backoff_seconds
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.engine_events import EngineEvents
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.settings import Settings
from rustydb_server.wal import archive_status


async def inline(fn, *args):
    """Archiving runs on the trio thread here, so the clock never jumps during a copy."""
    return fn(*args)


@pytest.fixture
def clock(autojump_clock):
    return autojump_clock


def open_engine(path: str, archive_dest: str, archive_mode: bool, doorbell: Doorbell):
    overrides = {"wal_segment_size": 65536, "archive_dest": archive_dest, "archive_timeout": 3600}
    if archive_mode:
        overrides["archive_mode"] = True  # else the default, which ALTER SYSTEM can change
    settings = Settings.load(None, path, overrides)
    events = EngineEvents(trio.lowlevel.current_trio_token(), Lifecycle(), Doorbell(), doorbell)
    return Engine.open(dd.DataDir(path), settings, observer=events), settings


def archived(dest: str) -> list[str]:
    return sorted(os.listdir(dest)) if os.path.isdir(dest) else []


def test_backoff_grows_to_a_minute():
    assert [backoff_seconds(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


async def test_a_failing_destination_is_retried_with_growing_delay(tmp_path, nursery, clock):
    dest = str(tmp_path / "archive")  # missing until the end
    doorbell = Doorbell()
    engine, settings = open_engine(str(tmp_path / "data"), dest, True, doorbell)
    archiver = Archiver(engine, settings, doorbell, run_sync=inline)
    await nursery.start(archiver.run)
    engine.switch_wal()  # the engine marks the segment ready and rings the doorbell
    (waiting,) = archive_status.waiting(engine.archive_status_dir)

    # Tries at 0, then 1, 2, 4 and 8 seconds after each failure: 1, 3, 7, 15.
    start = trio.current_time()
    for at, failures in [(0.5, 1), (1.5, 2), (2.5, 2), (3.5, 3), (6.5, 3), (7.5, 4), (14.5, 4), (15.5, 5)]:
        await trio.sleep_until(start + at)
        assert (at, archiver.progress.failures_in_a_row) == (at, failures)
    assert archiver.report()["last_failed_segment"] == waiting
    assert "does not exist" in archiver.report()["last_failure_reason"]

    os.mkdir(dest)
    await trio.sleep(backoff_seconds(5) + 1)
    assert archived(dest) == [segment_file.archive_name(waiting)]
    assert archive_status.waiting(engine.archive_status_dir) == []
    assert archiver.report()["failures_in_a_row"] == 0
    engine.close()


async def test_a_settings_change_retries_at_once(tmp_path, nursery, clock):
    dest = str(tmp_path / "archive")
    doorbell = Doorbell()
    engine, settings = open_engine(str(tmp_path / "data"), dest, True, doorbell)
    archiver = Archiver(engine, settings, doorbell, run_sync=inline)
    await nursery.start(archiver.run)
    engine.switch_wal()
    await trio.sleep(7.5)
    assert archiver.progress.failures_in_a_row == 4  # the next try is 8 s away
    os.mkdir(dest)
    archiver.settings_changed()
    await trio.sleep(0.5)
    assert len(archived(dest)) == 1
    engine.close()


async def test_sleeps_while_archive_mode_is_off(tmp_path, nursery, clock):
    dest = tmp_path / "archive"
    dest.mkdir()
    doorbell = Doorbell()
    data = str(tmp_path / "data")
    engine, settings = open_engine(data, str(dest), False, doorbell)
    archiver = Archiver(engine, settings, doorbell, run_sync=inline)
    await nursery.start(archiver.run)
    for _ in range(3):
        engine.switch_wal()  # rings the doorbell each time
        await trio.sleep(600)
    assert archived(str(dest)) == []
    assert archiver.progress.failures_in_a_row == 0
    assert len(archive_status.waiting(engine.archive_status_dir)) == 3

    # ALTER SYSTEM SET archive_mode = on: saved, reloaded, the archiver told.
    settings_mod.set_auto(data, "archive_mode", "on")
    settings.reload()
    archiver.settings_changed()
    await trio.sleep(0.5)
    assert len(archived(str(dest))) == 3
    assert archive_status.waiting(engine.archive_status_dir) == []
    engine.close()


async def test_archive_timeout_switches_a_segment_that_holds_commits(tmp_path, nursery, clock):
    dest = tmp_path / "archive"
    dest.mkdir()
    doorbell = Doorbell()
    engine, settings = open_engine(str(tmp_path / "data"), str(dest), True, doorbell)
    archiver = Archiver(engine, settings, doorbell, run_sync=inline)
    await nursery.start(archiver.run)
    await trio.sleep(1)
    assert archived(str(dest)) == []
    # The segment holds a record; backdate when it got it, as if an hour had passed.
    engine.create_restore_point("before")
    engine._dirty_since -= 3600
    doorbell.ring()
    await trio.sleep(1)
    assert len(archived(str(dest))) == 1
    engine.close()
