"""rusty-db-restore: turn backups into a data directory a server starts on.

    rusty-db-restore --input FILE --data-dir D [--threads N] [--verify-encryption]
                     [--integrity-check] [--force] [--key-file F] [--json]
    rusty-db-restore --input INCR --data-dir D --incremental
    rusty-db-restore --input LAST --data-dir D --chain-dir DIR
    rusty-db-restore --input BASE --archive-dir A --data-dir D
                     --recovery-target-time T | --recovery-target-txid N |
                     --recovery-target-name NAME | --recovery-target-lsn L |
                     --recovery-target immediate
                     [--recovery-target-inclusive true|false]
                     [--recovery-target-timeline latest|current|N]

The work is done by ``rustydb_server.restore.full``; this module parses
arguments, finds the key, shows progress and prints the outcome.

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from ..archive.segment_file import ArchiveError
from ..backup.container import BackupError, BackupReader, UnsupportedFormatError
from ..backup.vfs import BackupQueryError
from ..crypto import CryptoError
from ..datadir import DataDirError
from ..restore import pitr
from ..restore.chain import find_chain
from ..restore.errors import RestoreError
from ..restore.full import RestoreResult, resolve_read_key, restore_full
from ..restore.incremental import IncrementalRestoreError, apply_incremental
from ..restore.table import restore_table
from ..wal.lsn import parse_lsn
from ..wal.timeline import HistoryError
from .progress import (
    Progress,
    fail,
    human_size,
    interruption,
    mb_per_second,
    print_json,
    sigterm_interrupts,
    thread_count,
)

PROG = "rusty-db-restore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Restore a full backup into a data directory. The directory must not be "
        "in use by a server and must be empty or new (or use --force). Keys come from "
        "--key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    p.add_argument("--input", "-i", metavar="FILE", help="backup file to restore")
    p.add_argument("--data-dir", "-D", metavar="DIR", help="data directory to create (or replace, with --force)")
    p.add_argument(
        "--threads", type=thread_count, default=1, help="decrypt, decompress and check chunks on N threads (default 1)"
    )
    p.add_argument("--verify-encryption", action="store_true", help="authenticate every chunk before writing anything")
    p.add_argument(
        "--integrity-check",
        action="store_true",
        help="after writing, run SQLite's integrity check and compare row counts with those recorded in the backup",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty data directory (never one a running server holds); "
        "its old contents are removed only once the restore succeeded",
    )
    p.add_argument("--key-file", help="key file of an encrypted backup")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="apply an incremental or differential backup to a data directory "
        "restored from its chain (not started since)",
    )
    p.add_argument(
        "--chain-dir",
        metavar="DIR",
        help="find the whole chain of --input (full, then incrementals) among the "
        "backup files in DIR and apply it in order",
    )
    tbl = p.add_argument_group("table-level restore")
    tbl.add_argument("--table", metavar="NAME", help="restore only this table (schema, indexes, rows) into --data-dir")
    tbl.add_argument(
        "--database", metavar="NAME", help="the database holding --table (default: the only one, else rustydb)"
    )
    tbl.add_argument(
        "--no-start",
        action="store_true",
        help="leave the data directory without starting a server on it (restore "
        "never starts a server; accepted for the guide's command line)",
    )
    tbl.add_argument(
        "--into-server",
        metavar="HOST:PORT",
        help="import the restored table into a running server (through rusty-db-export's SQL), in one transaction",
    )
    tbl.add_argument("--rename-to", metavar="NAME", help="with --into-server: create the table under this name")
    pitr = p.add_argument_group("point-in-time recovery")
    pitr.add_argument(
        "--archive-dir", metavar="DIR", help="archived WAL (archive_dest) to replay on top of the base backup"
    )
    pitr.add_argument(
        "--list-wal",
        action="store_true",
        help="list the transactions in --archive-dir (LSN, txid, commit time, "
        "what changed) to choose a recovery target; restores nothing",
    )
    pitr.add_argument("--since", metavar="TIME", help="with --list-wal: from this time on")
    pitr.add_argument(
        "--recovery-target-time",
        metavar="TIME",
        help="'YYYY-MM-DD HH:MM:SS[.ffffff]' local time, or ISO 8601 with a zone",
    )
    pitr.add_argument("--recovery-target-txid", type=int, metavar="N")
    pitr.add_argument("--recovery-target-name", metavar="NAME", help="a name given to CREATE RESTORE POINT")
    pitr.add_argument("--recovery-target-lsn", metavar="LSN", help="e.g. 0/1A2B3C4D")
    pitr.add_argument(
        "--recovery-target", choices=["immediate"], help="immediate: stop as soon as the base backup is consistent"
    )
    pitr.add_argument(
        "--recovery-target-inclusive",
        choices=["true", "false"],
        default="true",
        help="stop just after (true, default) or just before the target",
    )
    pitr.add_argument(
        "--recovery-target-timeline",
        default="latest",
        metavar="TL",
        help="latest (default), current, or a timeline number",
    )
    return p


class _Bars:
    """One bar per phase (verify, then restore), each ended before the next starts."""

    def __init__(self):
        self.phase = None
        self.bar: Progress | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.finish()
            self.phase, self.bar = phase, Progress(phase, total)
        self.bar.update(done, total)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()


def _target(args: argparse.Namespace, parser: argparse.ArgumentParser):
    given = [
        (k, v)
        for k, v in (
            ("time", args.recovery_target_time),
            ("txid", args.recovery_target_txid),
            ("name", args.recovery_target_name),
            ("lsn", args.recovery_target_lsn),
            ("immediate", args.recovery_target),
        )
        if v is not None
    ]
    if len(given) > 1:
        parser.error("give at most one --recovery-target-* option")
    if given and not args.archive_dir and given[0][0] != "immediate":
        parser.error("a recovery target needs --archive-dir (the archived WAL to replay)")
    if args.archive_dir and not given:
        parser.error(
            "--archive-dir needs a recovery target (for example --recovery-target-time, or --recovery-target immediate)"
        )
    if not given:
        return None
    kind, value = given[0]
    inclusive = args.recovery_target_inclusive == "true"
    if kind == "time":
        value = pitr.parse_time(value)
    elif kind == "lsn":
        try:
            value = parse_lsn(value)
        except ValueError:
            parser.error(f"--recovery-target-lsn {value!r} is not an LSN like 0/1A2B3C4D")
    return pitr.Target(kind, value, inclusive)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.incremental and (args.archive_dir or args.chain_dir):
        parser.error("--incremental applies one file; it cannot be combined with --archive-dir or --chain-dir")
    if args.list_wal:
        if not args.archive_dir:
            parser.error("--list-wal needs --archive-dir")
        try:
            return _list_wal(args)
        except (pitr.PitrError, ArchiveError, HistoryError, CryptoError, BackupError) as exc:
            return fail(PROG, str(exc))
    try:
        target = _target(args, parser)
    except pitr.PitrError as exc:
        return _failed(args, str(exc))
    if not args.input:
        parser.error("--input FILE is required")
    if not args.data_dir and not args.into_server:
        parser.error("--data-dir is required (or --table with --into-server)")
    if (args.into_server or args.rename_to) and not args.table:
        parser.error("--into-server and --rename-to work with --table")
    if args.rename_to and not args.into_server:
        parser.error(
            "--rename-to names the table created by --into-server; without "
            "--into-server, export the restored table under any name with "
            "rusty-db-export --rename-to"
        )
    if args.into_server:
        host, _, port = args.into_server.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--into-server {args.into_server!r} is not HOST:PORT (e.g. 127.0.0.1:5432)")
    try:
        with sigterm_interrupts():
            if args.table:
                return _restore_table(args, target)
            if args.incremental:
                return _apply_incremental(args)
            if args.chain_dir:
                return _restore_chain(args)
            result, report = _restore(args, target)
    except (
        RestoreError,
        DataDirError,
        pitr.PitrError,
        IncrementalRestoreError,
        ArchiveError,
        HistoryError,
        BackupQueryError,
    ) as exc:
        return _failed(args, str(exc))
    except UnsupportedFormatError as exc:
        return _failed(args, f"cannot restore from {args.input}: {exc}")
    except BackupError as exc:
        return _failed(args, f"{args.input} is damaged: {exc}. Nothing was restored; use another backup")
    except CryptoError as exc:
        return _failed(args, str(exc))
    except OSError as exc:
        return _failed(args, f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
    except KeyboardInterrupt as exc:
        how, _ = interruption(exc)  # a failed restore exits 1, whatever stopped it
        return _failed(args, f"{how}; nothing was restored")
    _print_summary(args, result, report)
    return 0


def _restore(args: argparse.Namespace, target=None):
    bars = _Bars()
    reports = []
    key = _key_for(args.input, args.key_file)

    def recover(staging: str, manifest: dict) -> None:
        if target.kind == "immediate" and not args.archive_dir:
            return
        reports.append(
            pitr.recover(
                staging,
                manifest,
                args.archive_dir,
                target,
                timeline_choice=args.recovery_target_timeline,
                key=key or _archive_key(args),
            )
        )

    try:
        result = restore_full(
            args.input,
            args.data_dir,
            key=key,
            threads=args.threads,
            verify_encryption=args.verify_encryption,
            integrity_check=args.integrity_check,
            force=args.force,
            progress=bars,
            post_install=recover if target is not None else None,
        )
    finally:
        bars.finish()  # end the bar's line before any message is printed
    return result, (reports[0] if reports else None)


def _archive_key(args: argparse.Namespace):
    """Archived WAL may be encrypted even when the base is not: same key sources."""
    from ..backup import keys

    try:
        return keys.resolve_kek(args.key_file)
    except keys.NoKeyError:
        return None


def _apply_incremental(args: argparse.Namespace) -> int:
    key = _key_for(args.input, args.key_file)
    with open(args.input, "rb") as f:
        reader = BackupReader(f, key=key)
        r = apply_incremental(reader, args.data_dir, threads=args.threads)
    summary = {
        "ok": True,
        "backup_id": r.backup_id,
        "type": r.backup_type,
        "parent_id": r.parent_id,
        "data_dir": args.data_dir,
        "databases": r.databases,
        "steps": r.steps,
        "seconds": round(r.seconds, 3),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"Applied {r.backup_type} backup {r.backup_id} (on top of {r.parent_id}) to "
            f"{args.data_dir}: {r.steps} steps in {r.seconds:.1f} s"
        )
    return 0


def _list_wal(args: argparse.Namespace) -> int:
    from ..restore.walinfo import list_transactions

    since = pitr.parse_time(args.since) if args.since else None
    timeline = None
    if args.recovery_target_timeline not in ("latest", "current"):
        timeline = int(args.recovery_target_timeline)
    for item in list_transactions(
        args.archive_dir, timeline=timeline, key=_archive_key(args), since_us=since, database=args.database
    ):
        if args.json:
            print_json(item)
        elif "restore_point" in item:
            print(f"{item['lsn']:>18}  restore point {item['restore_point']!r} at {item['time']}")
        else:
            print(
                f"{item['lsn']:>18}  txid {item['txid']:<8} {item['commit_time']}  "
                f"{item['database']}: {'; '.join(item['changes'])}"
            )
    return 0


def _restore_table(args: argparse.Namespace, target) -> int:
    key = _key_for(args.input, args.key_file)
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
            key=key or (_archive_key(args) if args.archive_dir else None),
            chain_dir=args.chain_dir,
            archive_dir=args.archive_dir,
            target=target,
            timeline_choice=args.recovery_target_timeline,
            force=args.force,
        )
        imported = None
        if args.into_server:
            imported = _import_table(args, r.data_dir, r.database)
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
    if imported:
        print(f"Imported into {args.into_server} as table {imported}")
    else:
        import shlex  # the line is meant to be pasted into a shell, whatever the names

        print(
            f"Export it with: rusty-db-export --table {shlex.quote(r.table)} --input-dir "
            f"{shlex.quote(r.data_dir)} --output {shlex.quote(r.table + '_restored.sql')}"
        )
    return 0


def _import_table(args, data_dir: str, database: str) -> str:
    """Export the restored table as SQL and run it on the server, statement by statement."""
    # Imported here: only this path exports or talks to a server, and every
    # other restore would pay for the imports at start-up.
    from rustydb_client import client as rc

    from ..export import ExportError, export_tables

    host, _, port = args.into_server.rpartition(":")
    workdir = tempfile.mkdtemp(prefix="rustydb-import-")  # private: 0700, a fresh name
    sql_path = os.path.join(workdir, "table.sql")
    try:
        export_tables(data_dir, sql_path, tables=[args.table], database=database, rename_to=args.rename_to)
        with rc.connect(host or "127.0.0.1", int(port), database=args.database) as conn:
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
    return args.rename_to or args.table


def _run_script(conn, sql_path: str) -> None:
    from rustydb_client.sqlsplit import StatementSplitter

    splitter = StatementSplitter()
    with open(sql_path) as f:
        for chunk in iter(lambda: f.read(1 << 20), ""):
            for stmt in splitter.feed(chunk):
                conn.execute(stmt.sql)
        for stmt in splitter.finish():
            conn.execute(stmt.sql)


def _restore_chain(args: argparse.Namespace) -> int:
    """The whole chain goes into the staging directory before it is swapped in,
    so a failing incremental leaves no half-restored data directory."""
    chain = find_chain(args.input, args.chain_dir)
    full, rest = chain[0], chain[1:]

    def apply_rest(staging: str, manifest: dict) -> None:
        for path in rest:
            key = _key_for(path, args.key_file)
            with open(path, "rb") as f:
                # restore_full syncs the chain's files once, and discards the
                # staging directory if anything fails
                apply_incremental(BackupReader(f, key=key), staging, threads=args.threads, staging=True)

    restore_full(
        full,
        args.data_dir,
        key=_key_for(full, args.key_file),
        threads=args.threads,
        verify_encryption=args.verify_encryption,
        integrity_check=False,
        force=args.force,
        post_install=apply_rest,
    )
    summary = {"ok": True, "data_dir": args.data_dir, "chain": chain}
    if args.json:
        print_json(summary)
    else:
        print(f"Restored the chain of {len(chain)} backups into {args.data_dir}:")
        for p in chain:
            print(f"  {p}")
        print(f"Start the server with: rusty-db-server --data-dir {args.data_dir}")
    return 0


def _key_for(path: str, key_file: str | None):
    try:
        with open(path, "rb") as f:
            header = BackupReader(f).header
    except OSError as exc:
        raise RestoreError(f"cannot open backup {path}: {exc.strerror or exc}") from None
    return resolve_read_key(header, key_file)


def _failed(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print_json({"ok": False, "input": args.input, "data_dir": args.data_dir, "error": message})
    into = args.data_dir or f"the server at {args.into_server}"
    return fail(PROG, f"restore of {args.input} into {into} failed: {message}")


def _print_summary(args: argparse.Namespace, r: RestoreResult, report=None) -> None:
    rate = mb_per_second(r.bytes_written, r.seconds)
    extra = report.as_dict() if report is not None else {}
    if args.json:
        print_json(
            {
                **extra,
                **{
                    "ok": True,
                    "backup_id": r.backup_id,
                    "type": r.backup_type,
                    "input": args.input,
                    "data_dir": r.data_dir,
                    "databases": r.databases,
                    "tables": r.tables,
                    "bytes": r.bytes_written,
                    "seconds": round(r.seconds, 3),
                    "mb_per_s": rate,
                    "encrypted": r.encrypted,
                    "verified_encryption": r.verified_encryption,
                    "integrity_checked": r.integrity_checked,
                    "replaced_old": r.replaced_old,
                },
            }
        )
        return
    print(f"Restored backup {r.backup_id} ({r.backup_type}) into {r.data_dir}")
    print(f"Databases: {', '.join(r.databases)} ({r.tables} tables)")
    print(f"Data: {human_size(r.bytes_written)} in {r.seconds:.1f} s, {rate} MB/s")
    if r.verified_encryption:
        print(
            "✓ Every chunk verified before writing" + ("" if r.encrypted else " (backup not encrypted: checksums only)")
        )
    for line in r.checks:
        print(f"✓ {line}")
    if report is not None:
        d = report.as_dict()
        print(
            f"Recovered to {d['recovery_target']}: {d['records_replayed']} WAL records "
            f"({d['changed_rows']} row changes) in {d['seconds']} s"
        )
        print(
            f"Last replayed transaction: txid {d['last_replayed_txid']} committed at {d['last_replayed_commit_time']}"
        )
        print(
            f"The server will continue on new timeline {d['timeline']} "
            f"(from {d['previous_timeline']} at LSN {d['end_lsn']})"
        )
    print(f"Start the server with: rusty-db-server --data-dir {r.data_dir}")


if __name__ == "__main__":
    sys.exit(main())
