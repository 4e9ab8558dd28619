"""UNDO TRANSACTION and AS OF on a running server, against a model the test keeps.

A seeded workload with a bad DELETE and later edits, some on the deleted rows
(re-inserted, then edited, and one transaction that also touches a row of its
own that a later one edits again), some on rows nobody else touched. Each test
builds the workload in a database of its own on one server.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time

import apsw
import pytest

from rustydb_client import client as rc
from tests.support.servers import ServerProcess, restore_to_target, run_tool

SEED = 19
ROWS = 60


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with ServerProcess(str(tmp_path_factory.mktemp("undo") / "data")) as proc:
        yield proc


class Workload:
    """The workload, its transactions' txids and the table after each one (the model)."""

    def __init__(self, srv: ServerProcess, database: str, created=None):
        self.srv = srv
        self.database = database
        srv.sql(f"CREATE DATABASE {database}")
        self.conn = rc.connect(port=srv.port, database=database)
        self.conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        if created is not None:
            created()  # before any row: the test's base backup
        self.model: dict[int, tuple] = {}
        self.txs: list[tuple[int, dict]] = []  # (txid, table after it)
        self.times: dict[int, str] = {}  # txid -> a local time just after it committed
        rnd = random.Random(SEED)
        self.tx([("insert", i, f"v{i}", rnd.randint(0, 99)) for i in range(1, ROWS + 1)])
        ids = list(range(1, ROWS + 1))
        for _ in range(10):
            ops = []
            for i in rnd.sample(ids, 3):
                ops.append(("update", i, f"e{rnd.randint(0, 999)}", rnd.randint(0, 99)))
            self.tx(ops)
        # The bad DELETE: every third row.
        self.doomed = sorted(i for i in self.model if i % 3 == 0)
        self.bad = self.tx([("delete", i) for i in self.doomed])
        untouched = sorted(i for i in self.model if i > ROWS // 2)
        # Later transactions on the deleted rows: one re-inserts two of them, one edits
        # one of those again and also a row of its own (X), and one edits X again.
        x = untouched.pop()
        self.conflicting = [
            self.tx([("insert", self.doomed[0], "again", 1), ("insert", self.doomed[1], "again", 2)]),
            self.tx([("update", self.doomed[1], "again2", 3), ("update", x, "x1", 4)]),
            self.tx([("update", x, "x2", 5)]),
        ]
        # Later transactions nobody else conflicts with.
        self.independent = [self.tx([("update", i, f"i{i}", 7) for i in rnd.sample(untouched, 4)]) for _ in range(3)]

    def tx(self, ops) -> int:
        c = self.conn
        c.execute("BEGIN")
        txid = c.execute("SELECT txid_current()").rows[0][0]
        for op in ops:
            if op[0] == "insert":
                c.execute(f"INSERT INTO items VALUES ({op[1]}, '{op[2]}', {op[3]})")
                self.model[op[1]] = (op[1], op[2], op[3])
            elif op[0] == "update":
                c.execute(f"UPDATE items SET v = '{op[2]}', n = {op[3]} WHERE id = {op[1]}")
                self.model[op[1]] = (op[1], op[2], op[3])
            else:
                c.execute(f"DELETE FROM items WHERE id = {op[1]}")
                del self.model[op[1]]
        c.execute("COMMIT")
        self.txs.append((txid, dict(self.model)))
        time.sleep(0.002)
        self.times[txid] = dt.datetime.now().isoformat(sep=" ", timespec="microseconds")
        time.sleep(0.002)
        return txid

    def after(self, txid: int) -> list[tuple]:
        return sorted(dict(self.txs)[txid].values())

    def replay_without(self, skipped: set[int]) -> list[tuple]:
        """The table had the transactions in ``skipped`` never run (they touch rows no other one does)."""
        table: dict[int, tuple] = {}
        before: dict[int, tuple] = {}
        for txid, state in self.txs:
            changed = {k: state.get(k) for k in set(state) | set(before) if state.get(k) != before.get(k)}
            if txid not in skipped:
                for k, v in changed.items():
                    if v is None:
                        table.pop(k, None)
                    else:
                        table[k] = v
            before = state
        return sorted(table.values())

    def table(self) -> list[tuple]:
        return [tuple(r) for r in self.conn.execute("SELECT * FROM items ORDER BY id").rows]

    def undo(self, sql: str) -> rc.Result:
        return self.conn.execute(sql)


def _restored(result: rc.Result) -> tuple[int, dict]:
    assert result.status == "UNDO" and result.columns == ["txid", "table", "rows_restored"]
    return result.rows[0][0], {r[1]: r[2] for r in result.rows}


def test_default_refuses_and_lists_the_conflicts(srv):
    w = Workload(srv, "refuse")
    before = w.table()
    with pytest.raises(rc.ServerError) as e:
        w.undo(f"UNDO TRANSACTION {w.bad}")
    message = str(e.value)
    assert e.value.code == "undo_refused"
    for txid in w.conflicting[:2]:
        assert f"{txid}" in message
    assert f"items({w.doomed[0]})" in message and "CASCADE" in message and "NONCONFLICTING" in message
    assert w.table() == before


def test_nonconflicting_restores_only_the_untouched_rows_and_undo_of_the_undo(srv):
    w = Workload(srv, "noncon")
    current = dict(w.model)
    txid, rows = _restored(w.undo(f"UNDO TRANSACTION {w.bad} NONCONFLICTING"))
    before_bad = dict(w.txs[[t for t, _ in w.txs].index(w.bad) - 1][1])
    expected = dict(current)
    for i in w.doomed[2:]:
        expected[i] = before_bad[i]
    assert rows == {"items": len(w.doomed) - 2}
    assert w.table() == sorted(expected.values())
    # The undo is a transaction like any other: undo it.
    again, rows = _restored(w.undo(f"UNDO TRANSACTION {txid}"))
    assert again != txid and rows == {"items": len(w.doomed) - 2}
    assert w.table() == sorted(current.values())


def test_cascade_undoes_the_later_conflicting_ones_too(srv):
    w = Workload(srv, "cascade")
    result = w.undo(f"UNDO TRANSACTION {w.bad} CASCADE")
    _restored(result)
    assert w.table() == w.replay_without({w.bad, *w.conflicting})
    assert any(", ".join(map(str, [w.bad, *w.conflicting])) in n for n in result.notices)


def test_range_with_a_table_filter_and_ddl_refused(srv):
    w = Workload(srv, "ranged")
    independent = set(w.independent)
    start = w.times[w.conflicting[-1]]
    _restored(
        w.undo(f"UNDO TRANSACTIONS FROM TIME '{start}' TO TIME '{w.times[w.independent[-1]]}' WHERE table = 'items'")
    )
    assert w.table() == w.replay_without(independent)
    w.conn.execute("BEGIN")
    ddl = w.conn.execute("SELECT txid_current()").rows[0][0]
    w.conn.execute("CREATE TABLE extra(a)")
    w.conn.execute("INSERT INTO items VALUES (1000, 'ddl', 0)")
    w.conn.execute("COMMIT")
    with pytest.raises(rc.ServerError, match="changed the schema"):
        w.undo(f"UNDO TRANSACTION {ddl}")


def test_undo_while_other_clients_write(srv):
    w = Workload(srv, "busy")
    w.conn.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, note TEXT)")
    stop, written, errors = threading.Event(), [], []

    def writer():
        try:
            with rc.connect(port=srv.port, database="busy") as c:
                while not stop.is_set():
                    c.execute(f"INSERT INTO log(note) VALUES ('w{len(written)}')")
                    written.append(1)
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        _restored(w.undo(f"UNDO TRANSACTION {w.bad} CASCADE"))
        seen = len(written)
        while len(written) < seen + 20:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert w.table() == w.replay_without({w.bad, *w.conflicting})
    assert w.conn.execute("SELECT count(*) FROM log").rows[0][0] == len(written)


def test_as_of_gives_the_table_at_that_point(srv):
    w = Workload(srv, "asof")
    for txid in (w.txs[3][0], w.bad, w.conflicting[1]):
        got = w.conn.execute(f"SELECT * FROM items AS OF TXID {txid} ORDER BY id")
        assert [tuple(r) for r in got.rows] == w.after(txid)
        got = w.conn.execute(f"SELECT * FROM items AS OF TIME '{w.times[txid]}' WHERE n >= 0 ORDER BY id")
        assert [tuple(r) for r in got.rows] == w.after(txid)
        assert got.columns == ["id", "v", "n"]
    # A table without a primary key (its rows known by rowid).
    w.conn.execute("CREATE TABLE notes(a, b)")
    w.conn.execute("INSERT INTO notes VALUES ('x', 1), ('y', 2), ('x', 3)")
    w.conn.execute("BEGIN")
    before = w.conn.execute("SELECT txid_current()").rows[0][0]
    w.conn.execute("UPDATE notes SET b = b * 10 WHERE a = 'x'")
    w.conn.execute("COMMIT")
    w.conn.execute("DELETE FROM notes WHERE a = 'y'")
    got = w.conn.execute(f"SELECT rowid, * FROM notes AS OF TXID {before} ORDER BY rowid").rows
    assert got == [[1, "x", 10], [2, "y", 2], [3, "x", 30]]
    # Not naming rowid: through the view over the live rows, keyed by rowid all the same.
    got = w.conn.execute(f"SELECT a, b FROM notes AS OF TXID {before} WHERE b > 1 ORDER BY b").rows
    assert got == [["y", 2], ["x", 10], ["x", 30]]
    # Point lookups, among them rows deleted since and rows inserted since.
    then, now = w.after(w.bad), w.table()
    ids = {r[0] for r in then} ^ {r[0] for r in now}
    assert ids, "the workload deleted or inserted no row after that point"
    ids |= {then[0][0], then[-1][0]}
    for key in sorted(ids)[:8]:
        got = w.conn.execute(f"SELECT * FROM items AS OF TXID {w.bad} WHERE id = {key}").rows
        assert [tuple(r) for r in got] == [r for r in then if r[0] == key]
    # The table now is unchanged, and a point the WAL does not reach is refused.
    assert w.table() == sorted(w.model.values())
    with pytest.raises(rc.ServerError, match="no longer reaches back"):
        w.conn.execute("SELECT * FROM items AS OF TIME '2001-01-01 00:00'")
    with pytest.raises(rc.ServerError, match="AS OF"):
        w.conn.execute(f"SELECT * FROM items AS OF TXID {w.bad} UNION SELECT * FROM sqlite_schema")


def test_through_the_cli(srv):
    w = Workload(srv, "cli")
    proc = srv.cli("-d", "cli", "--json", "--command", f"UNDO TRANSACTION {w.bad}")
    assert proc.returncode == 1
    assert "later transactions changed rows" in proc.stdout + proc.stderr
    proc = srv.cli("-d", "cli", "--json", "--command", f"UNDO TRANSACTION {w.bad} NONCONFLICTING")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["rows"][0][1:] == ["items", len(w.doomed) - 2]
    proc = srv.cli("-d", "cli", "--command", f"SELECT count(*) FROM items AS OF TXID {w.bad}")
    assert proc.returncode == 0 and str(len(w.after(w.bad))) in proc.stdout
    proc = srv.cli("-d", "cli", "--command", "UNDO TRANSACTION banana")
    assert proc.returncode == 1 and "Usage: UNDO TRANSACTION txid" in proc.stderr
    # Not inside a transaction block; and each undo, done or refused, is in the audit trail.
    w.conn.execute("BEGIN")
    with pytest.raises(rc.ServerError, match="cannot run inside a transaction block"):
        w.undo(f"UNDO TRANSACTION {w.bad} CASCADE")
    w.conn.execute("ROLLBACK")
    with open(srv.log_path, encoding="utf-8", errors="replace") as f:
        events = [json.loads(line) for line in f if '"action": "undo"' in line]
    mine = [e for e in events if e.get("database") == "cli"]
    done = next(e for e in mine if e["outcome"] == "ok")
    assert done["txid"] == w.bad and done["mode"] == "nonconflicting" and done["rows"] == {"items": len(w.doomed) - 2}
    assert any(e["outcome"] == "failed" and "later transactions" in e["error"] for e in mine)


def test_undo_and_as_of_read_the_archive_once_the_server_removed_the_segments(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}'")
    base = tmp_path / "base.backup"

    def take_base():
        run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True)

    w = Workload(srv, "archived", created=take_base)
    wal_dir = tmp_path / "data" / "wal"
    first_segments = set(os.listdir(wal_dir))
    srv.wait_archived()
    srv.sql("CHECKPOINT")
    assert first_segments - set(os.listdir(wal_dir)), "the checkpoint removed no segment"
    got = w.conn.execute(f"SELECT * FROM items AS OF TXID {w.bad} ORDER BY id")
    assert [tuple(r) for r in got.rows] == w.after(w.bad)
    # AS OF gives what a point-in-time restore to the same point gives.
    point = w.conflicting[1]
    as_of = w.conn.execute(f"SELECT * FROM items AS OF TIME '{w.times[point]}' ORDER BY id").rows
    restored = tmp_path / "restored"
    proc = restore_to_target(base, archive, restored, "--recovery-target-time", w.times[point])
    assert proc.returncode == 0, proc.stderr
    db = apsw.Connection(str(restored / "databases" / "archived.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert db.execute("SELECT * FROM items ORDER BY id").fetchall() == [tuple(r) for r in as_of]
    finally:
        db.close()
    assert [tuple(r) for r in as_of] == w.after(point)
    # So does rusty-db-backup --query on the base and the archive, with no server and no restore.
    for flag, value in (("--recovery-target-time", w.times[point]), ("--recovery-target-txid", str(point))):
        proc = run_tool(
            "rusty-db-backup", "--query", str(base), "SELECT * FROM items ORDER BY id", "--database", "archived",
            "--archive-dir", str(archive), flag, value, "--json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["rows"] == as_of
    _restored(w.undo(f"UNDO TRANSACTION {w.bad} CASCADE"))
    assert w.table() == w.replay_without({w.bad, *w.conflicting})
    # Without the archive the WAL needed is gone: refused, saying how far back it reaches.
    srv.sql("ALTER SYSTEM SET archive_mode = off")
    srv.sql("ALTER SYSTEM RESET archive_dest")
    with pytest.raises(rc.ServerError, match="oldest record still in the server's WAL") as e:
        w.conn.execute(f"SELECT * FROM items AS OF TXID {w.bad}")
    assert e.value.code == "wal_unavailable"


def test_privileges_undo_needs_write_and_as_of_needs_read(srv):
    w = Workload(srv, "grants")
    srv.sql("CREATE ROLE undoer LOGIN PASSWORD 'undo pass'")

    def as_undoer(sql: str):
        return run_tool(
            "rusty-db-cli", "--host", "127.0.0.1", "--port", str(srv.port), "-U", "undoer", "-d", "grants",
            "--command", sql, env={"RUSTYDB_PASSWORD": "undo pass"},
        )  # fmt: skip

    denied = as_undoer(f"SELECT count(*) FROM items AS OF TXID {w.bad}")
    assert denied.returncode == 1 and 'permission denied for database "grants"' in denied.stderr
    srv.sql("GRANT SELECT ON DATABASE grants TO undoer")
    assert as_undoer(f"SELECT count(*) FROM items AS OF TXID {w.bad}").returncode == 0
    denied = as_undoer(f"UNDO TRANSACTION {w.bad} NONCONFLICTING")
    assert denied.returncode == 1 and 'permission denied for writing to database "grants"' in denied.stderr
    srv.sql("GRANT WRITE ON DATABASE grants TO undoer")
    done = as_undoer(f"UNDO TRANSACTION {w.bad} NONCONFLICTING")
    assert done.returncode == 0, done.stderr
    assert "rows_restored" in done.stdout and "NOTICE: undid transaction" in done.stdout + done.stderr


class RandomWorkload(Workload):
    """A seeded random workload: inserts, updates and deletes; one bad DELETE of many rows,
    then random edits anywhere, re-inserting some deleted rows and editing others.
    Every transaction's touched ids are kept (the model of what a conflict is)."""

    def __init__(self, srv: ServerProcess, database: str, seed: int):
        self.srv, self.database = srv, database
        srv.sql(f"CREATE DATABASE {database}")
        self.conn = rc.connect(port=srv.port, database=database)
        self.conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        self.model, self.txs, self.times, self.touched = {}, [], {}, {}
        rnd = random.Random(seed)
        self.tx([("insert", i, f"v{i}", rnd.randint(0, 9)) for i in range(1, ROWS + 1)])
        for _ in range(8):
            self.tx(self._random_ops(rnd))
        self.doomed = sorted(i for i in self.model if self.model[i][2] < 4)
        self.bad = self.tx([("delete", i) for i in self.doomed])
        for _ in range(15):
            self.tx(self._random_ops(rnd))

    def _random_ops(self, rnd) -> list:
        ops, seen = [], set()
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randint(1, ROWS + 5)
            if i in seen:
                continue
            seen.add(i)
            if i not in self.model:
                ops.append(("insert", i, f"r{rnd.randint(0, 999)}", rnd.randint(0, 9)))
            elif rnd.random() < 0.2:
                ops.append(("delete", i))
            else:
                ops.append(("update", i, f"u{rnd.randint(0, 999)}", rnd.randint(0, 9)))
        return ops

    def tx(self, ops) -> int:
        txid = super().tx(ops)
        self.touched[txid] = {op[1] for op in ops}
        return txid


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_workloads_each_mode_gives_the_models_table(srv, seed):
    order = []
    for mode in ("refuse", "nonconflicting", "cascade"):
        w = RandomWorkload(srv, f"rnd{seed}{mode[:3]}", seed)
        order = [t for t, _ in w.txs]
        later = order[order.index(w.bad) + 1 :]
        conflicting = [t for t in later if w.touched[t] & set(w.doomed)]
        if mode == "refuse":
            if not conflicting:
                _restored(w.undo(f"UNDO TRANSACTION {w.bad}"))
                assert w.table() == w.replay_without({w.bad})
                continue
            before = w.table()
            with pytest.raises(rc.ServerError) as e:
                w.undo(f"UNDO TRANSACTION {w.bad}")
            assert f"txid {', '.join(map(str, conflicting))} (" in str(e.value)
            assert w.table() == before
        elif mode == "nonconflicting":
            before_bad = dict(w.txs[order.index(w.bad) - 1][1])
            kept = set().union(*(w.touched[t] for t in later)) if later else set()
            expected = dict(w.model)
            for i in w.doomed:
                if i not in kept:
                    expected[i] = before_bad[i]
            _restored(w.undo(f"UNDO TRANSACTION {w.bad} NONCONFLICTING"))
            assert w.table() == sorted(expected.values())
        else:
            # The closure: the bad DELETE, every later transaction touching a row an undone
            # one touched before it, and so on.
            undone, rows = {w.bad}, set(w.doomed)
            for t in later:
                if w.touched[t] & rows:
                    undone.add(t)
                    rows |= w.touched[t]
            result = w.undo(f"UNDO TRANSACTION {w.bad} CASCADE")
            _restored(result)
            assert w.table() == w.replay_without(undone)
