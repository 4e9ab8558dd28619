"""rusty-db-restore --input FILE --data-dir D: restore a full (or pitr-base) backup."""

from __future__ import annotations

import argparse
import shlex

from ...restore.full import RestoreResult, read_key_for, restore_full
from ...restore.pitr import PitrReport
from ..output import human_size, mb_per_second, print_json
from ..progress import Progress


class Bars:
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


def run(args: argparse.Namespace) -> int:
    bars = Bars()
    try:
        result = restore_full(
            args.input,
            args.data_dir,
            key=read_key_for(args.input, args.key_file),
            threads=args.threads,
            verify_encryption=args.verify_encryption,
            integrity_check=args.integrity_check,
            force=args.force,
            progress=bars,
        )
    finally:
        bars.finish()  # end the bar's line before any message is printed
    print_summary(args, result)
    return 0


def print_summary(args: argparse.Namespace, r: RestoreResult, report: PitrReport | None = None) -> None:
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
                    "previous_data_dir": r.kept_old,
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
            f"({d['changed_rows']} row changes) in {d['replay_seconds']} s"
        )
        print(
            f"Last replayed transaction: txid {d['last_replayed_txid']} committed at {d['last_replayed_commit_time']}"
        )
        print(
            f"The server will continue on new timeline {d['timeline']} "
            f"(from {d['previous_timeline']} at LSN {d['end_lsn']})"
        )
    if r.kept_old is not None:
        print(f"The data directory that was in {r.data_dir} is kept in {r.kept_old}")
        print(f"Once the restored server is checked, delete it with: rm -rf {shlex.quote(r.kept_old)}")
    elif r.replaced_old:
        print(f"The previous contents of {r.data_dir} were replaced (--force)")
    print(f"Start the server with: rusty-db-server --data-dir {r.data_dir}")
