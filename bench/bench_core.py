"""Server-core benchmark: prints figures and same-run ratios; never run as a test.

    python bench/bench_core.py [--quick]

Figures: single-row autocommit INSERT commits/s with 1 and 4 clients; the
pgbench-like TPC-B transaction (scale 10) with 2 clients; point SELECTs/s by
primary key with 2 clients; bulk load rows/s (1M rows, one transaction);
recovery replay records/s; and the fsync latency of the same disk.
Clients are separate processes, so the client side does not share the
server's GIL.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
sys.path.insert(0, os.path.dirname(__file__))
import floor  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from tests.support.servers import ServerProcess, free_port  # noqa: E402

SCALE = 10


def fsync_latency_us(directory: str, n: int = 500) -> float:
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"\0" * 65536)
    os.fsync(fd)
    t0 = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, b"x" * 256, (i * 256) % 65536)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    return elapsed / n * 1e6


def _worker(kind: str, port: int, seconds: float, seed: int, out: mp.Queue) -> None:
    rnd = random.Random(seed)
    conn = rc.connect(port=port)
    done = 0
    deadline = time.perf_counter() + seconds
    if kind == "insert":
        while time.perf_counter() < deadline:
            conn.execute(f"INSERT INTO ins(v) VALUES ({seed * 10_000_000 + done})")
            done += 1
    elif kind == "select":
        while time.perf_counter() < deadline:
            aid = rnd.randint(1, 100_000 * SCALE)
            conn.execute(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
            done += 1
    elif kind == "tpcb":
        while time.perf_counter() < deadline:
            aid = rnd.randint(1, 100_000 * SCALE)
            tid = rnd.randint(1, 10 * SCALE)
            bid = rnd.randint(1, SCALE)
            delta = rnd.randint(-5000, 5000)
            try:
                conn.execute("BEGIN")
                conn.execute(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}")
                conn.execute(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
                conn.execute(f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}")
                conn.execute(f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}")
                conn.execute(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                    f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"
                )
                conn.execute("COMMIT")
                done += 1
            except rc.ServerError:
                conn.execute("ROLLBACK")
    conn.close()
    out.put(done)


def run_clients(kind: str, port: int, clients: int, seconds: float) -> float:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_worker, args=(kind, port, seconds, i + 1, q)) for i in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / (time.perf_counter() - t0)


def setup_pgbench(conn) -> None:
    conn.execute("CREATE TABLE pgbench_branches(bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)")
    conn.execute("CREATE TABLE pgbench_tellers(tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)")
    conn.execute("CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)")
    conn.execute(
        "CREATE TABLE pgbench_history(tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)"
    )
    gen = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {n}) "
    conn.execute(gen.format(n=SCALE) + "INSERT INTO pgbench_branches SELECT i, 0, NULL FROM s")
    conn.execute(gen.format(n=10 * SCALE) + "INSERT INTO pgbench_tellers SELECT i, (i - 1) / 10 + 1, 0, NULL FROM s")
    conn.execute(
        gen.format(n=100_000 * SCALE) + "INSERT INTO pgbench_accounts SELECT i, (i - 1) / 100000 + 1, 0, "
        "printf('%84s', '') FROM s"
    )


def bulk_load(conn, rows: int = 1_000_000, batch: int = 1000) -> float:
    conn.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
    statements = []
    for start in range(0, rows, batch):
        values = ",".join(f"({i}, 'customer-{i}', {i * 1.25}, {i % 97})" for i in range(start, start + batch))
        statements.append(f"INSERT INTO bulk VALUES {values}")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for s in statements:
        conn.execute(s)
    conn.execute("COMMIT")
    return rows / (time.perf_counter() - t0)


def replay_rate(tmp: str, records: int) -> dict:
    data = os.path.join(tmp, "replay")
    srv = ServerProcess(data, extra_args=[]).start()
    srv.sql("CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT);")
    srv.sql("ALTER SYSTEM SET checkpoint_timeout = '1h';")
    srv.sql("CHECKPOINT;")
    srv.stop()
    saved = os.path.join(tmp, "replay-databases")
    shutil.copytree(os.path.join(data, "databases"), saved)
    srv.start()
    per_client = records // 2
    run_n(srv.port, per_client, clients=2)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    # Put back the databases as they were before the load: recovery must replay it all.
    shutil.rmtree(os.path.join(data, "databases"))
    shutil.copytree(saved, os.path.join(data, "databases"))
    srv.start()
    rec = srv.health()["recovery"]
    srv.stop()
    return rec


def _insert_n(port: int, n: int, seed: int) -> None:
    conn = rc.connect(port=port)
    for i in range(n):
        conn.execute(f"INSERT INTO r(v) VALUES ('{seed}-{i}')")
    conn.close()


def run_n(port: int, n: int, clients: int) -> None:
    procs = [mp.Process(target=_insert_n, args=(port, n, i)) for i in range(clients)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else 8.0
    tmp = tempfile.mkdtemp(prefix="rustydb-bench-")
    try:
        fsync_us = fsync_latency_us(tmp)
        print(f"fsync latency (write 256 B + fdatasync): {fsync_us:.0f} us")
        short = min(seconds, 3.0)
        hop1 = floor.round_trips(free_port(), 1, short, hop=True)
        hop2 = floor.round_trips(free_port(), 2, short, hop=True)
        bare2 = floor.round_trips(free_port(), 2, short, hop=False)
        print(
            f"design floor, a round trip with no SQL and one worker-thread hop: "
            f"1 client {hop1:6.0f}/s, 2 clients {hop2:6.0f}/s (no hop: {bare2:6.0f}/s)"
        )
        print(
            f"  so 1 client commits at most {1e6 / (1e6 / hop1 + fsync_us):6.0f}/s "
            f"(one hop + one fdatasync), and 2 clients at most {hop2:6.0f} statements/s"
        )
        srv = ServerProcess(os.path.join(tmp, "data")).start()
        with rc.connect(port=srv.port) as c:
            c.execute("CREATE TABLE ins(id INTEGER PRIMARY KEY, v INTEGER)")
            one = run_clients("insert", srv.port, 1, seconds)
            four = run_clients("insert", srv.port, 4, seconds)
            print(f"autocommit INSERT, 1 client:  {one:8.0f} commits/s")
            print(f"autocommit INSERT, 4 clients: {four:8.0f} commits/s  ({four / one:.2f}x)")
            t0 = time.perf_counter()
            setup_pgbench(c)
            print(f"pgbench scale {SCALE} set up in {time.perf_counter() - t0:.1f} s")
            tps = run_clients("tpcb", srv.port, 2, seconds)
            print(f"TPC-B-like, 2 clients:        {tps:8.0f} tx/s")
            sel = run_clients("select", srv.port, 2, seconds)
            print(f"point SELECT by PK, 2 clients:{sel:8.0f} /s")
            rows = bulk_load(c)
            print(f"bulk load (1M rows, 1 tx):    {rows:8.0f} rows/s")
        srv.stop()
        rec = replay_rate(tmp, 20_000 if args.quick else 50_000)
        n = rec["replayed_records"]
        secs = max(rec["seconds"], 1e-9)
        print(f"recovery replay:              {n / secs:8.0f} records/s ({n} records in {secs:.2f} s)")
    finally:
        subprocess.run(["pkill", "-f", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
