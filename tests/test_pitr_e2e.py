"""Point-in-time recovery end to end: real server, real archive, the real tools.

A randomized workload records, after every commit, its txid, a time between it
and the next commit, the WAL position and a digest of all the data. Restoring
the pitr-base backup plus the archive to targets of every kind must give
exactly the recorded state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import time

import apsw
import pytest

from rustydb_client import client as rc
from tests.support.servers import restore_to_target, run_tool

TABLES = ("accounts", "notes")


def digest_rows(tables: dict[str, list]) -> str:
    h = hashlib.sha256()
    for name in TABLES:
        h.update(name.encode())
        for row in tables.get(name, []):
            h.update(repr(list(row)).encode())
    return h.hexdigest()


def live_digest(conn) -> str:
    return digest_rows({t: conn.execute(f"SELECT * FROM {t} ORDER BY id").rows for t in TABLES})


def restored_digest(data_dir: str) -> str:
    db = apsw.Connection(os.path.join(data_dir, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return digest_rows({t: db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES})
    finally:
        db.close()


def archive_status(srv) -> dict:
    return srv.archive_status()


def wait_archived(srv, timeout=30) -> None:
    srv.wait_archived(timeout)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def run_workload(conn, rnd, n, history, restore_points, prefix=""):
    """n random transactions; after each, record what a restore to it must give."""
    for i in range(n):
        conn.execute("BEGIN")
        txid = conn.execute("SELECT txid_current()").rows[0][0]
        for _ in range(rnd.randint(1, 4)):
            op = rnd.random()
            key = rnd.randint(1, 40)
            if op < 0.5:
                conn.execute(
                    f"INSERT OR REPLACE INTO accounts VALUES ({key}, {rnd.randint(-1000, 1000)}, '{prefix}{i}')"
                )
            elif op < 0.8:
                conn.execute(f"UPDATE accounts SET balance = balance + {rnd.randint(1, 9)} WHERE id % 7 = {key % 7}")
            elif op < 0.9:
                conn.execute(f"DELETE FROM accounts WHERE id = {key}")
            else:
                conn.execute(f"INSERT INTO notes(body) VALUES (x'{os.urandom(8).hex()}')")
        # enough bytes that the WAL spans several 64 kB segments
        conn.execute(f"INSERT INTO notes(body) VALUES (x'{os.urandom(400).hex()}')")
        conn.execute("COMMIT")
        lsn = conn.execute("SHOW wal_lsn").rows[0][0]
        history.append({"txid": txid, "time": time.time(), "lsn": lsn, "digest": live_digest(conn)})
        time.sleep(0.002)  # keep commit times of neighbours apart
        if i % 25 == 12:
            name = f"{prefix}rp{i}"
            conn.execute(f"CREATE RESTORE POINT '{name}'")
            restore_points.append((name, len(history) - 1))


def restore(tmp_path, base, archive, name, *target, check=True):
    out = tmp_path / name
    proc = restore_to_target(base, archive, out, *target, "--json")
    if check:
        assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.fixture
def pitr_setup(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\narchive_timeout = '1s'\n")
    srv = server_factory(name="primary", extra_args=["--config", str(conf)]).start()
    # the guide's commands
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);")
    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    conn = rc.connect(port=srv.port)
    rnd = random.Random(1234)
    history, points = [], []
    run_workload(conn, rnd, 120, history, points)
    wait_archived(srv)
    return srv, conn, base, archive, history, points


def test_pitr_to_every_kind_of_target(pitr_setup, tmp_path):
    srv, conn, base, archive, history, points = pitr_setup
    rnd = random.Random(99)
    picks = sorted(rnd.sample(range(1, len(history) - 1), 3))
    for k in picks:
        h = history[k]
        out, proc = restore(tmp_path, base, archive, f"time{k}", "--recovery-target-time", iso(h["time"]))
        assert restored_digest(out) == h["digest"], f"time target after commit {k}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["last_replayed_txid"] == h["txid"]
        out, _ = restore(tmp_path, base, archive, f"txid{k}", "--recovery-target-txid", str(h["txid"]))
        assert restored_digest(out) == h["digest"], f"txid target {h['txid']}"
        out, _ = restore(
            tmp_path,
            base,
            archive,
            f"txidx{k}",
            "--recovery-target-txid",
            str(h["txid"]),
            "--recovery-target-inclusive",
            "false",
        )
        assert restored_digest(out) == history[k - 1]["digest"], "exclusive txid target"
        out, _ = restore(
            tmp_path,
            base,
            archive,
            f"lsn{k}",
            "--recovery-target-lsn",
            h["lsn"],
            "--recovery-target-inclusive",
            "false",
        )
        assert restored_digest(out) == h["digest"], f"LSN target {h['lsn']}"
    for name, k in points[:2]:
        out, _ = restore(tmp_path, base, archive, f"name-{name}", "--recovery-target-name", name)
        assert restored_digest(out) == history[k]["digest"], f"restore point {name}"
    # the guide's form: local time without a zone
    k = picks[0]
    local = dt.datetime.fromtimestamp(history[k]["time"]).strftime("%Y-%m-%d %H:%M:%S.%f")
    out, _ = restore(tmp_path, base, archive, "localtime", "--recovery-target-time", local)
    assert restored_digest(out) == history[k]["digest"]


def test_pitr_refuses_impossible_targets(pitr_setup, tmp_path):
    srv, conn, base, archive, history, points = pitr_setup
    far = time.time() + 3600
    out, proc = restore(tmp_path, base, archive, "future", "--recovery-target-time", iso(far), check=False)
    assert proc.returncode == 1 and "not reached" in proc.stderr
    assert not out.exists()
    out, proc = restore(
        tmp_path, base, archive, "early", "--recovery-target-time", iso(time.time() - 86400), check=False
    )
    assert proc.returncode == 1 and "before the end of the base" in proc.stderr
    out, proc = restore(tmp_path, base, archive, "noname", "--recovery-target-name", "nope", check=False)
    assert proc.returncode == 1 and "not reached" in proc.stderr
    # a gap in the archive: remove a middle segment
    segs = sorted(n for n in os.listdir(archive) if n.endswith(".walz"))
    assert len(segs) >= 3
    victim = archive / segs[len(segs) // 2]
    saved = victim.read_bytes()
    victim.unlink()
    out, proc = restore(tmp_path, base, archive, "gap", "--recovery-target-time", iso(history[-1]["time"]), check=False)
    victim.write_bytes(saved)
    assert proc.returncode == 1 and "missing WAL segment" in proc.stderr
    assert segs[len(segs) // 2].split(".")[0] in proc.stderr


def test_second_pitr_follows_the_new_timeline(pitr_setup, tmp_path, server_factory):
    srv, conn, base, archive, history, points = pitr_setup
    k = len(history) // 2
    out, proc = restore(tmp_path, base, archive, "tl2", "--recovery-target-txid", str(history[k]["txid"]))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["timeline"] == 2
    conn.close()
    srv.stop()
    # the restored server archives on timeline 2 into the same archive
    srv2 = server_factory(name="tl2")
    srv2.data_dir = str(out)
    srv2.start()
    assert srv2.health()["wal"]["timeline"] == 2
    srv2.sql("ALTER SYSTEM SET archive_mode = on;")
    srv2.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    c2 = rc.connect(port=srv2.port)
    assert live_digest(c2) == history[k]["digest"]
    history2 = list(history[: k + 1])
    run_workload(c2, random.Random(7), 30, history2, [], prefix="tl2-")
    wait_archived(srv2)
    names = os.listdir(archive)
    assert any(n.startswith("00000002") for n in names) and "00000002.history" in names
    # timeline 1's segments were never overwritten: still readable and a restore
    # along timeline 1 still gives the old future
    out1, _ = restore(
        tmp_path,
        base,
        archive,
        "tl1-again",
        "--recovery-target-txid",
        str(history[-1]["txid"]),
        "--recovery-target-timeline",
        "1",
    )
    assert restored_digest(out1) == history[-1]["digest"]
    # a second PITR from the same base follows the history into timeline 2
    target = history2[-3]
    out3, proc = restore(
        tmp_path,
        base,
        archive,
        "tl3",
        "--recovery-target-txid",
        str(target["txid"]),
        "--recovery-target-timeline",
        "latest",
    )
    assert restored_digest(out3) == target["digest"]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["timeline"] >= 3
    c2.close()
    srv2.stop()


def test_find_the_bad_transaction_and_restore_to_just_before_it(pitr_setup, tmp_path):
    srv, conn, base, archive, history, points = pitr_setup
    before = live_digest(conn)
    conn.execute("DELETE FROM accounts")  # the mistake
    wait_archived(srv)
    proc = run_tool("rusty-db-restore", "--list-wal", "--archive-dir", str(archive), "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)["transactions"]
    deletes = [t for t in listing if any(c.startswith("accounts: -") and "+" not in c for c in t.get("changes", []))]
    bad = deletes[-1]
    assert bad["txid"] > history[-1]["txid"]
    text = run_tool("rusty-db-restore", "--list-wal", "--archive-dir", str(archive)).stdout
    assert f"txid {bad['txid']}" in text
    out, _ = restore(
        tmp_path,
        base,
        archive,
        "undo",
        "--recovery-target-txid",
        str(bad["txid"]),
        "--recovery-target-inclusive",
        "false",
    )
    assert restored_digest(out) == before


def test_a_plain_restore_continues_on_a_new_timeline(pitr_setup, tmp_path, server_factory):
    srv, conn, base, archive, history, points = pitr_setup
    before = {n: (archive / n).read_bytes() for n in os.listdir(archive)}
    out = tmp_path / "plain"
    proc = run_tool("rusty-db-restore", "--input", str(base), "--data-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    conn.close()
    srv.stop()
    srv2 = server_factory(name="plain")
    srv2.data_dir = str(out)
    srv2.start()
    assert srv2.health()["wal"]["timeline"] == 2
    srv2.sql("ALTER SYSTEM SET archive_mode = on;")
    srv2.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv2.sql("INSERT INTO notes(body) VALUES (x'01');")
    wait_archived(srv2)
    status = archive_status(srv2)
    assert status["last_failure_reason"] is None, status
    # the old timeline's archived segments are untouched, the new ones sit beside them
    for name, data in before.items():
        assert (archive / name).read_bytes() == data
    assert "00000002.history" in os.listdir(archive)
    srv2.stop()


def test_pitr_from_an_encrypted_archive(server_factory, tmp_path, monkeypatch):
    from rustydb_server.keys import create_key_file

    key = tmp_path / "backup.key"
    create_key_file(str(key))
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="enc", extra_args=["--config", str(conf)]).start()
    for stmt in (
        "ALTER SYSTEM SET archive_mode = on;",
        f"ALTER SYSTEM SET archive_dest = '{archive}';",
        "ALTER SYSTEM SET archive_encryption = on;",
        f"ALTER SYSTEM SET backup_key_file = '{key}';",
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);",
    ):
        srv.sql(stmt)
    monkeypatch.setenv("RUSTYDB_BACKUP_KEY_FILE", str(key))
    base = tmp_path / "base.backup"
    proc = run_tool(
        "rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--encrypt", "--port", str(srv.port)
    )
    assert proc.returncode == 0, proc.stderr
    conn = rc.connect(port=srv.port)
    history = []
    run_workload(conn, random.Random(5), 40, history, [])
    wait_archived(srv)
    # archived segments are encrypted: without the key they cannot be read
    with open(next(archive.glob("*.walz")), "rb") as f:
        from rustydb_server.container.reader import BackupReader

        assert BackupReader(f).header.encrypted
    target = history[25]
    out, _ = restore(tmp_path, base, archive, "restored-enc", "--recovery-target-txid", str(target["txid"]))
    assert restored_digest(out) == target["digest"]
    # rusty-db-backup --query at that point reads the encrypted base and archive in place: the same rows.
    sql = "SELECT * FROM accounts ORDER BY id"
    proc = run_tool(
        "rusty-db-backup", "--query", str(base), sql, "--archive-dir", str(archive),
        "--recovery-target-txid", str(target["txid"]), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    db = apsw.Connection(os.path.join(out, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert [tuple(r) for r in answer["rows"]] == db.execute(sql).fetchall() and answer["in_place"]
    finally:
        db.close()
    monkeypatch.delenv("RUSTYDB_BACKUP_KEY_FILE")
    out, proc = restore(tmp_path, base, archive, "nokey", "--recovery-target-txid", str(target["txid"]), check=False)
    assert proc.returncode == 1 and "key" in proc.stderr.lower()
    conn.close()
