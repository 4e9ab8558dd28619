"""rusty-db-restore --input LAST --chain-dir DIR --data-dir D: restore a whole chain
(the full backup, then every incremental up to LAST) found among DIR's files."""

from __future__ import annotations

import argparse

from ...restore.chain import restore_chain
from ..progress import print_json


def run(args: argparse.Namespace) -> int:
    chain = restore_chain(
        args.input,
        args.chain_dir,
        args.data_dir,
        key_file=args.key_file,
        threads=args.threads,
        verify_encryption=args.verify_encryption,
        force=args.force,
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
