"""rusty-db-cli and the blocking client against a tiny in-test server.

The fake server is a thread with a real socket speaking the real protocol
through ServerSide; only the SQL answers are canned.
"""

import io
import json
import socket
import threading

import pytest

from rustydb_client import cli, client
from rustydb_client.protocol import events as p
from rustydb_client.protocol.connection import ServerSide
from rustydb_client.protocol.errors import ProtocolError
from rustydb_client.protocol.scram import AUTH_FAILED_MESSAGE, make_scram_credentials
from rustydb_client.sqlsplit import Statement

# ---------------------------------------------------------------- fake server


def canned_answer(sql: str, session: dict) -> list:
    """What the fake server answers to one statement."""
    words = sql.split()
    head = words[0].upper() if words else ""
    db = session["database"]
    done = lambda status, n=0: p.Complete(status, n, session["database"], session["in_tx"])
    if " ".join(words) == "SELECT * FROM t":
        return [
            p.Columns(["id", "name", "data"]),
            p.Rows([[1, "alice", b"\x00\xff"]]),
            p.Rows([[22, None, None]]),
            done("SELECT 2", 2),
        ]
    if sql == "SELECT big":
        return [
            p.Columns(["n"]),
            *[p.Rows([[i] for i in range(k, k + 100)]) for k in range(0, 1000, 100)],
            done("SELECT 1000", 1000),
        ]
    if head == "INSERT":
        return [done("INSERT 1", 1)]
    if head == "USE":
        if words[1] == "nowhere":
            return [p.Error("unknown_database", "database nowhere does not exist")]
        session["database"] = words[1]
        return [done("USE")]
    if head == "BEGIN":
        session["in_tx"] = True
        return [done("BEGIN")]
    if head == "NOTICE":
        return [p.Notice("something to know"), done("OK")]
    if head == "BAD":
        # the error is on the statement's second line when it has one
        return [p.Error("syntax_error", 'near "BAD": syntax error', statement_line=2 if "\n" in sql else 1)]
    if head == "FATAL":
        return [p.Error("shutdown", "the server is shutting down", fatal=True)]
    return [p.Complete("OK", 0, db, session["in_tx"])]


class FakeServer:
    def __init__(self, auth_fn=None):
        self.auth_fn = auth_fn
        self.queries: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        proto = ServerSide(self.auth_fn)
        session = {"database": "main", "in_tx": False}
        send = lambda event: sock.sendall(proto.send(event))
        with sock:
            try:
                while data := sock.recv(65536):
                    proto.receive_data(data)
                    while (event := proto.next_event()) is not p.NEED_DATA:
                        for reply in getattr(event, "replies", ()):
                            send(reply)
                        if isinstance(event, p.TlsRequested):  # the cli asks first (--tls prefer)
                            send(p.TlsAnswer(False, "this fake server has no TLS"))
                        elif isinstance(event, p.SessionRequested):
                            session["database"] = event.database or "main"
                            send(p.Ready("0.1.0", session["database"], 1))
                        elif isinstance(event, p.Query):
                            self.queries.append(event.sql)
                            for answer in canned_answer(event.sql, session):
                                send(answer)
                                if isinstance(answer, p.Error) and answer.fatal:
                                    return
                        elif isinstance(event, p.Goodbye):
                            return
            except ProtocolError as e:
                send(p.Error(e.code, e.message, fatal=True))
            except OSError:
                pass

    def close(self):
        self.listener.close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def run_cli(args, stdin_text=""):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(args, stdin=io.StringIO(stdin_text), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


# ---------------------------------------------------------------- formatting


def test_table_aligns_numbers_right_text_left_with_footer():
    text = cli.format_table(["id", "name"], [[1, "alice"], [22, None]])
    assert text == (" id | name\n----+-------\n  1 | alice\n 22 |\n(2 rows)\n")


def test_table_shows_blobs_as_hex_and_counts_wide_characters():
    text = cli.format_table(["b", "w"], [[b"\x00\xab", "日本"], [b"", "x"]])
    lines = text.splitlines()
    assert lines[2] == r" \x00ab | 日本"
    assert lines[3] == r" \x     | x"
    assert lines[-1] == "(2 rows)"


def test_table_with_no_rows_and_one_row_footers():
    assert cli.format_table(["a"], []).endswith("(0 rows)\n")
    assert cli.format_table(["a"], [[1]]).endswith("(1 row)\n")


def test_table_keeps_multiline_values_on_one_line():
    assert " a\\nb" in cli.format_table(["v"], [["a\nb"]])


def test_json_printer_writes_one_object_per_statement():
    out = io.StringIO()
    printer = cli.JsonPrinter(out)
    printer.columns(["id", "b"])
    printer.rows([[1, b"\x01"]])
    printer.rows([[None, None], [2.5, "x"]])
    printer.complete("SELECT 3")
    printer.complete("INSERT 1")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first == {"columns": ["id", "b"], "rows": [[1, "01"], [None, None], [2.5, "x"]], "status": "SELECT 3"}
    assert second == {"columns": [], "rows": [], "status": "INSERT 1"}


def test_json_printer_output_is_strict_json_even_for_infinite_reals():
    out = io.StringIO()
    printer = cli.JsonPrinter(out)
    printer.columns(["r"])
    printer.rows([[float("inf")], [float("-inf")], [1e308]])
    printer.complete("SELECT 3")

    def refuse(token):
        raise AssertionError(f"not JSON: {token}")

    doc = json.loads(out.getvalue(), parse_constant=refuse)
    assert doc["rows"] == [["Infinity"], ["-Infinity"], [1e308]]


def test_csv_printer_writes_header_and_quotes():
    out = io.StringIO()
    printer = cli.CsvPrinter(out)
    printer.columns(["a", "b"])
    printer.rows([["x,y", None], [1, b"\xff"]])
    printer.complete("SELECT 2")
    assert out.getvalue() == 'a,b\n"x,y",\n1,\\xff\n'


# ---------------------------------------------------------------- --command


def test_command_prints_table_and_status(server):
    code, out, err = run_cli(["--port", str(server.port), "--command", "SELECT * FROM t; INSERT INTO t VALUES (3)"])
    assert code == 0, err
    assert server.queries == ["SELECT * FROM t", "INSERT INTO t VALUES (3)"]
    assert "  1 | alice | \\x00ff" in out
    assert "(2 rows)" in out
    assert out.rstrip().endswith("INSERT 1")


def test_command_sql_error_goes_to_stderr_with_exit_1(server):
    code, out, err = run_cli(["--port", str(server.port), "--command", "BAD SQL;"])
    assert code == 1
    assert err == 'ERROR: near "BAD": syntax error\n'
    assert out == ""


def test_command_json_output(server):
    code, out, _ = run_cli(
        ["--port", str(server.port), "--json", "--command", "SELECT * FROM t; INSERT INTO t VALUES (1);"]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["rows"] == [[1, "alice", "00ff"], [22, None, None]]
    assert rows[1] == {"columns": [], "rows": [], "status": "INSERT 1"}


def test_command_csv_output(server):
    code, out, _ = run_cli(["--port", str(server.port), "--csv", "--command", "SELECT * FROM t"])
    assert code == 0
    assert out == "id,name,data\n1,alice,\\x00ff\n22,,\n"


def test_notices_go_to_stderr(server):
    code, out, err = run_cli(["--port", str(server.port), "--command", "NOTICE"])
    assert code == 0
    assert err == "NOTICE: something to know\n"
    assert out == "OK\n"


def test_connection_refused_is_a_clear_message_and_exit_1():
    port = free_port()
    code, _, err = run_cli(["--port", str(port), "--command", "SELECT 1"])
    assert code == 1
    assert f"127.0.0.1:{port}" in err and "not be running" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [["--json", "--csv"], ["--port", "x"], ["--command", "x", "--file", "y"], ["--bogus"]])
def test_usage_errors_exit_2(args):
    with pytest.raises(SystemExit) as e:
        run_cli(args)
    assert e.value.code == 2


def test_port_and_host_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("RUSTYDB_PORT", str(server.port))
    monkeypatch.setenv("RUSTYDB_HOST", "127.0.0.1")
    code, out, _ = run_cli(["--command", "INSERT INTO t VALUES (1)"])
    assert (code, out) == (0, "INSERT 1\n")


def test_missing_file_is_exit_1_with_the_path(server):
    code, _, err = run_cli(["--port", str(server.port), "--file", "/nonexistent/x.sql"])
    assert code == 1 and "/nonexistent/x.sql" in err


# ---------------------------------------------------------------- scripts


SCRIPT = """\
-- restore customers
INSERT INTO t VALUES (1);
INSERT INTO t VALUES ('a;b');

BAD one;
INSERT INTO t VALUES (3);
"""


def test_script_stops_at_first_error_naming_its_line(server):
    code, out, err = run_cli(["--port", str(server.port)], stdin_text=SCRIPT)
    assert code == 1
    assert err == 'ERROR at line 5: near "BAD": syntax error\n'
    assert server.queries == ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES ('a;b')", "BAD one"]
    assert out == "INSERT 1\nINSERT 1\n"


def test_script_error_line_adds_the_servers_line_within_the_statement(server):
    script = "INSERT INTO t VALUES (1);\n\nBAD\n  more;\n"
    code, _, err = run_cli(["--port", str(server.port)], stdin_text=script)
    assert code == 1
    assert err.startswith("ERROR at line 4:")


def test_script_from_file_streams_every_statement(server, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "READ_CHUNK", 64)  # many chunk boundaries mid-statement
    path = tmp_path / "dump.sql"
    path.write_text("".join(f"INSERT INTO t VALUES ({i}, 'x;y');\n" for i in range(200)))
    code, out, err = run_cli(["--port", str(server.port), "--file", str(path)])
    assert code == 0, err
    assert len(server.queries) == 200
    assert server.queries[199] == "INSERT INTO t VALUES (199, 'x;y')"
    assert out.count("INSERT 1") == 200


def test_fatal_error_ends_the_script(server):
    code, _, err = run_cli(["--port", str(server.port)], stdin_text="FATAL;\nINSERT INTO t VALUES (1);\n")
    assert code == 1
    assert "ERROR at line 1: the server is shutting down" in err
    assert server.queries == ["FATAL"]


def test_script_reads_input_lazily(server):
    # Statements run as they are read: a source that fails after the first
    # statement proves the first already ran (memory stays flat on big files).
    class Source:
        def __init__(self):
            self.reads = 0

        def read(self, n):
            self.reads += 1
            if self.reads == 1:
                return "INSERT INTO t VALUES (1);\n"
            assert server.queries == ["INSERT INTO t VALUES (1)"]
            return ""

    with client.connect(port=server.port) as conn:
        printer = cli.TablePrinter(io.StringIO())
        assert cli.run_script(conn, cli.read_statements(Source()), printer, io.StringIO()) == 0


# ---------------------------------------------------------------- interactive


def test_interactive_shell_multiline_prompts_errors_and_meta_commands(server):
    lines = iter(
        [
            "SELECT *",
            "  FROM t;",
            "BAD;",
            "\\c sales",
            "INSERT INTO t",
            "VALUES (1); INSERT INTO t VALUES (2);",
            "\\c nowhere",
            "\\?",
            "\\x",
            "\\q",
            "INSERT INTO never_reached VALUES (1);",
        ]
    )
    prompts = []

    def read_line(prompt):
        prompts.append(prompt)
        return next(lines)

    out, err = io.StringIO(), io.StringIO()
    with client.connect(port=server.port) as conn:
        code = cli.run_interactive(conn, read_line, cli.TablePrinter(out), out, err)
    assert code == 0
    assert prompts == [
        "main=> ",
        "main-> ",
        "main=> ",
        "main=> ",
        "sales=> ",
        "sales-> ",
        "sales=> ",
        "sales=> ",
        "sales=> ",
        "sales=> ",
    ]
    assert server.queries == [
        "SELECT *\n  FROM t",
        "BAD",
        "USE sales",
        "INSERT INTO t\nVALUES (1)",
        "INSERT INTO t VALUES (2)",
        "USE nowhere",
    ]
    assert "(2 rows)" in out.getvalue()
    assert "\\q" in out.getvalue()  # help text was shown
    assert 'ERROR: near "BAD": syntax error' in err.getvalue()
    assert "database nowhere does not exist" in err.getvalue()
    assert "unknown command \\x" in err.getvalue()


def test_interactive_shell_ends_on_eof_and_ctrl_c_drops_the_partial_statement(server):
    events = iter(["INSERT INTO half", KeyboardInterrupt, "INSERT INTO t VALUES (1);", EOFError])

    def read_line(prompt):
        item = next(events)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    out = io.StringIO()
    with client.connect(port=server.port) as conn:
        assert cli.run_interactive(conn, read_line, cli.TablePrinter(out), out, io.StringIO()) == 0
    assert server.queries == ["INSERT INTO t VALUES (1)"]


# ---------------------------------------------------------------- client library


def test_execute_returns_the_last_result_and_tracks_session_state(server):
    with client.connect(port=server.port, database="sales") as conn:
        assert conn.database == "sales"
        result = conn.execute("BEGIN; SELECT * FROM t")
        assert result.columns == ["id", "name", "data"]
        assert result.rows == [[1, "alice", b"\x00\xff"], [22, None, None]]
        assert (result.status, result.rows_affected) == ("SELECT 2", 2)
        assert conn.in_transaction


def test_server_error_keeps_the_connection_usable(server):
    with client.connect(port=server.port) as conn:
        with pytest.raises(client.ServerError) as e:
            conn.execute("INSERT INTO t VALUES (1);\nBAD")
        assert (e.value.code, e.value.statement_line) == ("syntax_error", 2)
        assert conn.execute("INSERT INTO t VALUES (2)").status == "INSERT 1"


def test_abandoned_stream_is_drained_before_the_next_statement(server):
    with client.connect(port=server.port) as conn:
        for event in conn.stream("SELECT big"):
            if isinstance(event, client.Rows):
                break  # stop after the first of ten batches
        assert conn.execute("INSERT INTO t VALUES (1)").status == "INSERT 1"


def test_fatal_error_closes_the_connection(server):
    conn = client.connect(port=server.port)
    with pytest.raises(client.ServerError) as e:
        conn.execute("FATAL")
    assert e.value.fatal and conn.closed
    with pytest.raises(client.ConnectionFailed):
        conn.execute("SELECT 1")


def test_password_comes_from_the_environment(monkeypatch):
    creds = {"alice": make_scram_credentials("s3cret")}
    srv = FakeServer(auth_fn=creds.get)
    try:
        monkeypatch.setenv("RUSTYDB_PASSWORD", "s3cret")
        code, out, err = run_cli(["--port", str(srv.port), "--user", "alice", "--command", "INSERT INTO t VALUES (1)"])
        assert (code, out) == (0, "INSERT 1\n"), err
        monkeypatch.setenv("RUSTYDB_PASSWORD", "wrong")
        code, out, err = run_cli(["--port", str(srv.port), "--user", "alice", "--command", "INSERT INTO t VALUES (1)"])
        assert code == 1
        assert AUTH_FAILED_MESSAGE in err and "wrong" not in err.replace("is wrong", "")
        monkeypatch.delenv("RUSTYDB_PASSWORD")
        with pytest.raises(client.ConnectionFailed) as e:
            client.connect(port=srv.port, user="alice")
        assert "RUSTYDB_PASSWORD" in str(e.value)
    finally:
        srv.close()


def test_run_statement_uses_the_statements_own_line(server):
    err = io.StringIO()
    with client.connect(port=server.port) as conn:
        code = cli.run_script(conn, [Statement("BAD", 42)], cli.TablePrinter(io.StringIO()), err)
    assert code == 1 and err.getvalue().startswith("ERROR at line 42:")
