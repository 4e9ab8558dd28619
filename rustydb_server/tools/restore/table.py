"""rusty-db-restore --input FILE --table NAME [--data-dir D | --into-server HOST:PORT]:
restore one table (from a full backup, a chain, or a base and the archive up to a
recovery target) into a data directory of its own, or import it into a server."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import tempfile

from ...container.reader import BackupReader
from ...keys import resolve_read_key
from ...restore.errors import RestoreError
from ...restore.full import read_key_for
from ...restore.pitr import Target, archive_key
from ...restore.table import restore_table
from ..output import print_json


def run(args: argparse.Namespace, target: Target | None, chain: list | None = None) -> int:
    """``chain``: the backups themselves, full first (objects of a repository: --repo)."""
    if chain is None:
        key = read_key_for(args.input, args.key_file)
    else:
        with chain[-1].open() as f:
            key = resolve_read_key(BackupReader(f).header, args.key_file)
    temp = None
    data_dir = args.data_dir
    if data_dir is None:
        temp = tempfile.mkdtemp(prefix="rustydb-table-")
        data_dir = os.path.join(temp, "data")
    try:
        r = restore_table(
            args.input,
            data_dir,
            args.table,
            database_name=args.database,
            key=key or (archive_key(args.key_file) if args.archive_dir else None),
            chain_dir=args.chain_dir,
            archive_dir=args.archive_dir,
            target=target,
            timeline_choice=args.recovery_target_timeline,
            force=args.force,
            chain=chain,
        )
        imported = None
        if args.into_server:
            imported = import_table(
                args.into_server,
                r.data_dir,
                r.database,
                args.table,
                rename_to=args.rename_to,
                database=args.database,
                user=args.user,
                password_file=args.password_file,
            )
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    summary = {
        "ok": True,
        "backup_id": r.backup_id,
        "database": r.database,
        "table": r.table,
        "rows": r.rows,
        "data_dir": None if temp else r.data_dir,
        "chain": r.chain,
        "chunks_decoded": r.chunks_decoded,
        "chunks_total": r.chunks_total,
        "seconds": round(r.seconds, 3),
        "imported_into": args.into_server,
        "imported_as": imported,
        "previous_data_dir": r.kept_old,
        **({"pitr": r.pitr} if r.pitr else {}),
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"Restored table {r.table} ({r.rows} rows) of database {r.database} from backup "
        f"{r.backup_id}; read {r.chunks_decoded} of {r.chunks_total} chunks"
    )
    if r.pitr:
        print(
            f"Recovered to {r.pitr['recovery_target']}: last transaction txid "
            f"{r.pitr['last_replayed_txid']} at {r.pitr['last_replayed_commit_time']}"
        )
    if r.kept_old is not None:
        print(f"The data directory that was in {r.data_dir} is kept in {r.kept_old}")
        print(f"Delete it once it is no longer needed: rm -rf {shlex.quote(r.kept_old)}")
    if imported:
        print(f"Imported into {args.into_server} as table {imported}")
    else:
        # the line is meant to be pasted into a shell, whatever the names
        print(
            f"Export it with: rusty-db-export --table {shlex.quote(r.table)} --input-dir "
            f"{shlex.quote(r.data_dir)} --output {shlex.quote(r.table + '_restored.sql')}"
        )
    return 0


def import_table(
    server: str,
    data_dir: str,
    source_database: str,
    table: str,
    *,
    rename_to: str | None,
    database: str | None,
    user: str | None = None,
    password_file: str | None = None,
) -> str:
    """Export the restored table as SQL and run it on ``server`` (HOST:PORT), statement by
    statement, in one transaction; return the name it was created under."""
    # Imported here: only this path exports or talks to a server, and every
    # other restore would pay for the imports at start-up.
    from rustydb_client import client as rc

    from ...export import ExportError, export_tables

    host, _, port = server.rpartition(":")
    workdir = tempfile.mkdtemp(prefix="rustydb-import-")  # private: 0700, a fresh name
    sql_path = os.path.join(workdir, "table.sql")
    try:
        export_tables(data_dir, sql_path, tables=[table], database=source_database, rename_to=rename_to)
        password = rc.read_password_file(password_file)
        # No host (":5432"): the local server, through its Unix socket first.
        with rc.connect(host or None, int(port), database=database, user=user, password=password) as conn:
            try:
                _run_script(conn, sql_path)
            except rc.ServerError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    except (ExportError, rc.ClientError) as exc:
        raise RestoreError(str(exc)) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rename_to or table


def _run_script(conn, sql_path: str) -> None:
    from rustydb_client.sqlsplit import StatementSplitter

    splitter = StatementSplitter()
    with open(sql_path) as f:
        for chunk in iter(lambda: f.read(1 << 20), ""):
            for stmt in splitter.feed(chunk):
                conn.execute(stmt.sql)
        for stmt in splitter.finish():
            conn.execute(stmt.sql)
