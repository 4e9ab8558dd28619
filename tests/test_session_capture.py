"""Change capture: replaying the WAL gives exactly the live database.

Transactions mixing DDL, savepoints (nested, released, rolled back to) and
writes, with the capture cut into many steps (a transaction grown past
CUT_SESSION_BYTES is cut at the end of a statement; here the bound is made
tiny so every statement cuts): applying every logged record in order to an
empty database must give the live database's schema and rows, and a DDL
statement a ROLLBACK TO undid must not be in the WAL at all.
"""

from __future__ import annotations

import random

import apsw
import pytest

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.engine import database, replay
from rustydb_server.engine import session as session_mod
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlError, SqlSession, savepoint_name
from rustydb_server.settings import Settings
from rustydb_server.wal import reader
from rustydb_server.wal import record as walrec


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / "data")
    eng = Engine.open(dd.DataDir(path), Settings.load(None, path, {"wal_segment_size": 1 << 20}))
    yield eng
    eng.close()


def run(session: SqlSession, sql: str):
    return session.run(sql, leading_keywords(sql, 2), 100_000)[1]


def logged_records(engine: Engine) -> list:
    c = engine.control
    out = []
    for entry in reader.read_wal(
        engine.datadir.wal_dir,
        timeline=c.timeline,
        segment_size=c.segment_size,
        start_lsn=c.segment_size,
        system_id=c.system_id,
    ):
        rec = walrec.decode_record(entry.body)
        if isinstance(rec, walrec.TxRecord):
            out.append((entry.lsn, rec))
    return out


def replayed_copy(engine: Engine, path: str) -> apsw.Connection:
    """An empty database with every logged transaction applied, in order."""
    database.create_database_file(path, 0)
    conn = replay.open_replay_connection(path)
    for lsn, rec in logged_records(engine):
        replay.apply_tx_record(conn, lsn, rec)
    return conn


def dump(conn) -> dict:
    """Schema and rows (by rowid; a WITHOUT ROWID table by its key)."""
    schema = conn.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' "
        f"AND name != '{database.STATE_TABLE}' ORDER BY name"
    ).fetchall()
    out: dict = {"schema": [tuple(r) for r in schema]}
    for kind, name, sql in schema:
        if kind == "table":
            cols = "*" if "WITHOUT ROWID" in sql.upper() else "rowid, *"
            out[name] = [tuple(r) for r in conn.execute(f'SELECT {cols} FROM "{name}" ORDER BY 1')]
    return out


def live_dump(engine: Engine) -> dict:
    conn = database.open_connection(engine.datadir.database_path("rustydb"))
    try:
        return dump(conn)
    finally:
        conn.close()


def test_a_ddl_statement_rolled_back_to_a_savepoint_is_not_logged(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    run(s, "BEGIN")
    run(s, "INSERT INTO t VALUES (1, 'kept')")
    run(s, "SAVEPOINT a")
    run(s, "CREATE TABLE gone(x)")
    run(s, "INSERT INTO t VALUES (2, 'rolled back')")
    run(s, "ROLLBACK TRANSACTION TO SAVEPOINT A")  # names compare without case, the long form too
    run(s, "INSERT INTO t VALUES (3, 'after')")
    run(s, "COMMIT")
    s.close()
    logged = [step for _, rec in logged_records(engine) for step in rec.steps]
    assert not any(kind == "ddl" and "gone" in payload for kind, payload in logged)
    copy = replayed_copy(engine, str(tmp_path / "copy.sqlite"))
    assert dump(copy) == live_dump(engine)
    assert copy.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (3,)]
    copy.close()


def test_savepoint_names_are_read_as_sqlite_reads_them():
    assert savepoint_name("SAVEPOINT a") == "a"
    assert savepoint_name('savepoint "Odd ""name"""') == 'odd "name"'
    assert savepoint_name("RELEASE SAVEPOINT [B]") == "b"
    assert savepoint_name("RELEASE b") == "b"
    assert savepoint_name("SAVEPOINT 'it''s'") == "it's"
    assert savepoint_name("RELEASE savepoint") == "savepoint"
    assert savepoint_name("ROLLBACK TO x") == "x"
    assert savepoint_name("ROLLBACK /* c */ TRANSACTION TO SAVEPOINT `y`") == "y"
    assert savepoint_name("ROLLBACK") is None
    assert savepoint_name("SAVEPOINT") is None


def test_an_unreadable_savepoint_name_is_refused_before_it_runs(engine):
    s = SqlSession(engine, "rustydb", 1)
    run(s, "BEGIN")
    with pytest.raises(SqlError, match="savepoint name"):
        run(s, "SAVEPOINT")
    run(s, "ROLLBACK")
    s.close()


def random_statement(rnd: random.Random, tables: list[str], tag: str) -> str:
    op = rnd.random()
    t = rnd.choice(tables)
    if op < 0.35:
        n = rnd.randint(1, 300)
        return (
            f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {n}) "
            f"INSERT OR REPLACE INTO {t}(id, v) SELECT abs(random()) % 2000, '{tag}-' || i FROM s"
        )
    if op < 0.55:
        return f"UPDATE {t} SET v = v || '+' WHERE id % {rnd.randint(2, 9)} = {rnd.randint(0, 1)}"
    if op < 0.65:
        return f"DELETE FROM {t} WHERE id % {rnd.randint(3, 13)} = 0"
    # DDL under names of their own, so one replayed that should not be shows
    if op < 0.72:
        return f"CREATE INDEX {t}_{tag} ON {t}(v)"
    if op < 0.8:
        return f"CREATE TABLE x_{tag}(id INTEGER PRIMARY KEY, v TEXT)"
    if op < 0.84:
        return f"DROP TABLE IF EXISTS x_{rnd.choice(tag.split('_')[:1])}_0"
    return f"INSERT INTO {t}(id, v) VALUES ({rnd.randint(2000, 1_000_000)}, hex(randomblob(8)))"


@pytest.mark.parametrize("cut_bytes", [session_mod.CUT_SESSION_BYTES, 1], ids=["default-cuts", "cut-every-statement"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replaying_the_wal_gives_the_live_database(engine, tmp_path, monkeypatch, seed, cut_bytes):
    monkeypatch.setattr(session_mod, "CUT_SESSION_BYTES", cut_bytes)
    rnd = random.Random(seed)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT)")
    run(s, "CREATE TABLE b(id INTEGER PRIMARY KEY, v)")
    tables = ["a", "b"]
    for tx in range(30):
        run(s, "BEGIN")
        open_points: list[str] = []
        for step in range(rnd.randint(1, 12)):
            r = rnd.random()
            if r < 0.15:
                name = f"sp{tx}_{step}"
                run(s, f"SAVEPOINT {name}")
                open_points.append(name)
            elif r < 0.25 and open_points:
                name = rnd.choice(open_points)
                run(s, f"ROLLBACK TO {name}")
                del open_points[open_points.index(name) + 1 :]
            elif r < 0.3 and open_points:
                name = rnd.choice(open_points)
                run(s, f"RELEASE {name}")
                del open_points[open_points.index(name) :]
            else:
                try:
                    run(s, random_statement(rnd, tables, f"{tx}_{step}"))
                except SqlError:
                    pass  # a failed statement leaves the transaction as it was
        run(s, "COMMIT" if rnd.random() < 0.85 else "ROLLBACK")
    s.close()
    copy = replayed_copy(engine, str(tmp_path / "copy.sqlite"))
    try:
        assert dump(copy) == live_dump(engine)
    finally:
        copy.close()


def test_a_large_transaction_is_logged_in_bounded_pieces(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "CUT_SESSION_BYTES", 256 * 1024)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "CREATE TABLE many(id INTEGER PRIMARY KEY, v TEXT)")
    run(s, "BEGIN")
    for start in range(0, 50_000, 5000):
        run(
            s,
            f"WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i+1 FROM s WHERE i < {start + 4999}) "
            # OR REPLACE: captured by the session extension (a plain bulk insert is a rows step)
            "INSERT OR REPLACE INTO many SELECT i, 'row ' || i FROM s",
        )
    run(s, "UPDATE many SET v = v || '!' WHERE id % 10 = 0")
    run(s, "COMMIT")
    s.close()
    _, last = logged_records(engine)[-1]
    changesets = [p for kind, p in last.steps if kind == "changeset"]
    assert len(changesets) > 3  # cut as the transaction grew, not once at COMMIT
    copy = replayed_copy(engine, str(tmp_path / "copy.sqlite"))
    try:
        assert dump(copy) == live_dump(engine)
        assert copy.execute("SELECT count(*), sum(v LIKE '%!') FROM many").fetchall() == [(50_000, 5000)]
    finally:
        copy.close()
