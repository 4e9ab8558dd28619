"""End to end: a real rusty-db-server process driven by rusty-db-cli and the client library."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import msgpack
import pytest

from rustydb_client import client as rc
from tests.support.servers import run_tool


def connect(server, **kw):
    return rc.connect(port=server.port, **kw)


def test_first_start_initializes_and_serves(server):
    assert os.stat(server.data_dir).st_mode & 0o777 == 0o700
    assert os.path.exists(os.path.join(server.data_dir, "databases", "rustydb.sqlite"))
    health = server.health()
    assert health["status"] == "healthy"
    assert health["data_directory"]["state"] == "running"
    assert "lsn" in health["wal"] and health["version"]
    out = server.sql("SELECT 1 + 1 AS two;").stdout
    assert "two" in out and "2" in out


def test_second_server_on_same_data_dir_is_refused(server, server_factory):
    other = server_factory(name="data")  # same directory
    other.data_dir = server.data_dir
    other.start(wait=False)
    code = other.wait_exit(30)
    assert code != 0
    assert "in use by another RustyDB process" in other.log()
    assert server.health()["status"] == "healthy"


def test_sql_transactions_and_errors(server):
    with connect(server) as c:
        c.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        c.execute("INSERT INTO accounts VALUES (1, 100), (2, 50)")
        c.execute("BEGIN")
        assert c.in_transaction
        c.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        c.execute("SAVEPOINT s1")
        c.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        c.execute("ROLLBACK TO s1")
        c.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2")
        c.execute("COMMIT")
        assert not c.in_transaction
        rows = c.execute("SELECT id, balance FROM accounts ORDER BY id").rows
        assert rows == [[1, 90], [2, 60]]
        # an error leaves the session usable
        with pytest.raises(rc.ServerError) as e:
            c.execute("SELECT * FROM no_such_table")
        assert "no_such_table" in str(e.value)
        assert c.execute("SELECT count(*) FROM accounts").rows == [[2]]
        # rollback discards
        c.execute("BEGIN")
        c.execute("DELETE FROM accounts")
        c.execute("ROLLBACK")
        assert c.execute("SELECT count(*) FROM accounts").rows == [[2]]
        with pytest.raises(rc.ServerError):
            c.execute("SAVEPOINT outside")


def test_txids_increase_and_match_commits(server):
    with connect(server) as c:
        c.execute("CREATE TABLE t(x)")
        c.execute("BEGIN")
        first = c.execute("SELECT txid_current()").rows[0][0]
        assert c.execute("SELECT txid_current()").rows[0][0] == first  # stable in a tx
        c.execute("INSERT INTO t VALUES (1)")
        c.execute("COMMIT")
        c.execute("BEGIN")
        second = c.execute("SELECT txid_current()").rows[0][0]
        c.execute("COMMIT")
        assert second > first


def test_all_sqlite_types_and_large_results_in_batches(server):
    with connect(server) as c:
        c.execute("CREATE TABLE v(i INTEGER, r REAL, t TEXT, b BLOB, n)")
        c.execute(
            "INSERT INTO v VALUES (?, ?, ?, ?, NULL)".replace("?", "{}").format(
                -9223372036854775808, 1.5, "'héllo'", "x'00ff'"
            )
        )
        assert c.execute("SELECT * FROM v").rows == [[-9223372036854775808, 1.5, "héllo", b"\x00\xff", None]]
        c.execute("CREATE TABLE big(x INTEGER PRIMARY KEY, s TEXT)")
        c.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 25000)"
            " INSERT INTO big SELECT i, 'row ' || i FROM c"
        )
        batches = [e for e in c.stream("SELECT * FROM big ORDER BY x", batch_rows=1000) if type(e).__name__ == "Rows"]
        assert len(batches) >= 25
        assert sum(len(b.rows) for b in batches) == 25000


def test_rows_larger_than_a_batch_and_one_too_large_for_any_message(server):
    """Results travel in messages of at most 16 MiB: batches are cut by size as
    well as by rows, and a row that fits no message is a clear error that
    leaves the session (and the data) as they were."""
    with connect(server) as c:
        c.execute("CREATE TABLE b(id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO b VALUES (1, randomblob(9000000)), (2, randomblob(9000000))")
        batches = [e for e in c.stream("SELECT id, length(v), v FROM b ORDER BY id") if type(e).__name__ == "Rows"]
        assert [[r[0], r[1], len(r[2])] for b in batches for r in b.rows] == [
            [1, 9000000, 9000000],
            [2, 9000000, 9000000],
        ]
        assert len(batches) == 2
        with pytest.raises(rc.ServerError) as err:
            c.execute("SELECT zeroblob(20000000)")
        assert err.value.code == "row_too_large" and "substr" in str(err.value)
        # An autocommit write whose RETURNING row cannot be sent is not committed.
        with pytest.raises(rc.ServerError):
            c.execute("INSERT INTO b VALUES (3, zeroblob(20000000)) RETURNING *")
        assert c.execute("SELECT count(*) FROM b").rows == [[2]]
        # The other way: a statement too large to send is refused before sending.
        with pytest.raises(rc.RequestTooLarge, match="split it"):
            c.execute("SELECT length('" + "x" * 17_000_000 + "')")
        assert c.execute("SELECT 1").rows == [[1]]
    proc = run_tool(
        "rusty-db-cli", "--port", str(server.port), input="SELECT 1;\nSELECT length('" + "x" * 17_000_000 + "');\n"
    )
    assert proc.returncode == 1
    assert "ERROR at line 2: the statement is 17.0 MB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_databases_create_switch_drop(server):
    server.sql("CREATE DATABASE production_db;")
    server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);", "--database", "production_db")
    server.sql("INSERT INTO customers(name) VALUES ('ada'), ('grace');", "--database", "production_db")
    out = server.sql("SELECT COUNT(*) FROM customers;", "--database", "production_db", "--csv")
    assert out.stdout.strip().splitlines()[-1] == "2"
    # not visible from the default database
    proc = server.cli("--command", "SELECT COUNT(*) FROM customers;")
    assert proc.returncode == 1 and "no such table" in proc.stderr
    with connect(server) as c:
        c.execute("USE production_db")
        assert c.database == "production_db"
        assert c.execute("SELECT count(*) FROM customers").rows == [[2]]
        with pytest.raises(rc.ServerError) as e:
            c.execute("DROP DATABASE production_db")
        assert "this session" in str(e.value)
        c.execute("USE rustydb")
        c.execute("DROP DATABASE production_db")
        with pytest.raises(rc.ServerError):
            c.execute("USE production_db")
    proc = server.cli("--database", "nope", "--command", "SELECT 1")
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_alter_system_persists_across_restart(server_factory):
    srv = server_factory().start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    archive = os.path.join(srv.data_dir, "archive")  # the guide's place, inside the data directory
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("ALTER SYSTEM SET statement_timeout = '5s';")
    assert "on" in srv.sql("SHOW archive_mode;").stdout
    bad = srv.cli("--command", "ALTER SYSTEM SET archive_mode = maybe;")
    assert bad.returncode == 1 and "archive_mode" in bad.stderr
    unknown = srv.cli("--command", "ALTER SYSTEM SET archive_mod = on;")
    assert unknown.returncode == 1 and "archive_mode" in unknown.stderr  # suggestion
    malformed = srv.cli("--command", "ALTER SYSTEM SET archive_mode;")
    assert malformed.returncode == 1
    assert srv.stop() == 0
    srv.start()
    assert "on" in srv.sql("SHOW archive_mode;").stdout
    assert archive in srv.sql("SHOW archive_dest;").stdout
    everything = json.loads(srv.sql("SHOW ALL;", "--json").stdout.strip().splitlines()[-1])
    names = {row[0] for row in everything["rows"]}
    assert {"archive_mode", "port", "wal_segment_size"} <= names
    srv.sql("ALTER SYSTEM RESET archive_mode;")
    assert "off" in srv.sql("SHOW archive_mode;").stdout
    srv.stop()


def test_shutdown_statement_stops_server_cleanly(server):
    server.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    proc = server.cli("--command", "SHUTDOWN;")
    assert proc.returncode == 0, proc.stderr
    assert server.wait_exit(30) == 0
    server.start()
    assert server.health()["recovery"]["was_clean"] is True
    assert "1" in server.sql("SELECT count(*) FROM t;", "--csv").stdout


def test_sigterm_graceful_and_checkpoint_commands(server):
    server.sql("CREATE TABLE t(x)")
    for stmt in ("CHECKPOINT;", "CREATE RESTORE POINT 'before_batch';", "SWITCH WAL;"):
        server.sql(stmt)
    server.sql("INSERT INTO t VALUES (42);")
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped" in server.log()
    server.start()
    assert "42" in server.sql("SELECT x FROM t;").stdout


def test_idle_transaction_rolled_back_on_graceful_stop(server):
    c = connect(server)
    c.execute("CREATE TABLE t(x)")
    c.execute("BEGIN")
    c.execute("INSERT INTO t VALUES (1)")
    assert server.stop(signal.SIGINT) == 0
    server.start()
    assert server.sql("SELECT count(*) FROM t;", "--csv").stdout.strip().endswith("0")


def _raw(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return s


def _read_frame(s: socket.socket) -> dict | None:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff" + b"x" * 10,  # claims 4 GiB
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
        struct.pack(">I", 30) + b"\x91" * 30,  # nesting bomb
        struct.pack(">I", 3) + msgpack.packb({"a": 1}),  # no type
    ],
)
def test_bad_frames_close_only_that_connection(server, payload):
    with connect(server) as good:
        good.execute("CREATE TABLE IF NOT EXISTS t(x)")
        s = _raw(server)
        s.sendall(payload)
        reply = _read_frame(s)
        assert reply is not None and reply["type"] == "error" and reply["fatal"] is True
        assert _read_frame(s) is None  # closed
        s.close()
        assert good.execute("SELECT 1").rows == [[1]]


def test_out_of_order_frame_is_refused(server):
    s = _raw(server)
    body = msgpack.packb({"type": "query", "sql": "SELECT 1"}, use_bin_type=True)
    s.sendall(struct.pack(">I", len(body)) + body)
    reply = _read_frame(s)
    assert reply["type"] == "error" and reply["fatal"]
    assert "hello" in reply["message"]
    s.close()


def test_cli_script_from_stdin_stops_at_first_error(server):
    script = (
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\n"
        "INSERT INTO notes(body) VALUES ('a; not the end'), ('it''s -- fine');\n"
        "/* a comment; with a semicolon */\n"
        "INSERT INTO notes(body) VALUES ('three');\n"
        "INSERT INTO nowhere VALUES (1);\n"
        "INSERT INTO notes(body) VALUES ('never');\n"
    )
    proc = server.cli(input=script)
    assert proc.returncode == 1
    assert "line 5" in proc.stderr
    out = server.sql("SELECT body FROM notes ORDER BY id;", "--json").stdout
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert rows == [["a; not the end"], ["it's -- fine"], ["three"]]


def test_cli_connection_refused_is_clear():
    proc = run_tool("rusty-db-cli", "--port", "1", "--command", "SELECT 1")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "127.0.0.1:1" in proc.stderr


def test_tcp_clients_need_a_password_loopback_included_the_socket_does_not(server_factory):
    srv = server_factory(name="auth").start()
    srv.sql("CREATE ROLE alice LOGIN PASSWORD 's3cret'")  # through the socket: the superuser
    with pytest.raises(rc.ClientError) as none:
        rc.connect("127.0.0.1", srv.port, user="alice")
    assert none.value.code == "password_required"
    with pytest.raises(rc.ClientError) as unknown:
        rc.connect("127.0.0.1", srv.port, user="mallory", password="s3cret")
    with pytest.raises(rc.ClientError) as wrong:
        rc.connect("127.0.0.1", srv.port, user="alice", password="nope")
    assert str(unknown.value) == str(wrong.value)  # no hint which part was wrong
    srv.sql("GRANT ALL ON DATABASE rustydb TO alice")
    with rc.connect("127.0.0.1", srv.port, user="alice", password="s3cret") as c:
        assert c.execute("SELECT 1").rows == [[1]]
    proc = srv.cli(
        "--host", "127.0.0.1", "--user", "alice", "--command", "SELECT 2", env={"RUSTYDB_PASSWORD": "s3cret"}
    )
    assert proc.returncode == 0, proc.stderr
    # auth_trust_loopback is an opt-in, and warned of
    srv.sql("ALTER SYSTEM SET auth_trust_loopback = on")
    with rc.connect("127.0.0.1", srv.port, user="anyone") as c:
        assert c.execute("SHOW role").rows == [["rustydb"]]
    srv.stop()
    srv.start()
    assert "auth_trust_loopback is on" in srv.log()
    srv.stop()


def test_notify_socket_receives_ready_and_stopping(server_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(sock_path)
    recv.settimeout(30)
    srv = server_factory(name="notify", env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"})
    srv.start()
    messages = []
    while not any("READY=1" in m for m in messages):
        messages.append(recv.recv(4096).decode())
    while not any("WATCHDOG=1" in m for m in messages):
        messages.append(recv.recv(4096).decode())
    srv.stop()
    while not any("STOPPING=1" in m for m in messages):
        messages.append(recv.recv(4096).decode())
    assert any(m.startswith("STATUS=") for m in messages)
    recv.close()


def test_sighup_reloads_config(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text("statement_timeout = '0'\n")
    srv = server_factory(name="hup", extra_args=["--config", str(conf)]).start()
    conf.write_text("statement_timeout = '7s'\n")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "7000ms" not in srv.sql("SHOW statement_timeout;").stdout:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    srv.stop()


def test_concurrent_clients_see_consistent_state(server):
    with connect(server) as c:
        c.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)")
        c.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<10) "
            "INSERT INTO acct SELECT i, 1000 FROM s"
        )
    errors = []

    def transfer(seed):
        import random

        rnd = random.Random(seed)
        with connect(server) as c:
            for _ in range(60):
                a, b = rnd.sample(range(1, 11), 2)
                try:
                    c.execute("BEGIN IMMEDIATE")
                    c.execute(f"UPDATE acct SET bal = bal - 7 WHERE id = {a}")
                    c.execute(f"UPDATE acct SET bal = bal + 7 WHERE id = {b}")
                    c.execute("COMMIT")
                except rc.ServerError as e:
                    errors.append(str(e))
                    c.execute("ROLLBACK")

    threads = [threading.Thread(target=transfer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with connect(server) as c:
        assert c.execute("SELECT sum(bal) FROM acct").rows == [[10000]]


def test_server_help_and_usage_errors():
    assert run_tool("rusty-db-server", "--help").returncode == 0
    assert run_tool("rusty-db-server", "--bogus").returncode == 2
    proc = subprocess.run(
        [os.path.join(os.path.dirname(__import__("sys").executable), "rusty-db-cli"), "--bogus"], capture_output=True
    )
    assert proc.returncode == 2


def test_statement_timeout_cancels_and_session_goes_on(server):
    server.sql("ALTER SYSTEM SET statement_timeout = '200ms';")
    with connect(server) as c:
        with pytest.raises(rc.ServerError) as e:
            c.execute("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c) SELECT count(*) FROM c")
        assert e.value.code == "query_canceled"
        assert c.execute("SELECT 1").rows == [[1]]


def test_idle_sessions_are_closed_and_the_connection_cap_holds(server_factory, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("max_connections = 2\n")
    srv = server_factory(name="cap", extra_args=["--config", str(conf)]).start()
    a, b = connect(srv), connect(srv)
    with pytest.raises(rc.ClientError) as e:
        connect(srv)
    assert "max_connections" in str(e.value)
    a.close()
    b.close()
    time.sleep(0.3)
    srv.sql("ALTER SYSTEM SET idle_session_timeout = '300ms';")
    idle = connect(srv)
    time.sleep(1.0)
    with pytest.raises(rc.ClientError):
        idle.execute("SELECT 1")
    srv.stop()


def test_shutdown_immediate_skips_the_checkpoint_and_recovers(server):
    server.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    proc = server.cli("--command", "SHUTDOWN IMMEDIATE;")
    assert proc.returncode == 0, proc.stderr
    assert server.wait_exit(30) == 0
    server.start()
    assert server.health()["recovery"]["was_clean"] is False
    assert server.sql("SELECT count(*) FROM t;", "--csv").stdout.strip().endswith("1")


def test_cli_scripts_are_strict_utf8_and_may_start_with_a_bom(server):
    from tests.support.servers import tool

    def cli_bytes(*args: bytes, stdin: bytes = b""):
        return subprocess.run(
            [tool("rusty-db-cli").encode(), b"--port", str(server.port).encode(), *args],
            input=stdin,
            capture_output=True,
            timeout=30,
        )

    proc = cli_bytes(stdin="\ufeffCREATE TABLE bom(x);\r\nINSERT INTO bom VALUES ('é');\r\n".encode())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["CREATE TABLE", "INSERT 1"]
    proc = cli_bytes(stdin=b"INSERT INTO bom VALUES ('caf\xe9');\n")  # Latin-1, not UTF-8
    assert proc.returncode == 1 and b"not valid UTF-8" in proc.stderr
    assert b"Traceback" not in proc.stderr
    proc = cli_bytes(b"--command", b"INSERT INTO bom VALUES ('caf\xe9')")
    assert proc.returncode == 1 and b"not UTF-8 text" in proc.stderr
    assert b"Traceback" not in proc.stderr
    with connect(server) as c:
        assert c.execute("SELECT x FROM bom").rows == [["é"]]


def test_start_up_errors_name_the_port_or_directory(tmp_path):
    from tests.support.servers import free_port

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        for wire, http, what in (
            (taken, free_port(), "cannot listen on 127.0.0.1 port"),
            (free_port(), taken, "cannot listen for the HTTP API on 127.0.0.1 port"),
        ):
            proc = run_tool(
                "rusty-db-server",
                "--data-dir",
                str(tmp_path / "d"),
                "--port",
                str(wire),
                "--http-port",
                str(http),
                timeout=30,
            )
            assert proc.returncode == 1
            assert f"{what} {taken}: Address already in use" in proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        busy.close()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = run_tool("rusty-db-server", "--data-dir", str(a_file), timeout=30)
    assert proc.returncode == 1 and "exists and is not a directory" in proc.stderr
