"""rusty-db-backup: take, verify, describe, query and re-key backup files.

    rusty-db-backup --type full --output FILE [--compress [lz4|zstd|snappy]] [--encrypt]
                    [--key-file F] [--verify] [--threads N] [--database NAME] [--nice N] [--json]
    rusty-db-backup --type full --repo URL|N|NAME [...]  (into a repository: a directory or s3://bucket/prefix)
    rusty-db-backup --verify FILE [--key-file F] [--threads N] [--json]
    rusty-db-backup --info FILE [--json]
    rusty-db-backup --repo URL|N|NAME --list | --info ID|latest | --verify ID|latest
    rusty-db-backup --query FILE SQL [--database NAME] [--key-file F] [--json]
                    [--archive-dir A (--recovery-target-time T | --recovery-target-txid X)]
    rusty-db-backup --query ID|latest SQL --repo URL [--recovery-target-time T | --recovery-target-txid X]
    rusty-db-backup --rotate-key OLD NEW FILE...
    rusty-db-backup --create-key-file PATH
    rusty-db-backup --expire --data-dir D [--archive-dir A] [--dry-run] [--json]

This module parses the flags and hands them to the verb they name; each verb
is a module of ``tools/backup/``. Taking a backup streams it from a running
server; the other verbs work on files alone and need no server.

Encryption keys come from --key-file, $RUSTYDB_BACKUP_KEY_FILE or
$RUSTYDB_BACKUP_PASSPHRASE. --rotate-key takes key files; to move a
passphrase-encrypted backup to a key file, set $RUSTYDB_BACKUP_PASSPHRASE and
pass OLD as "-".

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

from rustydb_client.tls import add_arguments as add_tls_arguments

from ..codecs import CODECS
from ..container.format import BackupType
from ..keys import ENV_PASSPHRASE
from .argtypes import niceness, thread_count
from .backup import PROG, create_key, expire, info, query, rotate_key, take, verify
from .backup import repo as repo_list
from .interrupt import interruption, sigterm_interrupts
from .output import ToolParser, fail, run_main

DEFAULT_CODEC = "lz4"

#: The verbs by the flag that names them (its argparse dest). --type comes
#: first: with it, --verify is a flag of taking the backup, not a verb.
VERBS = {
    "type": take.run,
    "info": info.run,
    "rotate_key": rotate_key.run,
    "create_key_file": create_key.run,
    "query": query.run,
    "verify_file": verify.run,
    "expire": expire.run,
    "list": repo_list.run,
}


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = ToolParser(
        prog=PROG,
        description="Take a backup from a running RustyDB server, or verify, describe or "
        "re-key a backup file. The password comes from $RUSTYDB_PASSWORD; encryption keys "
        "from --key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    # --verify is both a mode (--verify FILE) and a flag of --type, so the
    # "exactly one mode" rule is checked in check_usage, not by argparse.
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--type", choices=[t.value for t in BackupType.taken_by_server()], help="take a backup of this type"
    )
    p.add_argument(
        "--verify",
        dest="verify_file",
        metavar="FILE",
        nargs="?",
        const=True,
        default=None,
        help="check every chunk and digest of FILE without writing anything "
        "(with --type: verify the new backup once written)",
    )
    mode.add_argument("--info", metavar="FILE", help="print FILE's metadata (no key needed)")
    mode.add_argument(
        "--rotate-key",
        nargs="+",
        metavar="OLD NEW FILE",
        help="re-wrap the data key of each FILE from key file OLD to key file NEW "
        f"(OLD '-' means the passphrase in ${ENV_PASSPHRASE})",
    )
    mode.add_argument(
        "--query",
        nargs=2,
        metavar=("FILE", "SQL"),
        help="run a read-only SQL query on a backup without restoring it "
        "(only the chunks the query reads are decrypted); --database "
        "picks the database",
    )
    mode.add_argument(
        "--create-key-file", metavar="PATH", help="create a new random key file (mode 0600; never overwrites)"
    )
    mode.add_argument(
        "--list",
        action="store_const",
        const=True,
        default=None,
        help="with --repo URL: list the repository's backups from its own catalog (no server needed)",
    )
    mode.add_argument(
        "--expire",
        action="store_const",
        const=True,
        default=None,
        help="remove the backups and archived WAL the retention settings no longer keep "
        "(backup_retention_days, backup_retention_full_count, archive_retention_days); "
        "a kept backup always keeps its whole chain. Needs --data-dir; a server running there is asked to "
        "do it (through its HTTP API)",
    )
    p.add_argument("--data-dir", "-D", metavar="DIR", help="with --expire: the data directory whose catalog to use")
    p.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="with --expire: the archived WAL to expire too (default the archive_dest setting); with --query: "
        "the archived WAL replayed from the base backup up to a --recovery-target-*",
    )
    p.add_argument(
        "--recovery-target-time",
        metavar="T",
        help="with --query and --archive-dir: query the state at time T (local time, or ISO 8601 with a zone)",
    )
    p.add_argument(
        "--recovery-target-txid",
        metavar="X",
        type=int,
        help="with --query and --archive-dir: query the state right after transaction X",
    )
    p.add_argument("--dry-run", action="store_true", help="with --expire: list what would go and why, remove nothing")
    p.add_argument("--output", "-o", metavar="FILE", help="backup file to write (with --type)")
    p.add_argument(
        "--repo",
        metavar="URL|N|NAME",
        help="a repository (a local directory or s3://bucket/prefix): with --type, write the backup into it "
        "(instead of --output) and into its catalog, and N, repoN or a NAME names the server's "
        "backup_repositories entry (the server copies the backup to the others; without --type the "
        "config file's backup_repositories says which); with --info, --verify and "
        "--query, FILE is a backup id there, or latest (and a recovery target reads the repository's "
        "archived WAL). S3 credentials come from the AWS environment and files, "
        "never from the command line",
    )
    p.add_argument(
        "--compress",
        nargs="?",
        const=DEFAULT_CODEC,
        choices=CODECS[1:],
        metavar="{lz4,zstd,snappy}",
        help="compress chunks (default algorithm lz4)",
    )
    p.add_argument("--encrypt", action="store_true", help="encrypt with AES-256-GCM")
    p.add_argument("--key-file", help="key file for --encrypt, --verify of an encrypted backup")
    p.add_argument(
        "--threads", type=thread_count, default=1, help="compress, encrypt and check chunks on N threads (default 1)"
    )
    p.add_argument(
        "--nice",
        type=niceness,
        default=None,
        metavar="N",
        help="with --type: run at CPU niceness N, 0..19 (default "
        f"{take.DEFAULT_NICE}), so compressing the backup leaves the CPU to the "
        "server it protects when both are busy; 0 keeps normal priority",
    )
    p.add_argument(
        "--database", "-d", action="append", metavar="NAME", help="back up only this database (repeatable; default all)"
    )
    p.add_argument("--base-backup", metavar="FILE", help="for --type incremental: the backup to take changes since")
    p.add_argument(
        "--host",
        default=env.get("RUSTYDB_HOST"),
        help="server address, or a directory holding its Unix socket (default $RUSTYDB_HOST, else the "
        "socket in /run/rustydb, then 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=None, help="server port (default $RUSTYDB_PORT or 5432)")
    p.add_argument(
        "--user", "-U", default=env.get("RUSTYDB_USER"), help="user name (default $RUSTYDB_USER or your login name)"
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="with --type: read the password from the first line of FILE (instead of $RUSTYDB_PASSWORD)",
    )
    add_tls_arguments(p)  # with --type: the backup streams over TLS from a server on a TCP --host
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout, whatever the outcome")
    return p


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; parser.error exits with status 2."""
    taking = args.type is not None
    modes = [args.type, args.info, args.rotate_key, args.create_key_file, args.query, args.expire, args.list]
    if not any(m is not None for m in modes) and args.verify_file is None:
        parser.error("choose one of --type, --verify FILE, --info FILE, --rotate-key, --create-key-file, --expire")
    if taking and isinstance(args.verify_file, str):
        parser.error("with --type, --verify takes no FILE (it verifies the new backup)")
    if not taking and any(m is not None for m in modes) and args.verify_file is not None:
        parser.error("--verify FILE cannot be combined with --info, --rotate-key, --create-key-file or --expire")
    if not taking and args.verify_file is True:
        parser.error("--verify needs the backup FILE to check")
    if taking and not args.output and not args.repo:
        parser.error("--type needs --output FILE or --repo URL (where to write the backup)")
    if args.output and args.repo:
        parser.error("give --output FILE or --repo URL, not both")
    if args.repo and not (taking or args.info or args.list or isinstance(args.verify_file, str) or args.query):
        parser.error("--repo is used with --type, --list, --info, --verify or --query")
    if args.list and not args.repo:
        parser.error("--list needs --repo URL (the repository whose backups to list)")
    if not taking:
        for flag, value in (
            ("--output", args.output),
            ("--compress", args.compress),
            ("--encrypt", args.encrypt),
            ("--database", args.database if not args.query else None),
            ("--base-backup", args.base_backup),
            ("--nice", args.nice is not None),
            ("--password-file", args.password_file),
        ):
            if value:
                parser.error(f"{flag} is only used with --type")
    if taking and args.key_file and not args.encrypt:
        parser.error("--key-file with --type needs --encrypt (an unencrypted backup uses no key)")
    if args.expire and not args.data_dir:
        parser.error("--expire needs --data-dir DIR (the data directory whose backup catalog to use)")
    if not args.expire:
        for flag, value in (
            ("--data-dir", args.data_dir),
            ("--archive-dir", args.archive_dir if not args.query else None),
            ("--dry-run", args.dry_run),
        ):
            if value:
                parser.error(f"{flag} is only used with --expire")
    targets = [t for t in (args.recovery_target_time, args.recovery_target_txid) if t is not None]
    if targets and not (args.query and (args.archive_dir or args.repo)):
        parser.error(
            "--recovery-target-time and --recovery-target-txid are only used with --query and --archive-dir (or --repo)"
        )
    if args.query and args.archive_dir and len(targets) != 1:
        parser.error("--query with --archive-dir needs one of --recovery-target-time or --recovery-target-txid")
    if args.base_backup and args.type != BackupType.INCREMENTAL:
        parser.error("--base-backup is only used with --type incremental")
    if args.rotate_key is not None and len(args.rotate_key) < 3:
        parser.error("--rotate-key needs OLD NEW FILE... (two key files, then backup files)")
    if args.port is None:
        raw = os.environ.get("RUSTYDB_PORT", "5432")
        try:
            args.port = int(raw)
        except ValueError:
            parser.error(f"RUSTYDB_PORT={raw!r} is not a port number")


def chosen_verb(args: argparse.Namespace):
    """The entry point of the one verb the flags name (check_usage made sure there is one)."""
    return next(run for dest, run in VERBS.items() if getattr(args, dest) is not None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main(PROG, parser, argv, lambda args: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    check_usage(parser, args)
    if args.repo and args.type is None:
        # --repo N, repoN or NAME without a server: backup_repositories of the config file
        # (with --type the server's own list says, tools/backup/take.py).
        from ..settings import SettingError
        from .repository_settings import resolve_from_config

        try:
            args.repo = resolve_from_config(args.repo)
        except SettingError as exc:
            return fail(PROG, str(exc))
    run = chosen_verb(args)
    try:
        with sigterm_interrupts():
            return run(args)
    except KeyboardInterrupt as exc:
        how, status = interruption(exc)
        fail(PROG, f"{how}; nothing was left half-written")
        return status


if __name__ == "__main__":
    sys.exit(main())
