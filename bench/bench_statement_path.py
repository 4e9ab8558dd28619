"""CPU time per statement on the server's own side, in-process (bench only).

    python bench/bench_statement_path.py [--inline-budget 1ms] [--profile]

A real engine on a temp dir and the real wire connection (``ClientConnection``
with its ``ServerSide`` and ``Dispatcher``) on one end of a socket pair;
each point SELECT's request frame is fed in and its answer read off the
other end. What is timed is the process's CPU time (worker threads
included), so other work on a shared machine barely moves the figure: the
minimum and the median of 7 rounds of 2,000 statements. Without a client
process or a network round trip, it isolates what the server spends per
statement: decoding, dispatch, SQLite, encoding, the send (and, for the
autocommit INSERT, the WAL append and the CPU side of its fdatasync). ``--profile``
prints where it goes. It imports the server its interpreter has installed: run it with a venv
bound to another checkout to compare the two.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import random
import socket
import statistics
import tempfile
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
from rustydb_server.engine.instance import Engine
from rustydb_server.fileops import FileOps
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.roles import SUPERUSER, SUPERUSER_ROLE, Role, RoleStore
from rustydb_server.settings import Settings
from rustydb_server.tls import TlsPolicy

ROWS = 10_000
ROUND = 2_000
ROUNDS = 7


def _query_frame(sql: str) -> bytes:
    return encode_frame({"type": "query", "sql": sql, "batch_rows": events.DEFAULT_BATCH_ROWS})


async def _main(budget: str | None, profile: bool) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="rustydb-path-"), "data")
    overrides = {"wal_segment_size": 1 << 20}
    if budget is not None:
        overrides["inline_statement_budget"] = budget
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
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    conn = wire.ClientConnection(listener, trio.SocketStream(trio.socket.from_stdlib_socket(ours)), ("127.0.0.1", 1))
    conn.protocol = ServerSide(None)
    conn.role = Role(SUPERUSER_ROLE, login=True, attribute=SUPERUSER)
    conn.protocol.receive_data(encode_frame({"type": "hello", "version": 1, "user": "bench", "client": "bench"}))
    dispatcher = Dispatcher(services, conn, 1)
    await conn.send(await dispatcher.open_session(conn.protocol.next_event()))

    async def one(frame: bytes) -> None:
        conn.protocol.receive_data(frame)
        await dispatcher.handle(conn.protocol.next_event())
        try:
            while theirs.recv(1 << 16):
                pass
        except BlockingIOError:
            pass

    await one(_query_frame("CREATE TABLE a(aid INTEGER PRIMARY KEY, abalance INTEGER)"))
    await one(
        _query_frame(
            f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS}) "
            "INSERT INTO a SELECT i, 0 FROM s"
        )
    )
    rnd = random.Random(1)
    selects = [
        _query_frame(f"SELECT abalance FROM a WHERE aid = {rnd.randint(1, ROWS)}") for _ in range(ROUND * (ROUNDS + 1))
    ]
    inserts = [_query_frame(f"INSERT INTO b VALUES ({i}, {rnd.randint(1, ROWS)})") for i in range(ROUND * ROUNDS)]
    await one(_query_frame("CREATE TABLE b(id INTEGER PRIMARY KEY, v INTEGER)"))
    for frame in selects[:ROUND]:  # warm up (and learn the statement)
        await one(frame)
    for what, frames in (("point SELECT", selects[ROUND:]), ("autocommit INSERT", inserts)):
        rounds, walls = [], []
        for r in range(ROUNDS):
            t0, w0 = time.process_time(), time.perf_counter()
            for frame in frames[r * ROUND : (r + 1) * ROUND]:
                await one(frame)
            rounds.append((time.process_time() - t0) / ROUND * 1e6)
            walls.append((time.perf_counter() - w0) / ROUND * 1e6)
        print(
            f"{what}, server CPU per statement: min {min(rounds):.1f} us, median {statistics.median(rounds):.1f} us; "
            f"wall median {statistics.median(walls):.1f} us ({ROUNDS} rounds of {ROUND})"
        )
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for frame in selects[ROUND : 4 * ROUND]:
            await one(frame)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(45)
    await dispatcher.close()
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inline-budget", help="inline_statement_budget, e.g. 0 or 1ms (a server that has it)")
    ap.add_argument("--profile", action="store_true", help="print where the time goes")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    trio.run(_main, args.inline_budget, args.profile)


if __name__ == "__main__":
    main()
