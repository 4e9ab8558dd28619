"""Table-level restore: one table from a full backup, a chain, or a base plus archive.

The table is read out of the base backup through the read-only backup VFS, so
only the chunks holding that table's pages (and the schema) are decrypted and
decompressed. Its schema, rows, indexes and triggers go into a fresh database
file in a staging directory; then the later changes to that table alone are
applied: the incrementals of a chain, or the archived WAL up to a recovery
target. The result is a data directory holding just that table, which
rusty-db-export reads; no server is ever started on it here.
"""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.parse

import apsw

from .. import datadir as dd
from ..backup.manifest import Manifest
from ..backup.steps import decode_steps
from ..backup.vfs import VFS_NAME, BackupConnection, open_backup_database
from ..container.reader import BackupReader
from ..engine import database, replay
from . import pitr
from .chain import find_chain
from .errors import RestoreError
from .install import install_data_dir
from .staging import TargetLock


@dataclasses.dataclass
class TableRestoreResult:
    backup_id: str
    database: str
    table: str
    rows: int
    data_dir: str
    chain: list[str]
    chunks_decoded: int
    chunks_total: int
    seconds: float
    pitr: dict | None = None
    kept_old: str | None = None  # where a data directory found at the target was kept


def copy_table(src: apsw.Connection, dest: apsw.Connection, table: str) -> int:
    """Schema, rows (with their rowids), indexes and triggers of ``table``: ``src``'s
    database is attached to ``dest`` (a connection opened with URIs allowed) for the copy."""
    objects = src.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END",
        (table,),
    ).fetchall()
    kinds = {t for t, _, _ in objects}
    if "table" not in kinds:
        tables = [
            r[0]
            for r in src.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                f"AND name != '{database.STATE_TABLE}' ORDER BY name"
            ).fetchall()
        ]
        raise RestoreError(f"table {table!r} is not in the backup; its tables are: {', '.join(tables) or '(none)'}")
    table_sql = next(sql for t, _, sql in objects if t == "table")
    without_rowid = "WITHOUT ROWID" in table_sql.upper()
    q = database.quote_ident(table)
    cols = [r[1] for r in src.execute(f"PRAGMA table_xinfo({q})").fetchall() if r[6] == 0]
    col_list = ", ".join(([] if without_rowid else ["rowid"]) + [database.quote_ident(c) for c in cols])
    dest.execute(f"ATTACH DATABASE ? AS {_SOURCE}", (attach_uri(src),))
    try:
        dest.execute("BEGIN")
        dest.execute(table_sql)
        # The rows are copied by SQLite itself (with their rowids), before the
        # indexes exist: one pass, each index then built from sorted keys.
        dest.execute(f"INSERT INTO main.{q}({col_list}) SELECT {col_list} FROM {_SOURCE}.{q}")
        rows = dest.changes()
        for t, _, sql in objects:
            if t in ("index", "trigger"):
                dest.execute(sql)
        seq = (
            src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchall()
            if src.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'").fetchall()
            else []
        )
        if seq:
            dest.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (seq[0][0], table))
        dest.execute("COMMIT")
    except BaseException:
        if not dest.getautocommit():
            dest.execute("ROLLBACK")
        raise
    finally:
        dest.execute(f"DETACH DATABASE {_SOURCE}")
    return rows


_SOURCE = "rustydb_copy_source"


def attach_uri(src: apsw.Connection) -> str:
    """A URI naming ``src``'s main database read-only, through the VFS it was opened with
    (the backup VFS: the pages are read through it from the backup, as ``src`` reads them)."""
    uri = "file:" + urllib.parse.quote(src.db_filename("main"))
    if isinstance(src, BackupConnection):
        return uri + f"?immutable=1&vfs={VFS_NAME}"
    return uri + "?mode=ro"


def _open(source):
    """A backup file's path, or an object in a repository (``open()``: read by ranges)."""
    return open(source, "rb") if isinstance(source, str) else source.open()


def _apply_chain_steps(path, key, db_path: str, db_name: str, table: str) -> None:
    conn = replay.open_replay_connection(db_path)
    try:
        with _open(path) as f:
            reader = BackupReader(f, key=key)
            manifest = Manifest.from_header(reader.header)
            conn.execute("BEGIN IMMEDIATE")
            entry = f"incremental/{db_name}.steps"
            if any(d.entry == entry for d in manifest.databases):
                for kind, payload in decode_steps(reader.read_entry(entry)):
                    if kind == "changeset":
                        replay.apply_steps(conn, [(kind, payload)], table_filter=lambda t: t == table)
                    elif kind == "ddl" and replay.ddl_touches(payload, table, conn):
                        replay.apply_steps(conn, [(kind, payload)])
                    elif kind == "drop":
                        raise RestoreError(f"database {db_name!r} was dropped in backup {manifest.backup_id}")
            # applied_lsn names the last record applied; the first record after
            # the backup starts at its end_lsn and must still be replayed.
            database.write_state(conn, manifest.end_lsn - 1, None, None)
            conn.execute("COMMIT")
    finally:
        conn.close()


def restore_table(
    input_path: str,
    data_dir: str,
    table: str,
    *,
    database_name: str | None,
    key=None,
    chain_dir: str | list[str] | None = None,
    archive_dir: str | None = None,
    target: pitr.Target | None = None,
    timeline_choice: str = "latest",
    force: bool = False,
    chain: list | None = None,
) -> TableRestoreResult:
    """``chain``, when given, is the chain itself, full backup first: paths, or
    objects of a repository (read by ranges, never downloaded whole)."""
    t0 = time.perf_counter()
    with _open(chain[-1] if chain else input_path) as f:
        header = BackupReader(f).header
    manifest = Manifest.from_header(header)
    if chain is None:
        chain = [os.path.abspath(input_path)]
        if manifest.backup_type.needs_parent:
            chain = find_chain(input_path, chain_dir or [os.path.dirname(os.path.abspath(input_path))])
    with _open(chain[0]) as f:
        base_manifest = Manifest.from_header(BackupReader(f).header)
    names = base_manifest.database_names
    db_name = database_name or (names[0] if len(names) == 1 else dd.DEFAULT_DATABASE)
    if db_name not in names:
        raise RestoreError(f"the backup has no database {db_name!r}; it holds: {', '.join(names)}. Pass --database")
    target_dir = os.path.abspath(data_dir)
    with TargetLock(target_dir) as lock:
        lock.check_target(force)
        with lock.stage(base_manifest.backup_id) as staging:
            db_path = os.path.join(staging.path, dd.DATABASES_DIR, f"{db_name}.sqlite")
            src = open_backup_database(chain[0], db_name, key=key)
            # The table is as of the backed-up database's own applied_lsn: the
            # records above it (the first at the backup's end_lsn) are replayed.
            applied = database.read_state(src)["applied_lsn"]
            database.create_database_file(db_path, applied)
            dest = database.open_connection(db_path)
            try:
                rows = copy_table(src, dest, table)
                database.write_state(dest, applied, None, None)
                decoded = src.entry_reader.chunks_decoded
                total = src.entry_reader.chunk_count
            finally:
                dest.close()
                src.close()
            for path in chain[1:]:
                _apply_chain_steps(path, key, db_path, db_name, table)
            install_data_dir(staging.path, manifest if len(chain) > 1 else base_manifest)
            report = None
            if archive_dir and target is not None:
                report = pitr.recover(
                    staging.path,
                    base_manifest,
                    archive_dir,
                    target,
                    timeline_choice=timeline_choice,
                    key=key,
                    only_database=db_name,
                    only_table=table,
                )
            staging.swap()
    count_conn = apsw.Connection(
        os.path.join(target_dir, dd.DATABASES_DIR, f"{db_name}.sqlite"), flags=apsw.SQLITE_OPEN_READONLY
    )
    try:
        rows = count_conn.execute(f"SELECT count(*) FROM {database.quote_ident(table)}").fetchall()[0][0]
    finally:
        count_conn.close()
    return TableRestoreResult(
        base_manifest.backup_id,
        db_name,
        table,
        rows,
        target_dir,
        [str(c) for c in chain],
        decoded,
        total,
        time.perf_counter() - t0,
        report.as_dict() if report else None,
        staging.kept,
    )
