"""CPU time per statement on the client library's side, in-process (bench only).

    python bench/bench_client_path.py [--profile]

The real ``rustydb_client.client.Connection`` and its ``ClientSide`` over a
stand-in socket that takes each request and gives back the server's answer
to it as the server frames it (a point SELECT's columns, one row and its
completion; an INSERT's completion alone), so what is timed is the library
alone: splitting, the request's frame, decoding and checking the answer's
frames, the state machine, the Result. No syscall and no other process, so
the load of a shared machine barely moves it: the minimum and the median of
7 rounds of 5,000 statements, process CPU time. It imports the client its
interpreter has installed: run it with a venv bound to another checkout to
compare the two. bench_statement_path.py is the server's counterpart.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import statistics
import time

from rustydb_client import client as rc
from rustydb_client.protocol.connection import ClientSide, State
from rustydb_client.protocol.frames import encode_frame

ROUND = 5_000
ROUNDS = 7

SELECT_ANSWER = b"".join(
    encode_frame(m)
    for m in (
        {"type": "columns", "names": ["abalance"]},
        {"type": "rows", "rows": [[-4211]]},
        {"type": "complete", "status": "SELECT 1", "rows_affected": 1, "database": "rustydb", "in_transaction": False},
    )
)
INSERT_ANSWER = encode_frame(
    {"type": "complete", "status": "INSERT 1", "rows_affected": 1, "database": "rustydb", "in_transaction": False}
)


class _Server:
    """A socket's two calls the client makes: each request sent gets its answer to receive."""

    family = socket.AF_UNIX

    def __init__(self, answer: bytes):
        self.answer = answer
        self.pending = b""

    def sendall(self, data) -> None:
        self.pending = self.answer

    def recv(self, n: int) -> bytes:
        data, self.pending = self.pending, b""
        return data

    def settimeout(self, t) -> None:
        pass

    def close(self) -> None:
        pass


def _connection(answer: bytes) -> rc.Connection:
    protocol = ClientSide()
    protocol.state = State.IDLE  # as after the handshake
    return rc.Connection(_Server(answer), protocol, "bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true", help="print where the time goes")
    args = ap.parse_args()
    cases = (
        (
            "point SELECT",
            SELECT_ANSWER,
            [f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}" for i in range(ROUND)],
        ),
        ("autocommit INSERT", INSERT_ANSWER, [f"INSERT INTO ins(v) VALUES ({i})" for i in range(ROUND)]),
    )
    for what, answer, statements in cases:
        conn = _connection(answer)
        for sql in statements[:1000]:  # warm up
            conn.execute(sql)
        rounds = []
        for _ in range(ROUNDS):
            t0 = time.process_time()
            for sql in statements:
                conn.execute(sql)
            rounds.append((time.process_time() - t0) / ROUND * 1e6)
        print(
            f"{what}, client library CPU per statement: min {min(rounds):.1f} us, "
            f"median {statistics.median(rounds):.1f} us ({ROUNDS} rounds of {ROUND}; no I/O)"
        )
    if args.profile:
        conn = _connection(SELECT_ANSWER)
        prof = cProfile.Profile()
        prof.enable()
        for sql in cases[0][2]:
            conn.execute(sql)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
