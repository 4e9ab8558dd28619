"""rusty-db-restore --input BASE --archive-dir A --data-dir D --recovery-target-*:
point-in-time recovery of a base backup and the archived WAL after it."""

from __future__ import annotations

import argparse

from ...restore.pitr import Target, restore_to_target
from .full import Bars, print_summary


def run(args: argparse.Namespace, target: Target) -> int:
    bars = Bars()
    try:
        result, report = restore_to_target(
            args.input,
            args.data_dir,
            args.archive_dir,
            target,
            key_file=args.key_file,
            timeline_choice=args.recovery_target_timeline,
            threads=args.threads,
            verify_encryption=args.verify_encryption,
            integrity_check=args.integrity_check,
            force=args.force,
            progress=bars,
        )
    finally:
        bars.finish()  # end the bar's line before any message is printed
    print_summary(args, result, report)
    return 0
