"""The backup service in-process: backups it writes run in its nursery and stop with its scope."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from rustydb_server import datadir as dd
from rustydb_server.backup.catalog import Catalog
from rustydb_server.backup.request import BackupRequest
from rustydb_server.backup.service import BackupService, cancel_flag
from rustydb_server.container.file import PARTIAL_SUFFIX
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.fileops import FileOps
from rustydb_server.settings import Settings


def run_sql(engine: Engine, sql: str) -> None:
    from rustydb_client.sqlsplit import leading_keywords

    session = SqlSession(engine, "rustydb", 1)
    try:
        session.run(sql, leading_keywords(sql, 2), 1000)
    finally:
        session.close()


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def settings(data_dir):
    return Settings.load(None, data_dir, {"wal_segment_size": 1 << 20})


@pytest.fixture
def engine(data_dir, settings):
    engine = Engine.open(dd.DataDir(data_dir), settings)
    run_sql(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    yield engine
    engine.close()


def fill(engine: Engine, rows: int) -> None:
    run_sql(
        engine,
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c "
        f"WHERE i < {rows - 1}) INSERT INTO t SELECT i, hex(randomblob(400)) FROM c",
    )


def service_for(engine, settings, data_dir) -> BackupService:
    return BackupService(engine, settings, Catalog(data_dir), wal_switched=lambda: None)


async def wait_until_done(catalog: Catalog, backup_id: str) -> dict:
    with trio.fail_after(60):
        while (entry := catalog.get(backup_id))["status"] == "in_progress":
            await trio.sleep(0.01)
    return entry


async def test_a_backup_started_runs_to_completion(engine, settings, data_dir):
    fill(engine, 100)
    service = service_for(engine, settings, data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        entry = service.start_backup(BackupRequest())
        assert entry["status"] == "in_progress"
        done = await wait_until_done(service.catalog, entry["backup_id"])
        nursery.cancel_scope.cancel()
    assert done["status"] == "completed"
    assert os.path.getsize(entry["location"]) == done["size_bytes"]


async def test_cancelling_the_scope_before_the_backup_starts_fails_it(engine, settings, data_dir):
    service = service_for(engine, settings, data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        entry = service.start_backup(BackupRequest())
        nursery.cancel_scope.cancel()
    after = service.catalog.get(entry["backup_id"])
    assert after["status"] == "failed" and "shut" in after["error"]
    assert not os.path.exists(entry["location"])


async def test_shutdown_cancels_a_backup_being_written(engine, settings, data_dir):
    fill(engine, 40_000)  # about 30 MB to compress: long enough to stop in the middle
    service = service_for(engine, settings, data_dir)
    with trio.CancelScope() as server:  # what the root nursery's cancel does to the service
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            entry = service.start_backup(BackupRequest(codec="zstd", threads=1))
            partial = entry["location"] + PARTIAL_SUFFIX
            with trio.fail_after(30):
                while not os.path.exists(partial):
                    if service.catalog.get(entry["backup_id"])["status"] != "in_progress":
                        break
                    await trio.sleep(0.001)
            server.cancel()
    after = service.catalog.get(entry["backup_id"])
    if after["status"] == "completed":
        pytest.skip("the backup finished before it could be cancelled")
    assert after["status"] == "failed" and "shut" in after["error"]
    assert not os.path.exists(partial) and not os.path.exists(entry["location"])


async def test_a_new_service_marks_backups_of_the_last_run_failed(engine, settings, data_dir):
    catalog = Catalog(data_dir)
    catalog.add(backup_id="b1", backup_type="full", status="in_progress", origin="api", location="/nowhere.backup")
    service = BackupService(engine, settings, catalog, wal_switched=lambda: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        nursery.cancel_scope.cancel()
    assert catalog.get("b1")["status"] == "failed"


async def test_cancel_flag_is_set_when_the_scope_is_cancelled():
    with trio.CancelScope() as scope:
        async with cancel_flag() as flag:
            assert not flag.is_set()
            scope.cancel()
            with trio.CancelScope(shield=True):  # the block goes on, as a thread would
                seen = await trio.to_thread.run_sync(flag.wait, 10)
            assert seen


async def test_cancel_flag_passes_the_blocks_error():
    with pytest.raises(ValueError, match="mine"):
        async with cancel_flag():
            raise ValueError("mine")


class GatedBackupWrites(FileOps):
    """Backup files' writes wait at the gate once their header is written: a backup held mid-way."""

    def __init__(self):
        self.gate = threading.Event()
        self._backup_fds: set[int] = set()
        self._writes: dict[int, int] = {}

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        if ".backup" in os.path.basename(path):
            self._backup_fds.add(fd)
        return fd

    def write(self, fd, data):
        if fd in self._backup_fds:
            self._writes[fd] = self._writes.get(fd, 0) + 1
            if self._writes[fd] > 1:
                self.gate.wait(60)
        return super().write(fd, data)


async def test_a_running_backup_shows_its_progress_and_the_history_its_trigger_and_duration(data_dir, settings):
    gated = GatedBackupWrites()
    engine = Engine.open(dd.DataDir(data_dir), settings, fileops=gated)
    try:
        run_sql(engine, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        fill(engine, 6000)  # several 1 MiB chunks
        service = service_for(engine, settings, data_dir)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            entry = service.start_backup(BackupRequest(threads=1))
            with trio.fail_after(30):
                while True:
                    (row,) = await trio.to_thread.run_sync(service.history)
                    if row["progress"] is not None and row["progress"]["bytes_done"] > 0:
                        break
                    await trio.sleep(0.01)
            assert row["status"] == "in_progress" and row["trigger"] == "api"
            progress = row["progress"]
            total = progress["total_estimate"]
            assert total > 2 << 20  # the database's size as the snapshot found it
            assert 0 < progress["bytes_done"] <= total
            assert progress["eta_s"] is not None and progress["rate_bytes_per_s"] > 0
            gated.gate.set()
            done = await wait_until_done(service.catalog, entry["backup_id"])
            nursery.cancel_scope.cancel()
        assert done["status"] == "completed"
        (row,) = service.history()
        assert row["progress"] is None and row["trigger"] == "api" and row["duration_s"] > 0
        assert row["chain"] == [entry["backup_id"]] and row["retention"] == "kept"
    finally:
        gated.gate.set()
        engine.close()
