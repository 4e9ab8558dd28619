"""An incremental's row counts: its parent's plus the net changes' inserts minus their deletes,
counted where the changes cannot tell (backup/incremental.py)."""

from __future__ import annotations

import apsw

from rustydb_server.backup.incremental import _derived, _row_counts
from rustydb_server.backup.manifest import TableRows
from rustydb_server.engine.session import SEQUENCE_STEP_PREFIX


def changeset(conn: apsw.Connection, *sql: str) -> bytes:
    session = apsw.Session(conn, "main")
    session.attach()
    for statement in sql:
        conn.execute(statement)
    return session.changeset()


def source() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE a(id INTEGER PRIMARY KEY, v); CREATE TABLE b(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO a VALUES (1, 'x'), (2, 'y'), (3, 'z'); INSERT INTO b VALUES (1, 'q')")
    return conn


def test_inserts_add_deletes_remove_and_updates_change_nothing():
    conn = source()
    one = changeset(conn, "INSERT INTO a VALUES (4, 'w'), (5, 'v')", "DELETE FROM b WHERE id = 1")
    two = changeset(conn, "UPDATE a SET v = 'new' WHERE id = 1", "UPDATE a SET id = 10 WHERE id = 2")
    steps = [("changeset", one), ("ddl", f"{SEQUENCE_STEP_PREFIX} = 7 WHERE name IN ('a')"), ("changeset", two)]
    assert _derived({"a": 3, "b": 1}, steps) == {"a": 5, "b": 0}
    # And what the tables hold says the same.
    assert conn.execute("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)").fetchall() == [(5, 0)]


def test_what_the_changes_cannot_tell_is_counted():
    conn = source()
    one = changeset(conn, "INSERT INTO a VALUES (4, 'w')")
    assert _derived(None, [("changeset", one)]) is None  # no parent counts (an older catalog entry)
    assert _derived({"b": 1}, [("changeset", one)]) is None  # a table the parent did not record
    assert _derived({"a": 3, "b": 1}, [("ddl", "CREATE TABLE c(x)")]) is None
    assert _derived({"a": 3, "b": 1}, [("create", None)]) is None
    assert _derived({"a": 3, "b": 1}, []) == {"a": 3, "b": 1}  # unchanged since the parent


def test_row_counts_derive_where_they_can_and_count_the_rest():
    changed, altered = source(), source()
    one = changeset(changed, "INSERT INTO a VALUES (4, 'w')")
    altered.execute("CREATE TABLE c(x); INSERT INTO c VALUES (1), (2)")
    # The parent's counts for "changed" are deliberately off by 100: derived from them, not counted.
    parent = {"changed": {"a": 103, "b": 1}, "altered": {"a": 3, "b": 1}}
    steps = {"changed": [("changeset", one)], "altered": [("ddl", "CREATE TABLE c(x)")]}
    counts = _row_counts({"changed": changed, "altered": altered}, parent, steps)
    assert counts["changed"] == (TableRows("a", 104), TableRows("b", 1))
    assert counts["altered"] == (TableRows("a", 3), TableRows("b", 1), TableRows("c", 2))
