"""Applying a retention plan (backup/expire.py) to real files: the order, a
crash at every step completed by a second run, and nothing else touched."""

from __future__ import annotations

import os
import shutil
import time
import uuid

import pytest

from rustydb_server import fileops as _fileops
from rustydb_server.archive import segment_file
from rustydb_server.backup import expire, retention
from rustydb_server.backup.catalog import Catalog, load_entries
from rustydb_server.container.file import BackupFile
from rustydb_server.container.format import BackupHeader, BackupType
from rustydb_server.datadir import DataDir
from rustydb_server.wal import segment as walseg

SEG = 65536
DAY = retention.DAY


def write_backup(path, backup_id, kind, start_lsn, end_lsn, parent=None, base=None):
    header = BackupHeader(
        backup_id=backup_id,
        backup_type=BackupType(kind),
        created_us=time.time_ns() // 1000,
        start_lsn=start_lsn,
        end_lsn=end_lsn,
        parent_id=parent,
        base_full_id=base,
    )
    with BackupFile(path, header, codec="none") as bf:
        bf.begin_entry("data")
        bf.write(b"x" * 100)
        bf.end_entry()
        bf.commit()


def archive_segment(archive, tmp, segno):
    name = walseg.segment_name(1, segno)
    src = os.path.join(tmp, name)
    with open(src, "wb") as f:
        f.write(bytes(SEG))
    segment_file.pack_segment(
        src, os.path.join(archive, segment_file.archive_name(name)), system_id=1, segment_size=SEG, codec="none"
    )
    os.unlink(src)


@pytest.fixture
def setup(tmp_path):
    """Two weekly chains 60 days ago and 50 days ago, one from yesterday; segments 0..11."""
    data = str(tmp_path / "data")
    backups = str(tmp_path / "backups")
    archive = str(tmp_path / "archive")
    os.makedirs(backups)
    os.makedirs(archive)
    DataDir(data).initialize(SEG)
    catalog = Catalog(data)
    now = time.time()
    chain = [  # (name, type, parent, days ago, start segment)
        ("F1", "full", None, 60, 1),
        ("I1", "incremental", "F1", 59, 2),
        ("F2", "full", None, 50, 4),
        ("I2", "incremental", "F2", 49, 5),
        ("I3", "incremental", "I2", 48, 6),
        ("F3", "full", None, 1, 9),
    ]
    ids, fulls = {}, {}
    for name, kind, parent, ago, seg in chain:
        bid = str(uuid.uuid4())
        ids[name] = bid
        path = os.path.join(backups, f"{bid}.backup")
        parent_id = ids.get(parent)
        base = fulls.get(parent) if parent else None
        fulls[name] = base or bid
        write_backup(path, bid, kind, seg * SEG, seg * SEG + 10, parent_id, base)
        t = int(now - ago * DAY)
        catalog.add(
            backup_id=bid,
            backup_type=kind,
            status="completed",
            started_at=t,
            location=path,
            origin="api",
            start_lsn=seg * SEG,
            end_lsn=seg * SEG + 10,
            timeline=1,
            parent_id=parent_id,
            base_full_id=base,
            partial=False,
        )
        catalog.update(bid, completed_at=t + 60)
    for segno in range(12):
        archive_segment(archive, str(tmp_path), segno)
    # a file beside them that no plan names
    with open(os.path.join(backups, "notes.txt"), "w") as f:
        f.write("keep me")
    return data, backups, archive, ids, now


def state(data, backups, archive):
    return (
        sorted(os.listdir(backups)),
        sorted(e["backup_id"] for e in load_entries(data)),
        sorted(os.listdir(archive)),
    )


POLICY = retention.Policy(backup_days=30)


def test_plan_and_apply(setup):
    data, backups, archive, ids, now = setup
    p = expire.make_plan(expire.gather(data, archive), POLICY, now)
    # F2's chain is the newest before the 30-day window: kept whole; F1 and I1 go, and WAL before F2.
    assert {b.backup_id for b in p.backups} == {ids["F1"], ids["I1"]}
    assert [s.segno for s in p.segments] == [0, 1, 2, 3]
    out = expire.apply(p, data)
    assert sorted(out.removed_entries) == sorted([ids["F1"], ids["I1"]])
    files, entries, segs = state(data, backups, archive)
    assert files == sorted(["notes.txt"] + [f"{ids[n]}.backup" for n in ("F2", "I2", "I3", "F3")])
    assert entries == sorted(ids[n] for n in ("F2", "I2", "I3", "F3"))
    assert segs == [segment_file.archive_name(walseg.segment_name(1, n)) for n in range(4, 12)]
    # A second run has nothing left to do.
    assert expire.make_plan(expire.gather(data, archive), POLICY, now).is_empty()


class Crash(BaseException):
    pass


class CrashAt(_fileops.FileOps):
    """Real file operations that stop dead before the ``at``-th unlink, rename or directory fsync."""

    def __init__(self, at):
        self.at = at
        self.count = 0

    def _step(self):
        if self.count == self.at:
            raise Crash()
        self.count += 1

    def unlink(self, path):
        self._step()
        super().unlink(path)

    def rename(self, src, dst):
        self._step()
        super().rename(src, dst)

    def fsync_dir(self, path):
        self._step()
        super().fsync_dir(path)


def test_a_crash_at_any_step_is_completed_by_a_rerun(setup, tmp_path):
    data, backups, archive, ids, now = setup
    before = state(data, backups, archive)
    # Each attempt runs on a fresh copy (its catalog naming the copy's files); the first, never
    # crashing, counts the steps and gives the state every other one must end in.
    clone = tmp_path / "clone"
    cdata, cbackups, carchive = (str(clone / n) for n in ("data", "backups", "archive"))

    def fresh_copy():
        shutil.rmtree(clone, ignore_errors=True)
        shutil.copytree(tmp_path, clone, ignore=shutil.ignore_patterns("clone"))
        _relocate_catalog(cdata, str(tmp_path), str(clone))
        return expire.make_plan(expire.gather(cdata, carchive), POLICY, now)

    counting = CrashAt(at=-1)
    expire.apply(fresh_copy(), cdata, counting)
    expected = state(cdata, cbackups, carchive)
    steps = counting.count
    assert steps > 6
    for at in range(steps):
        cp = fresh_copy()
        with pytest.raises(Crash):
            expire.apply(cp, cdata, CrashAt(at))
        # Whatever is left still holds every kept backup and the WAL they need.
        files, entries, segs = state(cdata, cbackups, carchive)
        for name in ("F2", "I2", "I3", "F3"):
            assert f"{ids[name]}.backup" in files and ids[name] in entries
        rerun = expire.make_plan(expire.gather(cdata, carchive), POLICY, now)
        expire.apply(rerun, cdata)
        assert state(cdata, cbackups, carchive) == expected, f"crash before step {at}"
    assert state(data, backups, archive) == before  # the original was not touched
    assert "notes.txt" in expected[0]


def _relocate_catalog(data, old, new):
    catalog = Catalog(data)
    for e in catalog.list():
        catalog.update(e["backup_id"], location=e["location"].replace(old, new, 1))


def test_a_file_that_now_holds_another_backup_is_left(setup):
    data, backups, archive, ids, now = setup
    p = expire.make_plan(expire.gather(data, archive), POLICY, now)
    victim = os.path.join(backups, f"{ids['F1']}.backup")
    os.unlink(victim)
    write_backup(victim, str(uuid.uuid4()), "full", 0, 0)
    out = expire.apply(p, data)
    assert [b for b, _ in out.refused] == [ids["F1"]]
    assert "now holds backup" in out.refused[0][1]
    assert os.path.exists(victim)
    assert ids["F1"] in [e["backup_id"] for e in load_entries(data)]
    assert ids["I1"] not in [e["backup_id"] for e in load_entries(data)]


def test_an_entry_without_a_file_path_loses_only_its_entry(setup):
    data, backups, archive, ids, now = setup
    catalog = Catalog(data)
    catalog.update(ids["F1"], location="client 127.0.0.1", origin="client")
    p = expire.make_plan(expire.gather(data, archive), POLICY, now)
    out = expire.apply(p, data)
    assert ids["F1"] in out.removed_entries
    assert os.path.exists(os.path.join(backups, f"{ids['F1']}.backup"))  # not a path the catalog knows
    assert not os.path.exists(os.path.join(backups, f"{ids['I1']}.backup"))


async def test_the_servers_expire_waits_for_running_backups_and_holds_new_ones_off(monkeypatch, autojump_clock):
    """Expirer never races a backup: it waits while one is in progress (or a stream is
    starting), and while it removes files the service's ``expiring`` refuses new ones."""
    import types

    import trio

    from rustydb_server.backup.expire import Expirer

    entries = [{"backup_id": "b1", "status": "in_progress"}]
    catalog = types.SimpleNamespace(list=lambda: [dict(e) for e in entries], listeners=[])
    service = types.SimpleNamespace(
        catalog=catalog,
        streams=1,
        expiring=None,
        engine=types.SimpleNamespace(datadir=types.SimpleNamespace(path="/d")),
    )
    settings = {
        "backup_retention_days": 30,
        "backup_retention_full_count": 0,
        "archive_retention_days": 0,
        "archive_dest": "",
    }
    expirer = Expirer(service, settings)
    applied = []

    def fake_apply(data_dir, archive_dir, policy, extras):
        applied.append(service.expiring)
        raise RuntimeError("stop here")  # the rest is tested on real catalogs above

    monkeypatch.setattr(expirer, "_apply", fake_apply)
    async with trio.open_nursery() as nursery:
        failures = []

        async def run():
            try:
                await expirer.run(dry_run=False)
            except RuntimeError as e:
                failures.append(str(e))

        nursery.start_soon(run)
        await trio.sleep(1)
        assert applied == []  # a backup runs (and a stream starts)
        entries[0]["status"] = "completed"
        for listener in catalog.listeners:  # as Catalog.complete tells them
            listener(dict(entries[0]))
        await trio.sleep(1)
        assert applied == []  # the stream still starts
        service.streams = 0
        expirer.wake()  # as the service does when a stream ends
        await trio.sleep(1)
    assert applied == ["retention is removing expired backups right now; try again in a moment"]
    assert failures == ["stop here"] and service.expiring is None  # cleared whatever happened
