"""Point-in-time recovery benchmark: prints figures; never run as a test.

    python bench/bench_recovery.py [--quick] [--seconds 20] [--repeat 3] [--segment-kb 64,16384]
                                   [--baseline-src DIR] [--encrypt] [--no-bytecode-cache]

One run, real server processes and the real rusty-db-restore, once for each
WAL segment size of --segment-kb (default 64 kB, the smallest, and 16 MB,
wal_segment_size's default):
  1. a pgbench -N style load (per transaction BEGIN; UPDATE pgbench_accounts;
     SELECT abalance; INSERT INTO pgbench_history; COMMIT) from 2 clients for
     --seconds after a pitr-base backup, archived in segments of that size; the
     load goes on until its WAL spans --min-segments (100) segments: with more
     pgbench -N transactions for small segments, with range UPDATEs of 10,000
     accounts for segments over 1 MB (--fill; 100 segments of 16 MB is 1.6 GB of
     WAL, hours of one-row commits); a restore point at its end;
  2. PITR to the base (--recovery-target immediate: the floor, what a PITR
     replaying nothing costs), to the end of the load (that restore point) and
     to an LSN 10% into the archived WAL, interleaved, --repeat times each: the
     restore's wall time, then the restored server started until it answers a
     query; transactions/s over the whole (restore + start) and in the replay
     phase (the report's records_replayed / replay_seconds), medians; the ratio
     of the 10% restore's time to the end restore's, of the whole restore and of
     the replay phase, and the floor's share of PITR to the end;
  3. with --baseline-src (another source tree of RustyDB, e.g. an export of
     main), the same PITR to the end run with that tree's rusty-db-restore,
     interleaved with this tree's, medians and the ratio;
  4. if PostgreSQL 15 and pgbench are installed (and a 'postgres' account to run
     them as), pgbench -N on the same scale for as long as the first load above ran, then the server
     stopped with -m immediate and started again: its crash recovery replays
     that load's WAL, the nearest thing to its PITR replay measurable without
     pgBackRest (its log's 'redo done ... elapsed' is the replay phase).
With --encrypt, the base backup and the archive are encrypted with a
passphrase: each PITR then runs the KDF for the base's salt and the archive's.
Tools and servers run with a bytecode cache, as an installed package has
(--no-bytecode-cache: each start compiles the tree, as a checkout under
PYTHONDONTWRITEBYTECODE does).
Targets (issue 16): replay phase >= 30,000 transactions/s; PITR to 10% <= 20%
of the time of PITR to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from rustydb_client import client as rc
from rustydb_server.wal.lsn import format_lsn, parse_lsn
from tests.support.servers import ServerProcess, tool

STARTED: list[ServerProcess] = []
ACCOUNTS_PER_SCALE = 100_000


def init_pgbench(c, scale: int) -> None:
    c.execute("CREATE TABLE pgbench_branches(bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)")
    c.execute("CREATE TABLE pgbench_tellers(tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)")
    c.execute("CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)")
    c.execute(
        "CREATE TABLE pgbench_history(tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)"
    )
    c.execute("BEGIN")

    def series(n: int) -> str:
        return f"WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < {n}) "

    c.execute(series(scale) + "INSERT INTO pgbench_branches SELECT value, 0, '' FROM s")
    c.execute(series(scale * 10) + "INSERT INTO pgbench_tellers SELECT value, (value - 1) / 10 + 1, 0, '' FROM s")
    c.execute(
        series(scale * ACCOUNTS_PER_SCALE)
        + "INSERT INTO pgbench_accounts SELECT value, (value - 1) / 100000 + 1, 0, printf('%84s', '') FROM s"
    )
    c.execute("COMMIT")


def pgbench_n_load(port: int, scale: int, seconds: float, clients: int = 2) -> int:
    """pgbench -N's transaction from ``clients`` connections for ``seconds``; transactions committed."""
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        rnd = random.Random(i)
        with rc.connect(port=port) as c:
            while time.monotonic() < deadline:
                aid = rnd.randint(1, scale * ACCOUNTS_PER_SCALE)
                tid = rnd.randint(1, scale * 10)
                bid = rnd.randint(1, scale)
                delta = rnd.randint(-5000, 5000)
                c.execute("BEGIN")
                c.execute(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}")
                c.execute(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
                c.execute(
                    "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) "
                    f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"
                )
                c.execute("COMMIT")
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def restore(
    cmd_prefix: list[str], env, cwd: str | None, base: str, archive: str, out: str, target: list[str]
) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd_prefix, "--input", base, "--archive-dir", archive, "--data-dir", out, *target, "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rusty-db-restore failed: {proc.stdout}{proc.stderr}")
    return wall, json.loads(proc.stdout)


def start_until_answering(data_dir: str) -> float:
    srv = ServerProcess(data_dir)
    STARTED.append(srv)
    t0 = time.perf_counter()
    srv.start()
    srv.sql("SELECT count(*) FROM pgbench_branches;")
    took = time.perf_counter() - t0
    srv.stop()
    return took


def med(values) -> float:
    return statistics.median(values) if values else float("nan")


def bulk_fill(port: int, scale: int, wal_bytes: int, start_lsn: int, rows: int = 10_000) -> int:
    """Range UPDATEs of ``rows`` accounts each, one transaction each, until the WAL since
    ``start_lsn`` spans ``wal_bytes``: a real archive's volume in minutes, where one
    small transaction per fsync would take hours. Transactions committed."""
    n = 0
    accounts = scale * ACCOUNTS_PER_SCALE
    with rc.connect(port=port) as c:
        while parse_lsn(c.execute("SHOW wal_lsn").rows[0][0]) - start_lsn < wal_bytes:
            for _ in range(10):
                first = (n * rows) % max(1, accounts - rows) + 1
                last = first + rows - 1
                c.execute(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {first} AND {last}")
                n += 1
    return n


def bench_pitr(work: str, args, segment_kb: int) -> tuple[int, float]:
    work = os.path.join(work, f"seg{segment_kb}k")
    os.mkdir(work)
    archive = os.path.join(work, "archive")
    os.mkdir(archive)
    conf = os.path.join(work, "server.toml")
    with open(conf, "w") as f:
        f.write(f"wal_segment_size = '{segment_kb}kB'\narchive_mode = 'on'\narchive_dest = '{archive}'\n")
        if args.encrypt:
            f.write("archive_encryption = 'on'\n")
    srv = ServerProcess(os.path.join(work, "source"), extra_args=["--config", conf])
    STARTED.append(srv)
    srv.start()
    with rc.connect(port=srv.port) as c:
        init_pgbench(c, args.scale)
    base = os.path.join(work, "base.backup")
    encrypt = ["--encrypt"] if args.encrypt else []
    subprocess.run(
        [tool("rusty-db-backup"), "--type", "pitr-base", "--output", base, "--port", str(srv.port), "--json", *encrypt],
        check=True,
        capture_output=True,
    )
    with rc.connect(port=srv.port) as c:
        start_lsn = parse_lsn(c.execute("SHOW wal_lsn").rows[0][0])
    t0 = time.perf_counter()
    txs = pgbench_n_load(srv.port, args.scale, args.seconds)
    seg_bytes = segment_kb * 1024
    bulk = 0
    if args.fill == "bulk":  # the rest of --min-segments' volume in range UPDATEs
        bulk = bulk_fill(srv.port, args.scale, args.min_segments * seg_bytes, start_lsn)
    while True:  # on until the load's WAL spans --min-segments (a slow machine commits fewer)
        with rc.connect(port=srv.port) as c:
            end_lsn = parse_lsn(c.execute("SHOW wal_lsn").rows[0][0])
        if end_lsn - start_lsn >= args.min_segments * seg_bytes:
            break
        txs += pgbench_n_load(srv.port, args.scale, 2.0)
    load_s = time.perf_counter() - t0
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE RESTORE POINT 'bench_end'")
    srv.wait_archived(timeout=600.0)
    srv.stop()
    segments = len([n for n in os.listdir(archive) if n.endswith(".walz")])
    tenth = start_lsn + (end_lsn - start_lsn) // 10
    wal_mib = (end_lsn - start_lsn) / 2**20
    print(
        f"\n== {segment_kb} kB segments. Load: pgbench -N style, scale {args.scale}, 2 clients, {txs} transactions"
        + (f" + {bulk} range UPDATEs of 10,000 accounts" if bulk else "")
        + f" in {load_s:.1f} s; WAL {wal_mib:.1f} MiB, {segments} archived segments of {segment_kb} kB"
    )
    this = [tool("rusty-db-restore")]
    env = dict(os.environ)
    out = os.path.join(work, "restored")
    runs: dict[str, list] = {"floor": [], "end": [], "tenth": [], "baseline": []}
    targets = {
        "floor": ["--recovery-target", "immediate"],
        "end": ["--recovery-target-name", "bench_end"],
        "tenth": ["--recovery-target-lsn", format_lsn(tenth)],
    }
    baseline = None
    if args.baseline_src:
        # run from the baseline tree: "python -m" puts the working directory first on sys.path
        src = os.path.abspath(args.baseline_src)
        baseline = ([sys.executable, "-m", "rustydb_server.tools.restore_main"], dict(env, PYTHONPATH=src), src)
    for _ in range(args.repeat):
        for kind in ("floor", "end", "tenth", "baseline"):
            if kind == "baseline":
                if baseline is None:
                    continue
                wall, rep = restore(*baseline, base, archive, out, targets["end"])
            else:
                wall, rep = restore(this, env, None, base, archive, out, targets[kind])
            start = start_until_answering(out)
            # a tree from before replay_seconds printed only the whole restore's "seconds"
            replay_s = rep.get("replay_seconds")
            runs[kind].append(
                {
                    "wall": wall,
                    "start": start,
                    "records": rep["records_replayed"],
                    "replay": replay_s,
                    "segments": rep["segments_read"],
                    "wait": rep.get("read_wait_seconds"),
                }
            )
    labels = {
        "floor": "to the base (--recovery-target immediate: the floor)",
        "end": "to the end",
        "tenth": "to 10% (LSN target)",
        "baseline": "to the end, baseline tree",
    }
    for kind, label in labels.items():
        rs = runs[kind]
        if not rs:
            continue
        wall, start = med([r["wall"] for r in rs]), med([r["start"] for r in rs])
        records = rs[0]["records"]
        replay = None if rs[0]["replay"] is None else med([r["replay"] for r in rs])
        print(
            f"  PITR {label}: {records} transactions replayed from {rs[0]['segments']} segments; "
            f"medians of {len(rs)}: restore {wall:.2f} s + start until answering {start:.2f} s = {wall + start:.2f} s"
        )
        if not records:
            continue
        line = f"    transactions/s over the whole: {records / (wall + start):,.0f}"
        if replay is None:
            line += f"; over the restore alone: {records / wall:,.0f} (its --json has no replay-phase time)"
        else:
            line += f"; in the replay phase: {records / replay:,.0f} ({replay:.2f} s"
            wait = rs[0]["wait"]
            line += ")" if wait is None else f", of which waiting for a segment {med([r['wait'] for r in rs]):.3f} s)"
        if kind == "end" and replay and not bulk:
            line += f"   [target >= 30,000: {'MET' if records / replay >= 30_000 else 'NOT MET'}]"
        print(line)
    if runs["end"] and runs["tenth"]:
        end_wall = med([r["wall"] for r in runs["end"]])
        whole = med([r["wall"] for r in runs["tenth"]]) / end_wall
        phase = med([r["replay"] for r in runs["tenth"]]) / med([r["replay"] for r in runs["end"]])
        floor = med([r["wall"] for r in runs["floor"]])
        print(
            f"  PITR to 10% / PITR to the end ({segment_kb} kB segments): restore wall time {whole:.2f}, "
            f"replay phase {phase:.2f}   [target <= 0.20: {'MET' if whole <= 0.2 else 'NOT MET'}]; "
            f"the floor (a PITR replaying nothing) is {floor / end_wall:.2f} of PITR to the end"
        )
    if runs["baseline"]:
        whole = med([r["wall"] for r in runs["end"]]) / med([r["wall"] for r in runs["baseline"]])
        print(f"  PITR to the end, this tree / baseline tree: restore wall time {whole:.2f}")
    return txs, load_s


def bench_postgres(work: str, args, seconds: int) -> None:
    bindir = "/usr/lib/postgresql/15/bin"
    if not (os.path.exists(os.path.join(bindir, "pgbench")) and os.path.exists(os.path.join(bindir, "postgres"))):
        print("\n== PostgreSQL 15: not installed; nothing to compare")
        return
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pgdata = os.path.join(work, "pgdata")
    os.makedirs(pgdata)
    if as_pg:
        shutil.chown(work, "postgres")
        shutil.chown(pgdata, "postgres")
    port = str(args.pg_port)

    def run(*cmd, check=True):
        return subprocess.run([*as_pg, *cmd], capture_output=True, text=True, check=check)

    run(f"{bindir}/initdb", "-D", pgdata, "-A", "trust")
    with open(os.path.join(pgdata, "postgresql.conf"), "a") as f:
        # no checkpoint during the load: the restart's recovery replays all of it
        f.write("checkpoint_timeout = '1h'\nmax_wal_size = '20GB'\nunix_socket_directories = '/tmp'\n")
    logfile = os.path.join(work, "pg.log")
    run(f"{bindir}/pg_ctl", "-D", pgdata, "-l", logfile, "-o", f"-p {port}", "-w", "start")
    try:
        run(f"{bindir}/pgbench", "-h", "/tmp", "-p", port, "-i", "-s", str(args.scale), "-q", "postgres")
        run(f"{bindir}/psql", "-h", "/tmp", "-p", port, "-c", "CHECKPOINT", "postgres")
        proc = run(f"{bindir}/pgbench", "-h", "/tmp", "-p", port, "-N", "-c", "2", "-T", str(seconds), "postgres")
        tps = re.search(r"tps = ([\d.]+)", proc.stdout)
        txs = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
        run(f"{bindir}/pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop")
        t0 = time.perf_counter()
        run(f"{bindir}/pg_ctl", "-D", pgdata, "-l", logfile, "-o", f"-p {port}", "-w", "start")
        start_s = time.perf_counter() - t0
    finally:
        run(f"{bindir}/pg_ctl", "-D", pgdata, "-m", "fast", "-w", "stop", check=False)
    with open(logfile) as f:
        redo = re.findall(r"redo done at .*elapsed: ([\d.]+) s", f.read())
    n = int(txs.group(1)) if txs else 0
    print(
        f"\n== PostgreSQL 15, same load: pgbench -N -c 2 -T {seconds} -s {args.scale}: {n} transactions"
        f" ({float(tps.group(1)) if tps else float('nan'):,.0f} tps)"
    )
    if redo and n:
        replay = float(redo[-1])
        print(
            f"  crash recovery of that load (its WAL since the checkpoint before it): start until accepting "
            f"{start_s:.2f} s = {n / start_s:,.0f} tx/s; redo phase {replay:.2f} s = {n / max(replay, 1e-9):,.0f} tx/s"
        )
        print(
            "  (PostgreSQL's PITR needs pgBackRest or a restore_command setup; its crash recovery runs the same redo)"
        )
    else:
        print(f"  crash recovery: start until accepting {start_s:.2f} s (no 'redo done' line in its log)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run: a 4 s load, one repeat")
    ap.add_argument("--seconds", type=float, help="load duration (default 20, 4 with --quick)")
    ap.add_argument("--scale", type=int, default=1, help="pgbench scale: 100,000 accounts each (default 1)")
    ap.add_argument(
        "--segment-kb",
        default="64,16384",
        help="WAL segment sizes, kB, comma-separated: one load and archive each (default 64,16384: "
        "the smallest, and wal_segment_size's default)",
    )
    ap.add_argument(
        "--min-segments",
        type=int,
        help="the load goes on past --seconds until its WAL spans this many segments (default 100, 20 with --quick)",
    )
    ap.add_argument(
        "--fill",
        choices=["auto", "pgbench", "bulk"],
        default="auto",
        help="how the load reaches --min-segments: more pgbench -N transactions, or range UPDATEs of 10,000 "
        "accounts (bulk: hours of small commits otherwise); auto: bulk for segments over 1 MB",
    )
    ap.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt the base backup and the archive with a passphrase (RUSTYDB_BACKUP_PASSPHRASE): a PITR "
        "then runs the KDF twice, once for each writer's salt",
    )
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="measure tool and server starts compiling their modules each time (as under "
        "PYTHONDONTWRITEBYTECODE with no cache), instead of with a bytecode cache as an installed package has",
    )
    ap.add_argument("--repeat", type=int, help="restores of each kind, interleaved (default 3, 1 with --quick)")
    ap.add_argument("--baseline-src", help="another RustyDB source tree: time its rusty-db-restore too, interleaved")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL comparison")
    ap.add_argument("--pg-port", type=int, default=54329)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    args.seconds = args.seconds or (4.0 if args.quick else 20.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.min_segments is None:
        args.min_segments = 20 if args.quick else 100
    work = tempfile.mkdtemp(prefix="bench_recovery_")
    if args.encrypt:  # the servers and tools started from here on inherit it
        os.environ["RUSTYDB_BACKUP_PASSPHRASE"] = "bench_recovery passphrase"
    cache = "none (each start compiles its modules)"
    if not args.no_bytecode_cache:
        # An installed package has its bytecode compiled (pip and distribution packages do it); a
        # source checkout under PYTHONDONTWRITEBYTECODE has none, and every tool and server start
        # would compile the whole tree: a fixed cost of the environment, not of the restore.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = cache = os.path.join(work, "pycache")
        warm = "import rustydb_server.tools.restore_main, rustydb_server.tools.server_main"
        subprocess.run([sys.executable, "-c", warm], check=True, env=os.environ)
    print(
        f"bench_recovery: work dir {work}; {'quick' if args.quick else 'full'} run; bytecode cache: {cache}"
        + ("; encrypted with a passphrase" if args.encrypt else "")
    )
    try:
        load_s = 0.0
        for kb in [int(v) for v in args.segment_kb.split(",")]:
            fill = args.fill if args.fill != "auto" else ("bulk" if kb > 1024 else "pgbench")
            _txs, seconds = bench_pitr(work, argparse.Namespace(**{**vars(args), "fill": fill}), kb)
            load_s = load_s or seconds  # PostgreSQL's load runs as long as the first (pgbench -N only) one
        if not args.no_postgres:
            bench_postgres(work, args, round(load_s))
    finally:
        for srv in STARTED:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
