"""Backup and restore benchmark: prints figures and same-run ratios; never run as a test.

    python bench/bench_backup.py [--size-mb 1024]

Builds a database of realistic rows (names, emails, amounts, dates, notes),
then measures, in one run:
  * full backup MB/s (database bytes / wall time) with lz4 and zstd, --threads 1
    and 2, with and without encryption, through the real rusty-db-backup;
  * restore MB/s through the real rusty-db-restore;
  * the physical limit of the same work on this machine: read the database
    file, lz4-compress it on 2 threads and write the result (and the reverse);
  * the server's commit rate alone and while a backup runs.
The rows are written into the database file directly with APSW (the server
is stopped meanwhile): the WAL does not need them to measure a backup, and it
takes seconds instead of minutes.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import apsw
import lz4.block

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from bytecode import compile_bytecode  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from rustydb_server import fileops  # noqa: E402
from tests.support.servers import ServerProcess, tool  # noqa: E402

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray"
).split()


def build_rows(path: str, size_mb: int) -> None:
    db = apsw.Connection(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS customers(id INTEGER PRIMARY KEY, name TEXT, "
        "email TEXT, city TEXT, balance REAL, created TEXT, notes TEXT)"
    )
    rnd = random.Random(42)
    target = size_mb * 1024 * 1024
    i = 0
    while True:
        with db:
            rows = []
            for _ in range(20000):
                i += 1
                first, last = rnd.choice(WORDS), rnd.choice(WORDS)
                rows.append(
                    (
                        i,
                        f"{first.title()} {last.title()}",
                        f"{first}.{last}{i}@example.com",
                        rnd.choice(WORDS).title() + "ville",
                        round(rnd.uniform(-1e4, 1e5), 2),
                        f"2025-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                        " ".join(rnd.choices(WORDS, k=rnd.randint(3, 18))),
                    )
                )
            db.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?)", rows)
        pages = db.execute("PRAGMA page_count").fetchall()[0][0] * 4096
        if pages >= target:
            break
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def pipeline(
    path: str, out: str, threads: int = 2, chunk: int = 1 << 20, write_behind: bool = True
) -> tuple[float, float]:
    """Read + lz4 on N threads + write + fsync, and the reverse: seconds each.

    With ``write_behind`` the writes start writeback every 8 MiB, as the tools
    do (FileOps.start_writeback); without, the kernel keeps everything dirty
    until the final fsync. FileOps.write_all writes in pieces of at most
    fileops.WRITE_PIECE bytes, as the tools do: 1 MiB writes make Linux cache
    the file in large folios, which fill several times slower here.
    """

    def write_out(name, pieces):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        behind = fileops.WriteBehind(fileops.REAL, fd) if write_behind else None
        try:
            for piece in pieces:
                fileops.REAL.write_all(fd, piece)
                if behind is not None:
                    behind.wrote(len(piece))
            os.fsync(fd)
        finally:
            os.close(fd)

    def bounded_map(ex, func, items):
        """Executor.map with at most 2 x threads pieces in flight (map reads all ahead)."""
        pending = collections.deque()
        for item in items:
            pending.append(ex.submit(func, item))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    settle()
    t0 = time.perf_counter()
    sizes = []

    def compressed(ex, f):
        for comp in bounded_map(ex, lz4.block.compress, iter(lambda: f.read(chunk), b"")):
            sizes.append(len(comp))
            yield comp

    with open(path, "rb") as f, cf.ThreadPoolExecutor(threads) as ex:
        write_out(out, compressed(ex, f))
    backup_s = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    with open(out, "rb") as f, cf.ThreadPoolExecutor(threads) as ex:
        write_out(out + ".back", bounded_map(ex, lz4.block.decompress, (f.read(n) for n in sizes)))
    restore_s = time.perf_counter() - t0
    os.unlink(out)
    os.unlink(out + ".back")
    return backup_s, restore_s


def commit_rate(port: int, seconds: float, stop: threading.Event | None = None) -> float:
    conn = rc.connect(port=port)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and not (stop and stop.is_set()):
        conn.execute(f"INSERT INTO ticks(v) VALUES ({n})")
        n += 1
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def settle() -> None:
    """Flush what earlier steps wrote, so each figure pays only for its own writes."""
    os.sync()
    time.sleep(0.5)


def run(cmd, env=None):
    settle()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    compile_bytecode()  # the tools as installed (see bench/bytecode.py)
    tmp = tempfile.mkdtemp(prefix="rustydb-bench-backup-")
    try:
        data = os.path.join(tmp, "data")
        srv = ServerProcess(data).start()
        srv.sql("CREATE DATABASE bench;")
        srv.sql("CREATE TABLE ticks(id INTEGER PRIMARY KEY, v INTEGER);")
        srv.stop()
        db_path = os.path.join(data, "databases", "bench.sqlite")
        t0 = time.perf_counter()
        build_rows(db_path, args.size_mb)
        db_bytes = os.path.getsize(db_path)
        mb = db_bytes / 1e6
        print(f"database: {mb:.0f} MB of rows, built in {time.perf_counter() - t0:.0f} s")
        nb_s, nr_s = pipeline(db_path, os.path.join(tmp, "pipe.lz4"), write_behind=False)
        print(f"plain pipeline, writeback at fsync only: backup {mb / nb_s:6.0f} MB/s, reverse {mb / nr_s:6.0f} MB/s")
        b_s, r_s = pipeline(db_path, os.path.join(tmp, "pipe.lz4"))
        print(
            f"plain pipeline (read, lz4 x2 threads, write behind, fsync): backup {mb / b_s:6.0f} MB/s, "
            f"reverse {mb / r_s:6.0f} MB/s (the ratios use this one, measured again next to each)"
        )
        srv.start()
        key = os.path.join(tmp, "key")
        run([tool("rusty-db-backup"), "--create-key-file", key])
        env = dict(os.environ, RUSTYDB_BACKUP_KEY_FILE=key)
        for codec in ("lz4", "zstd"):
            for threads in (1, 2):
                for enc in (False, True):
                    out = os.path.join(tmp, f"b-{codec}-{threads}-{enc}.backup")
                    cmd = [
                        tool("rusty-db-backup"),
                        "--type",
                        "full",
                        "--output",
                        out,
                        "--port",
                        str(srv.port),
                        "--compress",
                        codec,
                        "--threads",
                        str(threads),
                    ]
                    if enc:
                        cmd.append("--encrypt")
                    secs = run(cmd, env)
                    size = os.path.getsize(out)
                    os.unlink(out)
                    print(
                        f"full backup {codec:4s} threads={threads} encrypt={'yes' if enc else 'no ':3s}:"
                        f" {mb / secs:6.0f} MB/s  ({size / 1e6:.0f} MB file)"
                    )
        # The figures the targets name, three times, each next to the plain
        # pipeline in the same disk state (this VM's disk varies by 2x from one
        # minute to the next): medians, and ratios of medians.
        target = os.path.join(tmp, "restored")
        key_runs = {"pipe_b": [], "pipe_r": [], "backup": [], "restore": []}
        for i in range(3):
            pb, pr = pipeline(db_path, os.path.join(tmp, "pipe.lz4"))
            out = os.path.join(tmp, f"key-{i}.backup")
            bsecs = run(
                [
                    tool("rusty-db-backup"),
                    "--type",
                    "full",
                    "--output",
                    out,
                    "--port",
                    str(srv.port),
                    "--compress",
                    "lz4",
                    "--threads",
                    "2",
                    "--encrypt",
                ],
                env,
            )
            shutil.rmtree(target, ignore_errors=True)
            rsecs = run([tool("rusty-db-restore"), "--input", out, "--data-dir", target, "--threads", "2"], env)
            os.unlink(out)
            for k, v in zip(key_runs, (pb, pr, bsecs, rsecs)):
                key_runs[k].append(mb / v)
            print(
                f"  run {i + 1}: pipeline {mb / pb:4.0f} MB/s, backup lz4+encryption x2 "
                f"{mb / bsecs:4.0f} MB/s; reverse pipeline {mb / pr:4.0f} MB/s, restore "
                f"{mb / rsecs:4.0f} MB/s"
            )
        med = {k: statistics.median(v) for k, v in key_runs.items()}
        print(
            f"full backup lz4+encryption, 2 threads (median of 3): {med['backup']:6.0f} MB/s; "
            f"vs plain pipeline {med['pipe_b']:.0f} MB/s: {med['backup'] / med['pipe_b']:.0%}"
        )
        print(
            f"restore (lz4+encryption, 2 threads, median of 3): {med['restore']:6.0f} MB/s; "
            f"vs reverse pipeline {med['pipe_r']:.0f} MB/s: {med['restore'] / med['pipe_r']:.0%}"
        )
        alone = commit_rate(srv.port, 4)
        stop = threading.Event()
        rates = []
        t = threading.Thread(target=lambda: rates.append(commit_rate(srv.port, 60, stop)))
        t.start()
        run(
            [
                tool("rusty-db-backup"),
                "--type",
                "full",
                "--output",
                os.path.join(tmp, "during"),
                "--port",
                str(srv.port),
                "--compress",
                "lz4",
                "--threads",
                "2",
                "--encrypt",
            ],
            env,
        )
        stop.set()
        t.join()
        print(f"commit rate alone {alone:.0f}/s, during a backup {rates[0]:.0f}/s ({rates[0] / alone:.0%})")
        srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
