"""rusty-db-restore --input LAST --chain-dir DIR --data-dir D: restore a whole chain
(the full backup, then every incremental up to LAST) found among the files of the
DIRs, or where the backup catalog of D recorded them."""

from __future__ import annotations

import argparse
import shlex

from ...restore.chain import restore_chain
from ..output import print_json


def run(args: argparse.Namespace) -> int:
    kept: list = []
    chain = restore_chain(
        args.input,
        args.chain_dir,
        args.data_dir,
        key_file=args.key_file,
        threads=args.threads,
        verify_encryption=args.verify_encryption,
        force=args.force,
        kept=kept,
    )
    previous = kept[0] if kept else None
    summary = {"ok": True, "data_dir": args.data_dir, "chain": chain, "previous_data_dir": previous}
    if args.json:
        print_json(summary)
    else:
        print(f"Restored the chain of {len(chain)} backups into {args.data_dir}:")
        for p in chain:
            print(f"  {p}")
        if previous is not None:
            print(f"The data directory that was in {args.data_dir} is kept in {previous}")
            print(f"Once the restored server is checked, delete it with: rm -rf {shlex.quote(previous)}")
        print(f"Start the server with: rusty-db-server --data-dir {args.data_dir}")
    return 0
