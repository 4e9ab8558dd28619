"""The archiver writing to an S3 archive_dest (SeaweedFS), in-process: the local archive's guarantees hold."""

from __future__ import annotations

import trio

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file
from rustydb_server.archive.archiver import Archiver
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.engine_events import EngineEvents
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.repository import location, open_repository
from rustydb_server.settings import Settings
from rustydb_server.wal import archive_status


async def inline(fn, *args):
    return fn(*args)


def setup(tmp_path, seaweed, bucket, **more):
    overrides = {
        "wal_segment_size": 65536,
        "archive_mode": True,
        "archive_dest": f"s3://{bucket}/db",
        "archive_timeout": 3600,
        **seaweed.settings(),
        **more,
    }
    settings = Settings.load(None, str(tmp_path / "data"), overrides)
    doorbell = Doorbell()
    events = EngineEvents(trio.lowlevel.current_trio_token(), Lifecycle(), Doorbell(), doorbell)
    engine = Engine.open(dd.DataDir(str(tmp_path / "data")), settings, observer=events)
    return engine, Archiver(engine, settings, doorbell, run_sync=inline)


def wal_repo(seaweed, bucket):
    return open_repository(f"s3://{bucket}/db/wal", seaweed.settings())


async def test_segment_goes_up_and_is_marked_done_after(tmp_path, seaweed, s3_bucket, monkeypatch):
    monkeypatch.setattr(location, "_settings", seaweed.settings())  # as the server configures it
    engine, archiver = setup(tmp_path, seaweed, s3_bucket)
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    await archiver._archive_waiting()
    assert archive_status.is_archived(engine.archive_status_dir, name)
    repo = wal_repo(seaweed, s3_bucket)
    assert [i.key for i in repo.list()] == [f"{name}.walz"]
    # the object is a complete archived segment: the same bytes as the WAL file
    unpacked_name, data = segment_file.unpack_segment(
        f"s3://{s3_bucket}/db/wal/{name}.walz", system_id=engine.control.system_id
    )
    with open(f"{engine.datadir.wal_dir}/{name}", "rb") as f:
        assert (unpacked_name, data) == (name, f.read())
    assert archiver.report()["last_archived_segment"] == name
    engine.close()


async def test_archiving_again_after_a_crash_before_done_is_accepted(tmp_path, seaweed, s3_bucket):
    """The object is there but .done is not (a crash between the two): the same segment is no conflict."""
    engine, archiver = setup(tmp_path, seaweed, s3_bucket)
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    await archiver._archive_waiting()
    repo = wal_repo(seaweed, s3_bucket)
    etag = repo.stat(f"{name}.walz").etag
    (tmp_path / "data" / "wal" / "archive_status" / f"{name}.done").unlink()
    await archiver._archive_waiting()
    assert archive_status.is_archived(engine.archive_status_dir, name)
    assert archiver.progress.failures_in_a_row == 0
    assert repo.stat(f"{name}.walz").etag == etag  # not written again
    engine.close()


async def test_a_different_object_under_the_name_is_never_replaced(tmp_path, seaweed, s3_bucket):
    engine, archiver = setup(tmp_path, seaweed, s3_bucket)
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    # another server's segment of the same name (packed from other bytes)
    (tmp_path / name).write_bytes(b"\x01" * 65536)
    theirs = tmp_path / "theirs.walz"
    segment_file.pack_segment(
        str(tmp_path / name), str(theirs), system_id=engine.control.system_id, segment_size=65536, codec="lz4"
    )
    repo = wal_repo(seaweed, s3_bucket)
    repo.put_bytes(f"{name}.walz", theirs.read_bytes())
    await archiver._archive_waiting()
    assert not archive_status.is_archived(engine.archive_status_dir, name)
    report = archiver.report()
    assert report["failures_in_a_row"] == 1 and "different content" in report["last_failure_reason"]
    assert f"s3://{s3_bucket}/db/wal/{name}.walz" in report["last_failure_reason"]
    assert repo.get_bytes(f"{name}.walz") == theirs.read_bytes()
    assert "WAL archiving is failing" in archiver.failing()
    engine.close()


async def test_wrong_credentials_fail_and_keep_the_segment(tmp_path, seaweed, s3_bucket):
    creds = seaweed.credentials_file(str(tmp_path), secret="wrong")
    engine, archiver = setup(tmp_path, seaweed, s3_bucket, repository_s3_credentials_file=creds)
    engine.switch_wal()
    (name,) = archive_status.waiting(engine.archive_status_dir)
    await archiver._archive_waiting()
    assert archive_status.waiting(engine.archive_status_dir) == [name]
    assert "access denied" in archiver.report()["last_failure_reason"]
    assert not list(wal_repo(seaweed, s3_bucket).list())
    engine.close()
