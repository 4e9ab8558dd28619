"""The internal tables are untouchable by clients, and PRAGMAs that would undo the
server's guarantees are refused: the authorizer's decision for every action code,
then the attacks themselves through a session, a restart and a commit after each."""

from __future__ import annotations

import apsw
import pytest

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.engine import authorizer
from rustydb_server.engine.database import STATE_TABLE
from rustydb_server.engine.session import SqlError, SqlSession
from tests.support.backups import open_engine

OK, DENY = apsw.SQLITE_OK, apsw.SQLITE_DENY
CODES = {name: code for code, name in apsw.mapping_authorizer_function.items() if isinstance(code, int)}

# Where SQLite puts the table an action is about (1: first argument, 2: second).
TABLE_ARGUMENT = {
    "SQLITE_INSERT": 1,
    "SQLITE_UPDATE": 1,
    "SQLITE_DELETE": 1,
    "SQLITE_READ": 1,
    "SQLITE_CREATE_TABLE": 1,
    "SQLITE_CREATE_TEMP_TABLE": 1,
    "SQLITE_DROP_TABLE": 1,
    "SQLITE_DROP_TEMP_TABLE": 1,
    "SQLITE_CREATE_VIEW": 1,
    "SQLITE_CREATE_TEMP_VIEW": 1,
    "SQLITE_DROP_VIEW": 1,
    "SQLITE_DROP_TEMP_VIEW": 1,
    "SQLITE_CREATE_VTABLE": 1,
    "SQLITE_DROP_VTABLE": 1,
    "SQLITE_ANALYZE": 1,
    "SQLITE_CREATE_INDEX": 2,
    "SQLITE_CREATE_TEMP_INDEX": 2,
    "SQLITE_DROP_INDEX": 2,
    "SQLITE_DROP_TEMP_INDEX": 2,
    "SQLITE_CREATE_TRIGGER": 2,
    "SQLITE_CREATE_TEMP_TRIGGER": 2,
    "SQLITE_DROP_TRIGGER": 2,
    "SQLITE_DROP_TEMP_TRIGGER": 2,
    "SQLITE_ALTER_TABLE": 2,
}
# What a client may still do to an internal table: read it (and so analyze it).
ALLOWED_ON_INTERNAL = {"SQLITE_READ"}


# Actions refused whatever they name: they reach files outside the database.
ALWAYS_REFUSED = {"SQLITE_ATTACH", "SQLITE_DETACH"}
# The second argument of a virtual table's creation or drop is its module.
VTABLE_ACTIONS = {"SQLITE_CREATE_VTABLE", "SQLITE_DROP_VTABLE"}


@pytest.mark.parametrize("name", sorted(n for n in CODES if n != "SQLITE_PRAGMA"))  # PRAGMAs: below
def test_every_action_on_an_internal_table(name):
    code = CODES[name]
    position = TABLE_ARGUMENT.get(name)
    for table in (STATE_TABLE, STATE_TABLE.upper()):
        args = ("main", table) if position == 2 else (table, "fts5" if name in VTABLE_ACTIONS else None)
        decision = authorizer.decide(code, *args, internal=False)
        if position is None or name in ALLOWED_ON_INTERNAL:
            assert decision == (DENY if name in ALWAYS_REFUSED else OK), name
        else:
            assert decision == DENY, f"{name} on {table} must be refused"
        # the server's own statements on the same connection are not refused,
        # but for an ATTACH of a named file (its VACUUM attaches an unnamed one)
        expected = DENY if name == "SQLITE_ATTACH" else OK
        assert authorizer.decide(code, *args, internal=True) == expected
    # the same action on a user table is allowed (ATTACH/DETACH never are)
    user_args = ("main", "customers") if position == 2 else ("customers", "fts5" if name in VTABLE_ACTIONS else None)
    expected = DENY if name in ALWAYS_REFUSED else OK
    assert authorizer.decide(code, *user_args, internal=False) == expected


def test_only_the_servers_vacuum_attaches_and_only_its_scratch_database():
    attach = CODES["SQLITE_ATTACH"]
    assert authorizer.decide(attach, "", None, internal=True) == OK
    for path in ("/tmp/x.db", "file:/tmp/x.db?mode=rwc", ":memory:"):
        assert authorizer.decide(attach, path, None, internal=True) == DENY
        assert authorizer.decide(attach, path, None, internal=False) == DENY
    assert authorizer.decide(attach, "", None, internal=False) == DENY


@pytest.mark.parametrize("function", sorted(authorizer.FORBIDDEN_FUNCTIONS) + ["LOAD_EXTENSION"])
def test_functions_that_load_code_or_touch_files_are_refused(function):
    for internal in (False, True):
        assert authorizer.decide(CODES["SQLITE_FUNCTION"], None, function, internal=internal) == DENY


def test_ordinary_functions_are_allowed():
    for function in ("abs", "json_extract", "txid_current", "snippet", "random"):
        assert authorizer.decide(CODES["SQLITE_FUNCTION"], None, function, internal=False) == OK


@pytest.mark.parametrize("module", ["fsdir", "zipfile", "csv", "FSDIR", None])
def test_virtual_tables_of_other_modules_are_refused(module):
    for action in VTABLE_ACTIONS:
        assert authorizer.decide(CODES[action], "f", module, internal=False) == DENY


@pytest.mark.parametrize(
    "name",
    [
        "SQLITE_CREATE_INDEX",
        "SQLITE_CREATE_TEMP_INDEX",
        "SQLITE_CREATE_TRIGGER",
        "SQLITE_CREATE_TEMP_TRIGGER",
        "SQLITE_DROP_INDEX",
        "SQLITE_DROP_TRIGGER",
    ],
)
def test_an_index_or_trigger_may_not_take_an_internal_table_name(name):
    assert authorizer.decide(CODES[name], STATE_TABLE, "customers", internal=False) == DENY


def test_other_double_underscore_names_stay_usable():
    """rusty-db-export's dumps build large rows in __rustydb_import_pieces."""
    create = CODES["SQLITE_CREATE_TABLE"]
    assert authorizer.decide(create, "__rustydb_import_pieces", None, internal=False) == OK


@pytest.mark.parametrize(
    "pragma,argument,allowed",
    [
        ("cache_size", "100", True),
        ("foreign_keys", "ON", True),
        ("table_info", "customers", True),
        ("integrity_check", None, True),
        ("user_version", "7", True),
        ("page_size", None, True),
        ("page_size", "1024", False),
        ("auto_vacuum", "FULL", False),
        ("schema_version", "99", False),
        ("legacy_alter_table", "ON", False),
        ("trusted_schema", "ON", False),
        ("hard_heap_limit", "1", False),
        ("soft_heap_limit", "1", False),
        ("soft_heap_limit", None, False),
        ("journal_mode", "DELETE", False),
        ("synchronous", "OFF", False),
        ("locking_mode", "EXCLUSIVE", False),
        ("mmap_size", "0", False),
        ("wal_autocheckpoint", "1", False),
        ("wal_checkpoint", "TRUNCATE", False),
        ("writable_schema", "ON", False),
        ("incremental_vacuum", "10", False),
        ("optimize", None, False),
        ("busy_timeout", "1", False),
        ("database_list", None, False),
        ("JOURNAL_MODE", None, False),
        ("temp_store", None, True),
        ("temp_store", "FILE", False),
        ("temp_store_directory", "'/tmp'", False),
        ("data_store_directory", "'/tmp'", False),
        ("fullfsync", "OFF", False),
        ("checkpoint_fullfsync", "OFF", False),
        ("lock_proxy_file", "'/tmp/x'", False),
    ],
)
def test_pragmas(pragma, argument, allowed):
    decision = authorizer.decide(apsw.SQLITE_PRAGMA, pragma, argument, internal=False)
    assert decision == (OK if allowed else DENY)


# ------------------------------------------------------------ the attacks, for real

ATTACKS = [
    f"ALTER TABLE {STATE_TABLE} RENAME TO foo",
    f"ALTER TABLE {STATE_TABLE} RENAME COLUMN value TO v",
    f"ALTER TABLE {STATE_TABLE} ADD COLUMN x",
    f"ALTER TABLE {STATE_TABLE} DROP COLUMN value",
    f"ALTER TABLE main.{STATE_TABLE.upper()} RENAME TO foo",
    f"DROP TABLE {STATE_TABLE}",
    f"CREATE TRIGGER t BEFORE UPDATE ON {STATE_TABLE} BEGIN SELECT RAISE(ABORT, 'x'); END",
    f"CREATE TEMP TRIGGER t BEFORE UPDATE ON main.{STATE_TABLE} BEGIN SELECT RAISE(ABORT, 'x'); END",
    f"CREATE INDEX i ON {STATE_TABLE}(value)",
    f"CREATE TEMP TABLE {STATE_TABLE}(key TEXT PRIMARY KEY, value)",
    f"CREATE TEMP VIEW {STATE_TABLE} AS SELECT 'applied_lsn' AS key, 0 AS value",
    f"DELETE FROM {STATE_TABLE}",
    f"UPDATE {STATE_TABLE} SET value = 0",
    f"INSERT INTO {STATE_TABLE} VALUES ('x', 1)",
    f"REPLACE INTO {STATE_TABLE} VALUES ('applied_lsn', 0)",
    "PRAGMA hard_heap_limit = 1",
    "PRAGMA soft_heap_limit = 1",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
]


def run(session: SqlSession, sql: str):
    _result, rows, _fin = session.run(sql, leading_keywords(sql, 2), 1_000_000)
    return rows


@pytest.fixture
def engine(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 1)
    run(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    session.close()
    yield engine
    engine.close()


def state(engine) -> list:
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 2)
    try:
        return run(session, f"SELECT key FROM main.{STATE_TABLE} ORDER BY key")
    finally:
        session.close()


@pytest.mark.parametrize("sql", ATTACKS)
def test_an_attack_is_refused_and_commits_go_on(engine, tmp_path, sql):
    before = state(engine)
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 3)
    with pytest.raises(SqlError, match="not authorized"):
        run(session, sql)
    run(session, "INSERT INTO t(v) VALUES ('after')")  # commits still work
    session.close()
    assert state(engine) == before
    engine.close()
    again = open_engine(str(tmp_path / "data"))  # and the database still opens
    try:
        assert run(SqlSession(again, dd.DEFAULT_DATABASE, 4), "SELECT v FROM t") == [["after"]]
    finally:
        again.close()


def test_a_temporary_table_renamed_to_the_state_table_shadows_nothing(engine, tmp_path):
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 3)
    run(session, "CREATE TEMP TABLE x(key TEXT PRIMARY KEY, value)")
    # SQLite does not tell the authorizer a rename's new name; the server names
    # its table with its schema, so the temporary one is simply never used.
    run(session, f"ALTER TABLE temp.x RENAME TO {STATE_TABLE}")
    run(session, "INSERT INTO t(v) VALUES ('counted')")
    lsn = engine.wal.end_lsn
    session.close()
    engine.close()
    again = open_engine(str(tmp_path / "data"))
    try:
        session = SqlSession(again, dd.DEFAULT_DATABASE, 4)
        applied = run(session, f"SELECT value FROM main.{STATE_TABLE} WHERE key = 'applied_lsn'")[0][0]
        assert 0 < applied < lsn
        assert run(session, "SELECT v FROM t") == [["counted"]]
    finally:
        again.close()


def test_a_trigger_on_a_user_table_cannot_write_the_state_table(engine):
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 3)
    run(session, f"CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN UPDATE {STATE_TABLE} SET value = 0; END")
    with pytest.raises(SqlError, match="not authorized"):
        run(session, "INSERT INTO t(v) VALUES ('x')")
    run(session, "DROP TRIGGER sneaky")
    run(session, "INSERT INTO t(v) VALUES ('y')")
    session.close()


def test_reading_the_state_table_and_harmless_pragmas_still_work(engine):
    session = SqlSession(engine, dd.DEFAULT_DATABASE, 3)
    assert run(session, f"SELECT count(*) FROM {STATE_TABLE}")[0][0] >= 1
    run(session, f"CREATE VIEW state_view AS SELECT * FROM {STATE_TABLE}")
    assert run(session, "SELECT count(*) FROM state_view")[0][0] >= 1
    run(session, "PRAGMA cache_size = 500")
    run(session, "PRAGMA foreign_keys = ON")
    assert run(session, "PRAGMA page_size")[0][0] > 0
    session.close()


def test_over_the_wire_the_rename_is_refused_and_the_server_restarts(server):
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    refused = server.cli("--command", f"ALTER TABLE {STATE_TABLE} RENAME TO foo")
    assert refused.returncode == 1 and "not authorized" in refused.stderr
    assert "Traceback" not in refused.stderr
    server.sql("INSERT INTO t(v) VALUES ('after')")
    assert server.stop() == 0
    server.start()
    assert "after" in server.sql("SELECT v FROM t").stdout
