"""AS OF's pure part (forensics/asof.py): which transactions are taken back, and its refusals."""

from __future__ import annotations

import random

import apsw
import pytest

from rustydb_server.forensics import asof
from rustydb_server.forensics import undo as undo_txs
from tests.test_undo_plan import Db


def rebuilt(db: Db, query: asof.AsOfQuery) -> list:
    """The table now, copied, with the inverse applied, then queried read-only."""
    later = asof.after_target(db.txs, query, applied_lsn=10**9, reach_time_us=0)
    mem = apsw.Connection(":memory:")  # the table now, copied
    with mem.backup("main", db.conn, "main") as b:
        b.step()
    inverse = asof.inverse_for_table(later, query.table)
    if inverse:
        apsw.Changeset.apply(inverse, mem, filter=lambda t: t == query.table)
    return asof.run_read_only(mem, query.sql, 10**6)[1]


def test_each_point_gives_the_table_then():
    db = Db()
    states = []
    for sql in ("INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'B' WHERE id = 2", "DELETE FROM t"):
        txid = db.tx(sql)
        states.append((txid, db.rows()))
    for txid, rows in states:
        got = rebuilt(db, asof.AsOfQuery("SELECT * FROM t ORDER BY id", "t", txid=txid))
        assert [tuple(r) for r in got] == rows
        time_us = next(tx.commit_time_us for tx in db.txs if tx.txid == txid)
        got = rebuilt(db, asof.AsOfQuery("SELECT * FROM t ORDER BY id", "t", time_us=time_us))
        assert [tuple(r) for r in got] == rows


def test_refusals():
    db = Db()
    first = db.tx("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(asof.AsOfRefused, match="not in this database's WAL"):
        asof.after_target(db.txs, asof.AsOfQuery("SELECT 1", "t", txid=12345), 10**9, reach_time_us=0)
    with pytest.raises(asof.AsOfRefused, match="no longer reaches back"):
        asof.after_target(db.txs, asof.AsOfQuery("SELECT 1", "t", time_us=5), 10**9, reach_time_us=6)
    db.tx("CREATE INDEX t_v ON t(v)")  # keeps the rows as they are
    assert asof.after_target(db.txs, asof.AsOfQuery("SELECT 1", "t", txid=first), 10**9, reach_time_us=0)
    db.tx("ALTER TABLE t ADD COLUMN w")
    with pytest.raises(asof.AsOfRefused, match="changed the schema of table t"):
        asof.after_target(db.txs, asof.AsOfQuery("SELECT 1", "t", txid=first), 10**9, reach_time_us=0)
    db.tx("CREATE TABLE later_one(x)")
    with pytest.raises(asof.AsOfRefused, match="did not exist then"):
        asof.after_target(db.txs, asof.AsOfQuery("SELECT 1", "later_one", txid=first), 10**9, reach_time_us=0)


def test_the_query_may_only_read():
    mem = apsw.Connection(":memory:")
    mem.execute("CREATE TABLE t(x)")
    for sql in ("DELETE FROM t", "ATTACH DATABASE '/tmp/x' AS x", "PRAGMA writable_schema = 1"):
        with pytest.raises(asof.AsOfRefused, match="read-only"):
            asof.run_read_only(mem, sql, 10**6)
    with pytest.raises(asof.AsOfRefused, match="larger than"):
        asof.run_read_only(
            mem, "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s) SELECT i FROM s", 10**4
        )


# ---------------------------------------------------------------- the view over the live table

_TABLES = {
    "t": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
    "c": "CREATE TABLE c(a TEXT COLLATE NOCASE, b INTEGER, v, PRIMARY KEY(a, b))",
    "u": "CREATE TABLE u(a, b)",  # no primary key: its rows known by rowid
    "w": "CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID",
}
_ORDER = {"t": "id", "c": "a, b", "u": "rowid", "w": "k"}


class FileDb:
    """A database file whose transactions are captured like the server's, with the state after each."""

    def __init__(self, path: str):
        self.path = path
        self.conn = apsw.Connection(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        for sql in _TABLES.values():
            self.conn.execute(sql)
        self.txs = []
        self.states = {}  # txid -> {table: rows}

    def tx(self, statements) -> int:
        session = apsw.Session(self.conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.attach()
        self.conn.execute("BEGIN")
        for sql, args in statements:
            self.conn.execute(sql, args)
        self.conn.execute("COMMIT")
        cs = session.changeset()
        session.close()
        txid = 100 + len(self.txs)
        self.txs.append(undo_txs.Tx(len(self.txs), txid, len(self.txs), (("changeset", cs),) if cs else ()))
        self.states[txid] = {name: self.table(name) for name in _TABLES}
        return txid

    def table(self, name: str) -> list:
        return (
            self.conn.execute(f"SELECT rowid, * FROM {name} ORDER BY {_ORDER[name]}").fetchall()
            if name == "u"
            else (self.conn.execute(f"SELECT * FROM {name} ORDER BY {_ORDER[name]}").fetchall())
        )


def _random_statements(rnd: random.Random) -> list:
    out = []
    for _ in range(rnd.randint(1, 4)):
        table, op = rnd.choice("tcuw"), rnd.choice(("insert", "insert", "update", "delete"))
        key = rnd.randint(1, 30)
        if table == "t":
            out.append({
                "insert": ("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", (key, rnd.choice("xyz"), rnd.randint(0, 9))),
                "update": ("UPDATE t SET n = n + 1 WHERE id = ?", (key,)),
                "delete": ("DELETE FROM t WHERE id BETWEEN ? AND ?", (key, key + rnd.randint(0, 3))),
            }[op])  # fmt: skip
        elif table == "c":
            a = rnd.choice(["p", "q", "r"])
            out.append({
                "insert": ("INSERT OR REPLACE INTO c VALUES (?, ?, ?)", (a, key % 5, rnd.random())),
                "update": ("UPDATE c SET v = ? WHERE b = ?", (rnd.randint(0, 9), key % 5)),
                "delete": ("DELETE FROM c WHERE a = ? AND b = ?", (a, key % 5)),
            }[op])  # fmt: skip
        elif table == "u":
            out.append({
                "insert": ("INSERT INTO u VALUES (?, ?)", (rnd.choice("xyz"), key)),
                "update": ("UPDATE u SET b = b * 2 WHERE a = ?", (rnd.choice("xyz"),)),
                "delete": ("DELETE FROM u WHERE b = ?", (key,)),
            }[op])  # fmt: skip
        else:
            out.append({
                "insert": ("INSERT OR REPLACE INTO w VALUES (?, ?)", (f"k{key}", rnd.randint(0, 99))),
                "update": ("UPDATE w SET v = v + 1 WHERE k = ?", (f"k{key}",)),
                "delete": ("DELETE FROM w WHERE k >= ?", (f"k{key}",)),
            }[op])  # fmt: skip
    return out


def _as_of(db: FileDb, table: str, txid: int, sql: str, *, copy_all: bool = False):
    """``sql`` run on ``table`` as of ``txid``, shown as the server shows it (the file attached, one snapshot)."""
    later = asof.after_target(db.txs, asof.AsOfQuery(sql, table, txid=txid), applied_lsn=10**9, reach_time_us=0)
    conn = apsw.Connection(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS src", (db.path,))
        conn.execute("BEGIN")
        create = conn.execute("SELECT sql FROM src.sqlite_schema WHERE name = ?", (table,)).fetchall()[0][0]
        presented = asof.present(conn, "src", table, create, asof.inverse_for_table(later, table), copy_all=copy_all)
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
        return asof.run_read_only(conn, sql, 10**7, presented)[1], plan, presented
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_view_gives_the_table_then_at_random_points(tmp_path, seed):
    rnd = random.Random(seed)
    db = FileDb(str(tmp_path / "db.sqlite"))
    txids = [db.tx(_random_statements(rnd)) for _ in range(60)]
    for txid in rnd.sample(txids, 12):
        then = db.states[txid]
        for table in ("t", "c", "w"):
            got, _, _ = _as_of(db, table, txid, f"SELECT * FROM {table} ORDER BY {_ORDER[table]}")
            assert [tuple(r) for r in got] == then[table], (seed, txid, table)
        # Without a primary key: the rows (by value) through the view, and with their rowids through a copy.
        got, _, presented = _as_of(db, "u", txid, "SELECT a, b FROM u ORDER BY a, b")
        assert presented.schema == "temp"
        assert [tuple(r) for r in got] == sorted((a, b) for _, a, b in then["u"])
        got, _, presented = _as_of(db, "u", txid, "SELECT rowid, * FROM u ORDER BY rowid", copy_all=True)
        assert presented.schema == "main" and [tuple(r) for r in got] == then["u"]
        # A point lookup, a range and an aggregate, each through the live table's primary key.
        key = rnd.randint(1, 30)
        got, plan, presented = _as_of(db, "t", txid, f"SELECT v, n FROM t WHERE id = {key}")
        assert [tuple(r) for r in got] == [(v, n) for i, v, n in then["t"] if i == key]
        assert "USING INTEGER PRIMARY KEY (rowid=?)" in plan and "SCAN" not in plan, plan
        got, plan, _ = _as_of(db, "t", txid, f"SELECT count(*), sum(n) FROM t WHERE id BETWEEN {key} AND {key + 9}")
        in_range = [n for i, _, n in then["t"] if key <= i <= key + 9]
        assert [tuple(r) for r in got] == [(len(in_range), sum(in_range) if in_range else None)]
        assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan
        got, _, _ = _as_of(db, "c", txid, "SELECT b, v FROM c WHERE a = 'p' ORDER BY b")
        assert [tuple(r) for r in got] == [(b, v) for a, b, v in then["c"] if a.lower() == "p"]
        assert presented.copied_rows <= sum(len(list(apsw.Changeset.iter(cs))) for tx in db.txs for _, cs in tx.steps)


def test_the_view_reads_only_the_changed_rows_and_its_table(tmp_path):
    db = FileDb(str(tmp_path / "db.sqlite"))
    db.tx(
        [
            (
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000) "
                "INSERT INTO t SELECT i, 'x', 0 FROM s",
                (),
            )
        ]
    )
    target = db.tx([("UPDATE t SET n = 1 WHERE id = 5", ())])
    db.tx([("DELETE FROM t WHERE id IN (7, 8)", ()), ("INSERT INTO t VALUES (2000, 'new', 0)", ())])
    db.tx([("UPDATE t SET n = 2 WHERE id = 5", ())])
    got, _, presented = _as_of(db, "t", target, "SELECT count(*), sum(n) FROM t")
    assert got == [[1000, 1]]
    assert presented.copied_rows == 2  # ids 5 and 2000 exist now and changed since; 7, 8 come from the inverse
    for sql in ("SELECT * FROM src.t", "SELECT * FROM main.t", f"SELECT * FROM {asof.KEYS_TABLE}", "SELECT * FROM c"):
        with pytest.raises(asof.AsOfRefused, match="read-only query on one table"):
            _as_of(db, "t", target, sql)
