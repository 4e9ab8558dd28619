"""Incremental and table-level restore benchmark: prints figures and same-run ratios.

    python bench/bench_incremental.py [--size-mb 1024]

For a database of ~size-mb of realistic rows where 1% of the rows then change
(each changed row updated three times, through the server, so the changes are
in the WAL): the incremental backup's size and time against the full backup's,
the time to restore full + incremental against full alone (as two runs, the
guide's way, and as one --chain-dir run), and the time to
restore one ~1 MB table out of the big backup against the full restore.
Targets (issues 5 and 6): incremental size <= 3% and time <= 10% of the full's;
applying it adds <= 20% to the full restore; table restore <= 10% of a full one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from bench_backup import build_rows
from bench_backup import run as timed  # noqa: E402
from helpers import ServerProcess, tool  # noqa: E402

from rustydb_client import client as rc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rustydb-bench-incr-")
    try:
        data = os.path.join(tmp, "data")
        srv = ServerProcess(data).start()
        # a ~1 MB table for the table-level restore
        srv.sql("CREATE TABLE small(id INTEGER PRIMARY KEY, name TEXT, note TEXT);")
        srv.sql("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 8000) "
                "INSERT INTO small SELECT i, 'name ' || i, printf('%.100c', 'x') FROM c;")
        srv.stop()
        db_path = os.path.join(data, "databases", "rustydb.sqlite")
        build_rows(db_path, args.size_mb)
        mb = os.path.getsize(db_path) / 1e6
        srv.start()
        with rc.connect("127.0.0.1", srv.port) as c:
            total = c.execute("SELECT max(id) FROM customers").rows[0][0]
        print(f"database: {mb:.0f} MB, {total} customer rows")
        port = str(srv.port)
        full = os.path.join(tmp, "full.backup")
        full_s = timed([tool("rusty-db-backup"), "--port", port, "--type", "full", "--output",
                        full, "--compress", "lz4", "--threads", "2"])
        # 1% of the rows change, each three times
        changed = total // 100
        step = 100
        t0 = time.perf_counter()
        with rc.connect("127.0.0.1", srv.port) as c:
            for rep in range(3):
                for start in range(1, changed + 1, 1000):
                    ids = ",".join(str(i * step) for i in range(start, min(start + 1000,
                                                                           changed + 1)))
                    c.execute(f"UPDATE customers SET balance = balance + 1, notes = notes || "
                              f"'{rep}' WHERE id IN ({ids})")
        print(f"changed {changed} rows x3 in {time.perf_counter() - t0:.1f} s")
        incr = os.path.join(tmp, "incr.backup")
        incr_s = timed([tool("rusty-db-backup"), "--port", port, "--type", "incremental",
                        "--output", incr, "--compress", "lz4", "--threads", "2"])
        fsize, isize = os.path.getsize(full), os.path.getsize(incr)
        print(f"full backup:        {fsize / 1e6:8.1f} MB in {full_s:6.2f} s")
        print(f"incremental backup: {isize / 1e6:8.1f} MB in {incr_s:6.2f} s   "
              f"size {isize / fsize:.2%} of full (target <= 3%), "
              f"time {incr_s / full_s:.1%} of full (target <= 10%)")
        srv.stop()
        r1 = os.path.join(tmp, "r1")
        full_restore_s = timed([tool("rusty-db-restore"), "--input", full, "--data-dir", r1,
                                "--threads", "2"])
        apply_s = timed([tool("rusty-db-restore"), "--input", incr, "--data-dir", r1,
                         "--incremental", "--threads", "2"])
        print(f"restore full: {full_restore_s:6.2f} s; + incremental as a second step "
              f"(the guide's way): {apply_s:6.2f} s (adds {apply_s / full_restore_s:.1%})")
        # The same two backups restored in one run (--chain-dir): the pages the
        # incremental changes reach the disk once, with the full restore's.
        chain_dir = os.path.join(tmp, "chain")
        os.mkdir(chain_dir)
        for name in (full, incr):
            os.link(name, os.path.join(chain_dir, os.path.basename(name)))
        r2, r3 = os.path.join(tmp, "r2"), os.path.join(tmp, "r3")
        full_again_s = timed([tool("rusty-db-restore"), "--input", full, "--data-dir", r2,
                              "--threads", "2"])
        chain_s = timed([tool("rusty-db-restore"), "--input", incr, "--chain-dir", chain_dir,
                         "--data-dir", r3, "--threads", "2"])
        print(f"restore full: {full_again_s:6.2f} s; full + incremental in one run "
              f"(--chain-dir): {chain_s:6.2f} s (adds {chain_s / full_again_s - 1:.1%}, "
              "target <= 20%)")
        t_dir = os.path.join(tmp, "t1")
        table_s = timed([tool("rusty-db-restore"), "--input", full, "--table", "small",
                         "--data-dir", t_dir, "--no-start"])
        print(f"table restore of 'small' (~1 MB) from the {fsize / 1e6:.0f} MB backup: "
              f"{table_s:6.2f} s = {table_s / full_restore_s:.1%} of the full restore "
              "(target <= 10%)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
