"""rusty-db-waldump and rusty-db-restore --dry-run / --as-of, end to end.

A real server with WAL archiving runs a seeded workload whose transactions
the test records (txid, database, table, rows inserted/updated/deleted, the
row values); the real tools are then checked against that record: waldump
over the running server's own WAL and over the archive, each filter, the
--changes SQL, the --stats sums; a restore's --dry-run plan against what the
real restore then does; a missing segment and a damaged chunk failing the
dry run.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from rustydb_client import client as rc
from rustydb_server.tools import waldump_main
from tests.support.backups import flip_byte_in_chunk
from tests.support.servers import ServerProcess, run_tool

PAD = "p" * 4000  # spreads the workload over several 64 KiB segments


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("waldump")
    archive = root / "archive"
    archive.mkdir()
    conf = root / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\narchive_timeout = '1s'\n")
    srv = ServerProcess(str(root / "data"), extra_args=["--config", str(conf)]).start()
    try:
        srv.sql("ALTER SYSTEM SET archive_mode = on;")
        srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
        srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER);")
        srv.sql("CREATE DATABASE shop;")
        srv.sql("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);", "--database", "shop")
        base = root / "base.backup"
        run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True)
        model = _run_workload(srv)
        srv.wait_archived()
        yield {"srv": srv, "root": root, "archive": archive, "base": base, "model": model}
    finally:
        srv.stop()


def _run_workload(srv) -> list[dict]:
    """Seeded random transactions; each recorded as the test expects the WAL to show it."""
    rnd = random.Random(1919)
    conns = {"rustydb": rc.connect(port=srv.port), "shop": rc.connect(port=srv.port, database="shop")}
    rows = {"accounts": {}, "orders": {}}
    model = []
    next_id = 1
    for i in range(40):
        table = "accounts" if i % 3 else "orders"
        db = "rustydb" if table == "accounts" else "shop"
        conn = conns[db]
        ops = ["insert"] + (["update", "delete"] if len(rows[table]) > 2 else [])
        op = ops[i % len(ops)] if i < 6 else rnd.choice(ops)
        conn.execute("BEGIN")
        txid = conn.execute("SELECT txid_current()").rows[0][0]
        changes = []
        if op == "insert":
            for _ in range(rnd.randint(1, 3)):
                name, amount = f"{table[:-1]} {next_id} {PAD}", rnd.randint(1, 500)
                conn.execute(f"INSERT INTO {table} VALUES ({next_id}, '{name}', {amount})")
                rows[table][next_id] = (next_id, name, amount)
                changes.append(("insert", None, rows[table][next_id]))
                next_id += 1
        else:
            for key in rnd.sample(sorted(rows[table]), 2):
                old = rows[table][key]
                col = "balance" if table == "accounts" else "qty"
                if op == "update":
                    new = (key, old[1], old[2] + 7)
                    conn.execute(f"UPDATE {table} SET {col} = {new[2]} WHERE id = {key}")
                    rows[table][key] = new
                    changes.append(("update", old, new))
                else:
                    conn.execute(f"DELETE FROM {table} WHERE id = {key}")
                    del rows[table][key]
                    changes.append(("delete", old, None))
        conn.execute("COMMIT")
        model.append({"txid": txid, "database": db, "table": table, "op": op, "changes": changes})
    for conn in conns.values():
        conn.close()
    return model


def waldump(*args: str, ok: bool = True):
    proc = run_tool("rusty-db-waldump", *args)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def listing(*args: str) -> list[dict]:
    doc = json.loads(waldump(*args, "--json").stdout)  # exactly one document
    assert doc["ok"] is True and doc["count"] == len(doc["transactions"])
    return doc["transactions"]


def _ours(items, model):
    txids = {m["txid"] for m in model}
    return [i for i in items if i["txid"] in txids]


def test_listing_of_the_running_servers_wal_matches_the_workload(workload):
    srv, model = workload["srv"], workload["model"]
    items = _ours(listing("--data-dir", srv.data_dir), model)  # the server is running
    assert [i["txid"] for i in items] == [m["txid"] for m in model]
    for item, m in zip(items, model, strict=True):
        assert item["database"] == m["database"]
        assert item["timeline"] == 1
        counts = {"insert": 0, "update": 0, "delete": 0}
        counts[m["op"]] = len(m["changes"])
        assert item["tables"] == {m["table"]: counts}
    # the archive holds the same transactions
    archived = _ours(listing("--archive-dir", str(workload["archive"])), model)
    assert [(i["txid"], i["lsn"], i["tables"]) for i in archived] == [(i["txid"], i["lsn"], i["tables"]) for i in items]
    # the text listing names each transaction on one line
    text = waldump("--data-dir", srv.data_dir, "--database", "shop").stdout
    for m in model:
        assert (f"txid {m['txid']} " in text) == (m["database"] == "shop")


def test_filters_against_the_workload(workload, capsys):
    """Each filter of the real command line (its main(), in this process: a process
    per filter would cost most of this test's time) against the workload's record."""
    srv, model = workload["srv"], workload["model"]
    src = ("--data-dir", srv.data_dir)

    def txids(*args):
        assert waldump_main.main([*src, *args, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] is True
        return [i["txid"] for i in _ours(doc["transactions"], model)]

    assert txids("--table", "orders") == [m["txid"] for m in model if m["table"] == "orders"]
    assert txids("--database", "rustydb") == [m["txid"] for m in model if m["database"] == "rustydb"]
    for op in ("insert", "update", "delete"):
        assert txids("--operation", op) == [m["txid"] for m in model if m["op"] == op], op
    deletes_of_accounts = [m["txid"] for m in model if m["op"] == "delete" and m["table"] == "accounts"]
    assert txids("--table", "accounts", "--operation", "delete") == deletes_of_accounts
    lo, hi = model[5]["txid"], model[20]["txid"]
    assert txids("--from-txid", str(lo), "--to-txid", str(hi)) == [m["txid"] for m in model[5:21]]
    assert txids("--from-txid", str(lo), "--as-of", f"txid:{hi}") == [m["txid"] for m in model[5:21]]
    assert waldump_main.main([*src, "--json"]) == 0
    every = _ours(json.loads(capsys.readouterr().out)["transactions"], model)
    by_lsn = txids("--from-lsn", every[5]["lsn"], "--to-lsn", every[20]["lsn"])
    assert by_lsn == [m["txid"] for m in model[5:21]]
    assert txids("--from-lsn", every[5]["lsn"], "--as-of", f"lsn:{every[20]['lsn']}") == by_lsn
    t0, t1 = every[5]["commit_time"], every[20]["commit_time"]
    assert txids("--from-time", t0, "--to-time", t1) == [m["txid"] for m in model[5:21]]
    # a bad filter is a usage error
    assert waldump(*src, "--as-of", "txid:many", ok=False).returncode == 2
    assert waldump(*src, "--from-lsn", "nowhere", ok=False).returncode == 2


def _sql_literal(v):
    return str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"


def test_changes_are_shown_as_sql_with_before_and_after_values(workload):
    srv, model = workload["srv"], workload["model"]
    cols = {"accounts": ("id", "owner", "balance"), "orders": ("id", "item", "qty")}
    for op in ("insert", "update", "delete"):
        m = next(m for m in model if m["op"] == op)
        out = waldump(
            "--data-dir", srv.data_dir, "--changes", "--from-txid", str(m["txid"]), "--to-txid", str(m["txid"])
        )
        lines = [line.strip() for line in out.stdout.splitlines()[1:]]
        want = []
        t, c = m["table"], cols[m["table"]]
        for kind, old, new in m["changes"]:
            if kind == "insert":
                want.append(f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join(map(_sql_literal, new))});")
            elif kind == "update":
                want.append(f"UPDATE {t} SET {c[2]} = {new[2]} WHERE id = {old[0]};  -- {c[2]}: {old[2]} -> {new[2]}")
            else:
                was = ", ".join(f"{name}={_sql_literal(v)}" for name, v in zip(c, old, strict=True))
                want.append(f"DELETE FROM {t} WHERE id = {old[0]};  -- was ({was})")
        assert sorted(lines) == sorted(want), op
    # JSON: the values by column name
    m = next(m for m in model if m["op"] == "update")
    doc = listing("--data-dir", srv.data_dir, "--changes", "--from-txid", str(m["txid"]), "--to-txid", str(m["txid"]))
    col = cols[m["table"]][2]
    got = sorted((c["key"]["id"], c["old"][col], c["new"][col]) for c in doc[0]["changes"])
    assert got == sorted((old[0], old[2], new[2]) for _k, old, new in m["changes"])
    assert all(c["columns_known"] for c in doc[0]["changes"])


def test_changes_without_any_schema_show_columns_by_position(workload, tmp_path):
    """The later segments of a WAL alone (no CREATE TABLE in them, no data directory):
    the rows are still shown, their columns by position and marked so."""
    srv, model = workload["srv"], workload["model"]
    copy = tmp_path / "wal"
    shutil.copytree(os.path.join(srv.data_dir, "wal"), copy)
    segments = sorted(n for n in os.listdir(copy) if len(n) == 24)
    for name in segments[:-2]:
        os.remove(copy / name)
    kept = [i["txid"] for i in listing("--wal-dir", str(copy))]
    m = next(m for m in model if m["op"] == "update" and m["txid"] in kept)
    out = waldump("--wal-dir", str(copy), "--changes", "--from-txid", str(m["txid"]), "--to-txid", str(m["txid"]))
    lines = [line.strip() for line in out.stdout.splitlines()[1:]]
    assert len(lines) == len(m["changes"])
    for line in lines:
        assert line.startswith(f'UPDATE {m["table"]} SET "$3" = ') and 'WHERE "$1" = ' in line
        assert "columns by position: their names are unknown" in line


def test_stats_sum_to_the_workload(workload):
    srv, model = workload["srv"], workload["model"]
    lo = str(model[0]["txid"])
    doc = json.loads(waldump("--data-dir", srv.data_dir, "--stats", "--from-txid", lo, "--json").stdout)
    want: dict = {}
    for m in model:
        t = want.setdefault((m["database"], m["table"]), {"transactions": 0, "insert": 0, "update": 0, "delete": 0})
        t["transactions"] += 1
        t[m["op"]] += len(m["changes"])
    got = {
        (t["database"], t["table"]): {k: t[k] for k in ("transactions", "insert", "update", "delete")}
        for t in doc["tables"]
    }
    assert got == want
    assert doc["total"]["transactions"] == len(model)
    assert sum(mi["transactions"] for mi in doc["minutes"]) == len(model)
    assert sum(mi["rows"] for mi in doc["minutes"]) == sum(len(m["changes"]) for m in model)


def _restore(*args: str):
    return run_tool("rusty-db-restore", *args, "--json", timeout=120)


def test_dry_run_plans_what_the_restore_then_does(workload, tmp_path):
    model, base, archive = workload["model"], str(workload["base"]), str(workload["archive"])
    target = model[30]["txid"]
    args = (
        "--input",
        base,
        "--archive-dir",
        archive,
        "--data-dir",
        str(tmp_path / "restored"),
        "--as-of",
        f"txid:{target}",
    )
    dry = _restore(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["ok"] and plan["dry_run"] and plan["problems"] == []
    assert [b["path"] for b in plan["backups"]] == [os.path.abspath(base)] or [b["path"] for b in plan["backups"]] == [
        base
    ]
    assert plan["backups"][0]["verified"] and plan["backups"][0]["chunks"] > 0
    assert not os.path.exists(tmp_path / "restored"), "a dry run writes nothing"
    assert plan["last_replayed_txid"] == target
    assert plan["segments_read"] > 1
    assert plan["estimated_seconds"] > 0 and "measured" in plan["estimate_basis"]
    real = _restore(*args)
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["records_replayed"] == plan["records_replayed"]
    assert done["segments_read"] == plan["segments_read"]
    assert done["last_replayed_txid"] == plan["last_replayed_txid"]
    # the transactions replayed are the workload's up to the target (and the archive's
    # transactions between the base and the workload, which waldump lists too)
    since_base = [
        i
        for i in listing("--archive-dir", archive, "--to-txid", str(target))
        if i["lsn"] >= plan["timeline_path"][0]["from_lsn"]
    ]
    assert plan["transactions"] == len(since_base)
    # the segments the plan lists, in order, are the archive's files
    names = [s["name"] for s in plan["segments"]]
    assert names == sorted(names)
    assert all(os.path.exists(s["path"]) for s in plan["segments"])


def test_dry_run_fails_naming_a_missing_segment_or_a_damaged_chunk(workload, tmp_path):
    model, base, archive = workload["model"], str(workload["base"]), str(workload["archive"])
    target = f"txid:{model[-1]['txid']}"
    args = ("--input", base, "--archive-dir", archive, "--data-dir", str(tmp_path / "r"), "--as-of", target)
    plan = json.loads(_restore(*args, "--dry-run").stdout)
    middle = plan["segments"][len(plan["segments"]) // 2]
    # a copy of the archive without one segment in the middle
    gap = tmp_path / "archive-gap"
    shutil.copytree(archive, gap)
    os.remove(gap / os.path.basename(middle["path"]))
    proc = _restore(
        "--input", base, "--archive-dir", str(gap), "--data-dir", str(tmp_path / "r"), "--as-of", target, "--dry-run"
    )
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and middle["name"] in doc["error"]
    text = run_tool(
        "rusty-db-restore",
        "--input",
        base,
        "--archive-dir",
        str(gap),
        "--data-dir",
        str(tmp_path / "r"),
        "--as-of",
        target,
        "--dry-run",
    )
    assert text.returncode == 1 and middle["name"] in text.stderr and "Traceback" not in text.stderr
    # a damaged chunk in the base backup
    bad = tmp_path / "bad.backup"
    shutil.copy(base, bad)
    flip_byte_in_chunk(str(bad))
    proc = _restore(
        "--input", str(bad), "--archive-dir", archive, "--data-dir", str(tmp_path / "r"), "--as-of", target, "--dry-run"
    )
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and "does not verify" in doc["error"] and str(bad) in doc["error"]
    assert not os.path.exists(tmp_path / "r")


def test_dry_run_fails_for_a_target_not_reached_or_a_running_servers_directory(workload, tmp_path):
    srv, base, archive = workload["srv"], str(workload["base"]), str(workload["archive"])
    far = _restore(
        "--input",
        base,
        "--archive-dir",
        archive,
        "--data-dir",
        str(tmp_path / "r"),
        "--as-of",
        "txid:999999",
        "--dry-run",
    )
    assert far.returncode == 1
    assert "recovery target txid 999999 was not reached" in json.loads(far.stdout)["error"]
    busy = _restore(
        "--input", base, "--archive-dir", archive, "--data-dir", srv.data_dir, "--as-of", "txid:10", "--dry-run"
    )
    assert busy.returncode == 1
    assert "in use by a running server" in json.loads(busy.stdout)["error"]


def test_table_restore_as_of_a_txid(workload, tmp_path):
    model, base, archive = workload["model"], str(workload["base"]), str(workload["archive"])
    point = next(i for i, m in enumerate(model) if i > 10 and m["table"] == "orders")
    rows: dict = {}
    for m in model[: point + 1]:
        if m["table"] == "orders":
            for kind, old, new in m["changes"]:
                if kind == "delete":
                    rows.pop(old[0])
                else:
                    rows[new[0]] = new
    out = tmp_path / "orders"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        base,
        "--archive-dir",
        archive,
        "--table",
        "orders",
        "--database",
        "shop",
        "--data-dir",
        str(out),
        "--as-of",
        f"txid:{model[point]['txid']}",
        "--json",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == len(rows)


def test_reading_the_wal_while_the_server_writes_it(workload):
    """waldump over the live WAL while transactions commit (and segments fill and
    switch): every run succeeds, and lists committed transactions in order."""
    import threading

    srv = workload["srv"]
    done = threading.Event()
    committed: list[int] = []

    def writer():
        conn = rc.connect(port=srv.port)
        try:
            for i in range(60):
                conn.execute("BEGIN")
                committed.append(conn.execute("SELECT txid_current()").rows[0][0])
                conn.execute(f"INSERT INTO accounts VALUES ({100000 + i}, 'live {i} {PAD}', {i})")
                conn.execute("COMMIT")
        finally:
            conn.close()
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    runs = 0
    try:
        while not done.is_set() or runs < 2:
            before = set(committed[:-1])  # the last one may not have committed yet
            txids = [i["txid"] for i in listing("--data-dir", srv.data_dir, "--table", "accounts")]
            assert txids == sorted(txids)
            assert before <= set(txids), "a committed transaction is missing from the listing"
            runs += 1
    finally:
        thread.join(60)
    final = [i["txid"] for i in listing("--data-dir", srv.data_dir)]
    assert set(committed) <= set(final)
