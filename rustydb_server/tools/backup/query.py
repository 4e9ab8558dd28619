"""--query FILE SQL: run a read-only query on a backup in place, through the
backup VFS, decrypting only the chunks the query reads."""

from __future__ import annotations

import argparse
import sys

from ...container.errors import BackupError
from ...crypto import CryptoError
from ...keys import resolve_read_key
from ..output import fail, print_json
from . import PROG
from .header import UnreadableBackup, read_file_header


def run(args: argparse.Namespace) -> int:
    if args.repo:
        return _run_in_repository(args)
    path, sql = args.query
    database = (args.database or [None])[0]
    if args.archive_dir:
        from .query_past import query_past

        return query_past(path, sql, args, database=database)
    return query_backup(path, sql, database=database, key_file=args.key_file, as_json=args.json)


def query_backup(path: str, sql: str, *, database: str | None, key_file: str | None, as_json: bool) -> int:
    # Imported here: every verb module loads with rusty-db-backup,
    # and only --query needs SQLite and the VFS.
    import apsw

    from rustydb_client.cli import format_table

    from ...backup.vfs import BackupQueryError, open_backup_database

    try:
        header = read_file_header(path)
        if not header.backup_type.is_full_base:
            return fail(
                PROG,
                f"{path} is a {header.backup_type} backup: it holds changes, "
                "not whole databases; query the full backup it builds on, or restore "
                "the chain with rusty-db-restore --chain-dir",
            )
        key = resolve_read_key(header, key_file) if header.encrypted else None
        names = [d["name"] for d in header.databases]
        database = database or (names[0] if len(names) == 1 else "rustydb")
        conn = open_backup_database(path, database, key=key)
    except (UnreadableBackup, BackupQueryError, BackupError, CryptoError, OSError) as exc:
        return fail(PROG, str(exc))
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            try:
                columns = [d[0] for d in cursor.description]
            except apsw.ExecutionCompleteError:  # no rows at all
                columns = []
            rows = [list(r) for r in cursor]
        except apsw.Error as exc:
            return fail(PROG, f"query failed: {exc}")
        except BackupError as exc:
            return fail(PROG, f"{path} is damaged where the query reads it: {exc}")
        decoded, total = conn.entry_reader.chunks_decoded, conn.entry_reader.chunk_count
    finally:
        conn.close()
    if as_json:
        print_json(
            {
                "columns": columns,
                "rows": [[_jsonable(v) for v in r] for r in rows],
                "chunks_decoded": decoded,
                "chunks_total": total,
            }
        )
    else:
        print(format_table(columns, rows) if columns else "(no rows)")
        print(f"(read {decoded} of {total} chunks of database {database})", file=sys.stderr)
    return 0


def _jsonable(value):
    return value.hex() if isinstance(value, bytes) else value


def _run_in_repository(args: argparse.Namespace) -> int:
    """--query ID SQL --repo URL: ID (or a prefix, or latest) from the repository's own catalog;
    with a recovery target, the repository's archived WAL unless --archive-dir names another."""
    import contextlib
    import os
    import shutil
    import tempfile

    from ...archive import destination
    from ...backup.repo_catalog import RepoCatalogError
    from ...repository import RepositoryError, is_s3_url
    from ...settings import SettingError
    from .repo import find_backup, open_repo

    which, sql = args.query
    url = args.repo
    targets = (args.recovery_target_time, args.recovery_target_txid)
    scratch = None
    try:
        repo = open_repo(args.repo)
        entry = find_backup(repo, which)
        if is_s3_url(args.repo):
            from .. import repository_settings

            repository_settings.configure()  # the archive below is read through the same settings
            # The query reads pages at random: a local copy, removed afterwards.
            scratch = tempfile.mkdtemp(prefix="rustydb-query-")
            path = os.path.join(scratch, f"{entry['backup_id']}.backup")
            with open(path, "wb") as f:
                for chunk in repo.open_stream(entry["key"]):
                    f.write(chunk)
        else:
            path = repo.path(entry["key"])
        if any(t is not None for t in targets) and not args.archive_dir:
            args.archive_dir = (
                destination.location(args.repo)
                if is_s3_url(args.repo)
                else os.path.join(args.repo, destination.WAL_PREFIX)
            )
        args.query = [path, sql]
        args.repo = None
        return run(args)
    except (RepositoryError, RepoCatalogError, SettingError) as exc:
        return fail(PROG, f"cannot query backup {which} of repository {url}: {exc}")
    finally:
        if scratch is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
