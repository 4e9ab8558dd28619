"""archive_extra_dests, in-process: every segment goes to archive_dest and to each
extra destination; ``.done`` only once all hold it; a destination that is down
delays only its own copies and catches up without the others writing again."""

from __future__ import annotations

import os

import trio

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file
from rustydb_server.archive.archiver import Archiver
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.engine_events import EngineEvents
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.settings import Settings
from rustydb_server.wal import archive_status


async def inline(fn, *args):
    return fn(*args)


def setup(tmp_path, dest, extras):
    overrides = {
        "wal_segment_size": 65536,
        "archive_mode": True,
        "archive_dest": dest,
        "archive_extra_dests": extras,
        "archive_timeout": 3600,
    }
    settings = Settings.load(None, str(tmp_path / "data"), overrides)
    doorbell = Doorbell()
    events = EngineEvents(trio.lowlevel.current_trio_token(), Lifecycle(), Doorbell(), doorbell)
    engine = Engine.open(dd.DataDir(str(tmp_path / "data")), settings, observer=events)
    return engine, Archiver(engine, settings, doorbell, run_sync=inline)


def archived(directory) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if n.endswith(segment_file.ARCHIVE_SUFFIX))


def marks(engine) -> list[str]:
    return sorted(n for n in os.listdir(engine.archive_status_dir) if not n.endswith(archive_status.READY))


async def test_a_segment_is_done_only_once_every_destination_holds_it(tmp_path):
    first, second = tmp_path / "a1", tmp_path / "a2"
    first.mkdir(mode=0o700)
    second.mkdir(mode=0o700)
    engine, archiver = setup(tmp_path, str(first), [str(second)])
    assert archiver.destinations() == [str(first), str(second)]
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    await archiver._archive_waiting()
    assert archived(first) == archived(second) == [segment_file.archive_name(name)]
    assert marks(engine) == [name + archive_status.DONE]  # the per-destination marks are gone
    report = archiver.report()
    assert report["last_archived_segment"] == name and report["failures_in_a_row"] == 0
    assert [d["dest"] for d in report["destinations"]] == [str(first), str(second)]
    assert all(d["segments_waiting"] == 0 and d["last_archived_segment"] == name for d in report["destinations"])
    engine.close()


async def test_a_destination_that_is_down_delays_only_its_own_copies_and_catches_up(tmp_path):
    first, second = tmp_path / "a1", tmp_path / "offsite"
    first.mkdir(mode=0o700)
    engine, archiver = setup(tmp_path, str(first), [str(second)])  # the second is not mounted yet
    engine.switch_wal()
    engine.switch_wal()
    names = archive_status.waiting(engine.archive_status_dir)
    assert len(names) == 2
    await archiver._archive_waiting()

    # The first destination has both; neither segment is archived yet, so the WAL keeps them.
    assert archived(first) == [segment_file.archive_name(n) for n in names]
    assert archive_status.waiting(engine.archive_status_dir) == names
    status = archiver.report()
    one, two = status["destinations"]
    assert (one["segments_waiting"], one["failures_in_a_row"], one["last_archived_segment"]) == (0, 0, names[-1])
    assert (two["segments_waiting"], two["failures_in_a_row"], two["last_failed_segment"]) == (2, 1, names[0])
    assert str(second) in two["last_failure_reason"]
    assert str(second) in archiver.failing()
    assert status["last_archived_segment"] is None

    # A third segment while the second destination backs off: the first gets it at once.
    engine.switch_wal()
    names = archive_status.waiting(engine.archive_status_dir)
    before = {n: os.stat(first / n).st_ino for n in archived(first)}
    await archiver._archive_waiting()
    assert archived(first) == [segment_file.archive_name(n) for n in names]
    assert archived(second) == []

    second.mkdir(mode=0o700)  # back
    archiver.retry_now()
    await archiver._archive_waiting()
    assert archived(second) == [segment_file.archive_name(n) for n in names]
    assert archive_status.waiting(engine.archive_status_dir) == []
    assert all(archive_status.is_archived(engine.archive_status_dir, n) for n in names)
    assert marks(engine) == sorted(n + archive_status.DONE for n in names)
    assert {n: os.stat(first / n).st_ino for n in before} == before  # not written again
    assert archiver.failing() is None
    assert archiver.report()["archived_since_start"] == 3
    engine.close()


async def test_a_destination_taken_off_the_list_no_longer_holds_segments_back(tmp_path):
    first, second = tmp_path / "a1", tmp_path / "a2"
    first.mkdir(mode=0o700)
    second.mkdir(mode=0o700)
    gone = str(tmp_path / "never-mounted")
    engine, archiver = setup(tmp_path, str(first), [str(second), gone])
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    await archiver._archive_waiting()
    assert archive_status.waiting(engine.archive_status_dir) == [name]  # held back by the missing one

    # ALTER SYSTEM SET archive_extra_dests = '<second>': the two that hold it are all there is.
    settings = Settings.load(
        None,
        str(tmp_path / "data"),
        {
            "wal_segment_size": 65536,
            "archive_mode": True,
            "archive_dest": str(first),
            "archive_extra_dests": [str(second)],
        },
    )
    archiver = Archiver(engine, settings, Doorbell(), run_sync=inline)
    await archiver._archive_waiting()
    assert archive_status.is_archived(engine.archive_status_dir, name)
    assert marks(engine) == [name + archive_status.DONE]
    engine.close()


def test_archive_extra_dests_setting():
    import pytest

    from rustydb_server.settings import SettingError, parse_value

    assert parse_value("archive_extra_dests", "/mnt/a, s3://b/p") == ["/mnt/a", "s3://b/p"]  # ALTER SYSTEM SET
    assert parse_value("archive_extra_dests", "") == []
    for bad, why in (
        ("archive", "absolute path"),
        ("s3://", "names no bucket"),
        ("gs://b", "a directory or an s3://bucket/prefix URL"),
    ):
        with pytest.raises(SettingError, match=why):
            parse_value("archive_extra_dests", bad)
