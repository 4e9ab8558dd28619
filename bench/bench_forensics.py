"""Forensics benchmark: prints figures; never run as a test.

    python bench/bench_forensics.py [--size-mb 20 | --rows N] [--transactions 10000] [--repeat 3]

One run, a real server process and the real tools:
  1. a table of --rows rows (about 100 bytes each; --size-mb picks the rows for
     a database of about that size), a pitr-base backup, then --transactions
     single-row UPDATE transactions (archived);
  2. the same point query (one primary key) on the table as of the transaction
     halfway through (median of --repeat; every answer checked against the
     workload's own record of that key's updates):
     - SELECT ... AS OF TXID on the running server (a view over the live
       table and the before-images of the rows changed since, taken from the
       server's WAL);
     - the same query naming rowid, which a view lacks: the table copied
       into memory first and the later changes taken back there (the cost
       AS OF had before the view);
     - rusty-db-backup --query on the base backup and the archive (the base
       read in place, the archived changes up to the target shown over it);
     - a full PITR restore to that txid with rusty-db-restore (the whole
       database restored, every database's WAL replayed), for comparison;
  3. UNDO TRANSACTION of an update a third of the way (the one on a row no
     other transaction touched), then of that undo: wall time.
Ratios are of this run's own figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from rustydb_client import client as rc
from tests.support.servers import ServerProcess, tool

ROW_BYTES = 100  # a row of the table as stored (84 bytes of filler, the key, the balance, overhead)
LOAD_ROWS = 200_000  # rows per INSERT statement while loading


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=20, help="the database's size (default 20): sets --rows")
    ap.add_argument("--rows", type=int, default=None, help="the table's rows (default: from --size-mb)")
    ap.add_argument("--transactions", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.rows is None:
        args.rows = args.size_mb * 1_000_000 // ROW_BYTES
    work = tempfile.mkdtemp(prefix="rustydb-bench-forensics-")
    archive = os.path.join(work, "archive")
    os.mkdir(archive)
    srv = ServerProcess(os.path.join(work, "data")).start()
    try:
        srv.sql("ALTER SYSTEM SET archive_mode = on")
        srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}'")
        c = rc.connect(port=srv.port)
        c.execute("CREATE TABLE accounts(aid INTEGER PRIMARY KEY, abalance INTEGER, filler TEXT)")
        t_fill = time.perf_counter()
        for first in range(1, args.rows + 1, LOAD_ROWS):
            last = min(first + LOAD_ROWS - 1, args.rows)
            c.execute(
                f"WITH RECURSIVE s(v) AS (SELECT {first} UNION ALL SELECT v + 1 FROM s WHERE v < {last}) "
                "INSERT INTO accounts SELECT v, 0, printf('%84s', '') FROM s"
            )
        srv.wait_archived(timeout=3600)
        srv.sql("CHECKPOINT")  # the load's WAL leaves the server (it is archived)
        db_file = os.path.join(work, "data", "databases", "rustydb.sqlite")
        size = sum(os.path.getsize(db_file + s) for s in ("", "-wal") if os.path.exists(db_file + s))
        print(f"loaded {args.rows:,} rows in {time.perf_counter() - t_fill:.1f} s; database {size / 1e6:,.0f} MB")
        base = os.path.join(work, "base.backup")
        t_base, _ = timed(
            lambda: run([tool("rusty-db-backup"), "--type", "pitr-base", "--output", base, "--port", str(srv.port)])
        )
        print(f"pitr-base backup: {t_base:.1f} s")
        rnd = random.Random(1)
        txids, aids = [], []
        special = args.transactions // 3  # the one transaction on a row nobody else touches: the one undone

        def load():
            for i in range(args.transactions):
                aid = args.rows if i == special else rnd.randint(1, 42)
                aids.append(aid)
                c.execute("BEGIN")
                txids.append(c.execute("SELECT txid_current()").rows[0][0])
                c.execute(f"UPDATE accounts SET abalance = abalance + 1 WHERE aid = {aid}")
                c.execute("COMMIT")

        t_load, _ = timed(load)
        srv.wait_archived(timeout=3600)
        point = txids[len(txids) // 2]
        query = "SELECT abalance FROM accounts WHERE aid = 7"
        print(
            f"{args.rows:,} rows, {args.transactions:,} transactions after the base "
            f"({args.transactions / t_load:.0f}/s); "
            f"point: txid {point}, halfway"
        )
        # The answer the state then gives: key 7's updates up to and including the point.
        expected = aids[: len(txids) // 2 + 1].count(7)
        figures = {}

        def as_of():
            return c.execute(query.replace("FROM accounts", f"FROM accounts AS OF TXID {point}")).rows[0][0]

        def as_of_copied():
            # Naming rowid (a view has none) takes the path that copies the whole table first.
            sql = query.replace("FROM accounts", f"FROM accounts AS OF TXID {point}") + " AND rowid > 0"
            return c.execute(sql).rows[0][0]

        def backup_query():
            out = run([
                tool("rusty-db-backup"), "--query", base, query, "--archive-dir", archive,
                "--recovery-target-txid", str(point), "--json",
            ])  # fmt: skip
            return json.loads(out)["rows"][0][0]

        def pitr():
            target = os.path.join(work, "restored")
            shutil.rmtree(target, ignore_errors=True)
            run([
                tool("rusty-db-restore"), "--input", base, "--archive-dir", archive, "--data-dir", target,
                "--recovery-target-txid", str(point), "--json",
            ])  # fmt: skip
            import apsw

            db = apsw.Connection(os.path.join(target, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                return db.execute(query).fetchall()[0][0]
            finally:
                db.close()

        runs = (
            ("AS OF on the server", as_of),
            ("AS OF, table copied", as_of_copied),
            ("rusty-db-backup --query", backup_query),
            ("PITR", pitr),
        )
        for name, fn in runs:
            times = []
            for _ in range(args.repeat):
                seconds, answer = timed(fn)
                times.append(seconds)
                assert answer == expected, f"{name} answered {answer}, not {expected} (the state then)"
            figures[name] = statistics.median(times)
            print(f"  {name:26s} {figures[name] * 1000:9.1f} ms (median of {args.repeat}), answer {answer}", flush=True)
        for name in ("AS OF on the server", "AS OF, table copied", "rusty-db-backup --query"):
            print(f"  {name} / PITR: {figures[name] / figures['PITR']:.4f}")
        victim = txids[special]
        seconds, result = timed(lambda: c.execute(f"UNDO TRANSACTION {victim}"))
        undo_txid = result.rows[0][0] if result.rows else None
        print(f"  UNDO TRANSACTION {victim}: {seconds * 1000:.1f} ms ({result.notices})")
        if undo_txid is not None:
            seconds, result = timed(lambda: c.execute(f"UNDO TRANSACTION {undo_txid}"))
            print(f"  UNDO TRANSACTION {undo_txid} (the undo): {seconds * 1000:.1f} ms")
        c.close()
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
