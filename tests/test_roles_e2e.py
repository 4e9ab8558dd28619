"""Peer authentication on the Unix socket, roles and privileges, end to end.

Real servers, the real rusty-db-cli and rusty-db-backup; a second OS user made
with useradd for the peer-authentication cases (so those need root).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.support.servers import run_tool

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="making a second OS user (useradd) and running a client as it needs root",
)


@pytest.fixture
def os_user():
    """A throwaway OS user, removed afterwards."""
    name = f"rdbt{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


# The cli's own code in a process that drops to ``user`` once it is loaded: the
# interpreter of the test run may sit where other users cannot read it
# (pyenv's under /root), but the socket's peer credentials are taken at
# connect, after the switch.
_AS_USER = """
import gettext, json, locale, os, sys
import rustydb_client.sqlsplit
from rustydb_client.cli import build_parser, main
gettext.gettext("usage: ")  # argparse's lazy imports, while they can be read
build_parser().format_help()
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
sys.exit(main(sys.argv[3:]))
"""


def cli_as(user: str, port: int, sql: str, *args: str) -> subprocess.CompletedProcess:
    """rusty-db-cli's code run as the OS user ``user``, through the Unix socket (no --host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTYDB_")}
    env.update(HOME="/nonexistent", USER=user, LOGNAME=user)
    entry = pwd.getpwnam(user)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _AS_USER,
            str(entry.pw_uid),
            str(entry.pw_gid),
            "--port",
            str(port),
            "--command",
            sql,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def cli_tcp(port: int, user: str, password: str, sql: str) -> subprocess.CompletedProcess:
    return run_tool(
        "rusty-db-cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-U",
        user,
        "--command",
        sql,
        env={"RUSTYDB_PASSWORD": password},
    )


@needs_root
def test_another_os_user_is_refused_on_the_socket_until_a_role_exists(server, os_user):
    refused = cli_as(os_user, server.port, "SELECT 1")
    assert refused.returncode == 1
    assert f'peer authentication failed for OS user "{os_user}"' in refused.stderr
    assert f"CREATE ROLE {os_user} LOGIN" in refused.stderr  # what to do
    assert "Traceback" not in refused.stderr

    server.sql(f"CREATE ROLE {os_user} LOGIN")
    shown = cli_as(os_user, server.port, "SHOW role", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.splitlines()[-1])["rows"] == [[os_user]]
    # A role with no grants reads nothing
    denied = cli_as(os_user, server.port, "SELECT 1")
    assert denied.returncode == 1 and 'permission denied for database "rustydb"' in denied.stderr

    server.sql("CREATE TABLE t(x INTEGER)")
    server.sql(f"GRANT SELECT ON DATABASE rustydb TO {os_user}")
    assert cli_as(os_user, server.port, "SELECT count(*) FROM t").returncode == 0
    write = cli_as(os_user, server.port, "INSERT INTO t VALUES (1)")
    assert write.returncode == 1 and 'permission denied for writing to database "rustydb"' in write.stderr
    server.sql(f"GRANT WRITE ON DATABASE rustydb TO {os_user}")
    assert cli_as(os_user, server.port, "INSERT INTO t VALUES (1)").returncode == 0
    server.sql(f"REVOKE WRITE ON DATABASE rustydb FROM {os_user}")
    assert cli_as(os_user, server.port, "INSERT INTO t VALUES (2)").returncode == 1
    assert json.loads(server.sql("SELECT x FROM t", "--json").stdout.splitlines()[-1])["rows"] == [[1]]

    # Server-wide statements need their privilege; a denied one changes nothing
    before = server.sql("SHOW archive_timeout").stdout
    for sql, action in [
        ("SHUTDOWN", "SHUTDOWN"),
        ("ALTER SYSTEM SET archive_timeout = '1min'", "ALTER SYSTEM"),
        ("CREATE DATABASE other", "CREATE DATABASE"),
        (f"ALTER ROLE {os_user} SUPERUSER", "roles"),
        ("CHECKPOINT", "CHECKPOINT"),
        ("SWITCH WAL", "SWITCH WAL"),
        ("CREATE RESTORE POINT 'p'", "CREATE RESTORE POINT"),
    ]:
        proc = cli_as(os_user, server.port, sql)
        assert proc.returncode == 1 and f"permission denied for {action}" in proc.stderr, (sql, proc.stderr)
    assert server.health()["status"] in ("healthy", "degraded")
    assert server.sql("SHOW archive_timeout").stdout == before
    assert "other" not in server.sql("SHOW databases").stdout

    # DROP ROLE: refused again, on the next connection and the next statement of an open one
    server.sql(f"DROP ROLE {os_user}")
    assert "peer authentication failed" in cli_as(os_user, server.port, "SELECT 1").stderr


@needs_root
def test_peer_map_and_readonly(server, os_user):
    server.sql("CREATE ROLE reader LOGIN READONLY")
    server.sql("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (7)")
    server.sql(f"ALTER SYSTEM SET auth_peer_map = '{os_user}=reader'")
    shown = cli_as(os_user, server.port, "SHOW role; SELECT x FROM t", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["rows"] for line in shown.stdout.splitlines()] == [[["reader"]], [[7]]]
    for sql in ("INSERT INTO t VALUES (8)", "DELETE FROM t", "CREATE TABLE u(y)", "DROP TABLE t"):
        proc = cli_as(os_user, server.port, sql)
        assert proc.returncode == 1 and "permission denied for writing" in proc.stderr, (sql, proc.stderr)
    assert json.loads(server.sql("SELECT x FROM t", "--json").stdout.splitlines()[-1])["rows"] == [[7]]


def test_tcp_needs_a_password_and_backup_role_takes_backups_only(server, tmp_path):
    # TCP, loopback included, needs SCRAM by default
    no_password = run_tool("rusty-db-cli", "--host", "127.0.0.1", "--port", str(server.port), "-c", "SELECT 1")
    assert no_password.returncode == 1 and "requires a password" in no_password.stderr
    server.sql("CREATE ROLE bk LOGIN BACKUP PASSWORD 'bk pass'")
    wrong = cli_tcp(server.port, "bk", "nope", "SELECT 1")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    denied = cli_tcp(server.port, "bk", "bk pass", "ALTER SYSTEM SET backup_dir = '/etc'")
    assert denied.returncode == 1 and "permission denied for ALTER SYSTEM" in denied.stderr
    assert cli_tcp(server.port, "bk", "bk pass", "SELECT 1").returncode == 1  # nothing but backups
    out = tmp_path / "full.backup"
    taken = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "-U",
        "bk",
        env={"RUSTYDB_PASSWORD": "bk pass", "RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""},
    )
    assert taken.returncode == 0, taken.stderr
    # A role without BACKUP may not take one
    server.sql("CREATE ROLE plain LOGIN PASSWORD 'plain pass'")
    refused = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(tmp_path / "no.backup"),
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "-U",
        "plain",
        env={"RUSTYDB_PASSWORD": "plain pass", "RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""},
    )
    assert refused.returncode == 1 and "permission denied for backup" in refused.stderr
    assert not (tmp_path / "no.backup").exists()


def test_rustydbpass_is_used_only_at_mode_0600(server, tmp_path):
    server.sql("CREATE ROLE app LOGIN PASSWORD 's3cret:x'")
    server.sql("GRANT ALL ON DATABASE rustydb TO app")
    passfile = tmp_path / "pass"
    passfile.write_text(f"# comment\n127.0.0.1:{server.port}:*:app:s3cret\\:x\n")
    os.chmod(passfile, 0o644)
    env = {"RUSTYDB_PASSFILE": str(passfile), "RUSTYDB_PASSWORD": ""}
    args = ["--host", "127.0.0.1", "--port", str(server.port), "-U", "app", "-c", "SHOW role"]
    loose = run_tool("rusty-db-cli", *args, env=env)
    assert loose.returncode == 1 and "group or world access" in loose.stderr
    os.chmod(passfile, 0o600)
    ok = run_tool("rusty-db-cli", *args, env=env)
    assert ok.returncode == 0 and "app" in ok.stdout, ok.stderr


def test_roles_survive_a_restart_and_a_full_backup_and_restore(server_factory, tmp_path):
    source = server_factory(name="source").start()
    source.sql("CREATE ROLE keeper LOGIN PASSWORD 'keep me' READONLY")
    source.stop()
    source.start()
    assert cli_tcp(source.port, "keeper", "keep me", "SHOW role").returncode == 0
    backup = tmp_path / "full.backup"
    run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(backup),
        "--port",
        str(source.port),
        env={"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""},
        check=True,
    )
    source.sql("DROP ROLE keeper")  # after the backup: the restore brings it back
    source.stop()
    run_tool(
        "rusty-db-restore",
        "--input",
        str(backup),
        "--data-dir",
        str(tmp_path / "restored"),
        env={"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""},
        check=True,
    )
    restored = server_factory(name="restored").start()
    back = cli_tcp(restored.port, "keeper", "keep me", "SHOW role; INSERT INTO x VALUES (1)")
    assert back.returncode == 1 and "keeper" in back.stdout and "permission denied for writing" in back.stderr


def test_the_users_file_is_migrated_into_roles(server_factory, tmp_path):
    entry = run_tool("rusty-db-server", "--make-user", "olduser", input="old pass\n", check=True).stdout
    users = tmp_path / "users.toml"
    users.write_text(entry)
    config = tmp_path / "rustydb.toml"
    config.write_text(f"auth_users_file = '{users}'\n")
    srv = server_factory(extra_args=["--config", str(config)]).start()
    proc = cli_tcp(srv.port, "olduser", "old pass", "SHOW role; CHECKPOINT")
    assert proc.returncode == 0, proc.stderr  # a LOGIN SUPERUSER role, as the user had every privilege
    assert "migrated" in srv.log()


def test_a_chain_restore_brings_back_the_roles_of_its_last_incremental(server_factory, tmp_path):
    env = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}
    source = server_factory(name="source").start()
    source.sql("CREATE TABLE x(a)")
    full, incr = tmp_path / "full.backup", tmp_path / "incr.backup"
    port = ["--port", str(source.port)]
    run_tool("rusty-db-backup", "--type", "full", "--output", str(full), *port, env=env, check=True)
    source.sql("CREATE ROLE later LOGIN PASSWORD 'made after the full' READONLY")
    source.sql("INSERT INTO x VALUES (1)")
    run_tool(
        "rusty-db-backup",
        "--type",
        "incremental",
        "--base-backup",
        str(full),
        "--output",
        str(incr),
        *port,
        env=env,
        check=True,
    )
    source.sql("DROP ROLE later")  # after the incremental: the chain brings it back
    source.stop()
    data = str(tmp_path / "restored")
    run_tool("rusty-db-restore", "--input", str(full), "--data-dir", data, env=env, check=True)
    run_tool("rusty-db-restore", "--input", str(incr), "--data-dir", data, "--incremental", env=env, check=True)
    restored = server_factory(name="restored").start()
    back = cli_tcp(restored.port, "later", "made after the full", "SELECT count(*) FROM x")
    assert back.returncode == 0, back.stderr
    assert "1" in back.stdout
