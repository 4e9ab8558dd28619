"""Bulk-load benchmark: prints figures, medians and same-run ratios; never run as a test.

    python bench/bench_load.py [--quick] [--baseline-src DIR] [--reps N]

Figures, each through a real server and its wire protocol, timed from the
client's first statement to the acknowledged COMMIT:

* one INSERT ... SELECT of 1M rows (one statement, one transaction), rows/s;
* an executemany-style load: BEGIN, 1,000 INSERTs of 1,000 rows, COMMIT;
* a pgbench -i style load at scale 70 (7M accounts rows; --quick: 10):
  the four pgbench tables created and filled, each table one transaction;
  beside it, when PostgreSQL 15 is installed, ``pgbench -i`` on a fresh
  cluster in the same run, and the ratio.

Before them, in this process and the same run, the floor the session extension
sets: the same 1M-row INSERT ... SELECT on a connection opened as the
server's sessions are (``engine.database.open_connection``), without a
session and with one configured as the server's capture is, CPU seconds of
the insert, the changeset's build and the session's close, medians of
--floor-reps interleaved runs; the same with a 64 MB page cache; the same
logged as the server logs a bulk insert now (the capture switched off for
the statement, the new rows copied into the attached in-memory database,
serialized and compressed: engine/rows_image.py's rows step); for each,
the CPU seconds of replaying the logged step into an empty table as recovery
and PITR do; and one scan reading every column of the rows back.

``--baseline-src DIR`` runs the same loads on a server started from another
source tree (e.g. an export of main: ``git archive main | tar -x -C DIR``)
interleaved with this tree's, so both see the same machine load; the medians
and the ratio of this tree to the baseline are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package

import apsw  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from rustydb_server.engine import bulk, database, replay, rows_image  # noqa: E402
from rustydb_server.engine.database import STATE_TABLE  # noqa: E402
from rustydb_server.wal import record as walrec  # noqa: E402
from tests.support.servers import ServerProcess, free_port  # noqa: E402

GEN = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {n}) "


def server_command(src: str | None) -> list[str] | None:
    """How to start a server from ``src`` (None: the installed one, this tree)."""
    if src is None:
        return None
    code = (
        f"import sys; sys.path.insert(0, {src!r}); from rustydb_server.tools.server_main import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code]


def insert_select(conn, rows: int) -> float:
    conn.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
    t0 = time.perf_counter()
    conn.execute(GEN.format(n=rows) + "INSERT INTO bulk SELECT i, 'customer-' || i, i * 1.25, i % 97 FROM s")
    return time.perf_counter() - t0


def executemany(conn, rows: int, batch: int = 1000) -> float:
    conn.execute("CREATE TABLE many(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
    statements = []
    for start in range(0, rows, batch):
        values = ",".join(f"({i}, 'customer-{i}', {i * 1.25}, {i % 97})" for i in range(start, start + batch))
        statements.append(f"INSERT INTO many VALUES {values}")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for s in statements:
        conn.execute(s)
    conn.execute("COMMIT")
    return time.perf_counter() - t0


def pgbench_init(conn, scale: int) -> float:
    """pgbench -i's tables and rows (accounts filler as wide as PostgreSQL's)."""
    t0 = time.perf_counter()
    conn.execute("CREATE TABLE pgbench_branches(bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)")
    conn.execute("CREATE TABLE pgbench_tellers(tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)")
    conn.execute("CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)")
    conn.execute(
        "CREATE TABLE pgbench_history(tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)"
    )
    conn.execute(GEN.format(n=scale) + "INSERT INTO pgbench_branches SELECT i, 0, NULL FROM s")
    conn.execute(GEN.format(n=10 * scale) + "INSERT INTO pgbench_tellers SELECT i, (i - 1) / 10 + 1, 0, NULL FROM s")
    conn.execute(
        GEN.format(n=100_000 * scale) + "INSERT INTO pgbench_accounts SELECT i, (i - 1) / 100000 + 1, 0, "
        "printf('%84s', '') FROM s"
    )
    return time.perf_counter() - t0


def capture_once(path: str, rows: int, session: bool, cache_kib: int | None, image: bool = False) -> dict[str, float]:
    """One INSERT ... SELECT of ``rows`` in one transaction, in this process: CPU seconds
    of the insert, the changeset's (or, ``image``, the rows step's) build and the
    session's close + COMMIT."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    conn = database.open_connection(path, create=True, server=True, synchronous="OFF")
    if cache_kib:
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
    if image:
        bulk.attach_image_schema(conn)
    t0 = time.process_time()
    conn.execute("BEGIN")
    capture = None
    if session:  # as engine/session.py's _start_capture
        capture = apsw.Session(conn, "main")
        capture.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        capture.table_filter(lambda name: name != STATE_TABLE)
        capture.attach()
        capture.enabled = not image  # a bulk insert runs with the capture off (engine/bulk.py)
    conn.execute(GEN.format(n=rows) + "INSERT INTO bulk SELECT i, 'customer-' || i, i * 1.25, i % 97 FROM s")
    t1 = time.process_time()
    if image:
        step = ("rows", rows_image.build(conn, "bulk", None))
    else:
        step = ("changeset", capture.changeset()) if capture else None
    size = len(step[1]) if step else 0
    t2 = time.process_time()
    if capture:
        capture.close()
    conn.execute("COMMIT")
    t3 = time.process_time()
    # the rows read back by one scan in C, every column (what logging a new table's rows would read)
    conn.execute("SELECT sum(id), sum(length(name)), sum(amount), sum(qty) FROM bulk").fetchall()
    t4 = time.process_time()
    conn.close()
    replayed = replay_once(path + ".replay", step) if step else 0.0
    return {
        "replay": replayed,
        "insert": t1 - t0,
        "changeset": t2 - t1,
        "close_commit": t3 - t2,
        "total": t3 - t0,
        "bytes": size,
        "scan": t4 - t3,
    }


ROWS_STEP = "logged as a rows step (lz4 image)"


def replay_once(path: str, step) -> float:
    """CPU seconds of replaying ``step`` into an empty copy of the table, as
    recovery and PITR do (engine/replay.py's apply_tx_record)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    database.create_database_file(path, 0)
    conn = replay.open_replay_connection(path, synchronous="OFF")
    conn.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)")
    t0 = time.process_time()
    replay.apply_tx_record(conn, 1, walrec.TxRecord(1, 1, "bench", (step,)))
    seconds = time.process_time() - t0
    conn.close()
    return seconds


def capture_floor(work: str, rows: int, reps: int) -> None:
    """What the session extension costs alone: the same statement with and without it."""
    variants = {
        "SQLite alone (no session)": (False, None, False),
        "with the server's session": (True, None, False),
        "with the session, 64 MB page cache": (True, 65536, False),
        ROWS_STEP: (True, None, True),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    path = os.path.join(work, "floor.db")
    for _ in range(reps):
        for name, (session, cache, image) in variants.items():
            runs[name].append(capture_once(path, rows, session, cache, image))
    print(f"== in-process floor: one INSERT ... SELECT of {rows} rows, CPU seconds, medians of {reps}")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for name, m in med.items():
        print(
            f"  {name:36s} total {m['total']:.3f} s ({rows / m['total']:>9,.0f} rows/s of CPU): insert "
            f"{m['insert']:.3f}, changeset build {m['changeset']:.3f}, session close + COMMIT {m['close_commit']:.3f}"
            + (f"; step {m['bytes'] / 2**20:.1f} MiB, replayed in {m['replay']:.3f} s" if m["bytes"] else "")
        )
    alone, captured = med["SQLite alone (no session)"]["total"], med["with the server's session"]["total"]
    print(
        f"  the session extension: {captured - alone:.3f} s of {captured:.3f} s ({(captured - alone) / captured:.0%}); "
        f"SQLite's insert alone caps this machine at {rows / alone:,.0f} rows/s of CPU, "
        f"with the capture at {rows / captured:,.0f}, logged as a rows step at "
        f"{rows / med[ROWS_STEP]['total']:,.0f}; reading the rows back by one scan in C, "
        "every column: "
        f"{med['SQLite alone (no session)']['scan']:.3f} s",
        flush=True,
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(work: str, name: str, src: str | None, rows: int, scale: int) -> tuple[dict, dict]:
    """Wall seconds of each load, and the server's CPU seconds for it."""
    data = os.path.join(work, f"data-{name}")
    shutil.rmtree(data, ignore_errors=True)
    srv = ServerProcess(data, command=server_command(src), log_path=os.path.join(work, f"{name}.log")).start()
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(key, fn, *args):
        before = cpu_seconds(srv.proc.pid)
        wall[key] = fn(*args)
        cpu[key] = cpu_seconds(srv.proc.pid) - before

    try:
        with rc.connect(port=srv.port) as c:
            timed("insert_select", insert_select, c, rows)
            timed("executemany", executemany, c, rows)
            c.execute("CREATE DATABASE pgb")
            c.execute("USE pgb")
            timed("pgbench_init", pgbench_init, c, scale)
        return wall, cpu
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)


def postgres_bin() -> str | None:
    for d in ("/usr/lib/postgresql/15/bin",):
        if os.path.exists(os.path.join(d, "pgbench")) and os.path.exists(os.path.join(d, "initdb")):
            return d
    return None


def as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Postgres:
    """A throwaway PostgreSQL cluster for ``pgbench -i`` beside the server."""

    def __init__(self, bindir: str, work: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="pg-", dir=work)
        if os.geteuid() == 0:
            shutil.chown(work, "postgres")
            shutil.chown(self.dir, "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()

    def start(self) -> None:
        b = self.bindir
        as_postgres([f"{b}/initdb", "-D", self.data, "--auth=trust", "-U", "postgres"])
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=''"
        as_postgres([f"{b}/pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"])

    def pgbench_init(self, scale: int) -> float:
        t0 = time.perf_counter()
        as_postgres([f"{self.bindir}/pgbench", "-i", "-q", "-s", str(scale), "-h", self.dir, "-p", str(self.port)])
        return time.perf_counter() - t0

    def stop(self) -> None:
        try:
            as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200k rows and pgbench scale 10")
    ap.add_argument("--reps", type=int, default=3, help="runs of each variant (interleaved); medians are printed")
    ap.add_argument("--baseline-src", help="a source tree whose server runs the same loads, interleaved")
    ap.add_argument("--scale", type=int, help="pgbench scale (default 70, --quick 10)")
    ap.add_argument("--no-postgres", action="store_true", help="skip pgbench -i even if PostgreSQL is installed")
    ap.add_argument(
        "--floor-reps", type=int, default=5, help="runs of each in-process floor variant (0: skip the floor)"
    )
    ap.add_argument("--floor-only", action="store_true", help="measure the in-process floor alone")
    args = ap.parse_args()
    rows = 200_000 if args.quick else 1_000_000
    scale = args.scale or (10 if args.quick else 70)
    work = tempfile.mkdtemp(prefix="rustydb-bench-load-")
    variants = [("this", None)] + ([("baseline", os.path.abspath(args.baseline_src))] if args.baseline_src else [])
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    cpus: dict[str, list[dict]] = {name: [] for name, _ in variants}
    pg_times: list[float] = []
    bindir = None if args.no_postgres else postgres_bin()
    try:
        if args.floor_reps:
            capture_floor(work, rows, args.floor_reps)
        if args.floor_only:
            return
        for rep in range(args.reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for name, src in order:
                figures, cpu = run_variant(work, name, src, rows, scale)
                results[name].append(figures)
                cpus[name].append(cpu)
                print(
                    f"run {rep + 1} {name:8s} "
                    + "  ".join(f"{k} {v:.2f} s (server CPU {cpu[k]:.2f} s)" for k, v in figures.items()),
                    flush=True,
                )
            if bindir:
                pg = Postgres(bindir, work)
                try:
                    pg.start()
                    pg_times.append(pg.pgbench_init(scale))
                finally:
                    pg.stop()
                print(f"run {rep + 1} postgres pgbench -i -s {scale} {pg_times[-1]:.2f} s", flush=True)
        print()
        med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
        for name, m in med.items():
            print(
                f"{name:8s} INSERT ... SELECT {rows} rows: {rows / m['insert_select']:9.0f} rows/s  "
                f"executemany-style: {rows / m['executemany']:9.0f} rows/s  "
                f"pgbench-style load scale {scale}: {m['pgbench_init']:6.2f} s"
            )
        cpu_med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in cpus.items()}
        for name, m in cpu_med.items():
            print(f"{name:8s} server CPU seconds (median): " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
        if "baseline" in med:
            for what, figures in (("time", med), ("server CPU", cpu_med)):
                this, base = figures["this"], figures["baseline"]
                print(
                    f"this/baseline {what} ratio (median): "
                    + "  ".join(f"{k} {this[k] / base[k]:.2f}x" for k in this)
                    + " (below 1: less)"
                )
        if pg_times:
            pgm = statistics.median(pg_times)
            for name, m in med.items():
                print(
                    f"{name:8s} pgbench-style load {m['pgbench_init']:.2f} s vs PostgreSQL pgbench -i "
                    f"{pgm:.2f} s: {m['pgbench_init'] / pgm:.2f}x"
                )
        elif not args.no_postgres:
            print("PostgreSQL 15 is not installed: no pgbench -i figure (apt-get install postgresql-15)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
