"""rusty-db-restore: turn a full backup file into a data directory a server starts on.

    rusty-db-restore --input FILE --data-dir D [--threads N] [--verify-encryption]
                     [--integrity-check] [--force] [--key-file F] [--json]

The work is done by ``rustydb_server.restore.full``; this module parses
arguments, finds the key, shows progress and prints the outcome.

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

from ..backup.container import BackupError, BackupReader
from ..crypto import CryptoError
from ..datadir import DataDirError
from ..restore.full import RestoreError, RestoreResult, resolve_read_key, restore_full
from .progress import Progress, fail, human_size, mb_per_second, print_json

PROG = "rusty-db-restore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Restore a full backup into a data directory. The directory must not be "
        "in use by a server and must be empty or new (or use --force). Keys come from "
        "--key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    p.add_argument("--input", "-i", required=True, metavar="FILE", help="backup file to restore")
    p.add_argument("--data-dir", "-D", required=True, metavar="DIR",
                   help="data directory to create (or replace, with --force)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="decrypt, decompress and check chunks on N threads (default 1)")
    p.add_argument("--verify-encryption", action="store_true",
                   help="authenticate every chunk before writing anything")
    p.add_argument("--integrity-check", action="store_true",
                   help="after writing, run SQLite's integrity check and compare row counts "
                        "with those recorded in the backup")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty data directory (never one a running server holds); "
                        "its old contents are removed only once the restore succeeded")
    p.add_argument("--key-file", help="key file of an encrypted backup")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _restore(args)
    except (RestoreError, DataDirError) as exc:
        return _failed(args, str(exc))
    except BackupError as exc:
        return _failed(args, f"{args.input} is damaged: {exc}. Nothing was restored; use "
                       "another backup")
    except CryptoError as exc:
        return _failed(args, str(exc))
    except OSError as exc:
        return _failed(args, f"{exc.strerror or exc}"
                       + (f" ({exc.filename})" if exc.filename else ""))
    except KeyboardInterrupt:
        return _failed(args, "interrupted; nothing was restored")
    _print_summary(args, result)
    return 0


def _restore(args: argparse.Namespace) -> RestoreResult:
    bars = _Bars()
    try:
        key = _key_for(args.input, args.key_file)
        return restore_full(
            args.input, args.data_dir, key=key, threads=args.threads,
            verify_encryption=args.verify_encryption, integrity_check=args.integrity_check,
            force=args.force, progress=bars,
        )
    finally:
        bars.finish()  # end the bar's line before any message is printed


def _key_for(path: str, key_file: str | None):
    try:
        with open(path, "rb") as f:
            header = BackupReader(f).header
    except OSError as exc:
        raise RestoreError(f"cannot open backup {path}: {exc.strerror or exc}") from None
    return resolve_read_key(header, key_file)


def _failed(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print_json({"ok": False, "input": args.input, "data_dir": args.data_dir,
                    "error": message})
    return fail(PROG, f"restore of {args.input} into {args.data_dir} failed: {message}")


def _print_summary(args: argparse.Namespace, r: RestoreResult) -> None:
    rate = mb_per_second(r.bytes_written, r.seconds)
    if args.json:
        print_json({
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
        })
        return
    print(f"Restored backup {r.backup_id} ({r.backup_type}) into {r.data_dir}")
    print(f"Databases: {', '.join(r.databases)} ({r.tables} tables)")
    print(f"Data: {human_size(r.bytes_written)} in {r.seconds:.1f} s, {rate} MB/s")
    if r.verified_encryption:
        print("✓ Every chunk verified before writing"
              + ("" if r.encrypted else " (backup not encrypted: checksums only)"))
    for line in r.checks:
        print(f"✓ {line}")
    print(f"Start the server with: rusty-db-server --data-dir {r.data_dir}")


if __name__ == "__main__":
    sys.exit(main())
