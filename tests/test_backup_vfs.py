"""Reading a backup without restoring it: the read-only VFS, against real
backups built from a real Engine."""

import io
import os
from pathlib import Path

import apsw
import pytest

from rustydb_client.sqlsplit import leading_keywords
from rustydb_server import datadir as dd
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.backup.vfs import BackupQueryError, open_backup_database
from rustydb_server.container.errors import BackupCorruptError
from rustydb_server.container.format import RECORD
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.writer import BackupWriter
from rustydb_server.engine.database import create_database_file, open_connection
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.keys import KeyFileSource
from rustydb_server.restore.table import copy_table
from rustydb_server.settings import Settings

KEY = KeyFileSource(os.urandom(32), "/keys/test.key")
CHUNK = 16 * 1024
ROWS = 20_000


def run_sql(session, sql):
    _run, rows, _fin = session.run(sql, leading_keywords(sql, 2), 1_000_000)
    return rows


def write_backup(engine, path, *, key=None, chunk_size=CHUNK):
    """A full backup of ``engine`` at ``path``, written as the server does,
    with a small chunk size so that entries have many chunks."""
    with Snapshot(engine, None) as snap:
        manifest = snap.manifest()
        with open(path, "wb") as f:
            w = BackupWriter(f, manifest.to_header(), key=key, codec="lz4", chunk_size=chunk_size)
            for db in manifest.databases:
                w.begin_entry(db.entry)
                for part in snap.stream_database(db.name, engine.datadir.join("backup_tmp")):
                    w.write(part)
                w.end_entry()
            w.finish()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A data directory with a big table, and the source database file to compare against."""
    base = tmp_path_factory.mktemp("vfs")
    datadir = str(base / "data")
    engine = Engine.open(dd.DataDir(datadir), Settings.load(None, datadir, {"wal_segment_size": 65536}))
    session = SqlSession(engine, "rustydb", 1)
    run_sql(session, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, balance REAL, photo BLOB)")
    run_sql(session, "CREATE INDEX customers_name ON customers(name)")
    run_sql(
        session,
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<{ROWS}) "
        "INSERT INTO customers SELECT i, 'customer ' || i || ' ' || hex(randomblob(20)), i * 1.5, "
        "CASE WHEN i % 7 = 0 THEN randomblob(30) END FROM c",
    )
    run_sql(session, "CREATE TABLE notes(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    run_sql(session, "INSERT INTO notes VALUES ('a''b', x'00ff'), ('nl\nx', NULL), ('π', 9223372036854775807)")
    plain = str(base / "plain.backup")
    sealed = str(base / "sealed.backup")
    write_backup(engine, plain)
    write_backup(engine, sealed, key=KEY)
    session.close()
    engine.close()
    return {"plain": plain, "sealed": sealed, "db": dd.DataDir(datadir).database_path("rustydb")}


def rows_of(conn, sql):
    return conn.execute(sql).fetchall()


QUERIES = [
    "SELECT * FROM customers ORDER BY id",
    "SELECT name, count(*) FROM customers GROUP BY substr(name, 1, 11) ORDER BY 1",
    "SELECT * FROM notes ORDER BY k",
    "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name",
]


@pytest.mark.parametrize("which", ["plain", "sealed"])
def test_queries_through_the_vfs_equal_the_source(source, which):
    key = KEY if which == "sealed" else None
    src = apsw.Connection(source["db"], flags=apsw.SQLITE_OPEN_READONLY)
    conn = open_backup_database(source[which], "rustydb", key=key)
    try:
        for sql in QUERIES:
            assert rows_of(conn, sql) == rows_of(src, sql), sql
        assert rows_of(conn, "PRAGMA integrity_check") == [("ok",)]
    finally:
        conn.close()
        src.close()


def test_point_query_decodes_few_chunks(source):
    conn = open_backup_database(source["sealed"], "rustydb", key=KEY)
    try:
        reader = conn.entry_reader
        assert reader.chunk_count > 100  # the premise: a big entry in many chunks
        assert rows_of(conn, "SELECT id FROM customers WHERE id = 12345") == [(12345,)]
        # page 1, the schema, and one root-to-leaf path of the table's B-tree
        assert reader.chunks_decoded <= 6
        rows_of(conn, "SELECT count(*) FROM customers")
        assert reader.chunks_decoded > 50  # a full scan really does read it all
    finally:
        conn.close()


def test_backup_is_read_only(source):
    conn = open_backup_database(source["plain"], "rustydb")
    try:
        with pytest.raises(apsw.ReadOnlyError):
            conn.execute("INSERT INTO notes VALUES ('new', 1)")
        with pytest.raises(apsw.ReadOnlyError):
            conn.execute("CREATE TABLE x(a)")
        # a temporary table (a temp file of the default VFS) still works for analysis
        conn.execute("CREATE TEMP TABLE scratch AS SELECT id FROM customers WHERE id < 10")
        assert rows_of(conn, "SELECT count(*) FROM scratch") == [(9,)]
    finally:
        conn.close()


def test_unknown_database_lists_the_ones_there(source):
    with pytest.raises(BackupQueryError, match=r"no database 'sales'.*holds: rustydb"):
        open_backup_database(source["plain"], "sales")


def damage_chunk(src_path, dst_path, chunk, key=None):
    """Copy the backup with one byte flipped inside the stored data of ``chunk``
    of the rustydb entry; returns the entry's chunk count."""
    data = bytearray(Path(src_path).read_bytes())
    reader = BackupReader(io.BytesIO(bytes(data)), key=key)
    info = reader.entry("databases/rustydb.sqlite")
    offset = reader.chunk_offsets(info)[chunk]
    data[offset + RECORD.size + 3] ^= 0x40
    with open(dst_path, "wb") as f:
        f.write(data)
    return info.chunks


@pytest.mark.parametrize("which", ["plain", "sealed"])
def test_damaged_chunk_a_query_touches_is_named(source, tmp_path, which):
    key = KEY if which == "sealed" else None
    bad = str(tmp_path / "bad.backup")
    # the last chunk holds the table's last rows: a point query on them reads it
    with open(source[which], "rb") as f:
        info = BackupReader(f, key=key).entry("databases/rustydb.sqlite")
    damage_chunk(source[which], bad, info.chunks - 1, key)
    conn = open_backup_database(bad, "rustydb", key=key)
    try:
        # a query that avoids the damaged chunk still works
        assert rows_of(conn, "SELECT id FROM customers WHERE id = 1") == [(1,)]
        with pytest.raises(BackupCorruptError) as err:
            rows_of(conn, "SELECT count(*), sum(length(name)) FROM customers")
        msg = str(err.value)
        assert "entry 'databases/rustydb.sqlite'" in msg and f"chunk {info.chunks - 1}" in msg
    finally:
        conn.close()


def test_damaged_record_head_fails_at_open(source, tmp_path):
    data = bytearray(Path(source["plain"]).read_bytes())
    reader = BackupReader(io.BytesIO(bytes(data)))
    info = reader.entry("databases/rustydb.sqlite")
    offset = reader.chunk_offsets(info)[5]
    data[offset + 12] ^= 1  # raw_len field of chunk 5's head
    bad = tmp_path / "bad.backup"
    bad.write_bytes(data)
    with pytest.raises(BackupCorruptError, match="chunk 5.*header checksum"):
        open_backup_database(str(bad), "rustydb")


@pytest.mark.parametrize("which", ["plain", "sealed"])
def test_copy_table_attaches_the_backup_and_leaves_it_readable(source, which, tmp_path):
    """restore/table.py's copy: SQLite itself copies the rows (the backup's database attached to
    the new file through this VFS); detaching it leaves the backup connection working."""
    key = KEY if which == "sealed" else None
    src = apsw.Connection(source["db"], flags=apsw.SQLITE_OPEN_READONLY)
    conn = open_backup_database(source[which], "rustydb", key=key)
    dest_path = str(tmp_path / "copy.sqlite")
    create_database_file(dest_path, 1)
    dest = open_connection(dest_path)
    try:
        assert copy_table(conn, dest, "customers") == ROWS
        assert copy_table(conn, dest, "notes") == 3
        for sql in ("SELECT rowid, * FROM customers ORDER BY id", "SELECT * FROM notes ORDER BY k"):
            assert rows_of(dest, sql) == rows_of(src, sql), sql
        assert rows_of(dest, "SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'customers_name'")
        assert rows_of(dest, "PRAGMA integrity_check") == [("ok",)]
        assert {r[1] for r in rows_of(dest, "PRAGMA database_list")} <= {"main", "temp"}  # the backup detached
        assert rows_of(conn, "SELECT count(*) FROM customers") == [(ROWS,)]  # and still reads
    finally:
        dest.close()
        conn.close()
        src.close()
