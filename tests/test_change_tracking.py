"""Change tracking: net changes compacted as they commit equal the WAL's, always.

An incremental built from a tracker must hold exactly what reading and
compacting the WAL over the same LSN range gives (incremental._from_wal): the
same steps, byte for byte, for every database, with DDL, database creation and
removal, VACUUM and writers running concurrently.
"""

from __future__ import annotations

import random
import threading

import pytest

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.backup import incremental
from rustydb_server.backup.manifest import Manifest
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.backup.tracking import ChangeTracking
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.settings import Settings


def open_engine(path: str, tracking: ChangeTracking) -> Engine:
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20})
    return Engine.open(dd.DataDir(path), settings, change_tracking=tracking)


def run_sql(engine: Engine, sql: str, db: str = "rustydb"):
    session = SqlSession(engine, db, 1)
    try:
        return session.run(sql, leading_keywords(sql, 2), 1_000_000)[1]
    finally:
        session.close()


@pytest.fixture
def engine(tmp_path):
    eng = open_engine(str(tmp_path / "data"), ChangeTracking())
    run_sql(eng, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    run_sql(eng, "CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    eng.create_database("old")
    run_sql(eng, "CREATE TABLE o(id INTEGER PRIMARY KEY, v TEXT)", "old")
    yield eng
    eng.change_tracking.close()
    eng.change_tracking = None
    eng.close()


def full_backup(engine: Engine, backup_type: str = "full") -> Manifest:
    snap = Snapshot(engine, None, backup_type=backup_type)
    try:
        manifest = snap.manifest()
    finally:
        snap.close()
    engine.record_backup(manifest)
    return manifest


def parent_of(manifest: Manifest) -> dict:
    return {k: getattr(manifest, k) for k in ("backup_id", "end_lsn", "timeline", "system_id")}


def workload(engine: Engine, rnd: random.Random, rounds: int = 30) -> None:
    for i in range(rounds):
        choice = rnd.random()
        if choice < 0.4:
            run_sql(
                engine,
                "INSERT INTO t(v, n) VALUES "
                + ",".join(f"('{rnd.randrange(10**6)}', {rnd.randrange(100)})" for _ in range(rnd.randint(1, 20))),
            )
        elif choice < 0.7:
            run_sql(engine, f"UPDATE t SET n = n + 1, v = v || 'u' WHERE id % 7 = {rnd.randrange(7)}")
        elif choice < 0.8:
            run_sql(engine, f"DELETE FROM t WHERE id % 11 = {rnd.randrange(11)}")
        elif choice < 0.85:
            run_sql(engine, f"INSERT INTO seq(v) VALUES ('s{i}')")
        elif choice < 0.9:
            run_sql(engine, f"ALTER TABLE t ADD COLUMN c{i} INTEGER DEFAULT {i}")
        elif choice < 0.95:
            name = f"db{rnd.randrange(10**9)}"
            engine.create_database(name)
            run_sql(engine, "CREATE TABLE x(id INTEGER PRIMARY KEY, v)", name)
            run_sql(engine, "INSERT INTO x(v) VALUES (1), (2)", name)
            if rnd.random() < 0.5:
                engine.drop_database(name)
        elif "old" in engine.databases:
            run_sql(engine, "UPDATE o SET v = 'x'", "old")
            run_sql(engine, "INSERT INTO o(v) VALUES ('y')", "old")


def from_wal(engine: Engine, manifest: Manifest, parent: dict, tmp_path) -> dict:
    net = incremental._from_wal(engine, parent["end_lsn"], manifest.end_lsn, str(tmp_path / "scratch"))
    return {name: steps for name, steps in net.steps.items() if steps}


def build(engine: Engine, parent: dict, tmp_path, backup_type="incremental", *, tracked=True):
    """(manifest, steps, whether the tracker answered)."""
    calls = []
    real = incremental._from_wal

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    incremental._from_wal = counting
    try:
        manifest, steps = incremental.build(engine, parent, backup_type, None, str(tmp_path / "scratch"))
    finally:
        incremental._from_wal = real
    return manifest, {n: s for n, s in steps.items() if s}, not calls


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tracked_incrementals_equal_the_wal(engine, tmp_path, seed):
    rnd = random.Random(seed)
    workload(engine, rnd, 10)
    full = full_backup(engine)
    workload(engine, rnd)
    run_sql(engine, "VACUUM")
    engine.drop_database("old")
    m1, steps1, tracked = build(engine, parent_of(full), tmp_path)
    assert tracked
    assert steps1 == from_wal(engine, m1, parent_of(full), tmp_path)
    assert "old" in steps1 and steps1["old"] == [("drop", "")]
    engine.record_backup(m1)

    workload(engine, rnd)
    # the next incremental starts at the first one; a differential at the full
    m2, steps2, tracked = build(engine, parent_of(m1), tmp_path)
    assert tracked and steps2 == from_wal(engine, m2, parent_of(m1), tmp_path)
    m3, steps3, tracked = build(engine, parent_of(full), tmp_path, "differential")
    assert tracked and steps3 == from_wal(engine, m3, parent_of(full), tmp_path)
    assert m3.wal_records > m2.wal_records


def test_tracking_while_writers_commit(engine, tmp_path):
    full = full_backup(engine)
    stop = threading.Event()
    errors = []

    def writer(db: str, table: str) -> None:
        i = 0
        try:
            while not stop.is_set():
                run_sql(engine, f"INSERT INTO {table}(v) VALUES ('w{i}')", db)
                run_sql(engine, f"UPDATE {table} SET v = v || '+' WHERE id % 5 = {i % 5}", db)
                i += 1
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=a) for a in (("rustydb", "t"), ("old", "o"))]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            m, steps, tracked = build(engine, parent_of(full), tmp_path)
            assert tracked
            # exactly the records before this incremental's end, none after
            assert steps == from_wal(engine, m, parent_of(full), tmp_path)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_without_a_tracker_the_wal_is_read(engine, tmp_path):
    full = full_backup(engine)
    workload(engine, random.Random(4))
    engine.change_tracking.close()
    engine.change_tracking = ChangeTracking()  # as after a restart: nothing tracked
    m, steps, tracked = build(engine, parent_of(full), tmp_path)
    assert not tracked and steps == from_wal(engine, m, parent_of(full), tmp_path)


def test_a_tracker_that_took_in_too_much_gives_way_to_the_wal(engine, tmp_path):
    engine.change_tracking.close()
    engine.change_tracking = ChangeTracking(max_bytes=2000)
    full = full_backup(engine)
    run_sql(engine, "INSERT INTO t(v, n) VALUES ('small', 1)")
    m, steps, tracked = build(engine, parent_of(full), tmp_path)
    assert tracked
    engine.record_backup(m)
    run_sql(engine, "INSERT INTO t(v, n) SELECT hex(randomblob(100)), 1 FROM t LIMIT 1")
    run_sql(engine, "INSERT INTO t(v, n) VALUES " + ",".join(f"('{'z' * 50}', {i})" for i in range(100)))
    m2, steps2, tracked = build(engine, parent_of(m), tmp_path)
    assert not tracked and steps2 == from_wal(engine, m2, parent_of(m), tmp_path)


def test_only_completed_backups_are_bases(engine, tmp_path):
    full = full_backup(engine)
    run_sql(engine, "INSERT INTO t(v, n) VALUES ('a', 1)")
    # an incremental that never completes (not recorded) is no base...
    m, _steps, tracked = build(engine, parent_of(full), tmp_path)
    assert tracked
    run_sql(engine, "INSERT INTO t(v, n) VALUES ('b', 2)")
    _m, _s, tracked = build(engine, parent_of(m), tmp_path)
    assert not tracked
    # ...and the full backup stays one
    _m, _s, tracked = build(engine, parent_of(full), tmp_path)
    assert tracked


def test_an_incremental_of_some_databases_is_no_base(engine, tmp_path):
    full = full_backup(engine)
    run_sql(engine, "INSERT INTO t(v, n) VALUES ('in rustydb', 1)")
    run_sql(engine, "INSERT INTO o(v) VALUES ('in old')", "old")
    partial, steps = incremental.build(engine, parent_of(full), "incremental", ["old"], str(tmp_path / "scratch"))
    assert set(n for n, s in steps.items() if s) == {"old"}
    engine.record_backup(partial)
    # the next incremental still starts at the full, so the change to rustydb is not lost
    assert engine.control.last_backup["backup_id"] == full.backup_id


def bulk_insert(engine: Engine, n: int) -> None:
    """A bulk insert: logged as a rows step (engine/bulk.py)."""
    run_sql(
        engine,
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {n}) "
        "INSERT INTO t(v, n) SELECT 'bulk' || i, i % 100 FROM s",
    )


def test_tracked_incrementals_with_bulk_inserts_equal_the_wal(engine, tmp_path):
    full = full_backup(engine)
    rnd = random.Random(5)
    for _ in range(4):
        bulk_insert(engine, rnd.randint(10, 3000))
        workload(engine, rnd, 5)
    m, steps, tracked = build(engine, parent_of(full), tmp_path)
    assert tracked and steps == from_wal(engine, m, parent_of(full), tmp_path)
    assert all(kind != "rows" for s in steps.values() for kind, _ in s)  # read as their changesets


def test_a_bulk_insert_too_large_for_a_tracker_gives_way_to_the_wal(engine, tmp_path):
    engine.change_tracking.close()
    engine.change_tracking = ChangeTracking(max_bytes=64 * 1024)
    full = full_backup(engine)
    bulk_insert(engine, 20_000)  # about 600 kB of image: the tracker stops before converting it
    m, steps, tracked = build(engine, parent_of(full), tmp_path)
    assert not tracked and steps == from_wal(engine, m, parent_of(full), tmp_path)
