"""The server's CPU per commit, in process, split by thread and by stage (bench only).

    python bench/bench_commit_path.py [--kind insert|update|tpcb] [--sessions 1] [--rounds 5] [--n 2000] [--stages]
    python bench/bench_commit_path.py --hand-off

A real engine on a temp dir and the real wire connection (``ClientConnection``
with its ``ServerSide`` and ``Dispatcher``) on one end of a socket pair, as
bench_statement_path.py does; each statement's request frame is fed in and
its answer read off the other end. ``insert`` is a single-row autocommit
INSERT, ``update`` a single-row autocommit UPDATE by primary key, ``tpcb``
pgbench's transaction (BEGIN, three UPDATEs, a SELECT, an INSERT, COMMIT),
counted per transaction. ``--sessions 2`` runs the work from two sessions at
once (one event loop, as in the server): their writes then meet each other's
locks.

What it prints, per commit (medians of the rounds):

* the CPU of each thread from ``/proc/self/task/*/schedstat`` (user and
  kernel time, so the CPU side of every syscall counts): the event loop's
  thread, the session's worker thread, any other;
* the trio loop's iterations (``before_io_wait``), the hand-offs to the
  sessions' worker threads, the statements run inline and in a worker (with
  their reruns: an inline write that met a lock counts in both), and the
  wall time;
* with ``--stages``, the session's CPU (``time.thread_time``, on whichever
  thread ran it: inline statements run on the loop) split by stage:
  the statement itself in SQLite, the session's changeset, the WAL record's
  encoding and write, the flush (fdatasync), SQLite's COMMIT with the LSN
  row, and the rest of the statement's Python. The stage timers cost about
  a microsecond each, so the totals with ``--stages`` are a little higher.

``--hand-off`` prints only what one hand-off to a session's worker thread
costs the loop's thread, by what the call does there (nothing, Python,
an fdatasync, a sleep).

It imports the server its interpreter has installed: run it with a venv bound
to another checkout to compare the two.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time

import structlog
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ServerSide
from rustydb_client.protocol.frames import encode_frame
from rustydb_server import datadir as dd
from rustydb_server import wire
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.dispatch import Dispatcher, Services
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine import session, sqlite_steps
from rustydb_server.engine.instance import Engine
from rustydb_server.fileops import FileOps
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.roles import SUPERUSER, SUPERUSER_ROLE, Role, RoleStore
from rustydb_server.settings import Settings
from rustydb_server.tls import TlsPolicy

ACCOUNTS = 100_000


def _frame(sql: str) -> bytes:
    return encode_frame({"type": "query", "sql": sql, "batch_rows": events.DEFAULT_BATCH_ROWS})


def thread_cpu_ns() -> dict[int, tuple[int, int]]:
    """Each thread of this process: (its CPU nanoseconds so far, the times it was switched out)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
            out[int(tid)] = (ns, switches)
        except FileNotFoundError:
            pass  # a thread that just ended
    return out


class Counter(trio.abc.Instrument):
    """The event loop's iterations that went to wait for I/O."""

    def __init__(self) -> None:
        self.io_waits = 0

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1


class Stages:
    """CPU (time.thread_time) spent in named stages, by wrapping the functions that run them.

    Nested stages are subtracted from the stage around them, so each stage's
    figure is its own (``self``) time."""

    def __init__(self) -> None:
        self.totals: collections.Counter = collections.Counter()
        self._local = threading.local()

    def wrap(self, owner, attr: str, stage: str) -> None:
        inner = getattr(owner, attr)
        stages = self

        def timed(*args, **kwargs):
            stack = getattr(stages._local, "stack", None)
            if stack is None:
                stack = stages._local.stack = []
            stack.append(0.0)
            t0 = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.thread_time() - t0
                nested = stack.pop()
                stages.totals[stage] += spent - nested
                if stack:
                    stack[-1] += spent

        setattr(owner, attr, timed)


def install_stages() -> Stages:
    st = Stages()
    S = session.SqlSession
    # the outermost: whatever a statement costs in the worker beyond the named stages
    st.wrap(S, "run", "session Python (parse, capture setup, status)")
    st.wrap(S, "_execute", "the statement in SQLite (prepare, step, authorizer)")
    st.wrap(S, "_cut_changeset", "the session's changeset")
    st.wrap(S, "_sequence_step", "AUTOINCREMENT check")
    st.wrap(S, "_start_capture", "session capture start")
    st.wrap(Engine, "commit", "engine commit (locks, record object, txid, time)")
    st.wrap(Engine, "_append", "WAL record: encode and write")
    st.wrap(Engine, "flush_wal", "WAL flush (fdatasync, and waiting on another's)")
    st.wrap(sqlite_steps.SqliteSteps, "commit", "SQLite COMMIT with the LSN row")
    return st


def _spin(n: int = 2500) -> int:
    """About 100 us of Python holding the GIL."""
    x = 0
    for i in range(n):
        x += i
    return x


async def hand_offs(n: int = 2000) -> None:
    """What one hand-off to a session's worker thread costs the event loop's
    thread, by what the call does there: the loop's CPU per hand-off grows
    with how long it waited (after a wait its work runs on cold caches)."""
    from rustydb_server.session_worker import SessionWorker

    path = os.path.join(tempfile.mkdtemp(prefix="rustydb-hop-"), "f")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, bytes(65536))
    os.fsync(fd)

    def fdatasync() -> None:
        os.pwrite(fd, b"x" * 200, 0)
        os.fdatasync(fd)

    calls = {
        "an empty call": lambda: None,
        "100 us of Python": _spin,
        "write + fdatasync": fdatasync,
        "100 us of Python, then write + fdatasync": lambda: (_spin(), fdatasync()),
        "a 0.5 ms sleep": lambda: time.sleep(0.0005),
    }
    me = threading.get_native_id()
    print(f"a hand-off to a session's worker thread, by what the call does (medians of 3 rounds of {n}):")
    for what, fn in calls.items():
        rounds = []
        for _ in range(3):
            worker = SessionWorker("hop")
            await worker.run(fn)
            cpu0, w0, p0 = thread_cpu_ns()[me][0], time.perf_counter(), time.process_time()
            for _ in range(n):
                await worker.run(fn)
            rounds.append(
                (
                    (time.perf_counter() - w0) / n * 1e6,
                    (thread_cpu_ns()[me][0] - cpu0) / n / 1e3,
                    (time.process_time() - p0) / n * 1e6,
                )
            )
            worker.close()
        wall, loop, proc = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(f"  {what:42s} wall {wall:7.1f} us, the loop thread's CPU {loop:5.1f} us, the process's {proc:6.1f} us")
    os.close(fd)
    os.unlink(path)


def _workload(kind: str, rnd: random.Random, n: int, base: int) -> list[list[bytes]]:
    """``n`` units of work, each the frames of one commit."""
    if kind == "insert":
        return [[_frame(f"INSERT INTO ins(v) VALUES ({base + i})")] for i in range(n)]
    if kind == "update":
        return [
            [_frame(f"UPDATE accounts SET abalance = abalance + 1 WHERE aid = {rnd.randint(1, ACCOUNTS)}")]
            for _ in range(n)
        ]
    units = []
    for _ in range(n):
        aid, tid, bid, delta = rnd.randint(1, ACCOUNTS), rnd.randint(1, 100), rnd.randint(1, 10), rnd.randint(-5, 5)
        units.append(
            [
                _frame("BEGIN"),
                _frame(f"UPDATE accounts SET abalance = abalance + {delta} WHERE aid = {aid}"),
                _frame(f"SELECT abalance FROM accounts WHERE aid = {aid}"),
                _frame(f"UPDATE tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}"),
                _frame(f"UPDATE branches SET bbalance = bbalance + {delta} WHERE bid = {bid}"),
                _frame(
                    "INSERT INTO history (tid, bid, aid, delta, mtime) "
                    f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"
                ),
                _frame("COMMIT"),
            ]
        )
    return units


async def _main(args, counter: Counter) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="rustydb-commit-"), "data")
    overrides = {}
    if args.inline_budget is not None:
        overrides["inline_statement_budget"] = args.inline_budget
    settings = Settings.load(None, path, overrides)
    engine = Engine.open(dd.DataDir(path), settings, FileOps())
    services = Services(
        engine, settings, Lifecycle(), Checkpointer(engine, settings, Doorbell()), None, lambda: None,
        trio.CapacityLimiter(4), RoleStore(path),
    )  # fmt: skip
    listener = type(
        "Listener",
        (),
        {"settings": settings, "services": services, "role_store": services.role_store, "tls": TlsPolicy(None, None)},
    )()
    hops = [0]

    async def open_session(session_id: int):
        """A session on one end of a socket pair; ``one(frame)`` runs a request, reads its answer."""
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        conn = wire.ClientConnection(listener, stream, ("127.0.0.1", session_id))
        conn.protocol = ServerSide(None)
        conn.role = Role(SUPERUSER_ROLE, login=True, attribute=SUPERUSER)
        conn.protocol.receive_data(encode_frame({"type": "hello", "version": 1, "user": "bench", "client": "bench"}))
        dispatcher = Dispatcher(services, conn, session_id)
        await conn.send(await dispatcher.open_session(conn.protocol.next_event()))
        worker_run = dispatcher.worker.run

        async def counted_run(fn, *a):
            hops[0] += 1
            return await worker_run(fn, *a)

        dispatcher.worker.run = counted_run

        async def one(frame: bytes) -> None:
            conn.protocol.receive_data(frame)
            await dispatcher.handle(conn.protocol.next_event())
            try:
                while theirs.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass

        return dispatcher, one

    sessions = [await open_session(i + 1) for i in range(args.sessions)]
    one = sessions[0][1]

    gen = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
    for sql in (
        "CREATE TABLE ins(id INTEGER PRIMARY KEY, v INTEGER)",
        "CREATE TABLE accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)",
        "CREATE TABLE tellers(tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)",
        "CREATE TABLE branches(bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)",
        "CREATE TABLE history(tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)",
        gen.format(n=ACCOUNTS) + "INSERT INTO accounts SELECT i, (i - 1) / 10000 + 1, 0, printf('%84s', '') FROM s",
        gen.format(n=100) + "INSERT INTO tellers SELECT i, (i - 1) / 10 + 1, 0, NULL FROM s",
        gen.format(n=10) + "INSERT INTO branches SELECT i, 0, NULL FROM s",
    ):
        await one(_frame(sql))
    rnd = random.Random(1)
    for unit in _workload(args.kind, rnd, args.n, 10**9):  # warm up (and learn the statements)
        for frame in unit:
            await one(frame)
    stages = install_stages() if args.stages else None
    me = threading.get_native_id()
    worker_tids = {await d.worker.run(threading.get_native_id) for d, _ in sessions}
    costs = services.statement_costs
    per: dict[str, list[float]] = collections.defaultdict(list)
    stage_rounds: list[collections.Counter] = []
    for r in range(args.rounds):
        work = _workload(args.kind, rnd, args.n, r * args.n)
        if stages is not None:
            stages.totals.clear()
        before, waits0, hops0 = thread_cpu_ns(), counter.io_waits, hops[0]
        inline0, worker0 = costs.inline_runs, costs.worker_runs
        w0, p0 = time.perf_counter(), time.process_time()

        async def client(run_one, units) -> None:
            for unit in units:
                for frame in unit:
                    await run_one(frame)

        async with trio.open_nursery() as nursery:
            for i, (_, run_one) in enumerate(sessions):
                nursery.start_soon(client, run_one, work[i :: len(sessions)])
        wall, proc = time.perf_counter() - w0, time.process_time() - p0
        after = thread_cpu_ns()
        n = args.n
        loop = worker = other = 0
        switches = {me: 0, "workers": 0}
        for tid, (ns, sw) in after.items():
            ns0, sw0 = before.get(tid, (0, 0))
            spent = ns - ns0
            if tid == me:
                loop += spent
            elif tid in worker_tids:
                worker += spent
                switches["workers"] += sw - sw0
            else:
                other += spent
            if tid == me:
                switches[me] = sw - sw0
        per["total CPU (process_time)"].append(proc / n * 1e6)
        per["  event loop thread"].append(loop / n / 1e3)
        per["  session worker threads"].append(worker / n / 1e3)
        per["  other threads"].append(other / n / 1e3)
        per["wall"].append(wall / n * 1e6)
        per["loop iterations"].append((counter.io_waits - waits0) / n)
        per["hand-offs to the worker"].append((hops[0] - hops0) / n)
        per["switches: event loop thread"].append(switches[me] / n)
        per["switches: session workers"].append(switches["workers"] / n)
        per["statements run inline"].append((costs.inline_runs - inline0) / n)
        per["statements run in a worker"].append((costs.worker_runs - worker0) / n)
        if stages is not None:
            stage_rounds.append(collections.Counter(stages.totals))
    unit = "transaction" if args.kind == "tpcb" else "commit"
    print(
        f"{args.kind}, {args.sessions} session(s): the server's cost per {unit}, "
        f"medians of {args.rounds} rounds of {args.n}"
    )
    for k, v in per.items():
        suffix = " us" if k.startswith(("total", " ", "wall")) else ""
        print(f"  {k:28s} {statistics.median(v):8.1f}{suffix}   (min {min(v):.1f})")
    if stage_rounds:
        print("  the session's CPU by stage, on whichever thread ran it (self time, us):")
        names = sorted(
            {k for c in stage_rounds for k in c}, key=lambda k: -statistics.median(c[k] for c in stage_rounds)
        )
        for k in names:
            print(f"    {statistics.median(c[k] for c in stage_rounds) / args.n * 1e6:8.1f}  {k}")
    for dispatcher, _ in sessions:
        await dispatcher.close()
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("insert", "update", "tpcb"), default="insert")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="commits per round")
    ap.add_argument("--stages", action="store_true", help="split the session's CPU by stage")
    ap.add_argument("--sessions", type=int, default=1, help="sessions running the work at once (one event loop)")
    ap.add_argument("--inline-budget", help="inline_statement_budget, e.g. 0 or 1ms")
    ap.add_argument("--hand-off", action="store_true", help="only the cost of one hand-off, by what the call does")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.hand_off:
        trio.run(hand_offs)
        return
    counter = Counter()
    trio.run(_main, args, counter, instruments=[counter])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
