"""--query FILE SQL --archive-dir A --recovery-target-{time,txid} X: a read-only
query on the state at a past point, without restoring the backup.

The tables the query reads are found by preparing it against the base
backup in place (SQLite's authorizer names every table a statement reads);
each is restored alone, as rusty-db-restore --table does (its pages read
through the backup VFS, then the archived WAL replayed for that table only,
up to the target) into a scratch directory, which is removed afterwards. The
query then runs on those tables.
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
from ...backup.vfs import BackupQueryError, open_backup_database
from ...container.errors import BackupError
from ...crypto import CryptoError
from ...engine.database import STATE_TABLE, quote_ident
from ...restore.errors import RestoreError
from ...restore.full import read_key_for
from ...restore.pitr import PitrError, archive_key, make_target
from ...restore.table import restore_table
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
    scratch = tempfile.mkdtemp(prefix="rustydb-query-")
    try:
        paths = []
        for i, table in enumerate(tables):
            r = restore_table(
                path,
                os.path.join(scratch, f"t{i}"),
                table,
                database_name=database,
                key=key or archive_key(args.key_file),
                archive_dir=args.archive_dir,
                target=target,
            )
            paths.append(os.path.join(r.data_dir, dd.DATABASES_DIR, f"{r.database}.sqlite"))
        conn = apsw.Connection(paths[0], flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            for i, other in enumerate(paths[1:], 1):
                conn.execute(f"ATTACH DATABASE ? AS {quote_ident(f't{i}')}", (f"file:{other}?mode=ro",))
            cursor = conn.cursor()
            cursor.execute(sql)
            try:
                columns = [d[0] for d in cursor.description]
            except apsw.ExecutionCompleteError:
                columns = []
            rows = [list(r) for r in cursor]
        finally:
            conn.close()
    except apsw.Error as exc:
        return fail(PROG, f"query failed: {exc}")
    except (RestoreError, PitrError, BackupError, CryptoError, OSError) as exc:
        return fail(PROG, str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    point = f"{kind} {value}"
    if args.json:
        print_json(
            {"columns": columns, "rows": [[_jsonable(v) for v in r] for r in rows], "as_of": point, "tables": tables}
        )
    else:
        print(format_table(columns, rows) if columns else "(no rows)")
        print(f"(database {database} as of {point}: {', '.join(tables)} restored alone and replayed)", file=sys.stderr)
    return 0
