"""Short statements on the event loop (issue 20, item 1).

The learning rule as a pure unit (durations given, no real clock), then the
statement path in-process: a real engine on a temp dir, answers read back
through the protocol's own ClientSide, as in test_dispatch.py.
"""

from __future__ import annotations

import threading
import types

import apsw
import pytest
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide, ServerSide
from rustydb_server import datadir as dd
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.dispatch import Dispatcher, Services
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine import session as session_module
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.sqlite_steps import SqliteSteps
from rustydb_server.engine.statement_costs import MAX_REQUALIFY, StatementCosts, shape
from rustydb_server.fileops import FileOps
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.roles import BUILTIN, RoleStore
from rustydb_server.settings import Settings
from rustydb_server.wal import reader as wal_reader
from rustydb_server.wal import record as walrec

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


@pytest.mark.parametrize("kind", [None, "ddl"])
def test_statements_that_are_not_of_an_inlinable_kind_never_run_inline(kind):
    costs = StatementCosts()
    for _ in range(100):
        costs.record(KEY, 0.01 * MS, kind, BUDGET, inline=False)
    assert not costs.may_inline(KEY)


def test_an_autocommit_write_is_learned_as_reads_are():
    costs = StatementCosts()
    costs.record(KEY, 0.2 * MS, "write", BUDGET, inline=False)
    assert costs.may_inline(KEY)
    costs.record(KEY, 1.2 * MS, "write", BUDGET, inline=True)  # over: back to the worker
    assert not costs.may_inline(KEY)
    # The same shape inside an explicit transaction (kind None) is never trusted again soon.
    costs.record(KEY, 0.2 * MS, None, BUDGET, inline=False)
    costs.record(KEY, 0.2 * MS, "write", BUDGET, inline=False)
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


class Tracked:
    """What change tracking hears of: every record written to the WAL."""

    def __init__(self):
        self.records: list = []

    def logged(self, lsn, rec) -> None:
        self.records.append((lsn, rec))


def _server(tmp_path, overrides):
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20, **overrides})
    fileops = GatedFsync()
    tracked = Tracked()
    engine = Engine.open(dd.DataDir(path), settings, fileops, change_tracking=tracked)
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
    return types.SimpleNamespace(
        services=services, fileops=fileops, costs=services.statement_costs, tracked=tracked, path=path
    )


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


async def learn(server, session, sql: str, database: str = "rustydb") -> None:
    """Run ``sql`` until the server trusts it to run inline."""
    key = server.costs.key(database, sql)
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


async def test_writes_in_a_transaction_commits_and_ddl_never_run_inline(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    for i in range(5):
        await query(session, "BEGIN IMMEDIATE")
        await query(session, f"INSERT INTO t VALUES ({i}, {i})")
        await query(session, f"UPDATE t SET v = v + 1 WHERE id = {i}")
        await query(session, "COMMIT")
        await query(session, f"CREATE TABLE x{i}(a)")
    assert costs.inline_runs == 0
    assert rows_of(await query(session, "SELECT sum(v) FROM t")) == [[15]]


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


# ------------------------------------------------- autocommit writes inline


def wal_records(server, start_lsn: int) -> list:
    """The records in the WAL from ``start_lsn`` to what is durable now."""
    engine = server.services.engine
    return [
        walrec.decode_record(e.body)
        for e in wal_reader.read_wal(
            dd.DataDir(server.path).wal_dir,
            timeline=engine.wal.timeline,
            segment_size=engine.wal.segment_size,
            start_lsn=start_lsn,
            stop_lsn=engine.wal.flushed_lsn,
        )
    ]


def inserting(n: int) -> str:
    return (
        "INSERT INTO t(v) SELECT x FROM (WITH RECURSIVE c(x) AS "
        f"(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c)"
    )


async def test_an_autocommit_write_runs_in_a_worker_first_then_inline_and_answers_once_durable(server, session):
    costs = server.costs
    engine = server.services.engine
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, "INSERT INTO t(v) VALUES (1)")
    engine.create_database("other")
    other = await open_session(server)
    try:
        assert (await query(other, "USE other"))[-1].database == "other"
        await learn(server, other, "SELECT 1", "other")
        start = engine.wal.end_lsn
        inline_runs = costs.inline_runs
        server.fileops.hold = True
        answers = []

        async def write():
            answers.append(await query(session, "INSERT INTO t(v) VALUES (2)"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.to_thread.run_sync(server.fileops.held.wait, 30)
            # Written and committed in SQLite on the loop; its fdatasync is held.
            assert costs.inline_runs == inline_runs + 1
            # The loop is not blocked meanwhile: another database's read answers.
            assert rows_of(await query(other, "SELECT 1")) == [[1]]
            await trio.sleep(0.2)
            assert answers == []  # not before its WAL record is durable
            server.fileops.hold = False
            server.fileops.release.set()
        assert answers == [[events.Complete("INSERT 1", 1, "rustydb", False)]]
        assert engine.is_durable(engine.wal.end_lsn)
        [rec] = wal_records(server, start)
        assert isinstance(rec, walrec.TxRecord) and rec.database == "rustydb"
        assert rows_of(await query(session, "SELECT v FROM t WHERE v = 2")) == [[2]]
    finally:
        await other[0].close()


async def test_an_inline_write_past_its_deadline_left_nothing_and_the_worker_run_is_answered(server, session):
    """Stopped at its deadline, the write left no row, no WAL record and
    nothing for change tracking; the worker's run is the one answered."""
    costs = server.costs
    engine = server.services.engine
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, inserting(3))
    before = rows_of(await query(session, "SELECT count(*) FROM t"))[0][0]
    start, tracked = engine.wal.end_lsn, len(server.tracked.records)
    reruns, inline_runs, worker_runs = costs.reruns, costs.inline_runs, costs.worker_runs
    # The same shape, ~0.3 s of work: stopped at 5 ms, then run in full in a worker.
    answer = await query(session, inserting(300_000))
    assert answer == [events.Complete("INSERT 300000", 300_000, "rustydb", False)]
    assert (costs.reruns, costs.inline_runs, costs.worker_runs) == (reruns + 1, inline_runs, worker_runs + 1)
    assert rows_of(await query(session, "SELECT count(*) FROM t")) == [[before + 300_000]]
    # One record in the WAL and one for change tracking: the worker's, with every row.
    [rec] = wal_records(server, start)
    [(lsn, tracked_rec)] = server.tracked.records[tracked:]
    assert tracked_rec == rec and lsn >= start
    assert [kind for kind, _ in rec.steps] == ["changeset"]
    assert not costs.may_inline(costs.key("rustydb", inserting(3)))


async def test_an_inline_write_stopped_inside_its_begin_leaves_no_transaction_open(server, session, monkeypatch):
    """Stopped inside BEGIN IMMEDIATE once SQLite has opened the transaction
    and taken the write lock: each run is rolled back whole and runs again
    in a worker, and the session goes on as if nothing happened."""
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, "INSERT INTO t(v) VALUES (1)")
    count = rows_of(await query(session, "SELECT count(*) FROM t"))[0][0]
    sql_session = session[0].session

    def stop_now():
        # Once SQLite's transaction is open: the first such check is inside
        # BEGIN IMMEDIATE, after it took the write lock.
        if sql_session.conn.getautocommit():
            return False
        sql_session._deadline_passed = True
        return True

    monkeypatch.setattr(sql_session, "_past_deadline", stop_now)
    monkeypatch.setattr(session_module, "PROGRESS_STEPS", 1)
    reruns = costs.reruns
    for i in range(3):
        costs._entries[costs.key("rustydb", "INSERT INTO t(v) VALUES (1)")].inline = True
        assert await query(session, f"INSERT INTO t(v) VALUES ({100 + i})") == [
            events.Complete("INSERT 1", 1, "rustydb", False)
        ]
    assert costs.reruns == reruns + 3
    monkeypatch.undo()
    assert (await query(session, "BEGIN"))[-1].in_transaction
    assert rows_of(await query(session, "SELECT count(*) FROM t WHERE v >= 100")) == [[3]]
    assert (await query(session, "COMMIT"))[-1].status == "COMMIT"
    assert rows_of(await query(session, "SELECT count(*) FROM t")) == [[count + 3]]


async def test_a_learned_write_inside_an_explicit_transaction_stays_in_the_worker(server, session):
    costs = server.costs
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await query(session, "INSERT INTO t VALUES (1, 0)")
    await learn(server, session, "UPDATE t SET v = v + 1 WHERE id = 1")
    assert (await query(session, "BEGIN"))[-1].in_transaction
    inline_runs = costs.inline_runs
    assert (await query(session, "UPDATE t SET v = v + 1 WHERE id = 1"))[-1].status == "UPDATE 1"
    assert costs.inline_runs == inline_runs  # SQLite would roll back the whole transaction if stopped
    assert (await query(session, "ROLLBACK"))[-1].status == "ROLLBACK"
    learned = rows_of(await query(session, "SELECT v FROM t"))[0][0]
    await query(session, "UPDATE t SET v = v + 1 WHERE id = 1")
    assert rows_of(await query(session, "SELECT v FROM t")) == [[learned + 1]]


async def test_an_inline_write_whose_commit_would_wait_runs_again_in_a_worker(server, session):
    """A checkpoint pausing the database's commits holds its commit lock: the
    loop does not wait for it; the statement is rolled back and its worker
    run waits and commits, once."""
    costs = server.costs
    engine = server.services.engine
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, "INSERT INTO t(v) VALUES (1)")
    count = rows_of(await query(session, "SELECT count(*) FROM t"))[0][0]
    handle = engine.get_database("rustydb")
    handle.commit_lock.acquire("a test pausing commits")
    inline_runs, worker_runs = costs.inline_runs, costs.worker_runs
    answers = []

    async def write():
        answers.append(await query(session, "INSERT INTO t(v) VALUES (7)"))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.sleep(0.2)
            assert answers == []
            assert costs.inline_runs == inline_runs  # it went back to the worker
            handle.commit_lock.release()
    finally:
        if handle.commit_lock.locked() and not answers:
            handle.commit_lock.release()
    assert answers == [[events.Complete("INSERT 1", 1, "rustydb", False)]]
    assert costs.worker_runs == worker_runs + 1
    assert rows_of(await query(session, "SELECT count(*), sum(v = 7) FROM t")) == [[count + 1, 1]]


async def test_an_inline_write_rolled_back_after_it_ran_leaves_nothing_and_runs_in_a_worker(server, session):
    """The statement ran inline, then its WAL append would have had to wait
    (a new segment to create and sync): rolled back with no record written,
    it runs again in a worker, once."""
    costs = server.costs
    engine = server.services.engine
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, "INSERT INTO t(v) VALUES (1)")
    count = rows_of(await query(session, "SELECT count(*) FROM t"))[0][0]
    start, tracked = engine.wal.end_lsn, len(server.tracked.records)
    refused = []

    def would_wait(body):
        refused.append(body)
        return None

    engine.wal.try_append = would_wait
    try:
        inline_runs, worker_runs = costs.inline_runs, costs.worker_runs
        answer = await query(session, "INSERT INTO t(v) VALUES (7)")
    finally:
        del engine.wal.try_append
    assert answer == [events.Complete("INSERT 1", 1, "rustydb", False)]
    assert len(refused) == 1
    assert (costs.inline_runs, costs.worker_runs) == (inline_runs, worker_runs + 1)
    assert rows_of(await query(session, "SELECT count(*), sum(v = 7) FROM t")) == [[count + 1, 1]]
    [rec] = wal_records(server, start)
    assert [r for _, r in server.tracked.records[tracked:]] == [rec]


class FailingCommit(SqliteSteps):
    """SQLite's commit fails once, after the WAL record was written (a full disk)."""

    def __init__(self):
        self.fail = False

    def commit(self, conn, lsn, txid, commit_time_us):
        if self.fail:
            self.fail = False
            raise apsw.FullError("database or disk is full (injected)")
        super().commit(conn, lsn, txid, commit_time_us)


async def test_an_inline_write_that_sqlite_fails_after_its_wal_record_is_applied_from_the_wal(server, session):
    costs = server.costs
    engine = server.services.engine
    await query(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    await learn(server, session, "INSERT INTO t(v) VALUES (1)")
    count = rows_of(await query(session, "SELECT count(*) FROM t"))[0][0]
    engine.sqlite_steps = steps = FailingCommit()
    steps.fail = True
    inline_runs = costs.inline_runs
    # Committed all the same: applied from its durable record, and answered so.
    assert await query(session, "INSERT INTO t(v) VALUES (8)") == [events.Complete("INSERT 1", 1, "rustydb", False)]
    assert costs.inline_runs == inline_runs + 1 and not steps.fail
    assert engine.pending_databases() == []
    assert not engine.get_database("rustydb").commit_lock.locked()
    await query(session, "INSERT INTO t(v) VALUES (9)")
    assert rows_of(await query(session, f"SELECT v FROM t WHERE id > {count}")) == [[8], [9]]
