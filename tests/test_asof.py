"""AS OF's pure part (forensics/asof.py): which transactions are taken back, and its refusals."""

from __future__ import annotations

import apsw
import pytest

from rustydb_server.forensics import asof
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
