"""WAL archiving and PITR benchmark: prints figures; never run as a test.

    python bench/bench_archive.py [--quick] [--records 50000]

Measures, in one run, with real server processes and the real rusty-db-restore:
  1. archive throughput (segments/s, MB/s of WAL) under a steady insert load with
     the default 16 MB segments, from the times the archiver marked segments
     .done (wal/archive_status/<seg>.done mtimes, polled so none is missed);
  2. PITR replay rate: a pitr-base, then a workload of N WAL records changing
     4 rows each (~4N changed rows), archived; rusty-db-restore to a
     --recovery-target-time just after the last workload commit; records/s and
     changed rows/s from its --json report (records_replayed, changed_rows and
     replay_seconds, the replay phase; "seconds" is the whole restore's);
  3. the RPO with archive_timeout = 1 s and = 60 s under a steady light load
     (~20 commits/s): for every commit, the delay until the segment holding it
     (from SHOW wal_lsn after the commit) appeared in the archive (mtime of the
     .walz file), and, sampled every 100 ms, how long the oldest commit not yet
     archived had been waiting ("archive behind").  The 60 s case observes 70 s
     of load: commits of the last ~10 s are not archived inside the window and
     count in "behind" only.
Targets (issue 4): replay >= 50,000 changed rows/s; with archive_timeout = 1 s
the archive is never more than 2 s behind the last commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from rustydb_client import client as rc
from rustydb_server.wal.lsn import parse_lsn
from tests.support.servers import ServerProcess, tool

MB = 1024 * 1024
STARTED: list[ServerProcess] = []


def start_server(work: str, name: str, conf_text: str, archive: str) -> ServerProcess:
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(conf_text)
    srv = ServerProcess(os.path.join(work, name), extra_args=["--config", conf])
    STARTED.append(srv)
    srv.start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    return srv


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def archive_under_load(port: int, status_dir: str, seconds: float, writers: int = 4) -> tuple[dict, int, float]:
    """``writers`` clients commit 20 rows of 2 kB at a time for ``seconds``; meanwhile
    the time each segment was marked .done in ``status_dir`` is noted. Returns those
    times by mark, the commits made and the seconds the load ran."""
    stop = threading.Event()
    counts = [0] * writers

    def writer(wid):
        conn = rc.connect(port=port)
        blob = os.urandom(2000).hex()
        n = wid * 100_000_000
        while not stop.is_set():
            values = ",".join(f"({n + k}, x'{blob}')" for k in range(20))
            conn.execute(f"INSERT INTO t VALUES {values}")
            n += 20
            counts[wid] += 1
        conn.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    done_at: dict[str, float] = {}
    t0 = time.time()
    for t in threads:
        t.start()
    while time.time() - t0 < seconds:
        for n in os.listdir(status_dir):
            if n.endswith(".done") and n not in done_at:
                try:
                    done_at[n] = os.stat(os.path.join(status_dir, n)).st_mtime
                except FileNotFoundError:
                    pass
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    return done_at, sum(counts), time.time() - t0


# ------------------------------------------------------------ 1. throughput
def bench_throughput(work: str, seconds: float) -> None:
    archive = os.path.join(work, "archive-tp")
    os.mkdir(archive)
    srv = start_server(work, "tp", "", archive)
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);")
    status_dir = os.path.join(srv.data_dir, "wal", "archive_status")
    done_at, commits, elapsed = archive_under_load(srv.port, status_dir, seconds)
    with rc.connect(port=srv.port) as c:
        wal_mb = parse_lsn(c.execute("SHOW wal_lsn").rows[0][0]) / MB
    seg_size = 16 * MB
    times = sorted(done_at.values())
    print(f"\n== archive throughput (16 MB segments, 4 writers, {elapsed:.0f} s load)")
    print(
        f"  WAL written: {wal_mb:.0f} MB ({wal_mb / elapsed:.1f} MB/s, "
        f"{commits / elapsed:.0f} commits/s of 20 rows x 2 kB)"
    )
    if len(times) >= 2:
        span = times[-1] - times[0]
        rate = (len(times) - 1) / span if span > 0 else float("inf")
        print(
            f"  segments archived: {len(times)}; rate between first and last .done: "
            f"{rate:.2f} segments/s = {rate * seg_size / MB:.1f} MB/s of WAL"
        )
    else:
        print(f"  segments archived: {len(times)} (too few for a rate; run longer)")
    # the archiver alone: drain the backlog once the load stops
    t1 = time.time()
    waiting = srv.archive_status()["segments_waiting"]
    srv.wait_archived(timeout=120.0)
    drain = time.time() - t1
    print(
        f"  backlog after the load: {waiting} segment(s), drained in {drain:.1f} s"
        + (f" ({waiting / drain:.2f} segments/s)" if waiting and drain > 0 else "")
    )
    arch_mb = sum(os.path.getsize(os.path.join(archive, n)) for n in os.listdir(archive)) / MB
    print(
        f"  archive size: {arch_mb:.1f} MB for {len(os.listdir(archive))} files "
        "(each writer repeats one random blob: compressible)"
    )
    srv.stop()


# ------------------------------------------------------------ 2. replay rate
def bench_replay(work: str, records: int) -> None:
    archive = os.path.join(work, "archive-replay")
    os.mkdir(archive)
    srv = start_server(work, "replay", "", archive)
    srv.sql("CREATE TABLE acc(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    n_rows = 20_000
    with rc.connect(port=srv.port) as c:
        c.execute("BEGIN")
        for start in range(0, n_rows, 500):
            c.execute("INSERT INTO acc VALUES " + ",".join(f"({i}, 0, 'row {i}')" for i in range(start, start + 500)))
        c.execute("COMMIT")
    base = os.path.join(work, "replay.base")
    subprocess.run(
        [tool("rusty-db-backup"), "--type", "pitr-base", "--output", base, "--port", str(srv.port)],
        check=True,
        capture_output=True,
    )
    writers = 8
    per = records // writers

    def writer(wid):
        with rc.connect(port=srv.port) as c:
            for k in range(per):
                first = (wid * per + k) * 4 % n_rows
                # one transaction = one WAL record changing 4 rows
                c.execute(f"UPDATE acc SET balance = balance + 1 WHERE id BETWEEN {first} AND {first + 3}")

    t0 = time.time()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load_s = time.time() - t0
    target = time.time()
    time.sleep(0.05)
    srv.sql("INSERT INTO acc VALUES (-1, 0, 'after the target');")
    srv.wait_archived(timeout=120.0)
    srv.stop()
    out = os.path.join(work, "replay-restored")
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(target)) + f".{int(target % 1 * 1e6):06d}+00:00"
    t1 = time.time()
    proc = subprocess.run(
        [
            tool("rusty-db-restore"),
            "--input",
            base,
            "--archive-dir",
            archive,
            "--data-dir",
            out,
            "--recovery-target-time",
            iso,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.time() - t1
    if proc.returncode != 0:
        print(f"\n== PITR replay: rusty-db-restore failed:\n{proc.stderr}")
        return
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    secs = rep["replay_seconds"] or 1e-9
    print(
        f"\n== PITR replay ({per * writers} transactions of 4 row updates, written in "
        f"{load_s:.1f} s by {writers} clients)"
    )
    print(
        f"  rusty-db-restore: records_replayed={rep['records_replayed']} "
        f"changed_rows={rep['changed_rows']} replay_seconds={rep['replay_seconds']} "
        f"restore seconds={rep['seconds']} "
        f"segments_read={rep['segments_read']} (tool wall time {wall:.1f} s)"
    )
    print(f"  whole restore (base + replay) rate: {rep['records_replayed'] / (rep['seconds'] or 1e-9):,.0f} records/s")
    rows_s = rep["changed_rows"] / secs
    print(
        f"  replay phase rate: {rep['records_replayed'] / secs:,.0f} records/s, "
        f"{rows_s:,.0f} changed rows/s (as reported)   [target >= 50,000 changed rows/s: "
        f"{'MET' if rows_s >= 50_000 else 'NOT MET'}]"
    )
    known = rep["records_replayed"] * 4  # every workload record updates 4 rows
    if rep["changed_rows"] < known:
        print(
            f"  NOTE: changed_rows={rep['changed_rows']} is below the {known} rows the "
            f"workload changed (a bug in the report); from the workload: "
            f"{known / secs:,.0f} changed rows/s   [target >= 50,000: "
            f"{'MET' if known / secs >= 50_000 else 'NOT MET'}]"
        )


# ------------------------------------------------------------------ 3. RPO
def bench_rpo(work: str, timeout_s: int, observe: float, rate: float = 20.0) -> None:
    archive = os.path.join(work, f"archive-rpo{timeout_s}")
    os.mkdir(archive)
    srv = start_server(work, f"rpo{timeout_s}", f"archive_timeout = '{timeout_s}s'\n", archive)
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    srv.wait_archived(timeout=120.0)
    seg_size = 16 * MB
    timeline_hex = None
    commits: list[tuple[float, int]] = []  # (acknowledged at, segno)
    stop = threading.Event()

    def writer():
        with rc.connect(port=srv.port) as c:
            i = 0
            nxt = time.time()
            while not stop.is_set():
                i += 1
                c.execute(f"INSERT INTO t VALUES ({i}, 'light load {i}')")
                at = time.time()
                lsn = parse_lsn(c.execute("SHOW wal_lsn").rows[0][0])
                commits.append((at, (lsn - 1) // seg_size))
                nxt += 1 / rate
                time.sleep(max(0.0, nxt - time.time()))

    seen: dict[int, float] = {}  # segno -> archived at (file mtime)

    def scan():
        nonlocal timeline_hex
        for n in os.listdir(archive):
            if n.endswith(".walz"):
                segno = int(n[8:24], 16)
                if segno not in seen:
                    seen[segno] = os.stat(os.path.join(archive, n)).st_mtime

    scan()
    th = threading.Thread(target=writer)
    t0 = time.time()
    th.start()
    behind = []
    while time.time() - t0 < observe:
        time.sleep(0.1)
        scan()
        now = time.time()
        pending = [at for at, seg in list(commits) if seg not in seen]
        behind.append(now - min(pending) if pending else 0.0)
    stop.set()
    th.join()
    scan()
    delays = [seen[seg] - at for at, seg in commits if seg in seen]
    unarchived = sum(1 for _, seg in commits if seg not in seen)
    print(
        f"\n== RPO with archive_timeout = {timeout_s} s ({len(commits)} commits at "
        f"~{rate:.0f}/s over {observe:.0f} s, {len(behind)} samples every 100 ms)"
    )
    print(
        f"  per-commit delay until archived: max {max(delays, default=float('nan')):.2f} s, "
        f"p95 {pct(delays, 95):.2f} s ({len(delays)} archived, {unarchived} still waiting "
        "at the end)"
    )
    line = (
        f"  archive behind the oldest un-archived commit (sampled): max {max(behind):.2f} s,"
        f" p95 {pct(behind, 95):.2f} s"
    )
    if timeout_s == 1:
        line += f"   [target <= 2 s: {'MET' if max(behind) <= 2.0 and max(delays) <= 2.0 else 'NOT MET'}]"
    else:
        line += f"   [expected about archive_timeout = {timeout_s} s]"
    print(line)
    srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="short run (~1 min): fewer records, shorter loads, no 60 s RPO case"
    )
    ap.add_argument("--records", type=int, help="WAL records of the replay workload")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    records = args.records or (8_000 if args.quick else 50_000)
    work = tempfile.mkdtemp(prefix="bench_archive_")
    print(f"bench_archive: work dir {work}; {'quick' if args.quick else 'full'} run")
    try:
        bench_throughput(work, 8 if args.quick else 25)
        bench_replay(work, records)
        bench_rpo(work, 1, 10 if args.quick else 30)
        if args.quick:
            print("\n== RPO with archive_timeout = 60 s: skipped in --quick (needs >= 70 s of observation)")
        else:
            bench_rpo(work, 60, 70)
    finally:
        for srv in STARTED:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
