"""What the tools say when a user takes a wrong turn, end to end against real servers.

A missing password names the user and both ways to give one; the cli pointed
at the HTTP port says so; ``rusty-db-cli ... | head`` ends quietly; and
``WITH ... INSERT`` reports the rows it inserted, as a plain INSERT does.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.servers import run_tool, tool

NO_PASSWORD = {"RUSTYDB_PASSWORD": ""}


@pytest.fixture
def password_server(server_factory):
    """A server with a LOGIN SUPERUSER role alice (password s3cret), reached over TCP."""
    srv = server_factory(name="auth").start()
    srv.sql("CREATE ROLE alice LOGIN SUPERUSER PASSWORD 's3cret'")  # through the socket
    yield srv
    srv.stop()


def _without_password(env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "RUSTYDB_PASSWORD"}
    env.update(env_extra or {})
    return env


def _run(args, env):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def test_a_missing_password_says_how_to_give_one(password_server, tmp_path):
    srv = password_server
    expected = (
        f"the server at 127.0.0.1:{srv.port} requires a password for user alice: "
        "set RUSTYDB_PASSWORD or use --password-file"
    )
    cli = [
        tool("rusty-db-cli"),
        "--host",
        "127.0.0.1",
        "--port",
        str(srv.port),
        "--user",
        "alice",
        "--command",
        "SELECT 1;",
    ]
    proc = _run(cli, _without_password())
    assert proc.returncode == 1
    assert proc.stderr == f"rusty-db-cli: {expected}\n"
    # with --json the failure is the one document on stdout
    proc = _run([*cli, "--json"], _without_password())
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"] == expected
    backup = [tool("rusty-db-backup"), "--type", "full", "--output", str(tmp_path / "b.backup")]
    backup += ["--host", "127.0.0.1", "--port", str(srv.port), "--user", "alice"]
    proc = _run(backup, _without_password())
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert expected in proc.stderr and "broke the protocol" not in proc.stderr
    assert not (tmp_path / "b.backup").exists()
    # --password-file: the first line of the file is the password
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    proc = _run([*cli[:-2], "--password-file", str(secret), "--command", "SELECT 41 + 1;"], _without_password())
    assert proc.returncode == 0, proc.stderr
    assert "42" in proc.stdout
    proc = _run([*backup, "--password-file", str(secret), "--json"], _without_password())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True and (tmp_path / "b.backup").exists()
    # a password file that cannot be read is one line too
    proc = _run([*cli[:-2], "--password-file", str(tmp_path / "none"), "--command", "SELECT 1;"], _without_password())
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "cannot read the password file" in proc.stderr


def test_the_cli_pointed_at_the_http_port_says_it_is_the_http_port(server):
    proc = run_tool("rusty-db-cli", "--port", str(server.http_port), "--command", "SELECT 1;")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "it is the server's HTTP API port, not its wire protocol port" in proc.stderr
    assert f"127.0.0.1:{server.http_port}" in proc.stderr
    proc = run_tool(
        "rusty-db-backup", "--type", "full", "--output", "/tmp/never.backup", "--port", str(server.http_port)
    )
    assert proc.returncode == 1 and "HTTP API port" in proc.stderr


@pytest.mark.parametrize("fmt", [[], ["--json"], ["--csv"]])
def test_cli_into_head_ends_quietly(server, fmt):
    """``rusty-db-cli --command "SELECT ..." | head -1``: no traceback, no message."""
    server.sql("CREATE TABLE many(id INTEGER PRIMARY KEY, body TEXT);")
    server.sql(
        "WITH RECURSIVE n(i) AS (VALUES (1) UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO many(body) SELECT hex(randomblob(200)) FROM n;"
    )
    argv = [tool("rusty-db-cli"), "--port", str(server.port), *fmt, "--command", "SELECT * FROM many; SELECT 1;"]
    cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-1"], stdin=cli.stdout, capture_output=True, timeout=60)
    cli.stdout.close()
    err = cli.stderr.read().decode()
    cli.stderr.close()
    # The status is not asserted here: a pipe may take the end of a write just
    # before its reader leaves, and then nothing failed that the cli could see.
    cli.wait(60)
    assert err == "" and head.stdout
    # the reader gone before the first byte: the write fails for certain, exit 1, still quiet
    cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cli.stdout.close()
    err = cli.stderr.read().decode()
    cli.stderr.close()
    assert cli.wait(60) == 1 and err == ""


def test_with_insert_reports_the_rows_it_inserted(server):
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    proc = server.cli("--command", "INSERT INTO t(v) VALUES ('a'), ('b');")
    assert proc.stdout.strip() == "INSERT 2"
    proc = server.cli("--command", "WITH n(x) AS (VALUES (1), (2), (3)) INSERT INTO t(v) SELECT 'n' || x FROM n;")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "INSERT 3"
    proc = server.cli("--command", "WITH old AS (SELECT id FROM t WHERE v LIKE 'n%') DELETE FROM t WHERE id IN old;")
    assert proc.stdout.strip() == "DELETE 3"
    proc = server.cli("--command", "WITH k AS (SELECT 1 AS id) UPDATE t SET v = 'z' WHERE id IN (SELECT id FROM k);")
    assert proc.stdout.strip() == "UPDATE 1"
    # inside a transaction too
    script = "BEGIN;\nWITH n(x) AS (VALUES (7), (8)) INSERT INTO t(v) SELECT x FROM n;\nCOMMIT;\n"
    proc = server.cli(input=script)
    assert proc.stdout.split() == ["BEGIN", "INSERT", "2", "COMMIT"], proc.stdout
    proc = server.cli("--json", "--command", "WITH n(x) AS (VALUES (1)) SELECT x FROM n;")
    assert json.loads(proc.stdout)["status"] == "SELECT 1"


def test_table_restore_into_a_password_server_takes_user_and_password_file(password_server, tmp_path):
    srv = password_server
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = _without_password({"RUSTYDB_USER": "alice", "RUSTYDB_PASSWORD": "s3cret"})
    sql = [tool("rusty-db-cli"), "--host", "127.0.0.1", "--port", str(srv.port), "--command"]
    assert (
        _run([*sql, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"], env).returncode
        == 0
    )
    backup = tmp_path / "b.backup"
    proc = _run(
        [
            tool("rusty-db-backup"),
            "--host",
            "127.0.0.1",
            "--port",
            str(srv.port),
            "--type",
            "full",
            "--output",
            str(backup),
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    restore = [
        tool("rusty-db-restore"),
        "--input",
        str(backup),
        "--table",
        "t",
        "--into-server",
        f"127.0.0.1:{srv.port}",
    ]
    # without a password: the one line that says how to give one
    proc = _run([*restore, "--user", "alice", "--rename-to", "t_a"], _without_password())
    assert proc.returncode == 1 and "requires a password for user alice" in proc.stderr, proc.stderr
    # with --user and --password-file: imported
    proc = _run(
        [*restore, "--user", "alice", "--password-file", str(secret), "--rename-to", "t_b", "--json"],
        _without_password(),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["imported_as"] == "t_b"
    rows = _run([*sql, "SELECT id, v FROM t_b;", "--csv"], env).stdout
    assert "1,a" in rows
    # the flags belong to --into-server
    proc = _run(
        [
            tool("rusty-db-restore"),
            "--input",
            str(backup),
            "--table",
            "t",
            "--data-dir",
            str(tmp_path / "d"),
            "--user",
            "alice",
        ],
        env,
    )
    assert proc.returncode == 2 and "--into-server" in proc.stderr
