"""A full backup is consistent at one LSN while clients keep writing.

Two clients move money between accounts in two databases (each transfer keeps
the total of its database constant) while rusty-db-backup runs; the restored
data directory starts at once and every total is unchanged.
"""

from __future__ import annotations

import json
import random
import threading
import time

from rustydb_client import client as rc
from tests.support.servers import ServerProcess, run_tool

ACCOUNTS = 200
START = 1000


def transfers(port, database, stop, done, errors):
    rnd = random.Random(hash(database))
    try:
        conn = rc.connect(port=port, database=database)
        while not stop.is_set():
            a, b = rnd.sample(range(1, ACCOUNTS + 1), 2)
            amount = rnd.randint(1, 50)
            try:
                conn.execute("BEGIN")
                conn.execute(f"UPDATE accounts SET balance = balance - {amount} WHERE id = {a}")
                conn.execute(f"UPDATE accounts SET balance = balance + {amount} WHERE id = {b}")
                conn.execute("COMMIT")
                done.append(1)
            except rc.ServerError as e:
                errors.append(str(e))
                conn.execute("ROLLBACK")
        conn.close()
    except Exception as e:  # surfaced by the test
        errors.append(repr(e))


def test_backup_while_money_moves_restores_consistent_totals(server_factory, tmp_path):
    srv = server_factory().start()
    for db in ("rustydb", "ledger"):
        if db != "rustydb":
            srv.sql(f"CREATE DATABASE {db};")
        srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);", "--database", db)
        srv.sql(
            f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < "
            f"{ACCOUNTS}) INSERT INTO accounts SELECT i, {START} FROM c;",
            "--database",
            db,
        )
        # some bulk so the backup takes a moment
        srv.sql("CREATE TABLE filler(id INTEGER PRIMARY KEY, pad BLOB);", "--database", db)
        srv.sql(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 20000) "
            "INSERT INTO filler SELECT i, randomblob(400) FROM c;",
            "--database",
            db,
        )
    stop = threading.Event()
    done, errors = [], []
    workers = [
        threading.Thread(target=transfers, args=(srv.port, db, stop, done, errors)) for db in ("rustydb", "ledger")
    ]
    for w in workers:
        w.start()
    while len(done) < 20 and not errors:
        time.sleep(0.01)
    before = len(done)
    backup = tmp_path / "full.backup"
    proc = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(backup),
        "--port",
        str(srv.port),
        "--compress",
        "zstd",
        "--threads",
        "2",
        "--verify",
        "--json",
    )
    during = len(done) - before
    stop.set()
    for w in workers:
        w.join(30)
    assert proc.returncode == 0, proc.stderr
    assert not errors, errors[:3]
    assert during > 0, "no transfer committed while the backup ran"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["verified"] is True
    # restore and start a second server on it
    restored = tmp_path / "restored"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(backup),
        "--data-dir",
        str(restored),
        "--verify-encryption",
        "--integrity-check",
        "--threads",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    srv2 = ServerProcess(str(restored)).start()
    try:
        for db in ("rustydb", "ledger"):
            out = (
                srv2.sql("SELECT sum(balance), count(*) FROM accounts;", "--database", db, "--csv")
                .stdout.strip()
                .splitlines()[-1]
            )
            assert out == f"{ACCOUNTS * START},{ACCOUNTS}", (db, out)
        # the live server's totals are unchanged too
        for db in ("rustydb", "ledger"):
            out = (
                srv.sql("SELECT sum(balance) FROM accounts;", "--database", db, "--csv").stdout.strip().splitlines()[-1]
            )
            assert out == str(ACCOUNTS * START)
        srv2.sql("INSERT INTO accounts VALUES (100000, 0);")  # it takes writes
    finally:
        srv2.stop()
    srv.stop()
