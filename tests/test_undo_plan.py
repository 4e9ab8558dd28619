"""The undo planner (forensics/undo.py) on changesets captured as the server captures them."""

from __future__ import annotations

import apsw
import pytest

from rustydb_server.forensics import undo


class Db:
    """An in-memory database whose transactions are captured like the server's."""

    def __init__(self):
        self.conn = apsw.Connection(":memory:")
        self.conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE u(a, b)")
        self.txs: list[undo.Tx] = []

    def tx(self, *sql: str) -> int:
        session = apsw.Session(self.conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.attach()
        steps = []
        for statement in sql:
            if statement.split()[0].upper() in ("CREATE", "ALTER", "DROP", "ANALYZE"):
                steps.append(("ddl", statement))
            self.conn.execute(statement)
        cs = session.changeset()
        session.close()
        if cs:
            steps.insert(0, ("changeset", cs))
        txid = 100 + len(self.txs)
        self.txs.append(undo.Tx(len(self.txs), txid, len(self.txs), tuple(steps)))
        return txid

    def apply(self, plan: undo.UndoPlan) -> None:
        apsw.Changeset.apply(plan.changeset, self.conn, filter_change=plan.wanted)

    def rows(self, table="t"):
        return self.conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


@pytest.fixture
def db():
    d = Db()
    d.tx("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')", "INSERT INTO u VALUES ('x', 1), ('y', 2)")
    return d


def test_undo_a_delete_with_no_later_change(db):
    bad = db.tx("DELETE FROM t WHERE id IN (2, 3)")
    db.tx("UPDATE t SET v = 'A' WHERE id = 1")
    plan = undo.plan_undo(db.txs, {bad})
    assert plan.rows_by_table() == {"t": 2}
    db.apply(plan)
    assert db.rows() == [(1, "A"), (2, "b"), (3, "c"), (4, "d")]


def test_a_later_change_to_the_same_row_refuses_and_names_it(db):
    bad = db.tx("UPDATE t SET v = 'bad' WHERE id IN (2, 3)")
    later = db.tx("UPDATE t SET v = 'later' WHERE id = 3")
    with pytest.raises(undo.UndoRefused) as e:
        undo.plan_undo(db.txs, {bad})
    assert f"txid {later}" in str(e.value) and "t(3)" in str(e.value) and "CASCADE" in str(e.value)


def test_cascade_undoes_the_later_ones_transitively(db):
    bad = db.tx("UPDATE t SET v = 'bad' WHERE id IN (2, 3)")
    later = db.tx("UPDATE t SET v = 'later' WHERE id = 3; UPDATE t SET v = 'x' WHERE id = 4")
    last = db.tx("DELETE FROM t WHERE id = 4")
    db.tx("UPDATE t SET v = 'kept' WHERE id = 1")
    plan = undo.plan_undo(db.txs, {bad}, undo.CASCADE)
    assert plan.undone == [bad, later, last]
    db.apply(plan)
    assert db.rows() == [(1, "kept"), (2, "b"), (3, "c"), (4, "d")]


def test_nonconflicting_restores_only_the_rows_nobody_touched(db):
    bad = db.tx("DELETE FROM t WHERE id IN (2, 3)")
    db.tx("INSERT INTO t VALUES (3, 'new')")
    plan = undo.plan_undo(db.txs, {bad}, undo.NONCONFLICTING)
    assert plan.rows_by_table() == {"t": 1}
    db.apply(plan)
    assert db.rows() == [(1, "a"), (2, "b"), (3, "new"), (4, "d")]


def test_rowid_tables_and_a_table_filter(db):
    first = db.tx("DELETE FROM u WHERE a = 'x'", "DELETE FROM t WHERE id = 1")
    plan = undo.plan_undo(db.txs, {first}, table="u")
    assert plan.rows_by_table() == {"u": 1}
    db.apply(plan)
    assert db.rows("u") == [("x", 1), ("y", 2)] and db.rows()[0][0] == 2


def test_ddl_in_the_transaction_refuses(db):
    bad = db.tx("CREATE TABLE w(x)", "INSERT INTO t VALUES (9, 'z')")
    with pytest.raises(undo.UndoRefused, match="changed the schema"):
        undo.plan_undo(db.txs, {bad})


def test_ddl_after_on_a_touched_table_refuses_but_not_on_another(db):
    bad = db.tx("DELETE FROM t WHERE id = 2")
    db.tx("CREATE INDEX u_a ON u(a)")
    db.tx("CREATE INDEX t_v ON t(v)")
    db.tx("ANALYZE")
    assert undo.plan_undo(db.txs, {bad}).rows_by_table() == {"t": 1}
    db.txs.append(undo.Tx(98, 998, 98, (("ddl", "VACUUM"),)))  # as the server logs it
    with pytest.raises(undo.UndoRefused, match="VACUUM"):
        undo.plan_undo(db.txs, {bad})
    db.txs.pop()
    db.tx("ALTER TABLE t ADD COLUMN w")
    with pytest.raises(undo.UndoRefused, match="after the transaction to undo"):
        undo.plan_undo(db.txs, {bad})


def test_the_undo_of_an_undo(db):
    bad = db.tx("DELETE FROM t WHERE id = 2")
    plan = undo.plan_undo(db.txs, {bad})
    # The undo as the server captures it: a transaction of its own.
    session = apsw.Session(db.conn, "main")
    session.attach()
    db.apply(plan)
    cs = session.changeset()
    session.close()
    db.txs.append(undo.Tx(99, 999, 99, (("changeset", cs),)))
    assert db.rows()[1] == (2, "b")
    db.apply(undo.plan_undo(db.txs, {999}))
    assert [r[0] for r in db.rows()] == [1, 3, 4]
