"""The admin-statement parser: what is ours, what is SQLite's, and what is malformed."""

from __future__ import annotations

import pytest

from rustydb_server.admin_parse import (
    AdminSyntaxError,
    AlterSystemReset,
    AlterSystemSet,
    Checkpoint,
    CreateDatabase,
    CreateRestorePoint,
    DropDatabase,
    Show,
    ShowBackupSchedule,
    Shutdown,
    SwitchWal,
    Use,
    parse_admin,
)


@pytest.mark.parametrize(
    "sql, expected",
    [
        # The operations guide, as written.
        ("ALTER SYSTEM SET archive_mode = on;", AlterSystemSet("archive_mode", "on")),
        (
            "ALTER SYSTEM SET archive_dest = '/var/lib/rusty-db/archive';",
            AlterSystemSet("archive_dest", "/var/lib/rusty-db/archive"),
        ),
        ("SHUTDOWN;", Shutdown(immediate=False)),
        # Value forms.
        ("alter system set archive_timeout to 60s", AlterSystemSet("archive_timeout", "60s")),
        ("ALTER SYSTEM SET checkpoint_wal_size = 1.5GB", AlterSystemSet("checkpoint_wal_size", "1.5GB")),
        ("ALTER SYSTEM SET port = 5433", AlterSystemSet("port", "5433")),
        ("ALTER SYSTEM SET port=5433;", AlterSystemSet("port", "5433")),
        ("ALTER SYSTEM SET wal_keep_size = -1", AlterSystemSet("wal_keep_size", "-1")),
        ("ALTER SYSTEM SET archive_compression = zstd", AlterSystemSet("archive_compression", "zstd")),
        ("ALTER SYSTEM SET Archive_Mode TO TRUE", AlterSystemSet("archive_mode", "TRUE")),
        ("ALTER SYSTEM SET archive_dest = 'it''s here'", AlterSystemSet("archive_dest", "it's here")),
        ("ALTER SYSTEM SET archive_dest = ''", AlterSystemSet("archive_dest", "")),
        (
            "ALTER SYSTEM SET archive_dest = '-- not a comment; nor /* this */'",
            AlterSystemSet("archive_dest", "-- not a comment; nor /* this */"),
        ),
        ('ALTER SYSTEM SET "archive_mode" = off', AlterSystemSet("archive_mode", "off")),
        ("ALTER SYSTEM SET archive_mode TO DEFAULT", AlterSystemReset("archive_mode")),
        ("ALTER SYSTEM RESET archive_mode", AlterSystemReset("archive_mode")),
        ("ALTER SYSTEM RESET ALL;", AlterSystemReset(None)),
        # Whitespace and comments around and inside.
        (
            "  -- enable archiving\n  ALTER /* really */ SYSTEM\n SET archive_mode = on ;  \n",
            AlterSystemSet("archive_mode", "on"),
        ),
        ("SHOW port", Show("port")),
        ("show ALL;", Show(None)),
        ("SHOW Archive_Mode", Show("archive_mode")),
        ("show backup schedule;", ShowBackupSchedule()),
        ("SHUTDOWN IMMEDIATE", Shutdown(immediate=True)),
        ("shutdown immediate;", Shutdown(immediate=True)),
        ("CHECKPOINT;", Checkpoint()),
        ("SWITCH WAL", SwitchWal()),
        ("CREATE RESTORE POINT 'before_migration';", CreateRestorePoint("before_migration")),
        ("create restore point 'it''s 5 o''clock'", CreateRestorePoint("it's 5 o'clock")),
        ("CREATE DATABASE sales", CreateDatabase("sales", False)),
        ("CREATE DATABASE sales IF NOT EXISTS;", CreateDatabase("sales", True)),
        ("create database if not exists sales", CreateDatabase("sales", True)),
        ("CREATE DATABASE _a1", CreateDatabase("_a1", False)),
        ('CREATE DATABASE "Quoted_Name"', CreateDatabase("Quoted_Name", False)),
        ("CREATE DATABASE if", CreateDatabase("if", False)),
        ("DROP DATABASE sales", DropDatabase("sales", False)),
        ("DROP DATABASE IF EXISTS sales;", DropDatabase("sales", True)),
        ("USE production_db;", Use("production_db")),
        ("use x", Use("x")),
        ("CREATE DATABASE " + "a" * 63, CreateDatabase("a" * 63, False)),
    ],
)
def test_admin_statements(sql, expected):
    assert parse_admin(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select * from t where name = 'SHOW ALL'",
        "CREATE TABLE t (x)",
        "CREATE TEMP TABLE t (x)",
        "create index i on t(x)",
        "ALTER TABLE t ADD COLUMN y",
        "DROP TABLE t",
        "DROP INDEX i",
        "INSERT INTO t VALUES ('ALTER SYSTEM SET x = 1')",
        "BEGIN",
        "COMMIT;",
        "ROLLBACK",
        "SAVEPOINT a",
        "-- SHOW ALL\nSELECT 1",
        "/* SHUTDOWN */ SELECT 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "(SELECT 1)",
        "",
        "   ;",
        "-- only a comment",
        "SELECT 'unterminated",
        "/* unterminated comment",
        "PRAGMA user_version",
        "CREATE VIEW v AS SELECT 1",
        "UPDATE t SET x = 1",
    ],
)
def test_ordinary_sql_is_left_to_sqlite(sql):
    assert parse_admin(sql) is None


@pytest.mark.parametrize(
    "sql, form",
    [
        ("ALTER SYSTEM SET archive_mode", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET archive_mode =", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET archive_mode = ;", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET = on", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET archive_mode on", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET archive_dest = /var/lib/rusty-db/archive", "ALTER SYSTEM"),
        ("ALTER SYSTEM SET archive_dest = 'unterminated", "ALTER SYSTEM SET name = value"),
        ("ALTER SYSTEM SET archive_mode = on off", "ALTER SYSTEM"),
        ("ALTER SYSTEM SET archive_mode = on; SELECT 1", "ALTER SYSTEM"),
        ("ALTER SYSTEM", "ALTER SYSTEM RESET name"),
        ("ALTER SYSTEM FROB x", "ALTER SYSTEM SET"),
        ("ALTER SYSTEM RESET", "ALTER SYSTEM RESET ALL"),
        ("SHOW", "SHOW name or SHOW ALL"),
        ("SHOW port, http_port", "SHOW name"),
        ("SHUTDOWN NOW", "SHUTDOWN IMMEDIATE"),
        ("CHECKPOINT FAST", "CHECKPOINT"),
        ("SWITCH", "SWITCH WAL"),
        ("SWITCH LOG", "SWITCH WAL"),
        ("CREATE RESTORE POINT", "CREATE RESTORE POINT 'name'"),
        ("CREATE RESTORE POINT before", "CREATE RESTORE POINT 'name'"),
        ("CREATE RESTORE POINT ''", "CREATE RESTORE POINT 'name'"),
        ("CREATE RESTORE POINT 'a\nb'", "CREATE RESTORE POINT 'name'"),
        ("CREATE RESTORE POINT '" + "x" * 64 + "'", "CREATE RESTORE POINT 'name'"),
        ("CREATE RESTORE", "CREATE RESTORE POINT 'name'"),
        ("CREATE DATABASE", "CREATE DATABASE [IF NOT EXISTS] name"),
        ("CREATE DATABASE ../etc", "CREATE DATABASE"),
        ("CREATE DATABASE 'sales'", "CREATE DATABASE"),
        ('CREATE DATABASE "../../etc/passwd"', "CREATE DATABASE"),
        ('CREATE DATABASE "a b"', "CREATE DATABASE"),
        ("CREATE DATABASE 1abc", "CREATE DATABASE"),
        ("CREATE DATABASE " + "a" * 64, "CREATE DATABASE"),
        ("CREATE DATABASE IF EXISTS x", "CREATE DATABASE [IF NOT EXISTS] name"),
        ("CREATE DATABASE sales IF EXISTS", "CREATE DATABASE"),
        ("DROP DATABASE", "DROP DATABASE [IF EXISTS] name"),
        ("DROP DATABASE IF NOT EXISTS x", "DROP DATABASE [IF EXISTS] name"),
        ("DROP DATABASE a.b", "DROP DATABASE"),
        ("USE", "USE name"),
        ("USE /tmp/x", "USE name"),
        ("USE a b", "USE name"),
        ("SHOW BACKUP", "SHOW BACKUP SCHEDULE"),
        ("SHOW BACKUP SCHEDULES", "SHOW BACKUP SCHEDULE"),
    ],
)
def test_malformed_admin_statements_show_the_expected_form(sql, form):
    with pytest.raises(AdminSyntaxError) as e:
        parse_admin(sql)
    assert form in str(e.value)


# --- UNDO TRANSACTION and AS OF ---
@pytest.mark.parametrize(
    "sql, expected",
    [
        ("UNDO TRANSACTION 12", "UndoTransaction(txid=12, from_time=None, to_time=None, table=None, mode='refuse')"),
        (
            "undo transaction 12 cascade;",
            "UndoTransaction(txid=12, from_time=None, to_time=None, table=None, mode='cascade')",
        ),
        (
            "UNDO TRANSACTIONS FROM TIME '2026-12-01 14:00' TO TIME '2026-12-01 15:00' "
            "WHERE table = 'it''s' NONCONFLICTING",
            "UndoTransaction(txid=None, from_time='2026-12-01 14:00', to_time='2026-12-01 15:00', table=\"it's\", "
            "mode='nonconflicting')",
        ),
        (
            "SELECT * FROM t AS OF TIME '2026-12-01 14:30' WHERE id > 3",
            "AsOf(sql='SELECT * FROM t  WHERE id > 3', table='t', txid=None, time='2026-12-01 14:30')",
        ),
        (
            'SELECT count(*) FROM main."my t" as of txid 42;',
            "AsOf(sql='SELECT count(*) FROM main.\"my t\" ;', table='my t', txid=42, time=None)",
        ),
    ],
)
def test_undo_and_as_of_parse(sql, expected):
    assert repr(parse_admin(sql)) == expected


@pytest.mark.parametrize("sql", ["SELECT 'known as of now' FROM t", "SELECT 1", "WITH x AS (SELECT 1) SELECT * FROM x"])
def test_as_of_in_text_or_nowhere_is_sqlites_business(sql):
    assert parse_admin(sql) is None


@pytest.mark.parametrize(
    "sql, problem",
    [
        ("UNDO TRANSACTION", "expected the txid"),
        ("UNDO TRANSACTION x", "expected the txid"),
        ("UNDO TRANSACTION 3 SOFTLY", "unexpected 'SOFTLY'"),
        ("UNDO TRANSACTIONS FROM TIME 5 TO TIME '6'", "start time in single quotes"),
        ("UNDO TRANSACTIONS FROM TIME '5' TO TIME '6' WHERE tbl = 'x'", "expected TABLE"),
        ("SELECT * FROM t AS OF TXID x", "expected a txid after TXID"),
        ("SELECT * FROM a AS OF TXID 1 JOIN b AS OF TXID 2", "one AS OF clause"),
    ],
)
def test_malformed_undo_and_as_of(sql, problem):
    with pytest.raises(AdminSyntaxError, match=problem):
        parse_admin(sql)


def test_expire_backups_forms():
    from rustydb_server.admin_parse import ExpireBackups

    assert parse_admin("EXPIRE BACKUPS;") == ExpireBackups(dry_run=False)
    assert parse_admin("expire backups dry run") == ExpireBackups(dry_run=True)
    for bad in ("EXPIRE BACKUPS DRY;", "EXPIRE BACKUPS NOW;"):
        with pytest.raises(AdminSyntaxError, match="EXPIRE BACKUPS or EXPIRE BACKUPS DRY RUN"):
            parse_admin(bad)
    assert parse_admin("EXPIRE something") is None  # not ours: SQLite's error
