"""rusty-db-export: exact round trips of every SQLite value through the SQL dump,
schema guards and renames, CSV/JSON Lines, and the errors users meet."""

import itertools
import json
import math
import os
import struct

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_client.sqlsplit import split_statements
from rustydb_server.datadir import DataDir
from rustydb_server.engine.database import STATE_TABLE, create_database_file, open_connection
from rustydb_server.export import ExportError, ExportSource, export_tables
from rustydb_server.export.schema import add_if_not_exists, name_span, set_name
from rustydb_server.export.sqldump import sql_literal
from rustydb_server.tools.export_main import main as export_main
from tests.support.servers import run_tool

INT64 = (-(2**63), 2**63 - 1)


def make_datadir(path, databases=("rustydb",)):
    """A data directory as restore leaves it: databases/<name>.sqlite, WAL mode, state table."""
    os.makedirs(os.path.join(path, "databases"), exist_ok=True)
    for name in databases:
        create_database_file(DataDir(path).database_path(name), 0)
    return str(path)


def db(datadir, name="rustydb"):
    return open_connection(DataDir(datadir).database_path(name))


def run_script(conn, text):
    """Import a dump the way rusty-db-cli does: statement by statement."""
    for stmt in split_statements(text):
        conn.execute(stmt.sql)


def canonical(conn, table, order="rowid"):
    """Every value with its storage class; floats by their bits (so -0.0 != 0.0),
    text and blobs by their bytes."""
    cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    picks = ", ".join(
        f'typeof("{c}"), CASE WHEN typeof("{c}") IN (\'text\', \'blob\') THEN hex("{c}") ELSE "{c}" END' for c in cols
    )
    out = []
    for row in conn.execute(f'SELECT {picks} FROM "{table}" ORDER BY {order}'):
        out.append(tuple(struct.pack(">d", v).hex() if isinstance(v, float) else v for v in row))
    return out


_counter = itertools.count()


def export_text(datadir, tmp_path, **kw):
    out = str(tmp_path / f"dump{next(_counter)}.{kw.get('fmt', 'sql')}")
    result = export_tables(datadir, out, **kw)
    with open(out, encoding="utf-8", newline="") as f:
        return f.read(), result


# -- values --------------------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-0.0, 0.0, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 1.0, 1e16, 0.1, 1 / 3]
)
values = st.one_of(
    st.none(),
    st.integers(*INT64) | st.sampled_from(INT64),
    floats,
    st.text(),  # quotes, newlines, CR, NUL, any unicode
    st.sampled_from(["", "'", "''", "a'b", "\r\n", "\x00", "x\x00y", "--", "/*", ";", "\u2028"]),
    st.binary(),
)


@pytest.fixture(scope="module")
def value_dir(tmp_path_factory):
    return make_datadir(tmp_path_factory.mktemp("values") / "data")


def fill_value_table(datadir, table, rows):
    """A table of the generated rows (t holds text whose bytes need not be
    UTF-8); returns its canonical contents."""
    conn = db(datadir)
    conn.execute(
        f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table}(id INTEGER PRIMARY KEY, a, b ANY, r REAL, t TEXT)"
    )
    with conn:
        for i, (a, b, r, raw) in enumerate(rows):
            conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?, CAST(? AS TEXT))", (i, a, b, r, raw))
    expected = canonical(conn, table)
    conn.close()
    return expected


def import_into_memory(text):
    target = apsw.Connection(":memory:")
    run_script(target, text)
    return target


value_rows = st.tuples(values, values, floats, st.binary())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(value_rows, max_size=12))
def test_every_value_round_trips_exactly(value_dir, tmp_path, rows):
    expected = fill_value_table(value_dir, "v", rows)
    text, result = export_text(value_dir, tmp_path, tables=["v"])
    assert result.tables[0].rows == len(rows)
    assert canonical(import_into_memory(text), "v") == expected


@pytest.mark.parametrize("guard", ["plain", "merge"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(value_rows, max_size=6))
def test_rows_too_large_for_one_statement_round_trip_in_pieces(value_dir, tmp_path, monkeypatch, rows, guard):
    """With tiny limits, most rows go through the helper table piece by piece."""
    from rustydb_server.export import sqldump

    monkeypatch.setattr(sqldump, "PIECE_CHARS", 40)
    monkeypatch.setattr(sqldump, "SMALL_LITERAL", 8)
    expected = fill_value_table(value_dir, "p", rows)
    text, result = export_text(value_dir, tmp_path, tables=["p"], guard=guard)
    target = import_into_memory(text)
    assert canonical(target, "p") == expected
    if guard == "merge":  # every key is there now: a second import changes nothing
        run_script(target, text)
        assert canonical(target, "p") == expected
    assert target.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE '__rustydb%'").fetchall() == [(0,)]
    pieces = [
        st.sql
        for st in split_statements(text)
        if '__rustydb_import_pieces" VALUES' in st.sql or st.sql.startswith('UPDATE "__rustydb_import_pieces"')
    ]
    assert all(len(sql) <= 40 + 100 for sql in pieces)  # a piece and the statement around it


@pytest.mark.parametrize(
    "value, literal",
    [
        (None, "NULL"),
        (-(2**63), "-9223372036854775808"),
        (1.0, "1.0"),
        (1e16, "1e+16"),
        (-0.0, "-0.0"),
        (math.inf, "9e999"),
        (-math.inf, "-9e999"),
        ("it's", "'it''s'"),
        ("a\rb", "CAST(X'610d62' AS TEXT)"),
        (b"\x00\xff", "X'00ff'"),
    ],
)
def test_sql_literals(value, literal):
    assert sql_literal(value) == literal
    got = apsw.Connection(":memory:").execute(f"SELECT {literal}").fetchall()[0][0]
    if isinstance(value, float):
        assert struct.pack(">d", got) == struct.pack(">d", value)
    else:
        assert got == value and type(got) is type(value)


# -- a realistic table -----------------------------------------------------------

SCHEMA = '''
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, balance REAL);
CREATE INDEX customers_name ON customers(name);
CREATE TABLE audit(customer INTEGER, what TEXT);
CREATE TRIGGER customers_audit AFTER UPDATE ON customers BEGIN
  INSERT INTO audit VALUES (new.id, 'update of ' || (SELECT count(*) FROM customers));
END;
CREATE TABLE "odd ""name"""(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE plain(a, b, total AS (a + b));
CREATE VIEW rich AS SELECT * FROM customers WHERE balance > 100;
'''


@pytest.fixture
def shop(tmp_path):
    datadir = make_datadir(tmp_path / "data", ("rustydb", "sales"))
    conn = db(datadir)
    conn.execute(SCHEMA)
    with conn:
        for i in range(1, 1201):
            conn.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", (i, f"name {i}", f"c{i}@x", i * 1.25))
        conn.execute("INSERT INTO \"odd \"\"name\"\"\" VALUES ('k', 1), ('l', x'00')")
        conn.execute("INSERT INTO plain(rowid, a, b) VALUES (10, 1, 2), (7, 3, 4), (99, NULL, 5)")
    conn.close()
    return datadir


def schema_of(conn, exclude=(STATE_TABLE,)):
    return sorted(r for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema") if r[2] not in exclude)


def test_table_with_indexes_and_triggers_is_reproduced(shop, tmp_path):
    text, result = export_text(shop, tmp_path, tables=["customers"])
    assert result.database == "rustydb" and result.tables[0].rows == 1200
    assert text.count('INSERT INTO "customers"') == 3  # batches of 500 rows
    assert (
        text.index("BEGIN;")
        < text.index("CREATE TABLE")
        < text.index("INSERT")
        < text.index("CREATE INDEX")
        < text.index("CREATE TRIGGER")
        < text.index("COMMIT;")
    )
    source = db(shop)
    target = apsw.Connection(":memory:")
    target.execute("CREATE TABLE audit(customer INTEGER, what TEXT)")
    run_script(target, text)
    assert canonical(target, "customers") == canonical(source, "customers")
    assert [r for r in schema_of(target) if r[2] == "customers"] == [
        r for r in schema_of(source) if r[2] == "customers"
    ]
    # the trigger works in the copy
    target.execute("UPDATE customers SET balance = 0 WHERE id = 1")
    assert target.execute("SELECT * FROM audit").fetchall() == [(1, "update of 1200")]


def test_rowids_of_tables_without_integer_key_are_kept(shop, tmp_path):
    text, _ = export_text(shop, tmp_path, tables=["plain", 'odd "name"'])
    target = apsw.Connection(":memory:")
    run_script(target, text)
    assert target.execute("SELECT rowid, a, b, total FROM plain ORDER BY rowid").fetchall() == [
        (7, 3, 4, 7),
        (10, 1, 2, 3),
        (99, None, 5, None),
    ]
    assert target.execute('SELECT * FROM "odd ""name"""').fetchall() == [("k", 1), ("l", b"\x00")]


def test_plain_create_refuses_an_existing_table(shop, tmp_path):
    text, _ = export_text(shop, tmp_path, tables=["customers"])
    target = apsw.Connection(":memory:")
    target.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(apsw.SQLError, match="already exists"):
        run_script(target, text)


def test_replace_drops_the_existing_table(shop, tmp_path):
    text, _ = export_text(shop, tmp_path, tables=["customers"], guard="replace")
    target = apsw.Connection(":memory:")
    target.execute("CREATE TABLE customers(x); INSERT INTO customers VALUES ('old'); CREATE TABLE audit(a, b)")
    run_script(target, text)
    assert canonical(target, "customers") == canonical(db(shop), "customers")


def test_if_not_exists_keeps_the_table_and_adds_rows(shop, tmp_path):
    text, _ = export_text(shop, tmp_path, tables=["customers"], guard="if-not-exists")
    assert "CREATE TABLE IF NOT EXISTS customers" in text
    assert "CREATE INDEX IF NOT EXISTS customers_name" in text
    target = apsw.Connection(":memory:")
    target.execute(SCHEMA)  # the table exists, empty; importing twice would hit the keys
    run_script(target, text)
    assert canonical(target, "customers") == canonical(db(shop), "customers")
    with pytest.raises(apsw.ConstraintError):
        run_script(target, text)


def test_rename_to_renames_table_indexes_and_trigger(shop, tmp_path):
    text, result = export_text(shop, tmp_path, tables=["customers"], rename_to="customers_restored")
    assert result.tables[0].name == "customers_restored"
    target = apsw.Connection(":memory:")
    target.execute(SCHEMA)  # the original is there: the copy must sit beside it
    target.execute("INSERT INTO customers(id, name) VALUES (1, 'current')")
    run_script(target, text)
    assert canonical(target, "customers_restored") == canonical(db(shop), "customers")
    assert target.execute("SELECT name FROM customers").fetchall() == [("current",)]
    names = {r[1]: r[2] for r in schema_of(target)}
    assert names["customers_restored_name"] == "customers_restored"
    assert names["customers_restored_audit"] == "customers_restored"
    # the trigger's body now counts the renamed table
    target.execute("UPDATE customers_restored SET balance = 0 WHERE id = 2")
    assert target.execute("SELECT * FROM audit").fetchall() == [(2, "update of 1200")]


def test_all_tables_exports_views_and_triggers_but_not_internal_state(shop, tmp_path):
    text, result = export_text(shop, tmp_path)
    assert STATE_TABLE not in text
    assert [t.name for t in result.tables] == ["customers", "audit", 'odd "name"', "plain"]
    target = apsw.Connection(":memory:")
    run_script(target, text)
    source = db(shop)
    assert schema_of(target) == schema_of(source)
    for table in ("customers", "audit", "plain"):
        assert canonical(target, table) == canonical(source, table)
    assert target.execute("SELECT count(*) FROM rich").fetchall() == [(1120,)]


# -- names in CREATE statements ------------------------------------------------------


@pytest.mark.parametrize(
    "sql, name",
    [
        ("CREATE TABLE t(a)", "t"),
        ('CREATE TABLE "a ""b"" c" (a)', '"a ""b"" c"'),
        ("CREATE TABLE [x y](a)", "[x y]"),
        ("CREATE UNIQUE INDEX `i`ON t(a)", "`i`"),
        ("CREATE TABLE temp(a)", "temp"),
        ("CREATE TRIGGER main.tr AFTER INSERT ON t BEGIN SELECT 1; END", "main.tr"),
        ("CREATE VIRTUAL TABLE f USING fts5(a)", "f"),
        ("CREATE TABLE /* c */ t2(a)", "t2"),
    ],
)
def test_name_span_finds_the_created_name(sql, name):
    start, end = name_span(sql)
    assert sql[start:end] == name
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t(a)")
    conn.execute(add_if_not_exists(sql))
    conn.execute(add_if_not_exists(sql))  # a second time: skipped, no error
    conn.execute(set_name(sql, 'new "one"'))


# -- CSV and JSON Lines -----------------------------------------------------------------


def test_jsonl_is_exact(shop, tmp_path):
    conn = db(shop)
    conn.execute(
        "CREATE TABLE j(a, b); INSERT INTO j VALUES (9223372036854775807, x'00ff'), "
        "(NULL, ?), (1.5, 9e999), (CAST(x'ff' AS TEXT), -0.0)",
        ('q"\n\x00',),
    )
    text, _ = export_text(shop, tmp_path, tables=["j"], fmt="jsonl")
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows == [
        {"a": 9223372036854775807, "b": {"$blob": "00ff"}},
        {"a": None, "b": 'q"\n\x00'},
        {"a": 1.5, "b": {"$real": "inf"}},
        {"a": {"$text_hex": "ff"}, "b": -0.0},
    ]


def test_csv_quotes_text_and_marks_null_and_blobs(shop, tmp_path):
    conn = db(shop)
    conn.execute("CREATE TABLE c(a, b); INSERT INTO c VALUES (1, 'say \"hi\", ok'), (NULL, ''), (2.5, x'beef')")
    text, result = export_text(shop, tmp_path, tables=["c"], fmt="csv")
    assert text == '"a","b"\r\n1,"say ""hi"", ok"\r\n,""\r\n2.5,\\xbeef\r\n'
    assert result.bytes == len(text.encode())


# -- consistency and refusals -------------------------------------------------------------


def test_snapshot_sees_one_moment(shop):
    with ExportSource(shop, snapshot=True) as source:
        writer = db(shop)
        writer.execute("INSERT INTO customers(id, name) VALUES (5000, 'late')")
        ids = [r[0] for r in source.rows(source.shape("customers"))]
        assert len(ids) == 1200 and 5000 not in ids


def test_locked_directory_is_refused_without_snapshot(shop, tmp_path):
    holder = DataDir(shop)
    holder.lock("server")  # as a running server holds it
    try:
        with pytest.raises(ExportError, match="in use by a running RustyDB server.*--snapshot"):
            export_tables(shop, str(tmp_path / "x.sql"), tables=["customers"])
        assert not os.path.exists(tmp_path / "x.sql")
        result = export_tables(shop, str(tmp_path / "x.sql"), tables=["customers"], snapshot=True)
        assert result.rows == 1200
    finally:
        holder.unlock()


def test_missing_table_lists_the_tables(shop, tmp_path):
    with pytest.raises(ExportError, match=r"no table 'clients'; it has: customers, audit, odd \"name\", plain"):
        export_tables(shop, str(tmp_path / "x.sql"), tables=["clients"])
    with pytest.raises(ExportError, match="internal state"):
        export_tables(shop, str(tmp_path / "x.sql"), tables=[STATE_TABLE])
    assert os.listdir(tmp_path) == ["data"]  # no output, not even a partial one


def test_missing_database_lists_the_databases(shop, tmp_path):
    with pytest.raises(ExportError, match="no database 'shop'; it holds: rustydb, sales"):
        export_tables(shop, str(tmp_path / "x.sql"), tables=["customers"], database="shop")


def test_only_database_is_the_default(tmp_path):
    datadir = make_datadir(tmp_path / "d", ("sales",))
    db(datadir, "sales").execute("CREATE TABLE s(a); INSERT INTO s VALUES (1)")
    text, result = export_text(datadir, tmp_path, tables=["s"])
    assert result.database == "sales" and "VALUES\n(1,1);" in text


# -- the command line ------------------------------------------------------------------------


def test_cli_writes_the_file_and_a_json_summary(shop, tmp_path, capsys):
    out = str(tmp_path / "customers_restored.sql")
    assert export_main(["--table", "customers", "--input-dir", shop, "--output", out, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tables"] == [{"name": "customers", "rows": 1200}]
    assert summary["bytes"] == os.path.getsize(out)
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    # a second run does not overwrite the first
    assert export_main(["--table", "customers", "--input-dir", shop, "--output", out]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--table", "a", "--all-tables"],
        ["--table", "a", "--replace", "--if-not-exists"],
        ["--table", "a", "--table", "b", "--rename-to", "c"],
        ["--table", "a", "--format", "csv", "--replace"],
        ["--all-tables", "--format", "jsonl"],
        [],
    ],
)
def test_cli_usage_errors_exit_2(shop, tmp_path, args):
    with pytest.raises(SystemExit) as exc:
        export_main([*args, "--input-dir", shop, "--output", str(tmp_path / "o")])
    assert exc.value.code == 2


def test_installed_command_reports_errors_without_traceback(shop, tmp_path):
    proc = run_tool("rusty-db-export", "--table", "nope", "--input-dir", shop, "--output", str(tmp_path / "o.sql"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("rusty-db-export: error: database 'rustydb'")
    assert "Traceback" not in proc.stderr
    proc = run_tool(
        "rusty-db-export",
        "--table",
        "customers",
        "--input-dir",
        str(tmp_path / "none"),
        "--output",
        str(tmp_path / "o.sql"),
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr


# -- the guide's steps 2 and 3 against a real server -------------------------------------------

TRICKY = [
    (1, None),
    (2, -(2**63)),
    (3, 2**63 - 1),
    (4, -0.0),
    (5, math.inf),
    (6, 1e-310),
    (7, "line\r\nbreak\rcr"),
    (8, "nul\x00inside"),
    (9, "quote ' and \" and ; -- /*"),
    (10, "π ☃ \u2028"),
    (11, b"\x00\xff" * 40),
    (12, ""),
    (13, 0.1),
]


def export_renamed(data, tmp_path, table, new_name) -> str:
    """rusty-db-export of one table under a new name; returns the SQL file."""
    out = str(tmp_path / f"{new_name}.sql")
    proc = run_tool("rusty-db-export", "--table", table, "--input-dir", data, "--output", out, "--rename-to", new_name)
    assert proc.returncode == 0, proc.stderr
    return out


def import_with_cli(server, path):
    """The guide's import: rusty-db-cli < FILE."""
    with open(path, encoding="utf-8") as f:
        return server.cli(input=f.read())


def test_export_then_cli_import_into_a_running_server(server_factory, tmp_path):
    data = str(tmp_path / "data")
    with server_factory("data") as server:
        server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, v)")
        server.sql("CREATE INDEX customers_v ON customers(v)")
        server.sql("INSERT INTO customers(id) VALUES (1)")
    # values the cli cannot type go straight into the stopped server's file
    conn = db(data)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO customers VALUES (?, ?)", TRICKY)
    expected = canonical(conn, "customers")
    conn.close()

    out = export_renamed(data, tmp_path, "customers", "customers_restored")
    with server_factory("data") as server:
        proc = import_with_cli(server, out)
        assert proc.returncode == 0, proc.stderr
        # importing again fails on the existing table, naming the line
        proc = import_with_cli(server, out)
        assert proc.returncode == 1 and "already exists" in proc.stderr and "line" in proc.stderr
    conn = db(data)
    assert canonical(conn, "customers_restored") == expected
    assert canonical(conn, "customers") == expected
    assert conn.execute(
        "SELECT name FROM sqlite_schema WHERE tbl_name = 'customers_restored' ORDER BY name"
    ).fetchall() == [("customers_restored",), ("customers_restored_v",)]


def test_values_larger_than_a_message_import_through_the_cli(server_factory, tmp_path):
    """A 12 MB blob and 20 MB of text: each statement of the dump fits a 16 MiB message."""
    data = str(tmp_path / "data")
    with server_factory("data") as server:
        server.sql("CREATE TABLE files(id INTEGER PRIMARY KEY, body BLOB, note TEXT)")
        server.sql(
            "INSERT INTO files VALUES (1, randomblob(12000000), "
            "printf('%.*c', 20000000, 'x') || 'é''end'), (2, x'00', 'small')"
        )
    conn = db(data)
    expected = canonical(conn, "files")
    conn.close()
    out = export_renamed(data, tmp_path, "files", "files_copy")
    with server_factory("data") as server:
        proc = import_with_cli(server, out)
        assert proc.returncode == 0, proc.stderr
    conn = db(data)
    assert canonical(conn, "files_copy") == expected


def test_sigterm_mid_export_leaves_no_output(shop, tmp_path, monkeypatch, capsys):
    import signal

    from rustydb_server.export import sqldump
    from rustydb_server.tools import export_main

    real = sqldump.sql_literal

    def literal_then_get_terminated(value):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(value)

    monkeypatch.setattr(sqldump, "sql_literal", literal_then_get_terminated)
    out = tmp_path / "out.sql"
    rc = export_main.main(["--table", "customers", "--input-dir", shop, "--output", str(out)])
    assert rc == 143 and "stopped by SIGTERM" in capsys.readouterr().err
    assert not [f for f in os.listdir(tmp_path) if f.startswith("out.sql")]


# -- restoring lost rows into a table that exists (the default) ----------------


def test_merge_brings_back_lost_rows_and_leaves_the_others_alone(shop, tmp_path):
    text, result = export_text(shop, tmp_path, tables=["customers", "plain", 'odd "name"'], guard="merge")
    assert "CREATE TABLE IF NOT EXISTS customers" in text
    assert "CREATE INDEX IF NOT EXISTS customers_name" in text
    assert "CREATE TRIGGER IF NOT EXISTS customers_audit" in text
    assert "primary key (id)" in text and "plain: no primary key, so rows are compared whole" in text
    everything = ["audit", "customers", "plain", 'odd "name"']
    production = import_into_memory(export_text(shop, tmp_path, tables=everything)[0])
    production.execute(
        "DELETE FROM customers WHERE id % 7 = 0; UPDATE customers SET balance = -1 WHERE id % 5 = 0;"
        "DELETE FROM plain WHERE a = 3; UPDATE plain SET b = 50 WHERE a IS NULL;"
        'DELETE FROM "odd ""name""" WHERE k = \'l\'; DELETE FROM audit'
    )
    run_script(production, text)
    source = db(shop)
    # customers: the deleted rows are back as they were; the updated ones keep the update
    got = dict(production.execute("SELECT id, balance FROM customers").fetchall())
    assert len(got) == 1200
    assert all(got[i] == (-1 if i % 5 == 0 and i % 7 else i * 1.25) for i in got)
    assert production.execute("SELECT count(*) FROM audit").fetchall() == [(0,)]  # nothing was updated
    # plain (rowids only): the deleted row is back; the changed one stays, its old self beside it
    assert sorted(production.execute("SELECT a, b FROM plain").fetchall(), key=repr) == sorted(
        [(1, 2), (3, 4), (None, 50), (None, 5)], key=repr
    )
    assert (
        production.execute('SELECT * FROM "odd ""name"""').fetchall()
        == source.execute('SELECT * FROM "odd ""name"""').fetchall()
    )
    assert production.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE '__rustydb%'").fetchall() == [(0,)]
    # once everything is back, importing again changes nothing
    before = [canonical(production, t) for t in ("customers", "plain")]
    run_script(production, text)
    assert [canonical(production, t) for t in ("customers", "plain")] == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(value_rows, max_size=8))
def test_merging_a_table_without_a_key_compares_every_value_exactly(value_dir, tmp_path, rows):
    conn = db(value_dir)
    conn.execute("DROP TABLE IF EXISTS nk; CREATE TABLE nk(a, b ANY, r REAL, t TEXT)")
    with conn:
        conn.executemany("INSERT INTO nk VALUES (?, ?, ?, CAST(? AS TEXT))", rows)
    expected = canonical(conn, "nk")
    conn.close()
    text, _ = export_text(value_dir, tmp_path, tables=["nk"], guard="merge")
    target = import_into_memory(text)
    assert canonical(target, "nk") == expected
    run_script(target, text)  # every row has its equal there now
    assert canonical(target, "nk") == expected


def test_the_cli_merges_by_default_and_replaces_on_request(shop, tmp_path, capsys):
    out = str(tmp_path / "customers_restored.sql")
    assert export_main(["--table", "customers", "--input-dir", shop, "--output", out]) == 0
    with open(out) as f:
        text = f.read()
    assert 'ON CONFLICT("id") DO NOTHING' in text and "DROP TABLE" not in text
    replaced = str(tmp_path / "replace.sql")
    assert export_main(["--table", "customers", "--input-dir", shop, "--output", replaced, "--replace"]) == 0
    with open(replaced) as f:
        text = f.read()
    assert 'DROP TABLE IF EXISTS "customers"' in text and "ON CONFLICT" not in text
    assert "dropped if it exists and created again" in text
