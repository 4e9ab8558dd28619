"""rusty-db-restore --input INCR --data-dir D --incremental: apply one incremental or
differential backup to a data directory restored from its chain."""

from __future__ import annotations

import argparse

from ...container.reader import BackupReader
from ...restore.full import read_key_for
from ...restore.incremental import apply_incremental
from ..progress import print_json


def run(args: argparse.Namespace) -> int:
    key = read_key_for(args.input, args.key_file)
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
