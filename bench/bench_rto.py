"""RTO and RPO of the guide's three recovery scenarios on this machine: prints figures; never run as a test.

    python bench/bench_rto.py [--accounts 200000] [--transactions 20000] [--repeat 3]

Real server processes and the real tools, one data set (pgbench_accounts with
--accounts rows of ~100 bytes, plus --transactions small committed
transactions after the backups, archived for PITR):

  1. single-node restore: rusty-db-restore --input FULL --data-dir D, then the
     restored server started until it answers a query (RTO = both); and the
     whole rusty-db-restore --drill of the same backup (restore, start, health,
     row counts, integrity check, stop) for comparison;
  2. PITR: rusty-db-restore --input PITR_BASE --archive-dir A
     --recovery-target-name end (every transaction after the base replayed),
     then the server started until it answers (RTO = both);
  3. table recovery: rusty-db-restore --input FULL --table pgbench_accounts
     --into-server :PORT --rename-to ... into the running server (RTO = the
     command: restore the table alone, export, import in one transaction);
  4. RPO: a restore from a backup loses what committed since that backup (the
     schedule's interval: 24 h with the default daily backups); PITR loses what
     the archive does not hold yet: a segment is archived when full or after
     archive_timeout (default 60 s); measured here is how long the archiver
     takes once a segment is complete (SWITCH WAL until the archive has it).

Medians of --repeat runs. The guide's targets: single-node restore 1-4 h,
PITR 2-6 h (RPO < 1 min), table recovery 1-2 h.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from rustydb_client import client as rc
from tests.support.servers import ServerProcess, tool


def run(*cmd: str) -> dict:
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def start_until_answering(data_dir: str) -> float:
    srv = ServerProcess(data_dir)
    t0 = time.perf_counter()
    srv.start()
    srv.sql("SELECT count(*) FROM pgbench_accounts;")
    took = time.perf_counter() - t0
    srv.stop()
    return took


def size_of(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=200_000, help="rows of pgbench_accounts (default 200,000)")
    ap.add_argument("--transactions", type=int, default=20_000, help="transactions after the backups (PITR replays)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each restore (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-rto-")
    archive = os.path.join(work, "archive")
    os.makedirs(archive)
    src = ServerProcess(os.path.join(work, "src"))
    try:
        src.start()
        src.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
        src.sql("ALTER SYSTEM SET archive_mode = on;")
        with rc.connect(port=src.port) as c:
            c.execute(
                "CREATE TABLE pgbench_accounts(aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)"
            )
            c.execute(
                f"WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < {args.accounts}) "
                "INSERT INTO pgbench_accounts SELECT v, 1, 0, printf('%84s', '') FROM s"
            )
        full, base = os.path.join(work, "full.backup"), os.path.join(work, "base.backup")
        backup_s = timed(
            lambda: run(tool("rusty-db-backup"), "--port", str(src.port), "--type", "full", "--output", full)
        )
        run(tool("rusty-db-backup"), "--port", str(src.port), "--type", "pitr-base", "--output", base)
        with rc.connect(port=src.port) as c:
            for i in range(args.transactions):
                c.execute(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {i % args.accounts + 1}")
        src.sql("CREATE RESTORE POINT 'end';")
        archive_s = []
        for _ in range(args.repeat):
            archive_s.append(timed(src.wait_archived))
        db_bytes = size_of(os.path.join(work, "src", "databases"))
        print(
            f"data: {args.accounts:,} accounts, {db_bytes / 2**20:.1f} MB of databases; full backup "
            f"{os.path.getsize(full) / 2**20:.1f} MB taken in {backup_s:.2f} s; {args.transactions:,} transactions "
            f"after the pitr-base, archived ({len(os.listdir(archive))} segments)"
        )

        out = os.path.join(work, "restored")
        single, drills, pitr, tables = [], [], [], []
        for i in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            r = timed(lambda: run(tool("rusty-db-restore"), "--input", full, "--data-dir", out))
            single.append((r, start_until_answering(out)))
            drills.append(timed(lambda: run(tool("rusty-db-restore"), "--drill", "--input", full)))
            shutil.rmtree(out, ignore_errors=True)
            r = timed(
                lambda: run(
                    tool("rusty-db-restore"),
                    "--input",
                    base,
                    "--archive-dir",
                    archive,
                    "--data-dir",
                    out,
                    "--recovery-target-name",
                    "end",
                )
            )
            pitr.append((r, start_until_answering(out)))
            scratch = os.path.join(work, f"table-{i}")
            tables.append(
                timed(
                    lambda i=i, scratch=scratch: run(
                        tool("rusty-db-restore"),
                        "--input",
                        full,
                        "--table",
                        "pgbench_accounts",
                        "--data-dir",
                        scratch,
                        "--into-server",
                        f":{src.port}",
                        "--rename-to",
                        f"accounts_restored_{i}",
                    )
                )
            )

        def med(xs) -> float:
            return statistics.median(xs)

        restore, start = med([a for a, _ in single]), med([b for _, b in single])
        print(
            f"\n== single-node restore (full backup): restore {restore:.2f} s + start until answering "
            f"{start:.2f} s = RTO {restore + start:.2f} s; the whole drill {med(drills):.2f} s "
            f"[guide: RTO 1-4 h, RPO: the last backup]"
        )
        restore, start = med([a for a, _ in pitr]), med([b for _, b in pitr])
        print(
            f"== PITR (pitr-base + {args.transactions:,} transactions replayed): restore {restore:.2f} s + start "
            f"{start:.2f} s = RTO {restore + start:.2f} s [guide: RTO 2-6 h]"
        )
        print(
            f"== PITR RPO: a complete segment reaches the archive in {med(archive_s):.2f} s (SWITCH WAL until "
            "archived); a partly filled one waits up to archive_timeout (60 s default): RPO <= archive_timeout "
            "+ that [guide: < 1 min]"
        )
        print(
            f"== table recovery ({args.accounts:,} rows, --into-server): RTO {med(tables):.2f} s "
            "[guide: RTO 1-2 h, RPO: the last backup]"
        )
        print(f"(medians of {args.repeat}; {os.cpu_count()} CPUs)")
    finally:
        src.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
