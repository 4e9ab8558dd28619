"""Statement dispatch in-process: a real engine on a temp dir, answers read back
through the protocol's own ClientSide, no socket."""

from __future__ import annotations

import errno
import types

import pytest
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide, ServerSide
from rustydb_server import __version__
from rustydb_server import datadir as dd
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.dispatch import Dispatcher, Services
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine, FatalWalError
from rustydb_server.errors import ReportedError
from rustydb_server.fileops import FileOps
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.settings import Settings


class Connection:
    """What the dispatcher sends on, with the client's side of the protocol reading it."""

    peer = ("127.0.0.1", 1)

    def __init__(self, database: str | None = None):
        self.client = ClientSide()
        self.server = ServerSide(None)
        self.server.receive_data(self.client.send(events.Hello("tester", database, "test")))
        self.session_request = self.server.next_event()
        self.writes = 0
        self.received: list = []

    async def send(self, *answer) -> None:
        self.writes += 1
        self.client.receive_data(b"".join(map(self.server.send, answer)))
        while (event := self.client.next_event()) is not events.NEED_DATA:
            self.received.append(event)

    def request(self, event):
        """``event`` as the server side reads it from the client."""
        self.server.receive_data(self.client.send(event))
        return self.server.next_event()

    def answer(self) -> list:
        received, self.received = self.received, []
        return received


class FlakyFsync(FileOps):
    def __init__(self):
        self.failing = False

    def fdatasync(self, fd):
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)


class Backups:
    """The backup service's side of the hand-off."""

    def __init__(self):
        self.streamed = []

    async def stream_to_client(self, conn, request, *, user=None):
        self.streamed.append((conn, request, user))


@pytest.fixture
async def server(tmp_path, nursery):
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20, "statement_timeout": "200ms"})
    fileops = FlakyFsync()
    engine = Engine.open(dd.DataDir(path), settings, fileops)
    checkpointer = Checkpointer(engine, settings, Doorbell())
    await nursery.start(checkpointer.run)
    services = Services(
        engine,
        settings,
        Lifecycle(),
        checkpointer,
        Backups(),
        settings_changed=lambda: None,
        db_limiter=trio.CapacityLimiter(4),
    )
    yield types.SimpleNamespace(services=services, fileops=fileops)
    engine.close()


@pytest.fixture
async def session(server):
    """An open session: (dispatcher, connection)."""
    conn = Connection()
    dispatcher = Dispatcher(server.services, conn, 7)
    await conn.send(await dispatcher.open_session(conn.session_request))
    assert conn.answer() == [events.Ready(__version__, "rustydb", 7)]
    yield dispatcher, conn
    await dispatcher.close()


async def query(session, sql: str, batch_rows: int = events.DEFAULT_BATCH_ROWS) -> list:
    dispatcher, conn = session
    await dispatcher.handle(conn.request(events.Query(sql, batch_rows)))
    return conn.answer()


# ---------------------------------------------------------------- sessions


async def test_a_session_opens_on_the_database_asked_for(server, session):
    await query(session, "CREATE DATABASE sales")
    conn = Connection("sales")
    dispatcher = Dispatcher(server.services, conn, 3)
    assert await dispatcher.open_session(conn.session_request) == events.Ready(__version__, "sales", 3)
    await dispatcher.close()
    assert dispatcher.session is None


async def test_a_session_on_a_missing_database_is_an_error_with_its_code(server):
    conn = Connection("nowhere")
    with pytest.raises(ReportedError) as e:
        await Dispatcher(server.services, conn, 1).open_session(conn.session_request)
    assert e.value.code == "unknown_database"


async def test_closing_rolls_back_the_open_transaction(server, session):
    await query(session, "CREATE TABLE t(x)")
    await query(session, "BEGIN")
    assert (await query(session, "INSERT INTO t VALUES (1)"))[-1].in_transaction
    await session[0].close()
    other = Connection()
    dispatcher = Dispatcher(server.services, other, 8)
    await other.send(await dispatcher.open_session(other.session_request))
    other.answer()
    await dispatcher.handle(other.request(events.Query("SELECT count(*) FROM t")))
    assert other.answer()[1] == events.Rows([[0]])
    await dispatcher.close()


# ---------------------------------------------------------------- SQL


async def test_sql_answers_columns_rows_and_complete_in_one_write(session):
    assert await query(session, "CREATE TABLE t(x INTEGER PRIMARY KEY, y TEXT)") == [
        events.Complete("CREATE TABLE", 0, "rustydb", False)
    ]
    assert await query(session, "INSERT INTO t VALUES (1, 'a'), (2, 'b')") == [
        events.Complete("INSERT 2", 2, "rustydb", False)
    ]
    writes = session[1].writes
    assert await query(session, "SELECT y FROM t WHERE x = 2") == [
        events.Columns(["y"]),
        events.Rows([["b"]]),
        events.Complete("SELECT 1", 1, "rustydb", False),
    ]
    assert session[1].writes == writes + 1


async def test_rows_stream_in_batches(session):
    await query(session, "CREATE TABLE t(x)")
    await query(
        session,
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10) INSERT INTO t SELECT n FROM c",
    )
    answer = await query(session, "SELECT x FROM t ORDER BY x", batch_rows=4)
    assert answer[0] == events.Columns(["x"])
    assert [len(e.rows) for e in answer[1:-1]] == [4, 4, 2]
    assert [r[0] for e in answer[1:-1] for r in e.rows] == list(range(1, 11))
    assert answer[-1] == events.Complete("SELECT 10", 10, "rustydb", False)


async def test_an_empty_query_completes_as_empty(session):
    assert await query(session, "  -- nothing\n") == [events.Complete("EMPTY", 0, "rustydb", False)]


async def test_one_statement_per_query(session):
    (error,) = await query(session, "SELECT 1;\n\nSELECT 2")
    assert (error.code, error.statement_line, error.fatal) == ("multiple_statements", 3, False)
    assert "2 statements" in error.message


async def test_a_failed_statement_reports_its_code_and_line_and_the_session_goes_on(session):
    (error,) = await query(session, "\nSELECT * FROM missing")
    assert (error.code, error.statement_line, error.fatal) == ("sql_error", 2, False)
    assert "missing" in error.message
    (error,) = await query(session, "SAVEPOINT a")
    assert (error.code, error.statement_line) == ("no_transaction", 1)
    assert (await query(session, "SELECT 1"))[1] == events.Rows([[1]])


async def test_statement_timeout_interrupts_a_long_statement(session):
    (error,) = await query(
        session,
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c",
    )
    assert error.code == "query_canceled"
    assert (await query(session, "SELECT 2"))[1] == events.Rows([[2]])


async def test_a_wal_failure_ends_the_connection(server, session):
    await query(session, "CREATE TABLE t(x)")
    server.fileops.failing = True
    dispatcher, conn = session
    with pytest.raises(FatalWalError) as e:
        await dispatcher.handle(conn.request(events.Query("INSERT INTO t VALUES (1)")))
    assert (e.value.code, e.value.fatal) == ("wal_failure", True)
    assert "nothing more is acknowledged" in str(e.value)
    assert conn.answer() == []


# ---------------------------------------------------------------- admin SQL


async def test_admin_sql_is_answered_by_the_server(session):
    assert await query(session, "SHOW statement_timeout") == [
        events.Columns(["statement_timeout"]),
        events.Rows([["200ms"]]),
        events.Complete("SHOW", 1, "rustydb", False),
    ]
    answer = await query(session, "CREATE DATABASE IF NOT EXISTS rustydb")
    assert answer == [
        events.Notice('database "rustydb" already exists, skipping'),
        events.Complete("CREATE DATABASE", 0, "rustydb", False),
    ]


async def test_use_switches_the_sessions_database(session):
    await query(session, "CREATE DATABASE sales")
    assert await query(session, "USE sales") == [events.Complete("USE", 0, "sales", False)]
    await query(session, "CREATE TABLE only_in_sales(x)")
    await query(session, "USE rustydb")
    (error,) = await query(session, "SELECT * FROM only_in_sales")
    assert error.code == "sql_error"


async def test_admin_errors_report_their_codes(session):
    (error,) = await query(session, "SHOW no_such_setting")
    assert (error.code, error.statement_line) == ("invalid_setting", 1)
    (error,) = await query(session, "ALTER SYSTEM SET")
    assert error.code == "syntax_error" and "Usage:" in error.message
    (error,) = await query(session, "USE nowhere")
    assert error.code == "unknown_database"


async def test_shutdown_is_asked_for_once_the_client_has_its_answer(server, session):
    dispatcher, conn = session
    lifecycle = server.services.lifecycle
    sent_before_shutdown = []
    real_send = conn.send

    async def send(*answer):
        sent_before_shutdown.append(lifecycle.shutdown_mode)
        await real_send(*answer)

    conn.send = send
    answer = await query(session, "SHUTDOWN IMMEDIATE")
    assert answer[-1] == events.Complete("SHUTDOWN", 0, "rustydb", False)
    assert sent_before_shutdown == ["graceful"] and lifecycle.shutdown_mode == "immediate"


# ---------------------------------------------------------------- backups


async def test_a_backup_request_goes_to_the_backup_service_with_the_connection(server, session):
    dispatcher, conn = session
    request = conn.request(events.BackupRequested("full"))
    await dispatcher.handle(request)
    assert server.services.backups.streamed == [(conn, request, "tester")]
