"""The engine on a full disk, in-process, through a FileOps whose new files cannot grow.

A full disk fails writes that need new blocks: a new WAL segment, the control
file's (or a history file's) temporary copy. Each test fills the disk where it
wants the failure and checks that the client would get a clean disk_full, that
nothing refused is visible or durable, and that freeing space is enough.
"""

from __future__ import annotations

import errno
import os

import apsw
import pytest
import trio
import trio.testing

from rustydb_server import datadir as dd
from rustydb_server.checkpointer import RETRY_READ_ONLY_S, Checkpointer
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine import database
from rustydb_server.engine.instance import Engine, EngineError
from rustydb_server.engine.session import SqlSession
from rustydb_server.fileops import FileOps
from rustydb_server.health import health_report
from rustydb_server.lifecycle import RUNNING, Lifecycle
from rustydb_server.settings import Settings
from rustydb_server.wal import segment as walseg
from rustydb_server.wal import timeline as waltl
from tests.test_engine_faults import run

SEGMENT = 64 * 1024


class FullDisk(FileOps):
    """Writes to files opened with O_CREAT fail with ENOSPC while ``full``."""

    def __init__(self):
        self.full = False
        self._created: set[int] = set()

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        if flags & os.O_CREAT:
            self._created.add(fd)
        return fd

    def close(self, fd):
        self._created.discard(fd)
        super().close(fd)

    def write(self, fd, data):
        if self.full and fd in self._created:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)


def settings_for(path) -> Settings:
    return Settings.load(None, str(path), {"wal_segment_size": SEGMENT})


def open_engine(path, ops=None) -> Engine:
    return Engine.open(dd.DataDir(str(path), ops or FileOps()), settings_for(path), ops or FileOps())


def crashed_with_rows(path) -> None:
    """A data directory whose server stopped uncleanly after committing two rows."""
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    run(s, "INSERT INTO t VALUES (1), (2)")
    s.close()
    engine.close(clean=False)


def test_recovery_on_a_full_disk_opens_read_only_and_resumes_once_space_is_back(tmp_path):
    path = tmp_path / "d"
    crashed_with_rows(path)
    ops = FullDisk()
    ops.full = True
    engine = open_engine(path, ops)
    assert engine.read_only_reason and "No space left" in engine.read_only_reason
    assert dd.DataDir(str(path)).read_control().state == "running"  # the crashed run's, unchanged
    s = SqlSession(engine, "rustydb", 2)
    assert run(s, "SELECT id FROM t ORDER BY id") == [[1], [2]]  # reads are served
    for sql in ("INSERT INTO t VALUES (3)", "VACUUM"):
        with pytest.raises(EngineError) as e:
            run(s, sql)
        assert e.value.code == "disk_full" and "read-only" in str(e.value)
    run(s, "BEGIN")
    run(s, "INSERT INTO t VALUES (4)")
    with pytest.raises(EngineError) as e:
        run(s, "COMMIT")
    assert e.value.code == "disk_full"
    for action in (
        engine.checkpoint,
        engine.switch_wal,
        lambda: engine.create_database("other"),
        lambda: engine.create_restore_point("rp"),
    ):
        with pytest.raises(EngineError) as e:
            action()
        assert e.value.code == "disk_full"
    assert not engine.try_resume_writes()
    report = health_report(settings_for(path), _running(), engine)
    assert report["status"] == "degraded" and report["read_only"] is True
    assert "free disk space" in report["read_only_reason"]
    ops.full = False
    run(s, "INSERT INTO t VALUES (3)")  # the write itself makes the engine writable
    assert engine.read_only_reason is None
    assert health_report(settings_for(path), _running(), engine)["status"] == "healthy"
    assert run(s, "SELECT id FROM t ORDER BY id") == [[1], [2], [3]]
    s.close()
    engine.close()
    engine = open_engine(path)
    s = SqlSession(engine, "rustydb", 3)
    assert run(s, "SELECT id FROM t ORDER BY id") == [[1], [2], [3]]
    s.close()
    engine.close()


def _running() -> Lifecycle:
    lifecycle = Lifecycle()
    lifecycle.phase = RUNNING
    return lifecycle


def test_a_restored_directory_on_a_full_disk_branches_its_timeline_once_space_is_back(tmp_path):
    path = tmp_path / "d"
    crashed_with_rows(path)
    ddir = dd.DataDir(str(path))
    control = ddir.read_control()
    control.state = "restored"
    ddir.write_control(control)
    for _, _, name in walseg.list_segments(ddir.wal_dir):
        os.unlink(os.path.join(ddir.wal_dir, name))
    ops = FullDisk()
    ops.full = True
    engine = open_engine(path, ops)
    assert engine.read_only_reason
    assert engine.control.timeline == 1 and ddir.read_control().timeline == 1
    assert not engine.try_resume_writes()  # a retry on a disk still full changes nothing
    ops.full = False
    assert engine.try_resume_writes()
    assert engine.control.timeline == 2 == ddir.read_control().timeline
    assert waltl.list_history_timelines(ddir.wal_dir) == [2]  # one new timeline, not one per retry
    s = SqlSession(engine, "rustydb", 1)
    run(s, "INSERT INTO t VALUES (3)")
    s.close()
    engine.close()
    assert [tl for tl, _, _ in walseg.list_segments(ddir.wal_dir)] == [2]
    engine = open_engine(path)
    assert engine.control.timeline == 2
    s = SqlSession(engine, "rustydb", 2)
    assert run(s, "SELECT count(*) FROM t") == [[3]]
    s.close()
    engine.close()


def test_checkpoint_whose_control_file_cannot_be_written_is_disk_full_and_keeps_the_redo_point(tmp_path):
    path = tmp_path / "d"
    ops = FullDisk()
    engine = open_engine(path, ops)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    run(s, "INSERT INTO t VALUES (1)")
    redo = engine.control.redo_lsn
    ops.full = True
    with pytest.raises(EngineError) as e:
        engine.checkpoint()
    assert e.value.code == "disk_full" and "Free disk space" in str(e.value)
    assert engine.control.redo_lsn == redo == dd.DataDir(str(path)).read_control().redo_lsn
    assert engine.read_only_reason is None  # a running server keeps taking commits
    run(s, "INSERT INTO t VALUES (2)")
    ops.full = False
    assert engine.checkpoint()["complete"]
    assert engine.control.redo_lsn > redo
    s.close()
    engine.close()


def test_sqlite_full_during_a_checkpoint_is_disk_full(tmp_path, monkeypatch):
    engine = open_engine(tmp_path / "d")
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(v)")  # a frame to copy (an idle database's checkpoint copies nothing)

    def full(conn):
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(database, "checkpoint", full)
    with pytest.raises(EngineError) as e:
        engine.checkpoint()
    assert e.value.code == "disk_full"
    monkeypatch.undo()
    s.close()
    engine.close()


def test_switch_wal_and_create_database_on_a_full_disk_are_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "d"
    ops = FullDisk()
    engine = open_engine(path, ops)
    ops.full = True
    engine.switch_wal()  # its record fits in the current segment, which has room
    with pytest.raises(EngineError) as e:
        engine.switch_wal()  # its record needs a new segment
    assert e.value.code == "disk_full"

    def no_room(path, lsn):
        raise apsw.FullError("database or disk is full")

    ops.full = False
    monkeypatch.setattr(database, "create_database_file", no_room)
    with pytest.raises(EngineError) as e:
        engine.create_database("other")
    assert e.value.code == "disk_full" and "CREATE DATABASE other again" in str(e.value)
    monkeypatch.undo()
    assert engine.create_database("other")  # run again once there is room
    engine.close()
    engine = open_engine(path)
    assert "other" in engine.databases
    engine.close()


def test_clean_shutdown_on_a_full_disk_leaves_recovery_to_the_next_start(tmp_path):
    path = tmp_path / "d"
    ops = FullDisk()
    engine = open_engine(path, ops)
    ops.full = True
    engine.close()  # neither the checkpoint nor the control file can be written; no exception
    assert dd.DataDir(str(path)).read_control().state == "running"
    open_engine(path).close()


async def test_the_checkpointer_retries_a_read_only_engine_every_second(autojump_clock):
    class ReadOnlyEngine:
        read_only_reason = "could not write the data directory at startup: No space left on device"
        attempts = 0

        def wal_bytes_since_checkpoint(self):
            return 0

        def durable_first_databases(self):
            return []

        def try_resume_writes(self):
            self.attempts += 1
            if self.attempts == 3:
                self.read_only_reason = None
            return self.read_only_reason is None

    engine = ReadOnlyEngine()
    settings = {"checkpoint_timeout": 300, "checkpoint_wal_size": 1 << 30}

    async def inline(fn, *args):
        return fn(*args)

    async with trio.open_nursery() as nursery:
        await nursery.start(Checkpointer(engine, settings, Doorbell(), run_sync=inline).run)
        await trio.sleep(RETRY_READ_ONLY_S * 10)
        assert engine.attempts == 3  # writable after the third: no more attempts
        nursery.cancel_scope.cancel()


async def test_an_http_request_that_hits_a_full_disk_is_disk_full_not_internal_error():
    import json

    from starlette.requests import Request

    from rustydb_server import http_api

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/admin/backup",
        "headers": [],
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
    }
    resp = await http_api._server_error(Request(scope), OSError(errno.ENOSPC, "No space left on device"))
    assert resp.status_code == 507
    assert json.loads(resp.body)["error"] == "disk_full"
