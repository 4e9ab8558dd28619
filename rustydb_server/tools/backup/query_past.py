"""--query FILE SQL --archive-dir A --recovery-target-{time,txid} X: a read-only
query on the state at a past point, without restoring the backup.

The tables the query reads are found by preparing it against the base
backup in place (SQLite's authorizer names every table a statement reads).
Then the archived WAL after the base is read up to the target, as PITR reads
it, and each table is shown as it was then without being restored
(forensics/past.py: a view over the base's rows, read in place through the
backup VFS, and the rows changed since); the query runs on those views. When
that cannot be (a chain, the table's schema changed, a VACUUM since), each
table is restored alone instead, as rusty-db-restore --table does, into a
scratch directory removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import apsw

from rustydb_client.cli import format_table

from ... import datadir as dd
from ...backup.manifest import Manifest
from ...backup.vfs import BackupQueryError, open_backup_database
from ...container.errors import BackupError
from ...container.reader import BackupReader
from ...crypto import CryptoError
from ...engine.database import STATE_TABLE, quote_ident, read_state
from ...forensics import asof, past
from ...restore.errors import RestoreError
from ...restore.full import read_key_for
from ...restore.pitr import PitrError, archive_key, make_target
from ...restore.table import attach_uri, restore_table
from ..output import fail, print_json
from . import PROG
from .header import UnreadableBackup, read_file_header
from .query import _jsonable


def tables_read(conn: apsw.Connection, sql: str) -> list[str]:
    """The tables ``sql`` reads, in the order SQLite first names them (it is prepared, not run)."""
    found: list[str] = []

    def note(op, p1, p2, dbname, trigger):
        if op == apsw.SQLITE_READ and p1 and not p1.startswith("sqlite_") and p1 != STATE_TABLE and p1 not in found:
            found.append(p1)
        return apsw.SQLITE_OK

    conn.authorizer = note
    try:
        conn.cursor().execute(sql, explain=1).fetchall()
    finally:
        conn.authorizer = None
    return found


def query_past(path: str, sql: str, args: argparse.Namespace, *, database: str | None) -> int:
    kind, value = (
        ("time", args.recovery_target_time) if args.recovery_target_time else ("txid", args.recovery_target_txid)
    )
    try:
        target = make_target(kind, value)
        header = read_file_header(path)
        key = read_key_for(path, args.key_file) if header.encrypted else None
        names = [d["name"] for d in header.databases]
        database = database or (names[0] if len(names) == 1 else dd.DEFAULT_DATABASE)
        base = open_backup_database(path, database, key=key)
        try:
            tables = tables_read(base, sql)
        finally:
            base.close()
    except apsw.Error as exc:
        return fail(PROG, f"query failed: {exc}")
    except (UnreadableBackup, BackupQueryError, BackupError, CryptoError, PitrError, RestoreError, OSError) as exc:
        return fail(PROG, str(exc))
    if not tables:
        return fail(PROG, "the query reads no table of the backup; name the table(s) to query as of then")
    try:
        archive_k = key or archive_key(args.key_file)
        try:
            columns, rows, how = _in_place(path, sql, args.archive_dir, target, key, archive_k, database, tables)
            in_place = True
        except past.NeedsRestore as why:
            in_place = False
            columns, rows = _restored(path, sql, args.archive_dir, target, archive_k, database, tables)
            how = f"{', '.join(tables)} restored alone and replayed, as {why}"
    except asof.AsOfRefused as exc:
        return fail(PROG, f"query failed: {exc}")
    except apsw.Error as exc:
        return fail(PROG, f"query failed: {exc}")
    except (RestoreError, PitrError, BackupError, BackupQueryError, CryptoError, OSError) as exc:
        return fail(PROG, str(exc))
    point = f"{kind} {value}"
    if args.json:
        print_json(
            {
                "columns": columns,
                "rows": [[_jsonable(v) for v in r] for r in rows],
                "as_of": point,
                "tables": tables,
                "in_place": in_place,
                "how": how,
            }
        )
    else:
        print(format_table(columns, rows) if columns else "(no rows)")
        print(f"(database {database} as of {point}: {how})", file=sys.stderr)
    return 0


def _in_place(path, sql, archive_dir, target, key, archive_k, database, tables):
    """(columns, rows, how): the query on views of the base's tables with the changes since."""
    with open(path, "rb") as f:
        manifest = Manifest.from_header(BackupReader(f).header)
    if manifest.backup_type.needs_parent:
        raise past.NeedsRestore("the backup is part of a chain")
    base = open_backup_database(path, database, key=key)
    try:
        applied = read_state(base)["applied_lsn"]
        changes, txs = past.changes_to_target(
            manifest, applied, archive_dir, target, database=database, tables=tables, key=archive_k
        )
        conn = apsw.Connection(
            ":memory:", flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
        )
        try:
            conn.execute("ATTACH DATABASE ? AS base", (attach_uri(base),))
            conn.execute("BEGIN")
            shown = past.present_tables(conn, "base", tables, changes)
            conn.authorizer = asof.authorizer(shown)
            try:
                columns, rows = _run(conn, sql)
            except apsw.AuthError:
                raise asof.AsOfRefused(
                    "a query at a past point may only read tables (of the database it names); "
                    "it wrote, attached or read something else"
                ) from None
        finally:
            conn.close()
    finally:
        base.close()
    changed = sum(p.copied_rows for p in shown)
    how = (
        f"{', '.join(tables)} read in the backup in place, {txs} transaction(s) since the base taken from "
        f"the archive ({changed} row(s) of the base changed)"
    )
    return columns, rows, how


def _restored(path, sql, archive_dir, target, archive_k, database, tables):
    """(columns, rows): the query on each table restored alone into a scratch directory."""
    scratch = tempfile.mkdtemp(prefix="rustydb-query-")
    try:
        paths = []
        for i, table in enumerate(tables):
            r = restore_table(
                path,
                os.path.join(scratch, f"t{i}"),
                table,
                database_name=database,
                key=archive_k,
                archive_dir=archive_dir,
                target=target,
            )
            paths.append(os.path.join(r.data_dir, dd.DATABASES_DIR, f"{r.database}.sqlite"))
        conn = apsw.Connection(paths[0], flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            for i, other in enumerate(paths[1:], 1):
                conn.execute(f"ATTACH DATABASE ? AS {quote_ident(f't{i}')}", (f"file:{other}?mode=ro",))
            return _run(conn, sql)
        finally:
            conn.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(conn: apsw.Connection, sql: str) -> tuple[list[str], list[list]]:
    cursor = conn.cursor()
    cursor.execute(sql)
    try:
        columns = [d[0] for d in cursor.description]
    except apsw.ExecutionCompleteError:
        columns = []
    return columns, [list(r) for r in cursor]
