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
     main), the same PITR to the end run with that tree's rusty-db-restore and
     its restored server started by that tree's server, interleaved with this
     tree's (back to back, each first in turn), medians and the ratios;
  4. beside the first pgbench -N only load, where PostgreSQL 15 and pgBackRest
     are installed (and a 'postgres' account to run them as; otherwise one line
     says why that side is skipped): PostgreSQL's point-in-time recovery as an
     operator runs it (class PgPitr): a pgBackRest stanza and repository under
     the work directory, archive_command 'pgbackrest ... archive-push %p', a
     full backup, pgbench -N from 2 clients for exactly as many transactions as
     RustyDB's load, a target time just after its last commit (one commit after
     it on both sides), then --repeat times, interleaved with RustyDB's PITR to
     that same time target: `pgbackrest restore --type=time --target-action=
     promote` into an emptied directory, and pg_ctl start until PostgreSQL has
     promoted and answers a query. Both sides are asked every 5 ms, and both
     restored servers must hold exactly the load's pgbench_history rows.
     Printed: restore, start until answering, whole, transactions/s, the redo
     phase (its log's 'redo done ... elapsed') and RustyDB's whole-PITR
     transactions/s divided by PostgreSQL's (issue 16's target: >= 2x); then
     the crash recovery of the same load, once (a floor: no base to restore).
     pgBackRest is configured as RustyDB's side is: the backup uncompressed,
     the archived WAL lz4, and with --encrypt aes-256-cbc with a passphrase.
With --encrypt, the base backup and the archive are encrypted with a
passphrase: each PITR then runs the KDF for the base's salt and the archive's.
Tools and servers run with a bytecode cache, as an installed package has
(--no-bytecode-cache: each start compiles the tree, as a checkout under
PYTHONDONTWRITEBYTECODE does).
Targets (issue 16): replay phase >= 30,000 transactions/s; PITR to 10% <= 20%
of the time of PITR to the end; whole PITR >= 2x PostgreSQL's transactions/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
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
sys.path.insert(0, os.path.dirname(__file__))
import pgbench_side  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from rustydb_server.wal.lsn import format_lsn, parse_lsn  # noqa: E402
from tests.support.servers import ServerProcess, free_port, tool  # noqa: E402

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


def start_until_answering(data_dir: str, expect: int | None = None, command: list[str] | None = None) -> float:
    """Start a server on ``data_dir`` and ask it every 5 ms until it answers a query (its
    pgbench_history rows: ``expect`` of them, when given); the seconds that took. PostgreSQL's
    side below is asked the same way. ``command``: another tree's server (its launcher)."""
    srv = ServerProcess(data_dir, command=command)
    STARTED.append(srv)
    t0 = time.perf_counter()
    srv.start(wait=False)
    while True:
        try:
            with rc.connect(port=srv.port, timeout=5) as c:
                count = c.execute("SELECT count(*) FROM pgbench_history").rows[0][0]
            break
        except (OSError, rc.ClientError):
            if srv.proc.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit(f"the restored server in {data_dir} did not answer:\n{srv.log()}") from None
            time.sleep(0.005)
    took = time.perf_counter() - t0
    srv.stop()
    if expect is not None and count != expect:
        raise SystemExit(f"the restored server in {data_dir} has {count} pgbench_history rows, not {expect}")
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


def bench_pitr(work: str, args, segment_kb: int, pg: PgPitr | None = None) -> None:
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
        # a time target just after the load's last commit, and one commit after it (what a
        # time target stops before, here as on PostgreSQL's side)
        target_time = dt.datetime.now(dt.UTC).isoformat(sep=" ")
        time.sleep(0.05)
        c.execute("INSERT INTO pgbench_history(tid, bid, aid, delta) VALUES (0, 0, 0, 0)")
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
    runs: dict[str, list] = {"floor": [], "end": [], "tenth": [], "time": [], "pg": [], "baseline": []}
    targets = {
        "floor": ["--recovery-target", "immediate"],
        "end": ["--recovery-target-name", "bench_end"],
        "tenth": ["--recovery-target-lsn", format_lsn(tenth)],
        "time": ["--recovery-target-time", target_time],
    }
    # the restored server's pgbench_history rows: every load transaction's, none after
    expect = {"floor": None, "end": txs, "tenth": None, "time": txs, "baseline": txs}
    if pg is not None:
        print(f"  PostgreSQL 15: the same load ({txs} pgbench -N transactions), a base backup and its archive ...")
        pg.prepare(txs)
    baseline = baseline_server = None
    if args.baseline_src:
        # run from the baseline tree: "python -m" puts the working directory first on sys.path
        src = os.path.abspath(args.baseline_src)
        baseline = ([sys.executable, "-m", "rustydb_server.tools.restore_main"], dict(env, PYTHONPATH=src), src)
        # and its restored server started by that tree's server too: the whole PITR compared
        baseline_server = [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {src!r}); from rustydb_server.tools.server_main import main; "
            "sys.exit(main())",
        ]
    for r in range(args.repeat):
        # the pairs compared, adjacent and in turns first: a restore right after another's
        # server stopped (its writes still going to disk) is not the same run as the next
        pairs = [["end", "baseline"], ["time", "pg"] if pg is not None else []]
        kinds = ["floor", *(pairs[0] if r % 2 == 0 else pairs[0][::-1]), "tenth"]
        kinds += pairs[1] if r % 2 == 0 else pairs[1][::-1]
        for kind in kinds:
            if kind == "pg":
                runs["pg"].append(pg.pitr_once())
                continue
            if kind == "baseline":
                if baseline is None:
                    continue
                wall, rep = restore(*baseline, base, archive, out, targets["end"])
            else:
                wall, rep = restore(this, env, None, base, archive, out, targets[kind])
            start = start_until_answering(out, expect[kind], baseline_server if kind == "baseline" else None)
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
        "time": "to the end by time (--recovery-target-time just after the load's last commit)",
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
        start = med([r["start"] for r in runs["end"]]) / med([r["start"] for r in runs["baseline"]])
        both = med([r["wall"] + r["start"] for r in runs["end"]]) / med(
            [r["wall"] + r["start"] for r in runs["baseline"]]
        )
        print(
            f"  PITR to the end, this tree / baseline tree (each tree's restore and server): restore wall time "
            f"{whole:.2f}, start until answering {start:.2f}, whole {both:.2f}"
        )
    if pg is not None:
        print_postgres(pg, runs, txs, segment_kb, args.encrypt)


def print_postgres(pg: PgPitr, runs: dict[str, list], txs: int, segment_kb: int, encrypt: bool) -> None:
    """PostgreSQL's PITR of the same load beside RustyDB's PITR by time, interleaved with it."""
    ours = "AES-256-GCM with a passphrase" if encrypt else "none"
    print(
        f"\n== PostgreSQL 15 + pgBackRest, same load: pgbench -n -N -c 2 -s {pg.scale}, {pg.txs} transactions "
        f"in {pg.load_s:.1f} s ({pg.tps:,.0f} tps); full backup {pg.backup_s:.2f} s; archived WAL {pg.wal_range} "
        "(16 MB segments)"
    )
    print(
        "  compression and encryption: RustyDB: base backup uncompressed, archive lz4, encryption "
        f"{ours}; {pg.describe()}"
    )
    rs = runs["pg"]
    wall, start = med([r["wall"] for r in rs]), med([r["start"] for r in rs])
    redo = [r["redo"] for r in rs if r["redo"] is not None]
    print(
        f"  PITR to the end by time (pgbackrest restore --type=time --target-action=promote, then pg_ctl start "
        f"until promoted and answering): {pg.txs} transactions replayed from {rs[0]['segments']} archived "
        f"segments (archive-get); medians of {len(rs)}: restore {wall:.2f} s + start until answering {start:.2f} s"
        f" = {wall + start:.2f} s"
    )
    line = f"    transactions/s over the whole: {pg.txs / (wall + start):,.0f}"
    if redo:
        line += (
            f"; in the redo phase (its log's 'redo done ... elapsed'): {pg.txs / med(redo):,.0f} ({med(redo):.2f} s)"
        )
    print(line)
    ts = runs["time"]
    our_whole = txs / (med([r["wall"] for r in ts]) + med([r["start"] for r in ts]))
    pg_whole = pg.txs / (wall + start)
    ratio = our_whole / pg_whole
    print(
        f"  RustyDB ({segment_kb} kB segments) / PostgreSQL, PITR to the same time target, transactions/s over the "
        f"whole restore until answering: {our_whole:,.0f} / {pg_whole:,.0f} = {ratio:.2f}x   "
        f"[target >= 2x: {'MET' if ratio >= 2 else 'NOT MET'}]"
    )
    # each round's pair ran back to back: its ratio is the least touched by the machine's other load
    rounds = sorted((txs / (o["wall"] + o["start"])) / (pg.txs / (p["wall"] + p["start"])) for o, p in zip(ts, rs))
    print(f"    each round's ratio: {', '.join(f'{v:.2f}' for v in rounds)}; median {med(rounds):.2f}x")
    our_replay = [r["replay"] for r in ts if r["replay"] is not None]
    if our_replay and redo:
        print(
            f"  the same, replay phase against redo phase: {txs / med(our_replay):,.0f} / "
            f"{pg.txs / med(redo):,.0f} = {(txs / med(our_replay)) / (pg.txs / med(redo)):.2f}x"
        )
    crash = pg.crash
    if crash:
        line = (
            "  crash recovery of the same load (the floor: no base to restore, no archive to read): start until "
            f"answering {crash['start']:.2f} s = {pg.txs / crash['start']:,.0f} tx/s"
        )
        if crash["redo"]:
            line += f"; redo phase {crash['redo']:.2f} s = {pg.txs / max(crash['redo'], 1e-9):,.0f} tx/s"
        print(line)


class PgPitr:
    """PostgreSQL 15's point-in-time recovery with pgBackRest, set up as an operator does it.

    Everything lives under the bench's work directory: the cluster (loopback port, a socket
    directory of its own), a pgBackRest repository (repo1-path) and the pgbackrest.conf every
    command is given with --config (and an empty --config-include-path, so nothing of the
    machine's /etc/pgbackrest is read). As root, PostgreSQL and pgBackRest run as the
    'postgres' account (initdb refuses root), as bench/pgbench_side.py does.

    ``prepare`` takes a full backup (pgbackrest backup --type=full) of pgbench's tables at
    the scale of RustyDB's load, runs pgbench -N for the same number of transactions from 2
    clients with archive_command = 'pgbackrest ... archive-push %p', notes a target time
    just after the load's last commit, commits one more row after it (a time target needs a
    commit after it to stop at; RustyDB's side has the same), switches WAL, waits for the
    archive and stops the cluster; it also times the crash recovery of that load once (the
    old floor). ``pitr_once`` restores into an emptied directory with ``pgbackrest restore
    --type=time --target=T --target-action=promote`` and starts PostgreSQL until it has
    promoted and answers a query.
    """

    STANZA = "bench"

    def __init__(self, work: str, port: int, scale: int, passphrase: str | None):
        self.work = os.path.join(work, "postgres")
        self.port = str(port)
        self.scale = scale
        self.passphrase = passphrase
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.sock = os.path.join(self.work, "sock")
        self.pgdata = os.path.join(self.work, "pgdata")
        self.restored = os.path.join(self.work, "restored")
        self.conf = os.path.join(self.work, "pgbackrest.conf")
        self.bindir = pgbench_side.BIN
        self.running: str | None = None  # the data directory of the cluster started last
        self.pgbackrest = [
            "pgbackrest",
            f"--config={self.conf}",
            f"--config-include-path={os.path.join(self.work, 'conf.d')}",
            f"--stanza={self.STANZA}",
        ]
        self.txs = 0
        self.target = ""
        self.crash: dict = {}

    @staticmethod
    def missing() -> str | None:
        """Why PostgreSQL's PITR cannot run here, or None."""
        if not pgbench_side.available():
            return f"PostgreSQL 15 is not installed (no initdb, pg_ctl or pgbench in {pgbench_side.BIN})"
        if shutil.which("pgbackrest") is None:
            return "pgBackRest is not installed (apt-get install pgbackrest)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "there is no 'postgres' account to run PostgreSQL as (initdb refuses root)"
        return None

    def describe(self) -> str:
        cipher = "aes-256-cbc with a passphrase" if self.passphrase else "none"
        return f"pgBackRest {self.version}: backup uncompressed, archive lz4, encryption {cipher}"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.as_pg, *cmd], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def _psql(self, sql: str) -> str:
        return self._run(f"{self.bindir}/psql", "-X", "-h", self.sock, "-p", self.port, "-Atc", sql, "postgres").stdout

    def _start(self, data: str, log: str) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", data, "-l", log, "-w", "start")
        self.running = data

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(f"{self.bindir}/pg_ctl", "-D", self.running, "-m", mode, "-w", "stop", check=False)
            self.running = None

    def _start_until_answering(self, data: str, log: str) -> tuple[float, int]:
        """pg_ctl start (not waiting), then a query every 5 ms until PostgreSQL is out of
        recovery and answers it: seconds, pgbench_history's rows."""
        query = "SELECT CASE WHEN pg_is_in_recovery() THEN -1 ELSE (SELECT count(*) FROM pgbench_history) END"
        psql = f"{self.bindir}/psql -X -h {self.sock} -p {self.port} -Atc '{query}' postgres"
        script = (
            f"{self.bindir}/pg_ctl -D {data} -l {log} -W start >/dev/null || exit 1\n"
            f"while :; do out=$({psql} 2>/dev/null)\n"
            '  case "$out" in ""|-1) sleep 0.005;; *) echo "$out"; exit 0;; esac\ndone\n'
        )
        self.running = data
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*self.as_pg, "timeout", "600", "bash", "-c", script], capture_output=True, text=True, check=False
        )
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            with open(log) as f:
                raise SystemExit(f"PostgreSQL on {data} did not answer ({proc.returncode}):\n{f.read()[-4000:]}")
        return took, int(proc.stdout.split()[-1])

    def prepare(self, txs: int) -> None:
        self.version = self._run("pgbackrest", "version").stdout.strip().removeprefix("pgBackRest ")
        for d in (self.work, self.sock, os.path.join(self.work, "repo"), os.path.join(self.work, "conf.d")):
            os.makedirs(d)
        for d in ("log", "lock", "spool"):
            os.makedirs(os.path.join(self.work, d))
        with open(self.conf, "w") as f:
            f.write(
                f"[global]\nrepo1-path={os.path.join(self.work, 'repo')}\nrepo1-retention-full=1\n"
                f"log-path={os.path.join(self.work, 'log')}\nlock-path={os.path.join(self.work, 'lock')}\n"
                f"spool-path={os.path.join(self.work, 'spool')}\n"
                "log-level-console=warn\nlog-level-file=off\nstart-fast=y\n"
                # as RustyDB's side: the base backup uncompressed, the archived WAL in lz4
                "compress-type=none\n"
            )
            if self.passphrase:
                f.write(f"repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={self.passphrase}\n")
            f.write("[global:archive-push]\ncompress-type=lz4\n")
            f.write(f"[{self.STANZA}]\npg1-path={self.pgdata}\npg1-port={self.port}\npg1-socket-path={self.sock}\n")
        if self.as_pg:  # the bench's directory traversable, this one PostgreSQL's
            os.chmod(os.path.dirname(self.work), 0o711)
            for root, dirs, files in os.walk(self.work):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    shutil.chown(name, "postgres", "postgres")
        self._run(f"{self.bindir}/initdb", "-D", self.pgdata, "-A", "trust", "-U", "postgres")
        archive_command = " ".join([*self.pgbackrest, "archive-push", "%p"])
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.sock}'\n"
                # no checkpoint during the load: the crash recovery below replays all of it
                "checkpoint_timeout = '1h'\nmax_wal_size = '20GB'\n"
                f"archive_mode = on\narchive_command = '{archive_command}'\n"
            )
        log = os.path.join(self.work, "source.log")
        self._start(self.pgdata, log)
        pgbench = [f"{self.bindir}/pgbench", "-h", "127.0.0.1", "-p", self.port]
        self._run(*pgbench, "-i", "-q", "-s", str(self.scale), "postgres")
        self._run(*self.pgbackrest, "stanza-create")
        t0 = time.perf_counter()
        self._run(*self.pgbackrest, "--type=full", "backup")
        self.backup_s = time.perf_counter() - t0
        # -n: no vacuum of the tables (nor truncation of pgbench_history) before the load
        t0 = time.perf_counter()
        load = self._run(*pgbench, "-n", "-N", "-c", "2", "-j", "2", "-t", str(txs // 2), "postgres").stdout
        if txs % 2:
            self._run(*pgbench, "-n", "-N", "-c", "1", "-t", "1", "postgres")
        self.load_s = time.perf_counter() - t0
        tps = re.search(r"tps = ([\d.]+)", load)
        self.tps = float(tps.group(1)) if tps else float("nan")
        self.txs = int(self._psql("SELECT count(*) FROM pgbench_history").strip())
        if self.txs != txs:
            raise SystemExit(f"PostgreSQL's load committed {self.txs} transactions, not {txs}")
        self.target = dt.datetime.now(dt.UTC).isoformat(sep=" ")
        time.sleep(0.05)  # one more commit, after the target: what a time target stops before
        self._psql("INSERT INTO pgbench_history(tid, bid, aid, delta) VALUES (0, 0, 0, 0)")
        last = self._psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + 300
        while self._psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").strip() < last:
            if time.monotonic() > deadline:
                raise SystemExit(f"PostgreSQL did not archive {last} in 300 s; see {log}")
            time.sleep(0.1)
        info = json.loads(self._run(*self.pgbackrest, "--output=json", "info").stdout)
        archive = info[0]["archive"][0]
        self.wal_range = f"{archive['min']} to {archive['max']}"
        # the old floor: crash recovery of the same load (its WAL since the backup's checkpoint)
        self.stop("immediate")
        start_s, count = self._start_until_answering(self.pgdata, log)
        self.stop()
        with open(log) as f:
            redo = re.findall(r"redo done at .*elapsed: ([\d.]+) s", f.read())
        if count != txs + 1:  # the load and the row after the target
            raise SystemExit(f"PostgreSQL's crash recovery gave {count} pgbench_history rows, not {txs + 1}")
        self.crash = {"start": start_s, "redo": float(redo[-1]) if redo else None}

    def pitr_once(self) -> dict:
        shutil.rmtree(self.restored, ignore_errors=True)
        os.mkdir(self.restored, 0o700)
        if self.as_pg:
            shutil.chown(self.restored, "postgres", "postgres")
        log = os.path.join(self.work, "restored.log")
        if os.path.exists(log):
            os.unlink(log)
        t0 = time.perf_counter()
        self._run(
            *self.pgbackrest,
            f"--pg1-path={self.restored}",
            "--type=time",
            f"--target={self.target}",
            "--target-action=promote",
            "--archive-mode=off",  # the restored cluster does not archive (neither does RustyDB's)
            "restore",
        )
        restore_s = time.perf_counter() - t0
        start_s, count = self._start_until_answering(self.restored, log)
        self.stop()
        with open(log) as f:
            text = f.read()
        if count != self.txs or "recovery stopping before commit" not in text:
            raise SystemExit(
                f"PostgreSQL's PITR to {self.target} gave {count} pgbench_history rows, not {self.txs}:\n{text[-4000:]}"
            )
        redo = re.findall(r"redo done at .*elapsed: ([\d.]+) s", text)
        segments = len(set(re.findall(r'restored log file "([0-9A-F]{24})"', text)))
        return {"wall": restore_s, "start": start_s, "redo": float(redo[-1]) if redo else None, "segments": segments}


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
    ap.add_argument(
        "--baseline-src", help="another RustyDB source tree: time its rusty-db-restore and server too, interleaved"
    )
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL comparison")
    ap.add_argument("--pg-port", type=int, help="PostgreSQL's loopback port (default: a free one)")
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
    pg: PgPitr | None = None
    try:
        sizes = [int(v) for v in args.segment_kb.split(",")]
        fills = [args.fill if args.fill != "auto" else ("bulk" if kb > 1024 else "pgbench") for kb in sizes]
        why = "--no-postgres" if args.no_postgres else PgPitr.missing()
        if why is None and "pgbench" not in fills:
            why = "no load here is pgbench -N alone (--fill bulk)"
        if why is not None:
            print(f"PostgreSQL 15 + pgBackRest side skipped: {why}")
        else:
            passphrase = os.environ["RUSTYDB_BACKUP_PASSPHRASE"] if args.encrypt else None
            pg = PgPitr(work, args.pg_port or free_port(), args.scale, passphrase)
        beside = fills.index("pgbench") if pg is not None else -1  # the first pgbench -N only load
        for i, (kb, fill) in enumerate(zip(sizes, fills, strict=True)):
            bench_pitr(work, argparse.Namespace(**{**vars(args), "fill": fill}), kb, pg if i == beside else None)
    finally:
        for srv in STARTED:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.kill()
        if pg is not None:
            pg.stop("immediate")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
