"""Simulated power cuts: group commit never leaves SQLite holding a commit our WAL lacks.

Sessions commit in SQLite (synchronous=OFF) before the WAL flush that makes
the commit durable, so after a power cut SQLite's -wal may hold commits whose
WAL record never reached the disk, and the database file may be half copied
by a checkpoint. An in-process engine runs a seeded workload (autocommit
inserts and multi-statement transactions on two databases, reads, checkpoints,
a long reader that leaves some checkpoints incomplete) on a disk that follows
every write and sync (tests/support/power_cut.py); the power goes at a random
write or sync, every un-fsynced tail of our WAL, SQLite's -wal and the
database files is dropped or kept at random, and the engine recovers from
what is left. Then:

* every commit acknowledged before the cut is there, and every row a reader
  was answered with (some commits are left in flight, SQLite-committed with
  their flush not yet run, while reads and checkpoints go on);
* each database holds exactly the transactions of the recovered WAL: none
  that the WAL lacks (SQLite never keeps a commit that was not durable), none
  missing, no transaction in part.
"""

from __future__ import annotations

import collections
import random

import apsw
import pytest

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.settings import Settings
from rustydb_server.wal import reader as wal_reader
from rustydb_server.wal import record as walrec
from tests.support.power_cut import PowerCutDisk

DATABASES = ("rustydb", "other")
# Where the power goes: at any write or sync, at our WAL's flush (SQLite has
# just committed what it covers), in a checkpoint's copy into a database file.
# Or ("in flight"): right after the k-th commit left in flight was read.
CUTS = [(None, 900), ("flush", 150), ("copy", 40), ("in flight", 5)]
SEEDS = range(8)

# What reached the disk of what was written since the last sync, per file:
# at random; SQLite's files all of it and ours nothing; nothing; all of it.
OUTCOMES = {
    "random": None,
    "sqlite kept, ours dropped": lambda rel: rel.startswith("databases/"),
    "all dropped": lambda rel: False,
    "all kept": lambda rel: True,
}


def settings_for(path):
    # Small segments (records cross them), every segment kept (the whole WAL
    # is read back), checkpoints only when the workload asks.
    return Settings.load(
        None,
        path,
        {"wal_segment_size": 65536, "wal_keep_size": 1 << 30, "checkpoint_wal_size": 1 << 30},
    )


def run(session: SqlSession, sql: str):
    _run, rows, _finished = session.run(sql, leading_keywords(sql, 2), 100_000)
    return rows


class Workload:
    """Writers insert increasing ids (with their txid); what the clients were told is kept."""

    def __init__(self, engine: Engine, rng: random.Random, cut_after_in_flight=None):
        self.engine = engine
        self.in_flight = 0
        # Called with the number of commits left in flight so far, after each
        # one was read (the test's power cut, for the "in flight" cuts).
        self.cut_after_in_flight = cut_after_in_flight
        self.rng = rng
        self.writers = {name: SqlSession(engine, name, 1) for name in DATABASES}
        self.readers = {name: SqlSession(engine, name, 2) for name in DATABASES}
        self.pinner = SqlSession(engine, "rustydb", 3)
        self.pinning = False
        self.next_id = collections.Counter()
        self.acked: dict[str, set[int]] = {name: set() for name in DATABASES}
        self.seen: dict[str, set[int]] = {name: set() for name in DATABASES}
        self.checkpoints = 0

    def told(self):
        """What the clients had been told when the power went."""
        return {name: set(ids) for name, ids in self.acked.items()}, {name: set(ids) for name, ids in self.seen.items()}

    def step(self) -> None:
        rng = self.rng
        name = rng.choice(DATABASES)
        action = rng.random()
        if action < 0.12:
            self.commit_in_flight(name)
        elif action < 0.5:
            self.next_id[name] += 1
            i = self.next_id[name]
            run(
                self.writers[name], f"INSERT INTO t VALUES ({i}, txid_current(), randomblob({rng.randrange(10, 3000)}))"
            )
            self.acked[name].add(i)
        elif action < 0.65:
            ids = [self.next_id[name] + 1, self.next_id[name] + 2]
            self.next_id[name] += 2
            w = self.writers[name]
            run(w, "BEGIN")
            for i in ids:
                run(w, f"INSERT INTO t VALUES ({i}, txid_current(), randomblob(500))")
            run(w, "COMMIT")
            self.acked[name].update(ids)
        elif action < 0.8:
            self.seen[name].update(r[0] for r in run(self.readers[name], "SELECT id FROM t"))
        elif action < 0.93:
            self.engine.checkpoint("power cut test")
            self.checkpoints += 1
        elif self.pinning:
            run(self.pinner, "COMMIT")
            self.pinning = False
        else:
            run(self.pinner, "BEGIN")
            run(self.pinner, "SELECT count(*) FROM t")  # holds a snapshot: checkpoints cannot complete
            self.pinning = True

    def commit_in_flight(self, name: str) -> None:
        """A commit SQLite has made and whose WAL flush has not run yet (its
        session is still waiting for it, as another thread would be): never
        acknowledged, and the steps after this one run with it in flight.
        The next flush of anyone covers it."""
        self.next_id[name] += 1
        engine = self.engine
        lock = engine.get_database(name).commit_lock
        real_flush = engine.flush_wal
        # Flushes under the commit lock (a database whose commits are
        # durable first) still run; the one the session waits for, after it,
        # does not.
        engine.flush_wal = lambda upto=None: real_flush(upto) if lock.locked() else engine.wal.flushed_lsn
        try:
            run(self.writers[name], f"INSERT INTO t VALUES ({self.next_id[name]}, txid_current(), randomblob(100))")
        finally:
            del engine.flush_wal
        then = self.rng.choice(["nothing", "read", "checkpoint", "both"])
        if then in ("checkpoint", "both"):
            # A checkpoint must not copy it into the file before it is durable.
            self.engine.checkpoint("power cut test")
            self.checkpoints += 1
        if then in ("read", "both"):
            # A reader sees it in its snapshot: its answer must wait for the flush.
            self.seen[name].update(r[0] for r in run(self.readers[name], "SELECT id FROM t"))
        self.in_flight += 1
        if self.cut_after_in_flight is not None:
            self.cut_after_in_flight(self.in_flight)

    def close(self) -> None:
        for s in [*self.writers.values(), *self.readers.values(), self.pinner]:
            s.close()


def wal_txids(path: str, control: dd.Control) -> dict[str, set[int]]:
    """The txids of every transaction record in the data directory's WAL, per database."""
    found = {name: set() for name in DATABASES}
    ddir = dd.DataDir(path)
    first = control.segment_size * 1 + 64
    for entry in wal_reader.read_wal(
        ddir.wal_dir,
        timeline=control.timeline,
        segment_size=control.segment_size,
        start_lsn=first,
        system_id=control.system_id,
    ):
        rec = walrec.decode_record(entry.body)
        if isinstance(rec, walrec.TxRecord) and rec.database in found:
            if any(kind == "changeset" for kind, _ in rec.steps):  # not the CREATE TABLE
                found[rec.database].add(rec.txid)
    return found


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cut", CUTS, ids=lambda c: c[0] or "any")
def test_a_power_cut_at_any_write_or_sync_loses_no_acknowledged_commit_and_keeps_nothing_the_wal_lacks(
    tmp_path, seed, cut
):
    kind, most = cut
    rng = random.Random(seed)
    live = str(tmp_path / "live")
    engine = Engine.open(dd.DataDir(live), settings_for(live))
    engine.create_database("other")
    for name in DATABASES:
        s = SqlSession(engine, name, 9)
        run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY, txid INTEGER, pad BLOB)")
        s.close()
    engine.close()

    cut_at = rng.randrange(1, most)
    disk = PowerCutDisk(live, cut_at=cut_at, cut_kind=kind)
    engine = Engine.open(dd.DataDir(live, disk.fileops), settings_for(live), fileops=disk.fileops)
    work = Workload(engine, rng)
    if kind == "in flight":
        work.cut_after_in_flight = lambda n: n == cut_at and disk.take_picture()
    disk.on_cut = work.told
    try:
        for _ in range(250):
            if disk.cut:
                break
            work.step()
    finally:
        work.close()
        engine.close(clean=False)
    disk.take_picture()  # no cut during the run: the power goes now
    acked, seen = disk.at_cut
    try:
        for outcome, choose in OUTCOMES.items():
            after = str(tmp_path / outcome.replace(" ", "-"))
            disk.materialize(after, choose or rng)
            check_recovered(after, acked, seen, outcome)
    finally:
        disk.close()


def check_recovered(path, acked, seen, outcome):
    recovered = Engine.open(dd.DataDir(path), settings_for(path))
    try:
        logged = wal_txids(path, recovered.control)
        for name in DATABASES:
            s = SqlSession(recovered, name, 1)
            rows = run(s, "SELECT id, txid FROM t")
            s.close()
            ids = {r[0] for r in rows}
            where = f"{name}, {outcome}"
            assert acked[name] <= ids, f"acknowledged commits lost in {where}: {sorted(acked[name] - ids)}"
            assert seen[name] <= ids, f"rows a reader was shown are gone from {where}: {sorted(seen[name] - ids)}"
            assert {r[1] for r in rows} == logged[name], f"{where}: the database and the WAL disagree"
            # No transaction in part: ids are a prefix of those written.
            assert ids == set(range(1, len(ids) + 1)), where
    finally:
        recovered.close()


def test_the_power_cut_disk_drops_what_was_not_synced(tmp_path):
    """The simulation itself: an un-synced SQLite commit is gone, a synced one kept."""
    root = tmp_path / "d"
    root.mkdir()
    disk = PowerCutDisk(str(root), cut_at=10**9)
    try:
        conn = apsw.Connection(str(root / "x.db"), vfs=disk.vfs.name)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t(v)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("INSERT INTO t VALUES (2)")
        disk.take_picture()
        conn.close()
        out = tmp_path / "out"

        class Durable(random.Random):
            def random(self):
                return 0.99  # always the durable image

        disk.materialize(str(out), Durable())
    finally:
        disk.close()
    check = apsw.Connection(str(out / "x.db"))
    assert check.execute("SELECT v FROM t").fetchall() == [(1,)]
