"""Short statements on the event loop (issue 20, item 1).

The learning rule as a pure unit (durations given, no real clock), then the
statement path in-process: a real engine on a temp dir, answers read back
through the protocol's own ClientSide, as in test_dispatch.py.
"""

from __future__ import annotations

import threading
import types

import pytest
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide, ServerSide
from rustydb_server import datadir as dd
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.dispatch import Dispatcher, Services
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.statement_costs import MAX_REQUALIFY, StatementCosts, shape
from rustydb_server.fileops import FileOps
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.roles import BUILTIN, RoleStore
from rustydb_server.settings import Settings

MS = 0.001
BUDGET = 1 * MS
KEY = ("rustydb", "SELECT v FROM t WHERE id = ?")

# ------------------------------------------------------------ the learning rule


def test_a_statement_never_measured_does_not_run_inline():
    assert not StatementCosts().may_inline(KEY)


def test_a_read_runs_inline_after_one_worker_run_under_the_budget():
    costs = StatementCosts()
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(KEY)
    assert costs.recent(KEY) == [0.2 * MS]


def test_a_worker_run_over_the_budget_is_not_trusted():
    costs = StatementCosts()
    costs.record(KEY, 1.5 * MS, "read", BUDGET, inline=False)
    assert not costs.may_inline(KEY)


def test_the_first_inline_run_over_the_budget_drops_back_and_trust_comes_back_slower():
    costs = StatementCosts()
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    costs.record(KEY, 0.3 * MS, "read", BUDGET, inline=True)
    assert costs.may_inline(KEY)
    costs.record(KEY, 1.2 * MS, "read", BUDGET, inline=True)  # over: back to the worker
    assert not costs.may_inline(KEY)
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert not costs.may_inline(KEY)  # twice as many runs in a row are needed now
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(KEY)
    costs.ran_over(KEY, 1.0 * MS)  # stopped at its deadline: same as over
    assert not costs.may_inline(KEY)
    for _ in range(3):
        costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert not costs.may_inline(KEY)
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(KEY)
    assert costs.reruns == 1


def test_a_slow_run_in_between_restarts_the_streak():
    costs = StatementCosts()
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    costs.record(KEY, 2 * MS, "read", BUDGET, inline=True)
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    costs.record(KEY, 3 * MS, "read", BUDGET, inline=False)
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert not costs.may_inline(KEY)
    costs.record(KEY, 0.2 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(KEY)


@pytest.mark.parametrize("kind", [None, "write", "ddl"])
def test_statements_that_are_not_reads_never_run_inline(kind):
    costs = StatementCosts()
    for _ in range(100):
        costs.record(KEY, 0.01 * MS, kind, BUDGET, inline=False)
    assert not costs.may_inline(KEY)


def test_a_shape_that_once_left_rows_pending_needs_the_longest_streak():
    costs = StatementCosts()
    costs.record(KEY, 0.1 * MS, None, BUDGET, inline=False)  # a result larger than one batch
    for _ in range(MAX_REQUALIFY - 1):
        costs.record(KEY, 0.1 * MS, "read", BUDGET, inline=False)
    assert not costs.may_inline(KEY)
    costs.record(KEY, 0.1 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(KEY)


def test_the_least_recently_used_statement_is_forgotten_first():
    costs = StatementCosts(capacity=2)
    a, b, c = ("db", "a"), ("db", "b"), ("db", "c")
    costs.record(a, 0.1 * MS, "read", BUDGET, inline=False)
    costs.record(b, 0.1 * MS, "read", BUDGET, inline=False)
    costs.record(a, 0.1 * MS, "read", BUDGET, inline=True)  # a used again: b is the oldest
    costs.record(c, 0.1 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(a) and costs.may_inline(c)
    assert not costs.may_inline(b)


def test_statements_are_learned_per_database_and_shape():
    assert shape("SELECT v FROM t1 WHERE id = 17 AND name = 'it''s' OR x > 1.5e3") == (
        "SELECT v FROM t1 WHERE id = ? AND name = ? OR x > ?"
    )
    assert shape('SELECT "col 2" FROM t WHERE a = .5') == 'SELECT "col 2" FROM t WHERE a = ?'
    costs = StatementCosts()
    costs.record(costs.key("one", "SELECT 1"), 0.1 * MS, "read", BUDGET, inline=False)
    assert costs.may_inline(costs.key("one", "SELECT 2"))
    assert not costs.may_inline(costs.key("two", "SELECT 1"))


# ------------------------------------------------------- the statement path


class Connection:
    """What the dispatcher sends on, with the client's side of the protocol reading it."""

    peer = ("127.0.0.1", 1)
    role = BUILTIN

    def __init__(self):
        self.client = ClientSide()
        self.server = ServerSide(None)
        self.server.receive_data(self.client.send(events.Hello("tester", None, "test")))
        self.session_request = self.server.next_event()
        self.received: list = []

    async def send(self, *answer) -> None:
        self.client.receive_data(b"".join(map(self.server.send, answer)))
        while (event := self.client.next_event()) is not events.NEED_DATA:
            self.received.append(event)

    def request(self, event):
        self.server.receive_data(self.client.send(event))
        return self.server.next_event()

    def answer(self) -> list:
        received, self.received = self.received, []
        return received


class GatedFsync(FileOps):
    """fdatasync waits while ``hold`` is set, after saying so on ``held``."""

    def __init__(self):
        self.hold = False
        self.held = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd):
        if self.hold:
            self.held.set()
            self.release.wait(30)
        super().fdatasync(fd)


class Backups:
    async def stream_to_client(self, conn, request):
        raise AssertionError("no backups here")


def _server(tmp_path, overrides):
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20, **overrides})
    fileops = GatedFsync()
    engine = Engine.open(dd.DataDir(path), settings, fileops)
    services = Services(
        engine,
        settings,
        Lifecycle(),
        Checkpointer(engine, settings, Doorbell()),
        Backups(),
        settings_changed=lambda: None,
        db_limiter=trio.CapacityLimiter(4),
        role_store=RoleStore(path),
    )
    return types.SimpleNamespace(services=services, fileops=fileops, costs=services.statement_costs)


@pytest.fixture
async def server(tmp_path):
    # A budget of 5 ms so that learning a 50 µs statement does not depend on
    # how busy the machine running the tests is.
    s = _server(tmp_path, {"inline_statement_budget": "5ms"})
    yield s
    s.services.engine.close()


async def open_session(server):
    conn = Connection()
    dispatcher = Dispatcher(server.services, conn, 7)
    await conn.send(await dispatcher.open_session(conn.session_request))
    conn.answer()
    return dispatcher, conn


@pytest.fixture
async def session(server):
    session = await open_session(server)
    yield session
    await session[0].close()


async def query(session, sql: str, batch_rows: int = events.DEFAULT_BATCH_ROWS) -> list:
    dispatcher, conn = session
    await dispatcher.handle(conn.request(events.Query(sql, batch_rows)))
    return conn.answer()


def rows_of(answer) -> list:
    return [row for e in answer if isinstance(e, events.Rows) for row in e.rows]


async def learn(server, session, sql: str) -> None:
    """Run ``sql`` until the server trusts it to run inline."""
    key = server.costs.key("rustydb", sql)
    for _ in range(50):
        answer = await query(session, sql)
        assert isinstance(answer[-1], events.Complete), answer
        if server.costs.may_inline(key):
            return
    raise AssertionError(f"{sql!r} never became inline: {server.costs.recent(key)}")


def counting(n: int) -> str:
    return f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) SELECT count(*) FROM c"


async def test_a_point_select_runs_in_a_worker_first_then_inline(server, session):
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    await query(session, "INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    costs = server.costs
    worker_runs = costs.worker_runs
    assert rows_of(await query(session, "SELECT v FROM t WHERE id = 1")) == [["one"]]
    assert (costs.inline_runs, costs.worker_runs) == (0, worker_runs + 1)
    await learn(server, session, "SELECT v FROM t WHERE id = 1")
    inline_runs = costs.inline_runs
    answer = await query(session, "SELECT v FROM t WHERE id = 2")  # same shape, another literal
    assert costs.inline_runs == inline_runs + 1
    assert answer == [
        events.Columns(["v"]),
        events.Rows([["two"]]),
        events.Complete("SELECT 1", 1, "rustydb", False),
    ]


async def test_an_inline_read_past_its_deadline_is_stopped_and_run_again_in_a_worker_inside_a_transaction(
    server, session
):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    await learn(server, session, counting(10))
    assert (await query(session, "BEGIN"))[-1].in_transaction
    await query(session, "INSERT INTO t VALUES (1, 'mine')")
    reruns, inline_runs, worker_runs = costs.reruns, costs.inline_runs, costs.worker_runs
    # The same shape, but ~0.5 s of work: stopped at 5 ms, then run in full in a worker.
    answer = await query(session, counting(2_000_000))
    assert rows_of(answer) == [[2_000_000]]
    assert answer[-1] == events.Complete("SELECT 1", 1, "rustydb", True)
    assert (costs.reruns, costs.inline_runs, costs.worker_runs) == (reruns + 1, inline_runs, worker_runs + 1)
    assert not costs.may_inline(costs.key("rustydb", counting(10)))
    # The transaction is intact: its insert is still there, and it commits.
    assert rows_of(await query(session, "SELECT v FROM t")) == [["mine"]]
    assert (await query(session, "COMMIT"))[-1] == events.Complete("COMMIT", 0, "rustydb", False)
    other = await open_session(server)
    try:
        assert rows_of(await query(other, "SELECT v FROM t")) == [["mine"]]
    finally:
        await other[0].close()


async def test_statement_timeout_still_cancels_an_inline_statement(tmp_path):
    server = _server(tmp_path, {"inline_statement_budget": "100ms", "statement_timeout": "30ms"})
    session = await open_session(server)
    try:
        costs = server.costs
        await learn(server, session, counting(10))
        worker_runs = costs.worker_runs
        answer = await query(session, counting(20_000_000))
        assert [(e.code, str(e.message)) for e in answer] == [("query_canceled", "statement canceled")]
        assert costs.worker_runs == worker_runs  # canceled inline, not run again
        assert rows_of(await query(session, counting(10))) == [[10]]
    finally:
        await session[0].close()
        server.services.engine.close()


async def test_a_long_scan_never_runs_inline(server, session):
    costs = server.costs
    for _ in range(5):
        assert rows_of(await query(session, counting(200_000))) == [[200_000]]
    assert costs.inline_runs == 0
    assert not costs.may_inline(costs.key("rustydb", counting(200_000)))
    assert all(t > 5 * MS for t in costs.recent(costs.key("rustydb", counting(1))))


async def test_a_result_larger_than_one_batch_never_runs_inline(server, session):
    costs = server.costs
    sql = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5) SELECT i FROM c"
    for _ in range(5):
        answer = await query(session, sql, batch_rows=2)
        assert rows_of(answer) == [[1], [2], [3], [4], [5]]
    assert costs.inline_runs == 0
    assert not costs.may_inline(costs.key("rustydb", sql))


async def test_autocommit_writes_commits_and_ddl_never_run_inline(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    for i in range(5):
        await query(session, f"INSERT INTO t VALUES ({i}, {i})")
        await query(session, f"UPDATE t SET v = v + 1 WHERE id = {i}")
        await query(session, "BEGIN IMMEDIATE")
        await query(session, "COMMIT")
        await query(session, f"CREATE TABLE x{i}(a)")
    assert costs.inline_runs == 0
    assert rows_of(await query(session, "SELECT sum(v) FROM t")) == [[15]]


async def _in_transactions(session, statements, times: int = 3) -> None:
    for i in range(times):
        assert (await query(session, "BEGIN IMMEDIATE"))[-1].in_transaction
        for sql in statements:
            answer = await query(session, sql.format(i=i))
            assert isinstance(answer[-1], events.Complete), answer
        assert not (await query(session, "COMMIT"))[-1].in_transaction


async def test_a_point_write_in_a_transaction_runs_inline_once_learned_and_commits_durably(tmp_path):
    server = _server(tmp_path, {"inline_statement_budget": "5ms"})
    session = await open_session(server)
    costs = server.costs
    update = "UPDATE t SET v = v + {i} WHERE id = 1"
    insert = "INSERT INTO h VALUES ({i}, 'x')"
    delete = "DELETE FROM t WHERE id = 100{i}"
    try:
        await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
        await query(session, "CREATE TABLE h(a INTEGER, b TEXT)")
        await query(session, "INSERT INTO t VALUES (1, 0), (1000, 0), (1001, 0), (1002, 0)")
        await _in_transactions(session, [update, insert, delete], times=2)
        for sql in (update, insert, delete):
            assert costs.may_inline(costs.key("rustydb", sql.format(i=0))), sql
        inline_runs = costs.inline_runs
        await query(session, "BEGIN IMMEDIATE")
        assert (await query(session, "UPDATE t SET v = v + 10 WHERE id = 1"))[-1] == events.Complete(
            "UPDATE 1", 1, "rustydb", True
        )
        await query(session, "INSERT INTO h VALUES (10, 'y')")
        await query(session, "DELETE FROM t WHERE id = 1002")
        assert costs.inline_runs == inline_runs + 3
        assert (await query(session, "COMMIT"))[-1] == events.Complete("COMMIT", 0, "rustydb", False)
        assert costs.inline_runs == inline_runs + 3  # COMMIT flushes: always in the worker
        # The WAL holds the inline writes: a restart that replays it from the
        # last checkpoint (none since the start) finds them all.
        await session[0].close()
        session = None
        server.services.engine.close(clean=False)
        for suffix in ("-wal", "-shm"):
            (tmp_path / "data" / "databases" / f"rustydb.db{suffix}").unlink(missing_ok=True)
        server = _server(tmp_path, {})
        session = await open_session(server)
        assert rows_of(await query(session, "SELECT id, v FROM t ORDER BY id")) == [[1, 11]]
        assert rows_of(await query(session, "SELECT a FROM h ORDER BY a")) == [[0], [1], [10]]
    finally:
        if session is not None:
            await session[0].close()
        server.services.engine.close()


async def test_writes_that_may_touch_more_than_one_row_never_run_inline(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v INTEGER)")
    await query(session, "CREATE TABLE u(k TEXT PRIMARY KEY, v INTEGER)")
    await query(session, "INSERT INTO t VALUES (1, 1, 0), (2, 1, 0), (3, 2, 0)")
    writes = [
        "UPDATE t SET v = v + 1 WHERE id < {i} + 2",  # a range: its literal decides how many rows
        "UPDATE t SET v = v + 1 WHERE k = 1",  # a scan
        "INSERT INTO t(k, v) SELECT k, {i} FROM t WHERE id = 1",  # rows from a query
        "UPDATE t SET v = (SELECT count(*) FROM t) WHERE id = 1",  # a point, and a subquery
        "UPDATE u SET v = {i} WHERE k = 'a'",  # a unique index, not a rowid
    ]
    await _in_transactions(session, writes, times=4)
    assert costs.inline_runs == 0
    for sql in writes:
        assert not costs.may_inline(costs.key("rustydb", sql.format(i=0))), sql


async def test_an_inline_write_that_meets_another_sessions_write_lock_waits_for_it_in_a_worker(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await query(session, "INSERT INTO t VALUES (1, 0)")
    await _in_transactions(session, ["UPDATE t SET v = v + 1 WHERE id = 1"])
    other = await open_session(server)
    try:
        await query(other, "BEGIN IMMEDIATE")  # holds SQLite's write lock
        await query(other, "INSERT INTO t VALUES (2, 0)")
        await query(session, "BEGIN")
        inline_runs, worker_runs = costs.inline_runs, costs.worker_runs
        answers = []

        async def write():
            answers.append(await query(session, "UPDATE t SET v = v + 1 WHERE id = 1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.sleep(0.2)
            assert answers == []  # waiting in the worker, not on the loop (this task runs)
            assert (await query(other, "COMMIT"))[-1] == events.Complete("COMMIT", 0, "rustydb", False)
        assert answers[0][-1] == events.Complete("UPDATE 1", 1, "rustydb", True)
        # tried inline, then run again in the worker, which waited for the
        # lock (the other worker run: the other session's COMMIT)
        assert (costs.inline_runs, costs.worker_runs) == (inline_runs, worker_runs + 2)
        assert (await query(session, "COMMIT"))[-1] == events.Complete("COMMIT", 0, "rustydb", False)
        assert rows_of(await query(other, "SELECT id, v FROM t ORDER BY id")) == [[1, 4], [2, 0]]
    finally:
        await other[0].close()


async def test_a_write_behind_a_read_keyword_learned_as_a_read_is_not_run_inline(server, session):
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    sql = "WITH s(x) AS (SELECT 1) SELECT x FROM s"
    await learn(server, session, sql)
    answer = await query(session, "WITH s(x) AS (SELECT 1) INSERT INTO t SELECT x, x FROM s")
    assert answer[-1] == events.Complete("INSERT 1", 1, "rustydb", False)
    assert rows_of(await query(session, "SELECT id FROM t")) == [[1]]


async def test_an_inline_plain_begin_opens_the_transaction(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    for i in range(3):
        assert (await query(session, "BEGIN"))[-1].in_transaction
        await query(session, f"INSERT INTO t VALUES ({i})")
        assert not (await query(session, "ROLLBACK"))[-1].in_transaction
    assert costs.may_inline(costs.key("rustydb", "BEGIN"))
    inline_runs = costs.inline_runs
    assert (await query(session, "BEGIN"))[-1] == events.Complete("BEGIN", 0, "rustydb", True)
    assert costs.inline_runs == inline_runs + 1
    await query(session, "INSERT INTO t VALUES (9)")
    await query(session, "COMMIT")
    assert rows_of(await query(session, "SELECT id FROM t")) == [[9]]


async def test_no_inline_read_answers_with_a_commit_before_its_wal_record_is_durable(server, session):
    """SQLite commits before the WAL flush; a read whose snapshot holds that
    commit answers only after the flush, still inline (its wait is off the loop)."""
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    await query(session, "INSERT INTO t VALUES (1)")
    reader = await open_session(server)
    try:
        await learn(server, reader, "SELECT count(*) FROM t")
        fileops = server.fileops
        fileops.hold = True
        answers = []

        async def read():
            answers.append(rows_of(await query(reader, "SELECT count(*) FROM t")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(query, session, "INSERT INTO t VALUES (2)")
            await trio.to_thread.run_sync(fileops.held.wait, 30)
            # The insert's WAL record is written and SQLite committed it; its
            # fdatasync is not done: the read sees the row and must wait.
            inline_runs = costs.inline_runs
            nursery.start_soon(read)
            await trio.sleep(0.3)
            assert answers == []
            assert costs.inline_runs == inline_runs + 1
            fileops.hold = False
            fileops.release.set()
        assert answers == [[[2]]]
        assert rows_of(await query(reader, "SELECT count(*) FROM t")) == [[2]]
    finally:
        await reader[0].close()
