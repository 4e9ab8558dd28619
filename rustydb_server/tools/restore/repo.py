"""rusty-db-restore --repo URL --data-dir D [--backup latest|ID] [--recovery-target-* ...] [--table NAME]:
restore from a repository alone (a local directory or s3://bucket/prefix), on a
machine with no other state: the repository's catalog says which backups form
the chain, the archived WAL under its wal/ is replayed when there is any (to
the target, or to the latest point it reaches). See restore/from_repository.py.

S3 credentials, endpoint and region come from the standard AWS environment
and files, never from the command line."""

from __future__ import annotations

import argparse

from ...restore.chain import restore_members
from ...restore.from_repository import fetch
from ...restore.full import read_key_for, restore_full
from ...restore.pitr import Target, restore_to_target
from ..output import print_json
from .full import Bars, print_summary


def run(args: argparse.Namespace, target: Target | None) -> int:
    from ...repository import location

    repo = location.repository(args.repo)  # with the config file's repository_s3_* (restore_main)
    which = args.backup or "latest"
    # A table is read out of the backups in place, by byte ranges; a whole restore downloads them.
    with fetch(
        repo,
        args.data_dir or ".",
        which=which,
        target=target,
        archive_dir=args.archive_dir,
        download=not args.table,
    ) as got:
        args.input = f"{got.repository} ({', '.join(e['backup_id'] for e in got.chain)})"
        if args.table:
            from . import table

            args.archive_dir = got.archive_dir
            return table.run(args, got.target if got.archive_dir else None, chain=got.paths)
        if got.target is not None:
            bars = Bars()
            try:
                result, report = restore_to_target(
                    got.paths[0],
                    args.data_dir,
                    got.archive_dir,
                    got.target,
                    key_file=args.key_file,
                    timeline_choice=args.recovery_target_timeline,
                    threads=args.threads,
                    verify_encryption=args.verify_encryption,
                    integrity_check=args.integrity_check,
                    force=args.force,
                    progress=bars,
                )
            finally:
                bars.finish()
            print_summary(args, result, report)
            return 0
        if len(got.paths) == 1:
            bars = Bars()
            try:
                result = restore_full(
                    got.paths[0],
                    args.data_dir,
                    key=read_key_for(got.paths[0], args.key_file),
                    threads=args.threads,
                    verify_encryption=args.verify_encryption,
                    integrity_check=args.integrity_check,
                    force=args.force,
                    progress=bars,
                )
            finally:
                bars.finish()
            print_summary(args, result)
            return 0
        kept: list = []
        restore_members(
            got.paths,  # the catalog's chain, streamed or fetched while the full backup is restored
            args.data_dir,
            key_file=args.key_file,
            threads=args.threads,
            verify_encryption=args.verify_encryption,
            force=args.force,
            kept=kept,
        )
        chain = [e["backup_id"] for e in got.chain]
    previous = kept[0] if kept else None
    if args.json:
        print_json(
            {
                "ok": True,
                "repository": repo.url,
                "data_dir": args.data_dir,
                "chain": chain,
                "previous_data_dir": previous,
            }
        )
    else:
        print(f"Restored the chain of {len(chain)} backups from {repo.url} into {args.data_dir}:")
        for backup_id in chain:
            print(f"  {backup_id}")
        if previous is not None:
            print(f"The data directory that was in {args.data_dir} is kept in {previous}")
        print(f"Start the server with: rusty-db-server --data-dir {args.data_dir}")
    return 0
