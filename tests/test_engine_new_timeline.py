"""A restored data directory's first start: a new timeline, above every one
the WAL archive has seen (the archive's listing is handed to the engine)."""

from __future__ import annotations

import os

from rustydb_server import datadir as dd
from rustydb_server.engine.instance import Engine
from rustydb_server.settings import Settings
from rustydb_server.wal import segment as walseg
from rustydb_server.wal import timeline as waltl


def restored(tmp_path) -> tuple[dd.DataDir, Settings]:
    """A data directory as a restore leaves it: state "restored", no WAL of its timeline."""
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20})
    Engine.open(dd.DataDir(path), settings).close()
    ddir = dd.DataDir(path)
    control = ddir.read_control()
    control.state = "restored"
    ddir.write_control(control)
    for _, _, name in walseg.list_segments(ddir.wal_dir):
        os.unlink(os.path.join(ddir.wal_dir, name))
    return ddir, settings


def test_the_new_timeline_is_above_every_archived_one(tmp_path):
    ddir, settings = restored(tmp_path)
    engine = Engine.open(ddir, settings, archived_timelines=lambda: {1, 2, 4})
    try:
        assert engine.control.timeline == 5
        assert [s.timeline for s in waltl.read_history(ddir.wal_dir, 5)] == [1]
    finally:
        engine.close()


def test_without_an_archive_the_next_timeline_is_taken(tmp_path):
    ddir, settings = restored(tmp_path)
    engine = Engine.open(ddir, settings)
    try:
        assert engine.control.timeline == 2
    finally:
        engine.close()


def test_an_archive_that_cannot_be_listed_does_not_stop_the_start(tmp_path):
    ddir, settings = restored(tmp_path)

    def unreadable():
        raise PermissionError(13, "Permission denied", "/archive")

    engine = Engine.open(ddir, settings, archived_timelines=unreadable)
    try:
        assert engine.control.timeline == 2
    finally:
        engine.close()


def test_the_archive_is_not_listed_once_the_timeline_has_wal(tmp_path):
    ddir, settings = restored(tmp_path)
    Engine.open(ddir, settings).close()

    def must_not_list():
        raise AssertionError("listed the archive on an ordinary start")

    engine = Engine.open(ddir, settings, archived_timelines=must_not_list)
    try:
        assert engine.control.timeline == 2
    finally:
        engine.close()
