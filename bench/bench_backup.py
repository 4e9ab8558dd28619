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
import concurrent.futures as cf
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import apsw
import lz4.block

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from helpers import ServerProcess, tool  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from rustydb_server import fileops  # noqa: E402

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray").split()


def build_rows(path: str, size_mb: int) -> None:
    db = apsw.Connection(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS customers(id INTEGER PRIMARY KEY, name TEXT, "
               "email TEXT, city TEXT, balance REAL, created TEXT, notes TEXT)")
    rnd = random.Random(42)
    target = size_mb * 1024 * 1024
    i = 0
    while True:
        with db:
            rows = []
            for _ in range(20000):
                i += 1
                first, last = rnd.choice(WORDS), rnd.choice(WORDS)
                rows.append((i, f"{first.title()} {last.title()}", f"{first}.{last}{i}@example.com",
                             rnd.choice(WORDS).title() + "ville", round(rnd.uniform(-1e4, 1e5), 2),
                             f"2025-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                             " ".join(rnd.choices(WORDS, k=rnd.randint(3, 18)))))
            db.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?)", rows)
        pages = db.execute("PRAGMA page_count").fetchall()[0][0] * 4096
        if pages >= target:
            break
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def pipeline(path: str, out: str, threads: int = 2, chunk: int = 1 << 20,
             write_behind: bool = True) -> tuple[float, float]:
    """Read + lz4 on N threads + write + fsync, and the reverse: seconds each.

    With ``write_behind`` the writes start writeback every 8 MiB, as the tools
    do (FileOps.start_writeback); without, the kernel keeps everything dirty
    until the final fsync.
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

    settle()
    t0 = time.perf_counter()
    sizes = []

    def compressed(ex, f):
        for comp in ex.map(lambda b: lz4.block.compress(b), iter(lambda: f.read(chunk), b"")):
            sizes.append(len(comp))
            yield comp

    with open(path, "rb") as f, cf.ThreadPoolExecutor(threads) as ex:
        write_out(out, compressed(ex, f))
    backup_s = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    with open(out, "rb") as f, cf.ThreadPoolExecutor(threads) as ex:
        write_out(out + ".back", ex.map(lambda b: lz4.block.decompress(b), (f.read(n) for n in sizes)))
    restore_s = time.perf_counter() - t0
    os.unlink(out)
    os.unlink(out + ".back")
    return backup_s, restore_s


def commit_rate(port: int, seconds: float, stop: threading.Event | None = None) -> float:
    conn = rc.connect("127.0.0.1", port)
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
        print(f"plain pipeline, writeback at fsync only: backup {mb / nb_s:6.0f} MB/s, "
              f"reverse {mb / nr_s:6.0f} MB/s")
        b_s, r_s = pipeline(db_path, os.path.join(tmp, "pipe.lz4"))
        print(f"plain pipeline (read, lz4 x2 threads, write behind, fsync): backup {mb / b_s:6.0f} MB/s, "
              f"reverse {mb / r_s:6.0f} MB/s   <- the ratios below use this one")
        srv.start()
        key = os.path.join(tmp, "key")
        run([tool("rusty-db-backup"), "--create-key-file", key])
        env = dict(os.environ, RUSTYDB_BACKUP_KEY_FILE=key)
        results = {}
        for codec in ("lz4", "zstd"):
            for threads in (1, 2):
                for enc in (False, True):
                    out = os.path.join(tmp, f"b-{codec}-{threads}-{enc}.backup")
                    cmd = [tool("rusty-db-backup"), "--type", "full", "--output", out,
                           "--port", str(srv.port), "--compress", codec, "--threads", str(threads)]
                    if enc:
                        cmd.append("--encrypt")
                    secs = run(cmd, env)
                    results[(codec, threads, enc)] = (secs, out)
                    size = os.path.getsize(out)
                    print(f"full backup {codec:4s} threads={threads} encrypt={'yes' if enc else 'no ':3s}:"
                          f" {mb / secs:6.0f} MB/s  ({size / 1e6:.0f} MB file)")
        secs, best = results[("lz4", 2, True)]
        print(f"  lz4+encryption, 2 threads vs plain pipeline: {(mb / secs) / (mb / b_s):.0%}")
        target = os.path.join(tmp, "restored")
        rsecs = run([tool("rusty-db-restore"), "--input", best, "--data-dir", target,
                     "--threads", "2"], env)
        print(f"restore (lz4+encryption, 2 threads): {mb / rsecs:6.0f} MB/s; vs reverse pipeline "
              f"{(mb / rsecs) / (mb / r_s):.0%}")
        alone = commit_rate(srv.port, 4)
        stop = threading.Event()
        rates = []
        t = threading.Thread(target=lambda: rates.append(commit_rate(srv.port, 60, stop)))
        t.start()
        run([tool("rusty-db-backup"), "--type", "full", "--output", os.path.join(tmp, "during"),
             "--port", str(srv.port), "--compress", "lz4", "--threads", "2", "--encrypt"], env)
        stop.set()
        t.join()
        print(f"commit rate alone {alone:.0f}/s, during a backup {rates[0]:.0f}/s "
              f"({rates[0] / alone:.0%})")
        srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
