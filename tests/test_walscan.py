"""forensics/walscan.py: the transactions of a WAL directory and of an archive,
checked against a model of the workload kept by the test."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from rustydb_server.forensics import walscan
from tests.support.backups import open_engine, run_sql

N_TX = 120
PAD = "x" * 1500  # makes the workload span several 64 KiB segments


def _workload(engine, seed: int = 19):
    """Random inserts, updates and deletes on two tables of two databases; returns the
    model: one dict per transaction (database, counts per table), in commit order."""
    rnd = random.Random(seed)
    run_sql(engine, "rustydb", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    engine.create_database("shop")
    run_sql(engine, "shop", "CREATE TABLE orders(id INTEGER PRIMARY KEY, item INTEGER, note TEXT)")
    model = []
    alive = {"items": set(), "orders": set()}
    next_id = {"items": 1, "orders": 1}
    for _ in range(N_TX):
        table = rnd.choice(["items", "orders"])
        db = "rustydb" if table == "items" else "shop"
        ops = ["insert"] + (["update", "delete"] if alive[table] else [])
        op = rnd.choice(ops)
        if op == "insert":
            n = rnd.randint(1, 4)
            ids = list(range(next_id[table], next_id[table] + n))
            next_id[table] += n
            if table == "items":  # (id, name, qty)
                values = ", ".join(f"({i}, 'n{i} {PAD}', {i * 2})" for i in ids)
            else:  # (id, item, note)
                values = ", ".join(f"({i}, {i * 2}, 'n{i} {PAD}')" for i in ids)
            run_sql(engine, db, f"INSERT INTO {table} VALUES {values}")
            alive[table].update(ids)
        else:
            ids = rnd.sample(sorted(alive[table]), min(len(alive[table]), rnd.randint(1, 3)))
            where = ", ".join(map(str, ids))
            if op == "update":
                col = "qty" if table == "items" else "item"
                run_sql(engine, db, f"UPDATE {table} SET {col} = {col} + 1 WHERE id IN ({where})")
            else:
                run_sql(engine, db, f"DELETE FROM {table} WHERE id IN ({where})")
                alive[table].difference_update(ids)
        model.append({"database": db, "counts": {table: {op: len(ids)}}})
    return model


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    root = tmp_path_factory.mktemp("walscan")
    engine = open_engine(str(root / "data"))
    try:
        model = _workload(engine)
        engine.switch_wal()
        archive = root / "archive"
        archive.mkdir()
        c = engine.control
        for name in sorted(n.removesuffix(".ready") for n in os.listdir(engine.datadir.join(dd.ARCHIVE_STATUS_DIR))):
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                str(archive / sf.archive_name(name)),
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="lz4",
            )
        wal_dir = str(root / "wal")  # as it was: the shutdown checkpoint removes segments
        shutil.copytree(engine.datadir.wal_dir, wal_dir)
    finally:
        engine.close()
    return wal_dir, str(archive), model


def _dml(txs):
    """The workload's transactions (the CREATE TABLEs before it are DDL only)."""
    return [t for t in txs if t.counts]


def _as_model(tx):
    return {
        "database": tx.database,
        "counts": {t: {op: n for op, n in c.as_dict().items() if n} for t, c in tx.counts.items()},
    }


@pytest.mark.parametrize("where", ["wal_dir", "archive"])
def test_every_transaction_is_read_with_its_counts(wal, where):
    wal_dir, archive, model = wal
    entries = walscan.wal_dir_entries(wal_dir) if where == "wal_dir" else walscan.archive_entries(archive)
    txs = list(walscan.transactions(entries))
    assert len({t.lsn // 65536 for t in txs}) > 1, "the workload must span several segments"
    dml = _dml(txs)
    assert [_as_model(t) for t in dml] == model
    assert [t.txid for t in txs] == sorted(t.txid for t in txs)
    assert all(t.timeline == 1 for t in txs)
    assert [t.lsn for t in txs] == sorted(t.lsn for t in txs)


def test_filters_match_the_model(wal):
    wal_dir, _archive, model = wal
    txs = _dml(list(walscan.transactions(walscan.wal_dir_entries(wal_dir))))
    pairs = list(zip(txs, model, strict=True))

    def picked(flt):
        found = walscan.transactions(walscan.wal_dir_entries(wal_dir, to_lsn=flt.to_lsn), flt)
        return [t.txid for t in _dml(found)]

    # txid, LSN and time ranges: inclusive on both ends
    lo, hi = txs[10], txs[30]
    want = [t.txid for t in txs[10:31]]
    assert picked(walscan.Filter(from_txid=lo.txid, to_txid=hi.txid)) == want
    assert picked(walscan.Filter(from_lsn=lo.lsn, to_lsn=hi.lsn)) == want
    times = walscan.Filter(from_time_us=lo.commit_time_us, to_time_us=hi.commit_time_us)
    assert [t for t in picked(times) if t in want] == want
    # database, table, operation: against the model
    assert picked(walscan.Filter(database="shop")) == [t.txid for t, m in pairs if m["database"] == "shop"]
    assert picked(walscan.Filter(tables=frozenset({"items"}))) == [t.txid for t, m in pairs if "items" in m["counts"]]
    for op in walscan.OPERATIONS:
        want_op = [t.txid for t, m in pairs if any(op in c for c in m["counts"].values())]
        assert want_op, op
        assert picked(walscan.Filter(operations=frozenset({op}))) == want_op
    both = walscan.Filter(tables=frozenset({"orders"}), operations=frozenset({"delete"}))
    assert picked(both) == [t.txid for t, m in pairs if "delete" in m["counts"].get("orders", {})]


def test_find_transaction_and_its_rows(wal):
    wal_dir, _archive, _model = wal
    txs = _dml(list(walscan.transactions(walscan.wal_dir_entries(wal_dir))))
    upd = next(t for t in txs if any(c.update for c in t.counts.values()))
    found = walscan.find_transaction(walscan.wal_dir_entries(wal_dir), upd.txid)
    assert found == upd
    changes = list(found.row_changes())
    assert changes and all(c.op == "update" for c in changes)
    for c in changes:
        assert c.pk_columns == frozenset({0})
        assert c.changed_columns() == [2 if c.table == "items" else 1]
        assert c.new[c.changed_columns()[0]] == c.old[c.changed_columns()[0]] + 1
        assert c.new[1 if c.table == "items" else 2] is walscan.UNCHANGED


def test_a_torn_tail_ends_the_scan_and_damage_in_the_middle_is_an_error(wal, tmp_path):
    wal_dir, _archive, _model = wal
    copy = tmp_path / "wal"
    shutil.copytree(wal_dir, copy)
    names = [n for _tl, _s, n in walscan.walseg.list_segments(str(copy))]
    all_txs = list(walscan.transactions(walscan.wal_dir_entries(str(copy))))
    # removing a middle segment is a gap, named
    os.remove(copy / names[1])
    with pytest.raises(walscan.WalScanError, match=names[1]):
        list(walscan.transactions(walscan.wal_dir_entries(str(copy))))
    # the last record torn (zeroed from its middle on, as a crash leaves it): the
    # records before it, no error
    shutil.copy(os.path.join(wal_dir, names[1]), copy / names[1])
    torn = all_txs[-1]
    size = 65536
    last = copy / walscan.walseg.segment_name(1, torn.lsn // size)
    cut = (torn.lsn + min(torn.end_lsn, (torn.lsn // size + 1) * size)) // 2 % size
    data = bytearray(last.read_bytes())
    data[cut:] = bytes(len(data) - cut)
    last.write_bytes(bytes(data))
    assert list(walscan.transactions(walscan.wal_dir_entries(str(copy)))) == all_txs[:-1]


def _archive_of(root, n_tx: int, *, key=None) -> str:
    """An archive of ``n_tx`` single-row transactions (a fresh engine each time)."""
    engine = open_engine(str(root / "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(n_tx):
            run_sql(engine, "rustydb", f"INSERT INTO t VALUES ({i}, '{PAD * 5}')")
        engine.switch_wal()
        archive = root / "archive"
        archive.mkdir()
        c = engine.control
        for name in sorted(n.removesuffix(".ready") for n in os.listdir(engine.datadir.join(dd.ARCHIVE_STATUS_DIR))):
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                str(archive / sf.archive_name(name)),
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="lz4",
                key=key,
            )
    finally:
        engine.close()
    return str(archive)


def test_memory_stays_bounded_as_the_archive_grows(tmp_path):
    """Scanning 4x the transactions (and segments) must not take 4x the memory: the
    scan holds a few segments and one transaction, whatever the archive's size."""
    import tracemalloc

    from rustydb_server.forensics.stats import WalStats

    def peak(n_tx: int) -> tuple[int, int]:
        root = tmp_path / f"n{n_tx}"
        root.mkdir()
        archive = _archive_of(root, n_tx)
        stats = WalStats()
        tracemalloc.start()
        try:
            for tx in walscan.transactions(walscan.archive_entries(archive)):
                stats.add(tx)
            return tracemalloc.get_traced_memory()[1], stats.total.transactions
        finally:
            tracemalloc.stop()

    # both past the read-ahead (a few segments unpacked ahead): ~9 and ~35 segments
    small, n_small = peak(75)
    big, n_big = peak(300)
    assert (n_small, n_big) == (76, 301)  # the CREATE TABLE and the inserts
    print(f"peak {small} bytes over {n_small} transactions, {big} over {n_big}")
    assert big < small * 1.5, f"peak {big} bytes over 4x the transactions vs {small}"


def test_encrypted_archive_and_one_segment_file_through_the_tool(tmp_path):
    from rustydb_server.keys import KeyFileSource, create_key_file
    from tests.support.servers import run_tool

    key_path = tmp_path / "archive.key"
    create_key_file(str(key_path))
    archive = _archive_of(tmp_path, 12, key=KeyFileSource.from_file(str(key_path)))
    proc = run_tool("rusty-db-waldump", "--archive-dir", archive, "--key-file", str(key_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = __import__("json").loads(proc.stdout)
    assert [t["tables"].get("t", {}).get("insert") for t in doc["transactions"]][1:] == [1] * 12
    # without the key: one line saying what to do, exit 1
    proc = run_tool("rusty-db-waldump", "--archive-dir", archive, env={"RUSTYDB_BACKUP_KEY_FILE": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    # one archived segment file on its own: the transactions that start and end in it
    first = sorted(os.listdir(archive))[0]
    proc = run_tool(
        "rusty-db-waldump", "--backup", os.path.join(archive, first), "--encryption-key-file", str(key_path), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    in_file = __import__("json").loads(proc.stdout)["transactions"]
    assert in_file and [t["txid"] for t in in_file] == [t["txid"] for t in doc["transactions"][: len(in_file)]]


def test_autoincrement_bookkeeping_is_not_shown_as_ddl(tmp_path):
    engine = open_engine(str(tmp_path / "data"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        run_sql(engine, "rustydb", "INSERT INTO t(v) VALUES ('a'), ('b')")
        txs = list(walscan.transactions(walscan.wal_dir_entries(engine.datadir.wal_dir)))
    finally:
        engine.close()
    create, insert = txs
    assert create.ddl == ["CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)"]
    assert insert.ddl == [] and insert.sequence_updates, insert.steps
    assert {t: c.insert for t, c in insert.counts.items()} == {"t": 2}
