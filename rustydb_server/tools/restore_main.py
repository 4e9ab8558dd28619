"""rusty-db-restore: turn backups into a data directory a server starts on.

    rusty-db-restore --input FILE --data-dir D [--threads N] [--verify-encryption]
                     [--integrity-check] [--force] [--key-file F] [--json]
    rusty-db-restore --input INCR --data-dir D --incremental
    rusty-db-restore --input LAST --data-dir D --chain-dir DIR
    rusty-db-restore --input BASE --archive-dir A|--repo URL --data-dir D
                     --recovery-target-time T | --recovery-target-txid N |
                     --recovery-target-name NAME | --recovery-target-lsn L |
                     --recovery-target immediate
                     [--recovery-target-inclusive true|false]
                     [--recovery-target-timeline latest|current|N]
    rusty-db-restore --repo URL --data-dir D [--backup latest|ID] [--recovery-target-* ...]
                     [--table NAME]   (from a repository alone: a directory or s3://bucket/prefix)
    rusty-db-restore --drill --data-dir SERVER_DATA_DIR [--backup latest|ID] [--json]
    rusty-db-restore --drill --input FILE [--chain-dir DIR] [--data-dir SERVER_DATA_DIR]
    rusty-db-restore ... --as-of 'TIME' | txid:N | lsn:X   (a recovery target's shorthand)
    rusty-db-restore ... --dry-run   (the plan, every piece verified; writes nothing)

Each verb lives in its own module under ``rustydb_server.tools.restore``; this
module parses the arguments, checks that they go together and dispatches.

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from ..restore.pitr import PitrError, Target, make_target
from .argtypes import as_of, thread_count
from .output import ToolParser, run_main
from .restore.failure import PROG, report_failure, run_reporting_failures


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(
        prog=PROG,
        description="Restore a full backup into a data directory. The directory must not be "
        "in use by a server; it must be empty or new, or hold a stopped server's data directory, "
        "which is kept as DIR.pre-restore-TIME (or replaced with --force). Keys come from "
        "--key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    p.add_argument("--input", "-i", metavar="FILE", help="backup file to restore")
    p.add_argument(
        "--data-dir", "-D", metavar="DIR", help="data directory to create or restore over (the one there is kept aside)"
    )
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
        help="discard what the target holds instead of keeping it aside (never a running server's "
        "data); the old contents are removed only once the restore succeeded",
    )
    p.add_argument("--key-file", help="key file of an encrypted backup")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout, whatever the outcome (with --list-wal: the whole listing)",
    )
    p.add_argument(
        "--incremental",
        action="store_true",
        help="apply an incremental or differential backup to a data directory "
        "restored from its chain (not started since)",
    )
    p.add_argument(
        "--chain-dir",
        metavar="DIR",
        action="extend",
        nargs="+",
        help="find the whole chain of --input (full, then incrementals) among the "
        "backup files in DIR (several directories may be given) and apply it in order; a backup "
        "in none of them is looked for where the backup catalog of --data-dir recorded it",
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
        help="import the restored table into a running server (through rusty-db-export's SQL), in one transaction; "
        ":PORT with no host: the local server through its Unix socket first",
    )
    tbl.add_argument("--rename-to", metavar="NAME", help="with --into-server: create the table under this name")
    tbl.add_argument(
        "--user", "-U", help="with --into-server: the user to connect as (default $RUSTYDB_USER or your login name)"
    )
    tbl.add_argument(
        "--password-file",
        metavar="FILE",
        help="with --into-server: read the password from the first line of FILE (instead of $RUSTYDB_PASSWORD)",
    )
    recovery = p.add_argument_group("point-in-time recovery")
    recovery.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="archived WAL (the archive_dest value: a directory, or s3://bucket/prefix) to replay on top of "
        "the base backup",
    )
    recovery.add_argument(
        "--repo",
        metavar="URL|N|NAME",
        help="a repository (a directory or s3://bucket/prefix). With --input: replay the archived WAL it "
        "holds (under wal/). Without --input: restore from it alone, on a machine with nothing else: its "
        "catalog gives the backup and its chain (--backup, default the latest), its wal/ the archived WAL "
        "(replayed to the target, or to the latest point when no target is given). N, repoN or a NAME "
        "is an entry of the config file's backup_repositories. S3 endpoint and "
        "credentials come from the config file's repository_s3_* settings or the AWS environment",
    )
    recovery.add_argument(
        "--list-wal",
        action="store_true",
        help="list the transactions in --archive-dir (LSN, txid, commit time, "
        "what changed) to choose a recovery target; restores nothing",
    )
    recovery.add_argument("--since", metavar="TIME", help="with --list-wal: from this time on")
    recovery.add_argument(
        "--recovery-target-time",
        metavar="TIME",
        help="'YYYY-MM-DD HH:MM:SS[.ffffff]' local time, or ISO 8601 with a zone",
    )
    recovery.add_argument("--recovery-target-txid", type=int, metavar="N")
    recovery.add_argument(
        "--as-of",
        type=as_of,
        metavar="POINT",
        help="shorthand for a recovery target: 'YYYY-MM-DD HH:MM:SS' (= --recovery-target-time), txid:N "
        "(= --recovery-target-txid) or lsn:X (= --recovery-target-lsn); as in rusty-db-waldump",
    )
    recovery.add_argument("--recovery-target-name", metavar="NAME", help="a name given to CREATE RESTORE POINT")
    recovery.add_argument("--recovery-target-lsn", metavar="LSN", help="e.g. 0/1A2B3C4D")
    recovery.add_argument(
        "--recovery-target", choices=["immediate"], help="immediate: stop as soon as the base backup is consistent"
    )
    recovery.add_argument(
        "--recovery-target-inclusive",
        choices=["true", "false"],
        default="true",
        help="stop just after (true, default) or just before the target",
    )
    recovery.add_argument(
        "--recovery-target-timeline",
        default=None,
        metavar="TL",
        help="latest (default), current, or a timeline number; with --list-wal: list only that "
        "timeline's history (default: every timeline in the archive)",
    )
    dr = p.add_argument_group("restore drill (the monthly test restore as one command)")
    dr.add_argument(
        "--drill",
        action="store_true",
        help="restore a backup's whole chain into a temporary directory, start a server on it (free ports, "
        "its own socket), check its health, every table's row count against the backup and PRAGMA "
        "integrity_check, stop it, remove the directory and record the outcome in --data-dir "
        "(the data directory of the server whose backup catalog lists the backup; only read otherwise)",
    )
    dr.add_argument(
        "--backup",
        metavar="latest|ID",
        help="with --drill: the backup of --data-dir's catalog to drill (default latest); with --repo URL "
        "(no --input): the backup of the repository to restore, by id or a unique prefix (default latest)",
    )
    dr.add_argument(
        "--drill-dir", metavar="DIR", help="with --drill: where the temporary directory goes (default $TMPDIR)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (backups in order, archived segments, transactions and bytes to replay, "
        "estimated time) after verifying every piece, and write nothing; exit 0 only if the restore would succeed",
    )
    return p


# Which verb a command line asks for: the first whose option is given, and the
# module under tools/restore/ that runs it. Only that module is imported: a
# point-in-time restore does not pay for the drill's server client or the
# repository's S3 support at every start (its fixed cost, issue 16).
VERBS: tuple[tuple[str, str], ...] = (
    ("repo_alone", "repo"),
    ("table", "table"),
    ("incremental", "incremental"),
    ("chain_dir", "chain"),
    ("archive_dir", "pitr"),
    ("input", "full"),
)
# The verbs whose run() takes the arguments alone (no recovery target).
_NO_TARGET = frozenset({"incremental", "chain", "full", "drill", "list_wal"})


def _verb(name: str) -> Callable[[argparse.Namespace, Target | None], int]:
    module = importlib.import_module(f"{__package__}.restore.{name}")
    if name in _NO_TARGET:
        return lambda args, _target: module.run(args)
    return module.run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main(PROG, parser, argv, lambda args: _dispatch(parser, args))


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.repo and "/" not in args.repo and ":" not in args.repo:
        # --repo N, repoN or NAME: an entry of the config file's backup_repositories.
        from ..settings import SettingError
        from . import repository_settings

        try:
            args.repo = repository_settings.resolve_from_config(args.repo)
        except SettingError as exc:
            return report_failure(args, str(exc))
    # --repo without --input: everything comes from the repository (tools/restore/repo.py).
    args.repo_alone = bool(args.repo) and not args.input and not args.list_wal
    _archive_location(parser, args)
    if args.incremental and (args.archive_dir or args.chain_dir):
        parser.error("--incremental applies one file; it cannot be combined with --archive-dir or --chain-dir")
    if args.drill:
        if args.repo:
            parser.error("--drill drills a backup of --data-dir's catalog or --input FILE; not --repo")
        _check_drill_options(args, parser)
        return _verb("drill")(args, None)
    if (args.backup and not args.repo_alone) or args.drill_dir:
        parser.error("--backup and --drill-dir are for --drill (and --backup for --repo URL without --input)")
    if args.list_wal:
        if not args.archive_dir:
            parser.error("--list-wal needs --archive-dir (or --repo)")
        if args.recovery_target_timeline == "current":
            parser.error("--list-wal has no base backup, so no current timeline: give latest or a timeline number")
        return _verb("list_wal")(args, None)
    args.recovery_target_timeline = args.recovery_target_timeline or "latest"
    try:
        target = _target(args, parser)
    except PitrError as exc:
        return report_failure(args, str(exc))
    _check_restore_options(args, parser)
    if args.dry_run:
        if args.repo_alone:
            parser.error("--dry-run plans a restore of --input FILE; it does not plan a restore from --repo alone")
        if args.table or args.incremental or args.into_server:
            parser.error("--dry-run plans a full, --chain-dir or point-in-time restore, not --table or --incremental")
        return run_reporting_failures(args, lambda: _verb("dry_run")(args, target))
    run = _verb(next(name for option, name in VERBS if getattr(args, option)))
    return run_reporting_failures(args, lambda: run(args, target))


def _archive_location(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--repo R is --archive-dir R/wal; an s3:// --archive-dir (archive_dest's value) is its wal/ prefix."""
    if not (args.repo or args.archive_dir):
        return
    from ..archive import destination  # only the restores that read an archive need these
    from ..repository import is_s3_url

    if args.repo:
        if args.archive_dir:
            parser.error("give --repo or --archive-dir, not both")
        if args.repo_alone:
            if is_s3_url(args.repo):
                _configure_s3(parser)
            return
        args.archive_dir = repository_wal(args.repo)
    elif args.archive_dir and is_s3_url(args.archive_dir):
        args.archive_dir = destination.location(args.archive_dir)
    if args.archive_dir and is_s3_url(args.archive_dir):
        _configure_s3(parser)


def _configure_s3(parser: argparse.ArgumentParser) -> None:
    """The config file's repository_s3_* settings (read only when an s3:// location is given)."""
    from ..settings import SettingError
    from . import repository_settings

    try:
        repository_settings.configure()
    except SettingError as exc:
        parser.error(str(exc))


def repository_wal(repo: str) -> str:
    """Where a repository keeps its archived WAL."""
    from ..archive import destination
    from ..repository import is_s3_url

    if is_s3_url(repo):
        return destination.location(repo)
    return os.path.join(repo, destination.WAL_PREFIX)


def _check_drill_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.data_dir and not args.input:
        parser.error("--drill needs --data-dir (the server's data directory, whose backup catalog lists the backups)")
    if args.input and args.backup:
        parser.error("--drill drills --input FILE or --backup latest|ID of --data-dir's catalog, not both")
    if args.chain_dir and not args.input:
        parser.error("--chain-dir with --drill goes with --input FILE")
    others = [
        f"--{name.replace('_', '-')}"
        for name in (
            "incremental",
            "table",
            "archive_dir",
            "list_wal",
            "into_server",
            "force",
            "integrity_check",
            "dry_run",
        )
        if getattr(args, name)
    ]
    if others or any(
        getattr(args, n) is not None
        for n in (
            "recovery_target_time",
            "recovery_target_txid",
            "recovery_target_name",
            "recovery_target_lsn",
            "as_of",
        )
    ):
        parser.error(f"--drill cannot be combined with {', '.join(others) or 'a recovery target'}")


def _target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target | None:
    given = [
        (k, v)
        for k, v in (
            ("time", args.recovery_target_time),
            ("txid", args.recovery_target_txid),
            ("name", args.recovery_target_name),
            ("lsn", args.recovery_target_lsn),
            ("immediate", args.recovery_target),
            ("as_of", args.as_of),
        )
        if v is not None
    ]
    if len(given) > 1:
        parser.error("give at most one --recovery-target-* option (or --as-of)")
    if given and not args.archive_dir and not args.repo_alone and given[0][0] != "immediate":
        parser.error("a recovery target needs --archive-dir or --repo (the archived WAL to replay)")
    if args.archive_dir and not given:
        parser.error(
            "--archive-dir needs a recovery target (for example --recovery-target-time, or --recovery-target immediate)"
        )
    if not given:
        return None
    kind, value = given[0]
    if kind == "as_of":  # parsed already (tools/argtypes.as_of)
        return Target(value.kind, value.value, args.recovery_target_inclusive == "true")
    try:
        return make_target(kind, value, args.recovery_target_inclusive == "true")
    except ValueError:  # only an LSN is read that way; a time raises PitrError
        parser.error(f"--recovery-target-lsn {value!r} is not an LSN like 0/1A2B3C4D")


def _check_restore_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.repo_alone:
        for flag, value in (
            ("--chain-dir", args.chain_dir),
            ("--incremental", args.incremental),
        ):
            if value:
                parser.error(f"{flag} reads local files; with --repo the repository's catalog chooses the backups")
    elif args.backup:
        parser.error("--backup names a backup of --repo URL")
    elif not args.input:
        parser.error("--input FILE is required (or --repo URL)")
    if not args.data_dir and not args.into_server:
        parser.error("--data-dir is required (or --table with --into-server)")
    if (args.into_server or args.rename_to) and not args.table:
        parser.error("--into-server and --rename-to work with --table")
    if (args.user or args.password_file) and not args.into_server:
        parser.error("--user and --password-file are for --into-server (the server the table is imported into)")
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


if __name__ == "__main__":
    sys.exit(main())
