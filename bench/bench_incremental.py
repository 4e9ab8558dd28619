"""Incremental and table-level restore benchmark: prints figures and same-run ratios.

    python bench/bench_incremental.py [--size-mb 1024]

For a database of ~size-mb of realistic rows where 1% of the rows then change
(each changed row updated three times, through the server, so the changes are
in the WAL): the incremental backup's size and time against the full backup's,
the time to restore full + incremental against full alone (as two runs, the
guide's way, and as one --chain-dir run), SQLite alone applying the changes
(nothing else), and the time to restore one ~1 MB table out of the big backup
against the full restore.
Targets (issues 5 and 6): incremental size <= 3% and time <= 10% of the full's;
applying it adds <= 20% to the full restore; table restore <= 10% of a full one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from bench_backup import build_rows
from bench_backup import run as timed  # noqa: E402
from bytecode import compile_bytecode  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from tests.support.servers import ServerProcess, tool  # noqa: E402

RUNS = 3
RESTORE_RUNS = 5  # this VM's disk makes single restores vary by 2x


def apply_floor(restore: list[str], full: str, incr: str, target: str) -> float:
    """SQLite alone applying the incremental's changesets to a freshly restored
    file, on the restore tool's connection settings: no tool start, no
    verification, no fsync. What a restore of full + incremental must add to
    writing the full backup's pages, before it syncs them."""
    from rustydb_server.backup.steps import decode_steps
    from rustydb_server.container.reader import BackupReader
    from rustydb_server.engine import replay
    from rustydb_server.restore.incremental import _open_for_apply

    timed([*restore, "--input", full, "--data-dir", target])
    with open(incr, "rb") as f:
        reader = BackupReader(f)
        steps = list(decode_steps(reader.read_entry("incremental/rustydb.steps")))
    t0 = time.perf_counter()
    conn = _open_for_apply(os.path.join(target, "databases", "rustydb.sqlite"))
    conn.execute("BEGIN IMMEDIATE")
    replay.apply_steps(conn, steps)
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - t0


def _runs(times: list[float]) -> str:
    return "(runs: " + ", ".join(f"{t:.2f}" for t in times) + ")"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    compile_bytecode()  # the tools as installed (see bench/bytecode.py)
    tmp = tempfile.mkdtemp(prefix="rustydb-bench-incr-")
    try:
        data = os.path.join(tmp, "data")
        srv = ServerProcess(data).start()
        # a ~1 MB table for the table-level restore
        srv.sql("CREATE TABLE small(id INTEGER PRIMARY KEY, name TEXT, note TEXT);")
        srv.sql(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 8000) "
            "INSERT INTO small SELECT i, 'name ' || i, printf('%.100c', 'x') FROM c;"
        )
        srv.stop()
        db_path = os.path.join(data, "databases", "rustydb.sqlite")
        build_rows(db_path, args.size_mb)
        mb = os.path.getsize(db_path) / 1e6
        srv.start()
        with rc.connect(port=srv.port) as c:
            total = c.execute("SELECT max(id) FROM customers").rows[0][0]
        print(f"database: {mb:.0f} MB, {total} customer rows")
        port = str(srv.port)
        backup = [tool("rusty-db-backup"), "--port", port, "--compress", "lz4", "--threads", "2"]
        full = os.path.join(tmp, "full.backup")
        full_runs = []
        for i in range(RUNS):  # the last one is the incremental's parent
            out = full if i == RUNS - 1 else os.path.join(tmp, f"full-{i}.backup")
            full_runs.append(timed([*backup, "--type", "full", "--output", out]))
            if out != full:
                os.unlink(out)
        full_s = statistics.median(full_runs)
        # 1% of the rows change, each three times
        changed = total // 100
        step = 100
        t0 = time.perf_counter()
        with rc.connect(port=srv.port) as c:
            for rep in range(3):
                for start in range(1, changed + 1, 1000):
                    ids = ",".join(str(i * step) for i in range(start, min(start + 1000, changed + 1)))
                    c.execute(
                        f"UPDATE customers SET balance = balance + 1, notes = notes || '{rep}' WHERE id IN ({ids})"
                    )
        print(f"changed {changed} rows x3 in {time.perf_counter() - t0:.1f} s")
        incr = os.path.join(tmp, "incr.backup")
        incr_runs = [timed([*backup, "--type", "incremental", "--output", incr])]
        for i in range(RUNS - 1):  # the same changes again, from the same parent
            again = os.path.join(tmp, f"incr-{i}.backup")
            incr_runs.append(timed([*backup, "--type", "incremental", "--base-backup", full, "--output", again]))
            os.unlink(again)
        incr_s = statistics.median(incr_runs)
        fsize, isize = os.path.getsize(full), os.path.getsize(incr)
        print(f"full backup (median of {RUNS}): {fsize / 1e6:8.1f} MB in {full_s:6.2f} s  {_runs(full_runs)}")
        print(f"incremental backup (median of {RUNS}): {isize / 1e6:8.1f} MB in {incr_s:6.2f} s  {_runs(incr_runs)}")
        print(f"  size {isize / fsize:.2%} of full (target <= 3%), time {incr_s / full_s:.1%} of full (target <= 10%)")
        srv.stop()
        # Restores are timed RESTORE_RUNS times each, interleaved, and the
        # medians compared: this machine's disk makes single runs vary by 2x.
        chain_dir = os.path.join(tmp, "chain")
        os.mkdir(chain_dir)
        for name in (full, incr):
            os.link(name, os.path.join(chain_dir, os.path.basename(name)))
        restore = [tool("rusty-db-restore"), "--threads", "2"]
        fulls, steps, chains, tables, floors = [], [], [], [], []
        for i in range(RESTORE_RUNS):
            target = os.path.join(tmp, f"r{i}")
            fulls.append(timed([*restore, "--input", full, "--data-dir", target]))
            # the guide's way: the incremental applied as a second step
            steps.append(timed([*restore, "--input", incr, "--data-dir", target, "--incremental"]))
            shutil.rmtree(target)
            # both in one run (--chain-dir): changed pages reach the disk once
            chains.append(timed([*restore, "--input", incr, "--chain-dir", chain_dir, "--data-dir", target]))
            shutil.rmtree(target)
            tables.append(
                timed(
                    [tool("rusty-db-restore"), "--input", full, "--table", "small", "--data-dir", target, "--no-start"]
                )
            )
            shutil.rmtree(target, ignore_errors=True)
            floors.append(apply_floor(restore, full, incr, target))
            shutil.rmtree(target)
        restore_s, step_s = statistics.median(fulls), statistics.median(steps)
        chain_s, table_s = statistics.median(chains), statistics.median(tables)
        print(f"restore full (median of {RESTORE_RUNS}): {restore_s:6.2f} s  {_runs(fulls)}")
        print(
            f"  + incremental as a second step (the guide's way): {step_s:6.2f} s "
            f"(adds {step_s / restore_s:.1%})  {_runs(steps)}"
        )
        print(
            f"  full + incremental in one run (--chain-dir): {chain_s:6.2f} s "
            f"(adds {chain_s / restore_s - 1:.1%}, target <= 20%)  {_runs(chains)}"
        )
        floor_s = statistics.median(floors)
        print(
            f"  SQLite alone applying the incremental to the restored file: "
            f"{floor_s:6.2f} s = {floor_s / restore_s:.1%} of the full restore  "
            f"{_runs(floors)}"
        )
        print(
            f"table restore of 'small' (~1 MB) from the {fsize / 1e6:.0f} MB backup: "
            f"{table_s:6.2f} s = {table_s / restore_s:.1%} of the full restore "
            f"(target <= 10%)  {_runs(tables)}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
