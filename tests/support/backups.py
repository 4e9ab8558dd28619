"""Real backup files for the tests of rusty-db-backup and rusty-db-restore.

An in-process Engine (no server process) filled with known data, backups of it
written as the tool writes them, and the damage and checks the tests share.
The fixtures built from them are in ``tests.support.fixtures``.
"""

from __future__ import annotations

import copy
import dataclasses
from unittest import mock

from rustydb_server import datadir as dd
from rustydb_server.backup.incremental import IncrementalSource
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.container.file import BackupFile
from rustydb_server.container.format import RECORD
from rustydb_server.container.reader import BackupReader
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.settings import Settings

NO_KEYS = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}
CUSTOMERS = 3000


def open_engine(path: str) -> Engine:
    return Engine.open(dd.DataDir(path), Settings.load(None, path, {"wal_segment_size": 65536}))


def run_sql(engine: Engine, database: str, sql: str):
    from rustydb_client.sqlsplit import leading_keywords

    session = SqlSession(engine, database, 1)
    _result, rows, _fin = session.run(sql, leading_keywords(sql, 2), 1_000_000)
    return rows


def fill_source(engine: Engine) -> None:
    """Two databases, three tables, rows of mixed text and numbers."""
    run_sql(engine, "rustydb", "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, balance REAL)")
    run_sql(
        engine,
        "rustydb",
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c "
        f"WHERE i < {CUSTOMERS}) INSERT INTO customers SELECT i, 'customer ' || i || "
        "hex(randomblob(8)), i * 1.5 FROM c",
    )
    run_sql(engine, "rustydb", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    run_sql(engine, "rustydb", "INSERT INTO notes(body) VALUES ('hello'), ('world')")
    engine.create_database("sales")
    run_sql(engine, "sales", "CREATE TABLE orders(id INTEGER PRIMARY KEY, amount INTEGER)")
    run_sql(engine, "sales", "INSERT INTO orders(amount) VALUES (10), (20), (30)")


def write_backup(
    engine: Engine, out: str, *, key=None, codec: str = "none", edit=None, extra_entries=(), backup_type: str = "full"
) -> dict:
    """A backup file as the tool writes it; ``edit`` changes the manifest it records
    (the data written stays the snapshot's), ``extra_entries`` adds (entry, database)."""
    snap = Snapshot(engine, None, backup_type=backup_type)
    try:
        manifest = snap.manifest().to_dict()
        real = [(db["entry"], db["name"]) for db in manifest["databases"]]
        manifest = copy.deepcopy(manifest)
        if edit is not None:
            edit(manifest)
        # Written as an attacker or damage would: the edited map as it is, unparsed.
        header = dataclasses.replace(
            snap.manifest().to_header(),
            extra={"manifest": manifest},
            databases=[
                {"name": d.get("name"), "tables": d.get("tables"), "size_bytes": d.get("size_bytes")}
                for d in manifest["databases"]
            ],
        )
        # The writer refuses such a header (a name no database has): bypassed, as a forger would.
        with mock.patch("rustydb_server.container.writer.check_header_fields"):
            bf = BackupFile(out, header, key=key, codec=codec)
        scratch = engine.datadir.join("backup_tmp")
        for entry, name in real + list(extra_entries):
            bf.begin_entry(entry)
            for chunk in snap.stream_database(name, scratch):
                bf.write(chunk)
            bf.end_entry()
        bf.commit()
    finally:
        snap.close()
    return manifest


def flip_byte_in_chunk(path: str, entry_index: int = 0) -> tuple[str, int]:
    """Flip one byte inside the first chunk's stored data; returns (entry name, chunk)."""
    with open(path, "rb") as f:
        entry = BackupReader(f).entries()[entry_index]
    at = entry.offset + RECORD.size + 5
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    return entry.name, 0


def copy_file(src: str, dst: str) -> str:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    return dst


def assert_clean_error(proc, code: int = 1) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


#: What the chain fixture's states record: the customers after each backup.
ROWS_SQL = "SELECT count(*), sum(id), group_concat(name, ',') FROM customers"
#: What the archived fixture's states record: the notes at each point.
COUNT_SQL = "SELECT count(*), group_concat(body, ',') FROM notes"


def write_incremental(engine, parent: dict, out: str, backup_type: str = "incremental") -> dict:
    """An incremental (or differential) backup of ``engine`` on top of ``parent``'s manifest."""
    scratch = engine.datadir.join("backup_tmp")
    with IncrementalSource(engine, parent, backup_type, None, scratch) as src:
        manifest = src.manifest()
        bf = BackupFile(out, manifest.to_header(), codec="none")
        for entry, chunks in src.entries(scratch):
            bf.begin_entry(entry)
            for chunk in chunks:
                bf.write(chunk)
            bf.end_entry()
        bf.commit()
    return manifest.to_dict()


def rows(data_dir: str):
    engine = open_engine(data_dir)
    try:
        return run_sql(engine, "rustydb", ROWS_SQL)
    finally:
        engine.close()


def notes(data_dir: str):
    engine = open_engine(data_dir)
    try:
        return run_sql(engine, "rustydb", COUNT_SQL)
    finally:
        engine.close()
