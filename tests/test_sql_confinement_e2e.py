"""No client reaches a file outside the data directory through SQL.

A real server; every way SQLite has to name or touch a file is tried through
the real rusty-db-cli (ATTACH, DETACH, VACUUM INTO in its spellings,
load_extension, the PRAGMAs that act on files or journal settings, the
file functions, virtual tables of file modules). Each is refused with a
message, and afterwards nothing outside the data directory was created or
changed (a SQLite file placed there to be read is untouched), the database
still takes commits and a plain VACUUM still works.
"""

from __future__ import annotations

import hashlib
import os

import apsw
import pytest

from tests.support.servers import ServerProcess, run_tool


def tree(root: str, skip: str) -> dict[str, str]:
    """Every file under ``root`` but ``skip`` (the data directory) with its content's hash."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path.endswith(".log"):
                continue  # the server's own log, written as it runs
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    root = tmp_path_factory.mktemp("confine")
    outside = root / "outside"
    outside.mkdir()
    secret = apsw.Connection(str(outside / "secret.db"))
    secret.execute("CREATE TABLE secret(v); INSERT INTO secret VALUES ('the secret')")
    secret.close()
    data = str(root / "data")
    with ServerProcess(data) as server:
        server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        yield server, str(root), data, str(outside)


def attacks(outside: str) -> list[str]:
    secret = os.path.join(outside, "secret.db")
    made = os.path.join(outside, "made.db")
    return [
        f"ATTACH '{secret}' AS s",
        f"ATTACH DATABASE 'file:{made}?mode=rwc' AS m",
        "ATTACH ':memory:' AS mem",
        f"SELECT * FROM t, (SELECT 1) WHERE 0; ATTACH '{made}' AS m2",
        "DETACH main",
        f"VACUUM INTO '{made}'",
        f"VACUUM main INTO '{made}'",
        f"/* a comment first */ VACUUM INTO '{made}'",
        f"vacuum\ninto '{made}'",
        f"SELECT load_extension('{os.path.join(outside, 'libevil')}')",
        f"SELECT load_extension('{os.path.join(outside, 'libevil')}', 'init')",
        "SELECT fts3_tokenizer('simple')",
        "SELECT sqlite_log(1, 'forged log line')",
        f"SELECT readfile('{secret}')",
        f"SELECT writefile('{made}', 'x')",
        f"CREATE VIRTUAL TABLE f USING fsdir('{outside}')",
        f"CREATE VIRTUAL TABLE z USING zipfile('{os.path.join(outside, 'z.zip')}')",
        f"CREATE VIRTUAL TABLE c USING csv(filename='{os.path.join(outside, 'c.csv')}')",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA journal_mode = OFF",
        "PRAGMA main.journal_mode = MEMORY",
        "PRAGMA journal_mode",
        "PRAGMA synchronous = OFF",
        "PRAGMA locking_mode = EXCLUSIVE",
        "PRAGMA writable_schema = ON",
        "PRAGMA mmap_size = 1000000",
        f"PRAGMA temp_store_directory = '{outside}'",
        f"PRAGMA data_store_directory = '{outside}'",
        "PRAGMA temp_store = FILE",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA wal_autocheckpoint = 1",
        "PRAGMA journal_size_limit = 0",
        "PRAGMA database_list",
        "SELECT file FROM pragma_database_list",
        "SELECT * FROM pragma_journal_mode",
    ]


def test_every_attempt_is_refused_and_nothing_outside_is_touched(confined):
    server, root, data, outside = confined
    before = tree(root, data)
    for sql in attacks(outside):
        proc = run_tool("rusty-db-cli", "--port", str(server.port), "--command", sql)
        assert proc.returncode != 0, f"{sql!r} was allowed:\n{proc.stdout}"
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip(), f"{sql!r} refused without a word"
        assert "the secret" not in proc.stdout + proc.stderr
        server.sql("INSERT INTO t(v) VALUES ('still writable')")
        assert tree(root, data) == before, f"{sql!r} touched a file outside the data directory"
    assert server.sql("SELECT count(*) FROM t", "--csv").stdout.splitlines()[1:] == [str(len(attacks(outside)))]


def test_a_view_or_a_trigger_cannot_call_them_later(confined):
    """SQLite asks the authorizer when a view or trigger is used, not when it is made."""
    server, root, data, outside = confined
    before = tree(root, data)
    lib = os.path.join(outside, "libevil")
    server.sql(f"CREATE VIEW loader AS SELECT load_extension('{lib}') AS x")
    server.sql(f"CREATE TABLE u(x); CREATE TRIGGER tu AFTER INSERT ON u BEGIN SELECT load_extension('{lib}'); END")
    for sql in ("SELECT * FROM loader", "INSERT INTO u VALUES (1)"):
        proc = server.cli("--command", sql)
        # refused by the authorizer, or before it by the untrusted schema
        refused = any(why in proc.stderr for why in ("not allowed", "not authorized", "unsafe use of load_extension"))
        assert proc.returncode == 1 and refused, (sql, proc.stdout, proc.stderr)
    assert server.sql("SELECT count(*) FROM u", "--csv").stdout.splitlines()[1] == "0"
    assert tree(root, data) == before


def test_the_refusal_says_why(confined):
    server, _root, _data, outside = confined
    proc = server.cli("--command", f"ATTACH '{os.path.join(outside, 'secret.db')}' AS s")
    assert proc.returncode == 1
    assert "not allowed" in proc.stderr and "ATTACH" in proc.stderr
    proc = server.cli("--command", f"VACUUM INTO '{os.path.join(outside, 'made.db')}'")
    assert proc.returncode == 1
    assert "VACUUM INTO" in proc.stderr


def test_plain_vacuum_and_harmless_pragmas_still_work(confined):
    server, root, data, _outside = confined
    before = tree(root, data)
    server.sql("VACUUM")
    server.sql("VACUUM main")
    server.sql("PRAGMA foreign_keys = ON")
    assert server.sql("PRAGMA temp_store", "--csv").returncode == 0
    server.sql("CREATE TEMP TABLE scratch(x); INSERT INTO scratch VALUES (1)")
    server.sql("CREATE VIRTUAL TABLE docs USING fts5(body)")
    server.sql("INSERT INTO docs VALUES ('full text stays inside the database file')")
    assert server.sql("SELECT count(*) FROM docs WHERE docs MATCH 'inside'", "--csv").stdout.splitlines()[1] == "1"
    assert tree(root, data) == before
