"""Bulk inserts logged as rows steps: replaying the WAL gives exactly the live database.

Randomized transactions mix bulk inserts (INSERT ... SELECT) into empty and
non-empty tables with what must make the server fall back to the session
extension or end a rows step early: explicit rowids below the largest, OR
REPLACE, upserts, updates and deletes of the new rows in the same transaction,
savepoints rolled back to, DDL, failing statements (OR FAIL keeps its first
rows), AUTOINCREMENT, tables without a primary key or with a column named
rowid. The logged records, applied one by one, batched, and with every rows
step read as its changeset (what forensics and incremental backups read),
must each give the live database.
"""

from __future__ import annotations

import random

import apsw
import pytest

from rustydb_server.engine import database, replay, rows_image
from rustydb_server.engine.session import SqlError, SqlSession
from rustydb_server.wal import record as walrec

from .test_session_capture import dump, live_dump, logged_records, run
from .test_session_capture import engine as engine  # noqa: F401 - the fixture

TABLES = {
    "a": "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, n REAL)",
    "b": "CREATE TABLE b(x TEXT, y INTEGER, UNIQUE(y))",  # no primary key: captured by rowid
    "c": "CREATE TABLE c(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
    "d": 'CREATE TABLE d("rowid" TEXT, k INTEGER PRIMARY KEY, blob BLOB)',  # rowid reached as _rowid_
}


def gen(lo: int, n: int) -> str:
    return f"WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i+1 FROM s WHERE i < {lo + n - 1}) "


def bulk(rnd: random.Random, table: str, lo: int, n: int) -> str:
    verb = rnd.choice(["INSERT", "INSERT", "INSERT OR IGNORE", "INSERT OR FAIL", "INSERT OR REPLACE"])
    if table == "a":
        return gen(lo, n) + f"{verb} INTO a SELECT i, 'v' || i, i * 0.5 FROM s"
    if table == "b":
        return gen(lo, n) + f"{verb} INTO b(x, y) SELECT 'x' || i, i FROM s"
    if table == "c":
        return gen(lo, n) + f"{verb} INTO main.c(v) SELECT 'c' || i FROM s"
    return gen(lo, n) + f"{verb} INTO \"d\" SELECT 'r' || i, i, randomblob(i % 7) FROM s"


def other(rnd: random.Random, table: str, lo: int) -> str:
    key = {"a": "id", "b": "y", "c": "id", "d": "k"}[table]
    return rnd.choice(
        [
            f"UPDATE {table} SET {key} = {key} WHERE {key} % 7 = {lo % 7}",
            f"DELETE FROM {table} WHERE {key} % 11 = {lo % 11}",
            f"INSERT INTO {table}({key}) VALUES ({rnd.randint(-5, 40)})",  # often below the largest rowid
            gen(rnd.randint(-20, 30), 10) + f"INSERT INTO {table}({key}) SELECT i FROM s WHERE true "
            f"ON CONFLICT DO UPDATE SET {key} = excluded.{key}",
        ]
    )


def replayed(engine, path: str, how: str) -> apsw.Connection:
    database.create_database_file(path, 0)
    conn = replay.open_replay_connection(path)
    records = logged_records(engine)
    if how == "one by one":
        for lsn, rec in records:
            replay.apply_tx_record(conn, lsn, rec)
    elif how == "batched":
        r = replay.Replayer(conn, "rustydb")
        for lsn, rec in records:
            r.apply(lsn, rec)
        r.flush()
    else:  # every rows step read as its changeset, applied in the caller's transaction
        for lsn, rec in records:
            conn.execute("BEGIN")
            replay.apply_steps(conn, rows_image.expand(rec.steps))
            database.write_state(conn, lsn, rec.txid, rec.commit_time_us)
            conn.execute("COMMIT")
    return conn


def check(engine, tmp_path) -> None:
    live = live_dump(engine)
    for how in ("one by one", "batched", "as changesets"):
        conn = replayed(engine, str(tmp_path / f"{how}.sqlite"), how)
        try:
            assert dump(conn) == live, how
            seq = "SELECT name, seq FROM sqlite_sequence ORDER BY name" if "c" in live else "SELECT 1"
            live_conn = database.open_connection(engine.datadir.database_path("rustydb"))
            try:
                assert conn.execute(seq).fetchall() == live_conn.execute(seq).fetchall(), how
            finally:
                live_conn.close()
        finally:
            conn.close()


def rows_steps(engine) -> list[bytes]:
    return [p for _, rec in logged_records(engine) for kind, p in rec.steps if kind == "rows"]


@pytest.mark.parametrize("seed", range(6))
def test_randomized_transactions_with_bulk_inserts_replay_to_the_live_database(engine, tmp_path, seed):
    rnd = random.Random(seed)
    s = SqlSession(engine, "rustydb", 1)
    for sql in TABLES.values():
        run(s, sql)
    next_lo = {t: 1 for t in TABLES}
    for _ in range(14):
        run(s, rnd.choice(["BEGIN", "BEGIN IMMEDIATE"]))
        savepoints = 0
        for _ in range(rnd.randint(1, 7)):
            table = rnd.choice(list(TABLES))
            r = rnd.random()
            try:
                if r < 0.5:
                    n = rnd.choice([1, 3, 50, 400])
                    # mostly new rowids above the largest, sometimes overlapping ones
                    lo = next_lo[table] if rnd.random() < 0.8 else rnd.randint(-10, next_lo[table])
                    run(s, bulk(rnd, table, lo, n))
                    next_lo[table] = max(next_lo[table], lo + n)
                elif r < 0.75:
                    run(s, other(rnd, table, rnd.randint(0, 100)))
                elif r < 0.83:
                    run(s, f"SAVEPOINT sp{savepoints}")
                    savepoints += 1
                elif r < 0.9 and savepoints:
                    run(s, f"ROLLBACK TO sp{rnd.randrange(savepoints)}")
                elif r < 0.95:
                    run(s, f"CREATE INDEX IF NOT EXISTS i_{table}_{rnd.randint(0, 3)} ON {table}(rowid)")
                else:
                    run(s, f"ALTER TABLE {table} ADD COLUMN extra{rnd.randint(0, 10**6)} TEXT")
            except SqlError:
                pass  # a failed statement leaves the transaction as it was
        run(s, "COMMIT" if rnd.random() < 0.85 else "ROLLBACK")
    s.close()
    assert rows_steps(engine)  # the fast path was taken, not only the fallbacks
    check(engine, tmp_path)


def test_a_bulk_insert_is_logged_as_one_rows_step_that_replays_exactly(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    run(s, TABLES["a"])
    run(s, "INSERT INTO a VALUES (1, 'first', 0)")
    run(s, gen(10, 5000) + "INSERT INTO a SELECT i, 'v' || i, i * 0.5 FROM s")
    # below the largest rowid: run again, captured
    run(s, gen(2, 5) + "INSERT INTO a SELECT i, 'low' || i, 0 FROM s")
    s.close()
    steps = [rec.steps for _, rec in logged_records(engine)]
    assert [k for k, _ in steps[-2]] == ["rows"]
    assert [k for k, _ in steps[-1]] == ["changeset"]
    header, _ = rows_image.parse_header(steps[-2][0][1])
    assert (header.table, header.rows, header.columns) == ("a", 5000, ("id", "v", "n"))
    # the record decodes strictly, the step with it
    assert walrec.decode_record(walrec.encode_record(logged_records(engine)[-2][1])).steps == steps[-2]
    check(engine, tmp_path)


def test_a_bulk_transaction_with_an_update_of_its_rows_logs_the_rows_first(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    run(s, TABLES["a"])
    run(s, "BEGIN")
    run(s, gen(1, 1000) + "INSERT INTO a SELECT i, 'v' || i, i FROM s")
    run(s, gen(1001, 1000) + "INSERT INTO a SELECT i, 'v' || i, i FROM s")
    run(s, "UPDATE a SET v = 'updated' WHERE id % 100 = 0")
    run(s, gen(2001, 10) + "INSERT INTO a SELECT i, 'late', 0 FROM s")
    run(s, "DELETE FROM a WHERE id = 5")
    run(s, "COMMIT")
    s.close()
    kinds = [k for k, _ in logged_records(engine)[-1][1].steps]
    assert kinds[0] == "rows" and "changeset" in kinds
    check(engine, tmp_path)


def test_rows_steps_read_as_changesets_are_the_session_extensions_own(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    for sql in TABLES.values():
        run(s, sql)
    for t in TABLES:
        run(s, bulk(random.Random(1), t, 1, 300).replace("OR FAIL ", "").replace("OR REPLACE ", ""))
    s.close()
    payloads = rows_steps(engine)
    assert len(payloads) >= 3
    mem = apsw.Connection(":memory:")
    for sql in TABLES.values():
        mem.execute(sql)
    capture = apsw.Session(mem, "main")
    capture.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
    capture.attach()
    for p in payloads:
        header, _ = rows_image.parse_header(p)
        mem.execute("ATTACH ':memory:' AS img")
        mem.deserialize("img", rows_image.image_bytes(p)[1])
        mem.execute(rows_image.insert_sql(header, "img"))
        mem.execute("DETACH img")
        converted = {(c.name, c.op, c.new) for c in apsw.Changeset.iter(rows_image.to_changeset(p))}
        assert len(converted) == header.rows
    direct = {(c.name, c.op, c.new) for c in apsw.Changeset.iter(capture.changeset())}
    assert direct == {(c.name, c.op, c.new) for p in payloads for c in apsw.Changeset.iter(rows_image.to_changeset(p))}


def test_a_damaged_rows_step_is_refused_by_the_record_decoder():
    good = walrec.TxRecord(1, 2, "db", (("ddl", "SELECT 1"),))
    for payload, why in (
        (b"\x00\x00", "header length"),
        (b"\x00\x00\x00\x09abc", "longer than the step"),
        (b"\x00\x00\x00\x01\xc0", "must be a map"),
    ):
        with pytest.raises(walrec.WalRecordError, match=why):
            walrec.TxRecord(good.txid, good.commit_time_us, good.database, (("rows", payload),))


def test_the_image_schema_is_out_of_a_clients_reach(engine):
    s = SqlSession(engine, "rustydb", 1)
    with pytest.raises(SqlError, match="not allowed"):
        run(s, f"CREATE TABLE {rows_image.SCHEMA}.x(y)")
    with pytest.raises(SqlError, match="not allowed"):
        run(s, f"SELECT * FROM {rows_image.SCHEMA}.sqlite_schema")
    run(s, "CREATE TABLE t(x)")
    run(s, "VACUUM")  # needs the connection's one attachment for its scratch database
    run(s, gen(1, 100) + "INSERT INTO t SELECT i FROM s")
    s.close()
    assert rows_steps(engine)


def bulk_t(lo: int) -> str:
    return gen(lo, 20_000) + "INSERT INTO t SELECT i, 'row ' || i FROM s"


SUMS = "SELECT count(*), sum(id), sum(length(v)) FROM t"


def test_a_bulk_commit_sqlite_failed_is_applied_from_its_rows_step_at_once_or_by_recovery(tmp_path):
    from tests.support.backups import run_sql

    from .test_engine_commit_truth import open_engine

    path = str(tmp_path / "data")
    engine = open_engine(path)
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        engine.sqlite_steps.on = {"commit"}  # applied from the WAL at once (replay.apply_tx_record)
        run_sql(engine, "rustydb", bulk_t(1))
        assert run_sql(engine, "rustydb", SUMS) == [[20_000, 200_010_000, 168_894]]
        engine.sqlite_steps.on = {"commit", "apply"}  # left to recovery (its Replayer)
        with pytest.raises(Exception, match="IS committed"):
            run_sql(engine, "rustydb", bulk_t(20_001))
        assert rows_steps(engine)
    finally:
        engine.close()
    engine = open_engine(path)
    try:
        assert run_sql(engine, "rustydb", SUMS) == [[40_000, 800_020_000, 348_894]]
    finally:
        engine.close()


LINKED = [
    "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, n REAL)",
    "CREATE TABLE o(x INTEGER)",  # its trigger writes a: a statement on o writes a pending table
    "CREATE TRIGGER o_to_a AFTER INSERT ON o BEGIN INSERT OR IGNORE INTO a VALUES (-new.x, 'trig', 0); END",
    "CREATE TABLE ch(id INTEGER PRIMARY KEY, aid INTEGER REFERENCES a(id) ON DELETE CASCADE)",  # not loggable
    "CREATE TABLE g(x INTEGER, y INTEGER GENERATED ALWAYS AS (x * 2) STORED)",  # not loggable
    "CREATE TABLE w(k INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID",  # not loggable
]


@pytest.mark.parametrize("seed", range(4))
def test_bulk_inserts_beside_triggers_foreign_key_actions_and_tables_that_cannot_be_logged(engine, tmp_path, seed):
    rnd = random.Random(seed)
    s = SqlSession(engine, "rustydb", 1)
    run(s, "PRAGMA foreign_keys=ON")
    for sql in LINKED:
        run(s, sql)
    top = 1
    for _ in range(12):
        run(s, "BEGIN")
        for _ in range(rnd.randint(1, 6)):
            lo = rnd.randint(1, top + 5)
            n = rnd.choice([5, 200])
            statements = [
                gen(top, n) + "INSERT INTO a SELECT i, 'v' || i, i FROM s",
                gen(lo, 3) + "INSERT INTO o SELECT i FROM s",
                f"DELETE FROM a WHERE id % 13 = {lo % 13}",
                gen(lo, n) + "INSERT OR IGNORE INTO ch SELECT i, i FROM s WHERE i IN (SELECT id FROM a)",
                gen(lo, n) + "INSERT INTO g(x) SELECT i FROM s",
                gen(lo, n) + "INSERT OR IGNORE INTO w SELECT i, 'w' FROM s",
                # two statements in one text: never a bulk insert
                gen(top + n, 3) + f"INSERT INTO a SELECT i, 'x', 0 FROM s; UPDATE a SET n = n + 1 WHERE id = {lo}",
            ]
            try:
                run(s, rnd.choice(statements))
            except SqlError:
                pass
            top += n + 3
        run(s, "COMMIT" if rnd.random() < 0.9 else "ROLLBACK")
    s.close()
    assert rows_steps(engine)
    check(engine, tmp_path)


def test_a_bulk_insert_whose_rows_cannot_be_logged_rolls_its_transaction_back(engine, monkeypatch):
    s = SqlSession(engine, "rustydb", 1)
    run(s, TABLES["a"])
    run(s, "INSERT INTO a VALUES (1, 'kept', 0)")
    before = len(logged_records(engine))

    def full(conn, table, floor):
        raise apsw.FullError("database or disk is full (injected)")

    monkeypatch.setattr(rows_image, "build", full)
    for autocommit in (False, True):
        if not autocommit:
            run(s, "BEGIN")
            run(s, "INSERT INTO a VALUES (2, 'captured', 0)")
        with pytest.raises(SqlError) as e:
            run(s, gen(10, 100) + "INSERT INTO a SELECT i, 'v', 0 FROM s")
            run(s, "COMMIT")
        assert e.value.code == "bulk_log_failed" and "rolled back" in str(e.value)
        assert not s.in_transaction and s.conn.getautocommit()
    assert run(s, "SELECT id, v FROM a") == [[1, "kept"]]
    assert len(logged_records(engine)) == before  # nothing logged
    monkeypatch.undo()
    run(s, gen(10, 100) + "INSERT INTO a SELECT i, 'v', 0 FROM s")  # the session goes on
    s.close()


def test_long_values_lists_are_bulk_inserts_short_ones_are_captured(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    run(s, TABLES["a"])

    def values(lo: int, n: int) -> str:
        return "INSERT INTO a VALUES " + ",".join(f"({i}, '{'v' * 20}{i}', {i}.5)" for i in range(lo, lo + n))

    assert len(values(1, 500)) > 16 * 1024 > len(values(1, 5))
    run(s, "BEGIN")
    for lo in range(1, 3001, 500):
        run(s, values(lo, 500))
    run(s, values(5000, 5))
    run(s, values(-600, 500))  # long, but below the largest rowid: run again captured
    run(s, "COMMIT")
    s.close()
    kinds = [k for k, _ in logged_records(engine)[-1][1].steps]
    assert kinds.count("rows") == 1 and "changeset" in kinds
    check(engine, tmp_path)


def test_a_damaged_image_is_refused_at_replay_naming_its_record(engine, tmp_path):
    s = SqlSession(engine, "rustydb", 1)
    run(s, TABLES["a"])
    run(s, gen(1, 2000) + "INSERT INTO a SELECT i, 'v' || i, i FROM s")
    s.close()
    records = logged_records(engine)
    lsn, rec = records[-1]
    ((kind, payload),) = rec.steps
    _, at = rows_image.parse_header(payload)
    damaged = payload[:at] + bytes(b ^ 0x5A for b in payload[at : at + 64]) + payload[at + 64 :]
    bad = walrec.TxRecord(rec.txid, rec.commit_time_us, rec.database, (("rows", damaged),))
    path = str(tmp_path / "copy.sqlite")
    database.create_database_file(path, 0)
    conn = replay.open_replay_connection(path)
    try:
        for earlier, r in records[:-1]:
            replay.apply_tx_record(conn, earlier, r)
        for apply in (
            lambda: replay.apply_tx_record(conn, lsn, bad),
            lambda: replay.Replayer(conn, "rustydb").apply(lsn, bad),
        ):
            with pytest.raises(replay.ReplayError, match=f"txid {rec.txid}"):
                apply()
        assert conn.execute("SELECT count(*) FROM a").fetchall() == [(0,)]
        assert conn.execute("PRAGMA database_list").fetchall() == [(0, "main", path)]  # nothing left attached
    finally:
        conn.close()
