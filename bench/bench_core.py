"""Server-core benchmark: prints figures and same-run ratios; never run as a test.

    python bench/bench_core.py [--quick] [--only a,b] [--inline-budget 1ms] [--json]

Figures (``--only`` picks some): ``floor`` (a round trip with no SQL, with
and without a thread hop), ``insert`` (single-row autocommit INSERT commits/s
with 1 and 4 clients), ``update`` (single-row autocommit UPDATE by primary key,
1 client), ``tpcb`` (the pgbench-like TPC-B transaction, scale 10, 2
clients), ``select`` (point SELECTs/s by primary key, 2 clients), ``mixed``
(long scans from one client while two run point SELECTs: the server's worst
event-loop scheduling delay, measured by bench/loop_probe.py, must stay under
5 ms; then the same probe under 2 clients' TPC-B, whose one-row writes run
on the loop once learned), ``bulk`` (rows/s, 1M rows in one transaction), ``replay`` (recovery
records/s), ``pgbench`` (PostgreSQL 15's pgbench -S, -N and TPC-B on the same
machine, when installed). ``--inline-budget`` sets the server's
inline_statement_budget (0 runs every statement in a worker thread, as
before issue 20). ``--json`` ends with one line of every figure, for
bench/bench_ab.py. ``--switch-interval`` runs the server with another
CPython switch interval (bench/switch_interval_server.py). Clients are separate processes, so the client side does
not share the server's GIL.
"""

from __future__ import annotations

import argparse
import json
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
import pgbench_side  # noqa: E402

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
    cpu = time.process_time()
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
    elif kind == "update":
        while time.perf_counter() < deadline:
            aid = rnd.randint(1, 100_000 * SCALE)
            conn.execute(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {aid}")
            done += 1
    elif kind == "scan":
        while time.perf_counter() < deadline:
            conn.execute("SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE filler <> 'x'")
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
    cpu = time.process_time() - cpu
    conn.close()
    out.put((done, cpu))


def run_clients(kind: str, port: int, clients: int, seconds: float, cpu: dict | None = None) -> float:
    return run_mix([(kind, clients)], port, seconds, cpu)[kind]


def process_cpu(pid: int) -> float:
    """A process's CPU seconds so far, user and system, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mix(kinds: list[tuple[str, int]], port: int, seconds: float, cpu: dict | None = None) -> dict[str, float]:
    """Clients of each kind at once; each kind's statements (or transactions) per second.

    With ``cpu`` (holding the server's ``pid``), also the CPU microseconds
    per statement of the clients (``client_us``) and the server
    (``server_us``), of the first kind: the cost of each side, which the load
    of other work on the machine moves far less than the rates.
    """
    queues = {kind: mp.Queue() for kind, _ in kinds}
    procs = [
        (kind, mp.Process(target=_worker, args=(kind, port, seconds, i + 1, queues[kind])))
        for kind, clients in kinds
        for i in range(clients)
    ]
    server0 = process_cpu(cpu["pid"]) if cpu is not None else 0.0
    t0 = time.perf_counter()
    for _, p in procs:
        p.start()
    results = {kind: [queues[kind].get() for _ in range(clients)] for kind, clients in kinds}
    server1 = process_cpu(cpu["pid"]) if cpu is not None else 0.0
    for _, p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        first = results[kinds[0][0]]
        done = max(sum(n for n, _ in first), 1)
        cpu["client_us"] = sum(c for _, c in first) / done * 1e6
        cpu["server_us"] = (server1 - server0) / done * 1e6
    return {kind: sum(n for n, _ in got) / elapsed for kind, got in results.items()}


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


FIGURES = ("floor", "insert", "update", "tpcb", "select", "mixed", "bulk", "replay", "pgbench")


def _server(tmp: str, budget: str | None, probe: str | None = None, switch: float | None = None) -> ServerProcess:
    extra = []
    if budget is not None:
        conf = os.path.join(tmp, "rustydb.toml")
        with open(conf, "w") as f:
            f.write(f'inline_statement_budget = "{budget}"\n')
        extra = ["--config", conf]
    here = os.path.dirname(__file__)
    command = [sys.executable, os.path.join(here, "loop_probe.py"), probe] if probe else None
    if switch is not None:
        command = [sys.executable, os.path.join(here, "switch_interval_server.py"), str(switch)]
        if probe:
            command += ["--probe", probe]
    return ServerProcess(os.path.join(tmp, "data"), extra_args=extra, command=command).start()


def _probe_read(path: str, after: float) -> dict:
    """The probe's report written after ``after`` (time.time())."""
    while True:
        try:
            if os.stat(path).st_mtime > after:
                with open(path) as f:
                    return json.load(f)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated figures of {', '.join(FIGURES)}")
    ap.add_argument("--inline-budget", help="the server's inline_statement_budget, e.g. 0 or 1ms")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    ap.add_argument(
        "--switch-interval",
        type=float,
        help="run the server with this CPython switch interval (seconds; CPython's default is 0.005)",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(FIGURES):
        ap.error(f"unknown figures: {', '.join(sorted(only - set(FIGURES)))}")
    seconds = 3.0 if args.quick else 8.0
    figures: dict[str, float] = {}
    tmp = tempfile.mkdtemp(prefix="rustydb-bench-")
    try:
        fsync_us = figures["fsync_us"] = fsync_latency_us(tmp)
        print(f"fsync latency (write 256 B + fdatasync): {fsync_us:.0f} us")
        # A single client's autocommit has nothing to share a flush with:
        # one fdatasync per commit bounds it, whatever the server does.
        print(f"  the disk's floor for 1-client autocommit (one fdatasync per commit): {1e6 / fsync_us:.0f} commits/s")
        if "floor" in only:
            short = min(seconds, 3.0)
            hop1 = floor.round_trips(free_port(), 1, short, hop=True)
            hop2 = floor.round_trips(free_port(), 2, short, hop=True)
            bare2 = floor.round_trips(free_port(), 2, short, hop=False)
            figures.update(floor_hop_1=hop1, floor_hop_2=hop2, floor_no_hop_2=bare2)
            print(
                f"design floor, a round trip with no SQL: one worker-thread hop 1 client {hop1:6.0f}/s, "
                f"2 clients {hop2:6.0f}/s; no hop (inline) 2 clients {bare2:6.0f}/s"
            )
            print(
                f"  so 1 client commits at most {1e6 / (1e6 / hop1 + fsync_us):6.0f}/s "
                f"(one hop + one fdatasync), and 2 clients at most {bare2:6.0f} inline statements/s"
            )
        srv = _server(tmp, args.inline_budget, switch=args.switch_interval)
        with rc.connect(port=srv.port) as c:
            c.execute("CREATE TABLE ins(id INTEGER PRIMARY KEY, v INTEGER)")
            if "insert" in only:
                cpu = {"pid": srv.proc.pid}
                one = figures["insert_1"] = run_clients("insert", srv.port, 1, seconds, cpu)
                figures.update(insert_client_cpu_us=cpu["client_us"], insert_server_cpu_us=cpu["server_us"])
                four = figures["insert_4"] = run_clients("insert", srv.port, 4, seconds)
                print(
                    f"autocommit INSERT, 1 client:  {one:8.0f} commits/s  (CPU per commit: the client "
                    f"{cpu['client_us']:.0f} us, the server {cpu['server_us']:.0f} us)"
                )
                print(f"autocommit INSERT, 4 clients: {four:8.0f} commits/s  ({four / one:.2f}x)")
            if only & {"update", "tpcb", "select", "mixed"}:
                t0 = time.perf_counter()
                setup_pgbench(c)
                # The load's pages reach the database file now, not during
                # the figures (SQLite no longer checkpoints as it goes).
                c.execute("CHECKPOINT")
                print(f"pgbench scale {SCALE} set up in {time.perf_counter() - t0:.1f} s")
            if "update" in only:
                ups = figures["update_1"] = run_clients("update", srv.port, 1, seconds)
                print(f"autocommit UPDATE, 1 client:  {ups:8.0f} commits/s")
            if "tpcb" in only:
                tps = figures["tpcb_2"] = run_clients("tpcb", srv.port, 2, seconds)
                print(f"TPC-B-like, 2 clients:        {tps:8.0f} tx/s")
            if "select" in only:
                cpu = {"pid": srv.proc.pid}
                sel = figures["select_2"] = run_clients("select", srv.port, 2, seconds, cpu)
                figures.update(select_client_cpu_us=cpu["client_us"], select_server_cpu_us=cpu["server_us"])
                print(
                    f"point SELECT by PK, 2 clients:{sel:8.0f} /s  (CPU per SELECT: each client "
                    f"{cpu['client_us']:.0f} us, the server {cpu['server_us']:.0f} us)"
                )
        srv.stop()
        if "mixed" in only:
            report = os.path.join(tmp, "loop-probe.json")
            srv = _server(tmp, args.inline_budget, probe=report, switch=args.switch_interval)
            run_clients("select", srv.port, 2, 1.0)  # warm up: the point SELECT is learned
            open(report + ".reset", "w").close()
            started = time.time()
            while os.path.exists(report + ".reset"):
                time.sleep(0.05)
            mix = run_mix([("scan", 1), ("select", 2)], srv.port, seconds)
            delay = _probe_read(report, time.time())
            # The same probe under TPC-B: its one-row writes run on the loop once learned.
            open(report + ".reset", "w").close()
            while os.path.exists(report + ".reset"):
                time.sleep(0.05)
            tpcb_mixed = run_clients("tpcb", srv.port, 2, seconds)
            tpcb_delay = _probe_read(report, time.time())
            srv.stop()
            figures.update(mixed_select_2=mix["select"], mixed_scans=mix["scan"])
            figures.update(loop_worst_ms=delay["worst_ms"], loop_p99_ms=delay["p99_ms"])
            figures["loop_worst_cpu_ms"] = delay["worst_cpu_ms"]
            verdict = "ok" if delay["worst_ms"] < 5 else "OVER the 5 ms bound"
            print(
                f"mixed load ({mix['scan']:.1f} full scans/s from 1 client, {mix['select']:.0f} point SELECTs/s "
                f"from 2): the loop's worst scheduling delay {delay['worst_ms']:.2f} ms ({verdict}), "
                f"p99 {delay['p99_ms']:.2f} ms over {delay['steps']} task steps in {time.time() - started:.0f} s; "
                f"worst loop-thread CPU time while a task waited {delay['worst_cpu_ms']:.2f} ms "
                "(the rest of the wall figure is the OS or the GIL giving the time to others)"
            )
            figures.update(tpcb_loop_worst_ms=tpcb_delay["worst_ms"], tpcb_loop_worst_cpu_ms=tpcb_delay["worst_cpu_ms"])
            print(
                f"TPC-B, 2 clients ({tpcb_mixed:.0f} tx/s): the loop's worst scheduling delay "
                f"{tpcb_delay['worst_ms']:.2f} ms, p99 {tpcb_delay['p99_ms']:.2f} ms; worst loop-thread CPU time "
                f"while a task waited {tpcb_delay['worst_cpu_ms']:.2f} ms"
            )
        if "bulk" in only:
            srv = _server(tmp, args.inline_budget, switch=args.switch_interval)
            with rc.connect(port=srv.port) as c:
                rows = figures["bulk"] = bulk_load(c)
            srv.stop()
            print(f"bulk load (1M rows, 1 tx):    {rows:8.0f} rows/s")
        if "replay" in only:
            rec = replay_rate(tmp, 20_000 if args.quick else 50_000)
            n = rec["replayed_records"]
            secs = max(rec["seconds"], 1e-9)
            figures["replay"] = n / secs
            print(f"recovery replay:              {n / secs:8.0f} records/s ({n} records in {secs:.2f} s)")
        if "pgbench" in only:
            pg = pgbench_side.run(free_port(), seconds, scale=SCALE, clients=2)
            if not pg:
                print("pgbench: PostgreSQL 15 is not installed here; no figures beside")
            for name, tps in pg.items():
                figures[f"pgbench_{name}"] = tps
            if pg:
                print(
                    f"PostgreSQL 15 pgbench, scale {SCALE}, 2 clients, same machine: -S {pg['select']:.0f} tps, "
                    f"-N {pg['simple_update']:.0f} tps, TPC-B {pg['tpcb']:.0f} tps"
                )
                for ours, theirs, what in (
                    ("select_2", "select", "point SELECT"),
                    ("tpcb_2", "tpcb", "TPC-B"),
                ):
                    if ours in figures:
                        print(f"  {what}: {figures[ours] / pg[theirs]:.2f}x pgbench")
        if args.json:
            print(json.dumps(figures))
    finally:
        subprocess.run(["pkill", "-f", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
