"""Point-in-time recovery's reading and replay (restore/pitr.py, restore/archived_wal.py,
engine/replay.py): every target kind against a model of the workload, the lazy
reader that never opens a segment after the target, batched replay equal to
one-by-one replay, and a restore killed in the middle of its replay completed
by running it again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from rustydb_server.backup.manifest import Manifest
from rustydb_server.container.reader import BackupReader
from rustydb_server.engine import database, replay
from rustydb_server.engine.recovery import RecordApplier
from rustydb_server.engine.session import SqlSession
from rustydb_server.fileops import FileOps
from rustydb_server.restore import pitr
from rustydb_server.restore.archived_wal import ArchivedSegments
from rustydb_server.tools import restore_main
from rustydb_server.wal import reader as wal_reader
from rustydb_server.wal import record as walrec
from rustydb_server.wal import segment as walseg
from tests.support.backups import open_engine, write_backup

pytestmark = pytest.mark.usefixtures("no_keys")

DUMP_TABLES = ("notes", "log")


def transaction(engine, *statements: str) -> None:
    """One transaction of ``statements`` on one session (BEGIN ... COMMIT when several)."""
    session = SqlSession(engine, "rustydb", 1)
    try:
        for sql in ("BEGIN", *statements, "COMMIT") if len(statements) > 1 else statements:
            session.run(sql, leading_keywords(sql, 2), 1000)
    finally:
        session.close()


def dump_conn(conn: apsw.Connection) -> dict:
    schema = sorted(
        tuple(r)
        for r in conn.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '__rustydb%'"
        )
    )
    tables = [r[1] for r in schema if r[0] == "table"]
    return {
        "schema": schema,
        **{t: sorted(map(tuple, conn.execute(f'SELECT rowid, * FROM "{t}"'))) for t in tables},
    }


def dump_engine(engine) -> dict:
    conn = apsw.Connection(engine.datadir.database_path("rustydb"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return dump_conn(conn)
    finally:
        conn.close()


def dump_dir(data_dir: str) -> dict:
    conn = apsw.Connection(dd.DataDir(data_dir).database_path("rustydb"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return dump_conn(conn)
    finally:
        conn.close()


def archive_ready(engine, archive: str) -> None:
    c = engine.control
    status = engine.datadir.join(dd.ARCHIVE_STATUS_DIR)
    for mark in sorted(os.listdir(status)):
        name = mark.removesuffix(".ready").removesuffix(".done")
        dest = os.path.join(archive, sf.archive_name(name))
        if not os.path.exists(dest):
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                dest,
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="zstd",
            )


# ---------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A base backup, its archive over several segments, and the model: every
    transaction and restore point in WAL order with the data right after it."""
    root = tmp_path_factory.mktemp("replay")
    archive = str(root / "archive")
    os.mkdir(archive)
    engine = open_engine(str(root / "source"))
    try:
        transaction(engine, "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        transaction(engine, "CREATE TABLE log(v TEXT)")  # no primary key: captured by rowid
        base = str(root / "base.backup")
        manifest = write_backup(engine, base)
        states = {"base": dump_engine(engine)}
        after: list[dict] = []  # the data after each transaction, in commit order
        points: dict[str, dict] = {}
        for i in range(48):
            if i % 12 == 11:
                engine.switch_wal()  # the workload spans several segments
            if i % 10 == 5:
                points[f"point{i}"] = dump_engine(engine)
                engine.create_restore_point(f"point{i}")
                continue
            logged = engine.wal.flushed_lsn
            if i == 16:
                transaction(engine, "ALTER TABLE notes ADD COLUMN extra TEXT")
            elif i == 30:
                transaction(engine, "CREATE INDEX notes_body ON notes(body)")
            elif i % 3 == 0:
                transaction(engine, f"INSERT INTO notes(body) VALUES ('n{i}')", f"INSERT INTO log VALUES ('l{i}')")
            elif i % 3 == 1:
                transaction(engine, f"UPDATE notes SET body = body || '+{i}' WHERE id % 2 = {i % 2}")
            else:
                transaction(engine, f"DELETE FROM notes WHERE id = (SELECT min(id) FROM notes) AND {i} % 4 = 2")
            if engine.wal.flushed_lsn != logged:  # a change that changed no row logs nothing
                after.append(dump_engine(engine))
        states["end"] = points["the_end"] = dump_engine(engine)
        engine.create_restore_point("the_end")
        transaction(engine, "INSERT INTO log VALUES ('after the end')")  # a time/LSN target needs a record after it
        after.append(dump_engine(engine))
        engine.switch_wal()
        archive_ready(engine, archive)
    finally:
        engine.close()
    # The WAL after the base: (lsn, record); each transaction paired with the data after it.
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for name in sorted(os.listdir(archive)):
            seg, data = sf.unpack_segment(os.path.join(archive, name))
            paths.append(os.path.join(scratch, seg))
            with open(paths[-1], "wb") as f:
                f.write(data)
        for entry in wal_reader.read_segments(paths, manifest["end_lsn"]):
            records.append((entry.lsn, walrec.decode_record(entry.body)))
    txs = [(lsn, r) for lsn, r in records if isinstance(r, walrec.TxRecord)]
    model = [(lsn, rec.txid, rec.commit_time_us, data) for (lsn, rec), data in zip(txs, after, strict=True)]
    return {"base": base, "archive": archive, "states": states, "points": points, "model": model, "records": records}


def expected_for(history, kind: str, value, inclusive: bool):
    """The data a recovery to this target must produce, from the model alone."""
    model = history["model"]
    if kind == "immediate":
        return history["states"]["base"]
    if kind == "name":
        return history["points"][value]
    if kind == "end":
        return model[-1][3]

    def applies(lsn, txid, t):
        if kind == "txid":
            return txid < value or (inclusive and txid == value)
        if kind == "time":
            return t < value or (inclusive and t == value)
        return lsn < value or (inclusive and lsn == value)  # lsn

    data = history["states"]["base"]
    for lsn, txid, t, after in model:
        if not applies(lsn, txid, t):
            break
        data = after
    return data


def targets(history):
    model = history["model"][:-1]  # the record after the end is there for the targets to be reached
    picks = [model[0], model[len(model) // 3], model[len(model) // 2], model[-1]]
    out = [("immediate", None, True), ("name", "point15", True), ("name", "point45", True), ("name", "the_end", True)]
    for lsn, txid, t, _ in picks:
        for inclusive in (True, False):
            out += [("txid", txid, inclusive), ("time", t, inclusive), ("lsn", lsn, inclusive)]
        out.append(("lsn", lsn + 1, True))  # inside a record: the record is applied
    return out


def test_every_target_kind_recovers_what_the_model_says(history, tmp_path):
    checked = 0
    for n, (kind, value, inclusive) in enumerate(targets(history)):
        data = str(tmp_path / f"d{n}")
        pitr.restore_to_target(history["base"], data, history["archive"], pitr.Target(kind, value, inclusive))
        assert dump_dir(data) == expected_for(history, kind, value, inclusive), (kind, value, inclusive)
        checked += 1
    assert checked >= 30


def test_recovery_to_the_end_of_the_archive(history, tmp_path):
    data = str(tmp_path / "d")
    _, report = pitr.restore_to_target(history["base"], data, history["archive"], pitr.Target("end"))
    assert dump_dir(data)["log"][-1][1] == "after the end"
    assert report.last_txid == history["model"][-1][1]


# ---------------------------------------------------------------- reading stops at the target


def test_a_damaged_segment_after_the_target_does_not_matter(history, tmp_path):
    archive = str(tmp_path / "archive")
    shutil.copytree(history["archive"], archive)
    names = sorted(os.listdir(archive))
    assert len(names) >= 4
    for name in names[2:]:  # every segment after the first two: garbage
        with open(os.path.join(archive, name), "wb") as f:
            f.write(os.urandom(5000))
    data = str(tmp_path / "d")
    _, report = pitr.restore_to_target(history["base"], data, archive, pitr.Target("name", "point15"))
    assert dump_dir(data) == history["points"]["point15"]
    assert report.segments_read <= 2
    # ... while a target in them reads them, and says which one it cannot read
    with pytest.raises(sf.ArchiveError, match=f"{names[2]} is not a readable archived WAL segment"):
        pitr.restore_to_target(history["base"], str(tmp_path / "e"), archive, pitr.Target("name", "the_end"))


def test_the_read_ahead_is_bounded(history, monkeypatch):
    """Reading only the first segment with a read-ahead of 1 unpacks at most the
    two after it (the one ahead of it, then the one ahead of that once the
    first is handed over); the rest of the archive is never opened."""
    opened = []
    real = sf.unpack_segment

    def spy(path, **kw):
        opened.append(os.path.basename(path))
        return real(path, **kw)

    monkeypatch.setattr(sf, "unpack_segment", spy)
    segments = sf.list_archive(history["archive"])[1]
    first = min(segments)
    assert len(segments) >= 5
    with ArchivedSegments(segments, 1, first=first, system_id=None, depth=1) as supplier:
        for entry in wal_reader.read_supplied_segments(
            supplier, timeline=1, segment_size=65536, start_lsn=first * 65536 + 64
        ):
            rec = walrec.decode_record(entry.body)
            if isinstance(rec, walrec.RestorePointRecord) and rec.name == "point5":
                break
        else:
            pytest.fail("restore point point5 not met")
        supplier_read = supplier.segments_read
    assert supplier_read == 1
    window = {sf.archive_name(walseg.segment_name(1, s)) for s in (first, first + 1, first + 2)}
    assert sf.archive_name(walseg.segment_name(1, first)) in opened and set(opened) <= window


# ---------------------------------------------------------------- batched replay


def apply_one_by_one(data_dir: str, records, stop_at: str | None) -> None:
    """The reference: each transaction record in its own SQLite transaction, no changegroup."""
    path = dd.DataDir(data_dir).database_path("rustydb")
    conn = replay.open_replay_connection(path)
    try:
        applied = database.read_state(conn)["applied_lsn"]
        for lsn, rec in records:
            if isinstance(rec, walrec.RestorePointRecord) and rec.name == stop_at:
                break
            if isinstance(rec, walrec.TxRecord) and lsn > applied:
                replay.apply_tx_record(conn, lsn, rec)
    finally:
        conn.close()


def apply_batched(data_dir: str, records, stop_at: str | None, batch: int, batch_bytes: int) -> None:
    applier = RecordApplier(dd.DataDir(data_dir), batch=batch, batch_bytes=batch_bytes)
    for lsn, rec in records:
        applier.apply(lsn, rec)
        if isinstance(rec, walrec.RestorePointRecord) and rec.name == stop_at:
            break
    applier.finish()


def state_row(data_dir: str):
    conn = apsw.Connection(dd.DataDir(data_dir).database_path("rustydb"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return database.read_state(conn)
    finally:
        conn.close()


OPS = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 30), st.text("abc", max_size=3)),
    st.tuples(st.just("update"), st.integers(1, 30), st.text("xyz", max_size=3)),
    st.tuples(st.just("delete"), st.integers(1, 30)),
    st.tuples(st.just("log"), st.integers(0, 9)),
    st.tuples(st.just("multi"), st.integers(1, 30)),
    st.tuples(st.just("ddl"), st.sampled_from(["add_column", "index", "side_table", "drop_side"])),
    st.tuples(st.just("point")),
)


def run_op(engine, op, n: int, names: list[str]) -> None:
    kind = op[0]
    if kind == "insert":
        transaction(engine, f"INSERT OR REPLACE INTO notes(id, body) VALUES ({op[1]}, '{op[2]}')")
    elif kind == "update":
        transaction(engine, f"UPDATE notes SET body = body || '{op[2]}' WHERE id <= {op[1]}")
    elif kind == "delete":
        transaction(engine, f"DELETE FROM notes WHERE id = {op[1]}")
    elif kind == "log":
        transaction(engine, *[f"INSERT INTO log VALUES ('{n}.{k}')" for k in range(op[1] + 1)])
    elif kind == "multi":
        transaction(
            engine,
            f"INSERT OR REPLACE INTO notes(id, body) VALUES ({op[1]}, 'm{n}')",
            f"UPDATE notes SET body = 'u{n}' WHERE id = {op[1]}",
            f"DELETE FROM log WHERE rowid % 3 = {n % 3}",
        )
    elif kind == "ddl":
        statements = {
            "add_column": [f"ALTER TABLE notes ADD COLUMN c{n} TEXT DEFAULT 'd{n}'"],
            "index": [f"CREATE INDEX IF NOT EXISTS i{n} ON notes(body)"],
            "side_table": [
                "CREATE TABLE IF NOT EXISTS side(k INTEGER PRIMARY KEY, v)",
                "INSERT INTO side(v) VALUES (1)",
            ],
            "drop_side": ["DROP TABLE IF EXISTS side"],
        }[op[1]]
        transaction(engine, *statements)
    else:
        names.append(f"p{n}")
        engine.create_restore_point(names[-1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=1, max_size=40),
    batch=st.integers(1, 12),
    batch_bytes=st.sampled_from([64, 4096, replay.BATCH_BYTES]),
    stop=st.integers(0, 5),
)
def test_batched_replay_equals_one_by_one(ops, batch, batch_bytes, stop):
    with tempfile.TemporaryDirectory() as root:
        source = os.path.join(root, "source")
        engine = open_engine(source)
        transaction(engine, "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        transaction(engine, "CREATE TABLE log(v TEXT)")
        engine.close()
        base = os.path.join(root, "base")
        shutil.copytree(source, base)
        engine = open_engine(source)
        try:
            start = engine.wal.flushed_lsn
            names: list[str] = []
            at_point = {}
            for n, op in enumerate(ops):
                run_op(engine, op, n, names)
                if op[0] == "point":
                    at_point[names[-1]] = dump_engine(engine)
            final = dump_engine(engine)
            records = [
                (e.lsn, walrec.decode_record(e.body))
                for e in wal_reader.read_wal(
                    engine.datadir.wal_dir,
                    timeline=engine.control.timeline,
                    segment_size=engine.control.segment_size,
                    start_lsn=start,
                    stop_lsn=engine.wal.flushed_lsn,
                )
            ]
        finally:
            engine.close()
        stop_at = names[stop] if stop < len(names) else None
        one, batched = os.path.join(root, "one"), os.path.join(root, "batched")
        shutil.copytree(base, one)
        shutil.copytree(base, batched)
        apply_one_by_one(one, records, stop_at)
        apply_batched(batched, records, stop_at, batch, batch_bytes)
        assert dump_dir(batched) == dump_dir(one)
        assert state_row(batched) == state_row(one)  # applied_lsn, txid and time of the last record
        assert dump_dir(one) == (at_point[stop_at] if stop_at else final)


# ---------------------------------------------------------------- a restore killed in its replay

KILLED_RESTORE = """
import os, sys
from rustydb_server.engine import recovery, replay
recovery.RecordApplier.__init__.__kwdefaults__["batch"] = 3  # many batches
flushes = [0]
real_flush = replay.Replayer.flush
def flush(self):
    real_flush(self)
    flushes[0] += 1
    if flushes[0] == 4:
        os._exit(9)  # killed between two batches, a few committed
replay.Replayer.flush = flush
from rustydb_server.tools import restore_main
sys.exit(restore_main.main(sys.argv[1:]))
"""


def test_a_restore_killed_in_its_replay_completes_when_run_again(history, tmp_path):
    data = str(tmp_path / "data")
    argv = ["--input", history["base"], "--archive-dir", history["archive"], "--data-dir", data]
    argv += ["--recovery-target-name", "the_end"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RESTORE, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert killed.returncode == 9, killed.stderr
    assert restore_main.main(argv) == 0
    assert dump_dir(data) == history["states"]["end"]


# A staging directory is replayed with no journal (pitr.StagingApplier): a restore killed in
# the middle of a batch can leave its database torn, which is safe because the next run
# never goes on from a stage it finds (it removes it, or sets it aside) but starts afresh.
KILLED_IN_A_BATCH = """
import os, sys
from rustydb_server.engine import recovery, replay
recovery.RecordApplier.__init__.__kwdefaults__["batch"] = 3
flushes = [0]
real_apply_group = replay.Replayer._apply_group
def apply_group(self):
    real_apply_group(self)
    flushes[0] += 1
    if flushes[0] == 4:
        mode = self.conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        os._exit(9 if mode == "off" else 3)  # the batch applied, not committed
replay.Replayer._apply_group = apply_group
from rustydb_server.tools import restore_main
sys.exit(restore_main.main(sys.argv[1:]))
"""


def test_a_restore_killed_in_a_journal_less_batch_starts_over_when_run_again(history, tmp_path):
    data = str(tmp_path / "data")
    argv = ["--input", history["base"], "--archive-dir", history["archive"], "--data-dir", data]
    argv += ["--recovery-target-name", "the_end"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_A_BATCH, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert killed.returncode == 9, killed.stderr  # 3: the replay ran with a journal
    (stage,) = [p for p in tmp_path.iterdir() if dd.RESTORE_STAGING_MARK in p.name]
    # no server starts on it, even moved into place by hand
    with pytest.raises(dd.DataDirError, match="a restore into it did not finish"):
        dd.check_usable(dd.DataDir(str(stage)).read_control(), str(stage))
    # What a journal-less write cut short can leave: pages of the batch, or garbage
    db = stage / dd.DATABASES_DIR / "rustydb.sqlite"
    size = db.stat().st_size
    assert size > 4096
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    assert restore_main.main(argv) == 0
    assert dump_dir(data) == history["states"]["end"]
    assert not [p for p in tmp_path.iterdir() if dd.RESTORE_STAGING_MARK in p.name]


def test_a_recovered_database_is_back_in_wal_mode_and_synced(history, tmp_path):
    """Replayed journal-less and unsynced, then handed over as the server expects it:
    in WAL mode, whole, and fsynced by the recovery itself (a table-level restore
    swaps its staging directory in right after it)."""
    data = str(tmp_path / "data")
    restore_main.main(["--input", history["base"], "--data-dir", data])
    with open(history["base"], "rb") as f:
        manifest = Manifest.from_header(BackupReader(f).header)
    path = dd.DataDir(data).database_path("rustydb")
    synced = []

    class Recording(FileOps):
        fds: dict = {}

        def open(self, p, flags, mode=0o600):
            fd = super().open(p, flags, mode)
            self.fds[fd] = p
            return fd

        def fsync(self, fd):
            synced.append(self.fds.get(fd))
            super().fsync(fd)

    pitr.recover(data, manifest, history["archive"], pitr.Target("name", "the_end"), fileops=Recording())
    assert path in synced
    with open(path, "rb") as f:
        assert f.read(20)[18:20] == b"\x02\x02"  # the file format of WAL mode
    conn = apsw.Connection(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    assert dump_dir(data) == history["states"]["end"]
