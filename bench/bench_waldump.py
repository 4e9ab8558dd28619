"""rusty-db-waldump and rusty-db-restore --dry-run benchmark: prints figures; never run as a test.

    python bench/bench_waldump.py [--quick] [--transactions 20000]

One run:
  1. an engine (64 kB WAL segments) takes a base backup, then runs
     --transactions pgbench -N style transactions (UPDATE one account, INSERT
     one history row), and its WAL is archived (lz4), as the archiver would;
     the same again with a quarter of the transactions, for the memory ratio;
  2. the real rusty-db-waldump over the archive: the listing, --changes,
     --stats and --json, each timed (transactions/s, WAL MB/s) with the peak
     RSS of the process; the peak RSS over the big archive against the small
     one (the scan streams: the ratio should stay near 1 while the archive is
     4x larger);
  3. rusty-db-restore --dry-run to the end of the archive, then the real
     PITR restore to the same target: both wall times, their ratio, and the
     dry run's estimate against the restore's real time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from rustydb_server.engine.session import SqlSession
from tests.support.backups import open_engine, run_sql, write_backup
from tests.support.servers import tool


def build(root: str, transactions: int) -> tuple[str, str, int]:
    """(base backup, archive directory, last txid) of a pgbench -N style load."""
    engine = open_engine(os.path.join(root, "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE accounts(aid INTEGER PRIMARY KEY, abalance INTEGER, filler TEXT)")
        run_sql(
            engine,
            "rustydb",
            "CREATE TABLE history(hid INTEGER PRIMARY KEY, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)",
        )
        run_sql(
            engine,
            "rustydb",
            "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 10000) "
            "INSERT INTO accounts SELECT v, 0, printf('%84s', '') FROM s",
        )
        base = os.path.join(root, "base.backup")
        write_backup(engine, base)
        session = SqlSession(engine, "rustydb", 1)

        def run(sql: str) -> None:
            session.run(sql, leading_keywords(sql, 2), 1_000_000)

        for i in range(transactions):
            aid = (i * 7919) % 10000 + 1
            run("BEGIN")
            run(f"UPDATE accounts SET abalance = abalance + {i % 100} WHERE aid = {aid}")
            run(f"INSERT INTO history(aid, delta, mtime, filler) VALUES ({aid}, {i % 100}, datetime('now'), '')")
            run("COMMIT")
        last = engine.peek_next_txid() - 1
        engine.switch_wal()
        archive = os.path.join(root, "archive")
        os.mkdir(archive)
        c = engine.control
        ready = sorted(n.removesuffix(".ready") for n in os.listdir(engine.datadir.join(dd.ARCHIVE_STATUS_DIR)))
        for name in ready:
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                os.path.join(archive, sf.archive_name(name)),
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="lz4",
            )
    finally:
        engine.close()
    return base, archive, last


def timed(*argv: str) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS in KiB, process) of one tool run (RSS of that child alone: run one at a time)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *argv], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr}")
    *out, rss = proc.stdout.rstrip("\n").rsplit("\n", 1)
    return seconds, int(rss), subprocess.CompletedProcess(argv, 0, "\n".join(out), proc.stderr)


# Runs the tool as a child and prints the child's peak RSS after its output.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(p.returncode)\n"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=20000)
    p.add_argument("--quick", action="store_true", help="2,000 transactions")
    args = p.parse_args()
    n = 2000 if args.quick else args.transactions
    root = tempfile.mkdtemp(prefix="bench-waldump-")
    try:
        small_root, big_root = os.path.join(root, "small"), os.path.join(root, "big")
        os.mkdir(small_root)
        os.mkdir(big_root)
        print(f"building archives of {n // 4} and {n} transactions ...", flush=True)
        _, small_archive, _ = build(small_root, n // 4)
        base, archive, last = build(big_root, n)
        wal_bytes = sum(os.path.getsize(os.path.join(archive, f)) for f in os.listdir(archive))
        segments = len(os.listdir(archive))
        print(f"archive: {segments} segments, {wal_bytes / 2**20:.1f} MiB archived (lz4), {n} transactions")
        waldump = tool("rusty-db-waldump")
        for label, extra in (
            ("listing", ()),
            ("--changes", ("--changes",)),
            ("--stats", ("--stats",)),
            ("--json", ("--json",)),
        ):
            seconds, rss, _ = timed(waldump, "--archive-dir", archive, *extra)
            print(
                f"waldump {label:<10} {seconds:6.2f} s  {n / seconds:9,.0f} transactions/s  "
                f"{segments * 64 / 1024 / seconds:6.1f} MiB WAL/s  peak RSS {rss / 1024:.1f} MiB"
            )
        small_s, small_rss, _ = timed(waldump, "--archive-dir", small_archive, "--stats")
        big_s, big_rss, _ = timed(waldump, "--archive-dir", archive, "--stats")
        print(
            f"memory: peak RSS {small_rss / 1024:.1f} MiB over {n // 4} transactions, {big_rss / 1024:.1f} MiB over "
            f"{n} (4x): ratio {big_rss / small_rss:.2f}; time ratio {big_s / small_s:.2f}"
        )
        restore = tool("rusty-db-restore")
        target = ("--input", base, "--archive-dir", archive, "--as-of", f"txid:{last}")
        dry_s, _, dry = timed(restore, *target, "--data-dir", os.path.join(root, "r1"), "--dry-run", "--json")
        plan = json.loads(dry.stdout)
        real_s, _, real = timed(restore, *target, "--data-dir", os.path.join(root, "r2"), "--json")
        done = json.loads(real.stdout)
        print(
            f"restore --dry-run {dry_s:.2f} s (estimate {plan['estimated_seconds']:.2f} s), real restore "
            f"{real_s:.2f} s (replay {done['replay_seconds']:.2f} s, {done['records_replayed']} records; "
            f"plan said {plan['records_replayed']}): dry run / restore {dry_s / real_s:.2f}, "
            f"estimate / real {plan['estimated_seconds'] / real_s:.2f}"
        )
        print(f"  the estimate: {plan['estimate_basis']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
