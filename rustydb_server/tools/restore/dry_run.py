"""rusty-db-restore ... --dry-run: print what the restore would do, writing nothing.

The same command line as the restore, plus --dry-run: a full backup, a chain
(--chain-dir) or a base and the archive up to a recovery target
(--archive-dir). Every backup is verified (chunk checksums, file digest),
every archived segment the replay would read is unpacked and checked, and
the transactions it would replay are counted (see restore/plan.py).
Exit 0 only if the restore would succeed.
"""

from __future__ import annotations

import argparse

from ...crypto import CryptoError
from ...keys import NoKeyError
from ...restore.chain import find_chain
from ...restore.errors import RestoreError
from ...restore.full import read_key_for
from ...restore.pitr import Target, archive_key, format_time
from ...restore.plan import RestorePlan, backup_schema, check_backup, check_data_dir, plan_replay
from ..output import fail, human_size, print_json
from .failure import PROG


def run(args: argparse.Namespace, target: Target | None) -> int:
    plan = RestorePlan()
    check_data_dir(args.data_dir, plan)
    paths = [args.input]
    if args.chain_dir:
        try:
            paths = find_chain(args.input, args.chain_dir, args.data_dir)
        except (RestoreError, OSError) as exc:
            plan.problems.append(str(exc))
            paths = []
    manifest = None
    for path in paths:
        manifest = check_backup(path, args.key_file, threads=args.threads, plan=plan) or manifest
    key = _key(args, plan) if args.archive_dir and target is not None and manifest is not None else None
    if args.archive_dir and target is not None and manifest is not None:
        plan_replay(
            plan,
            manifest,
            args.archive_dir,
            target,
            timeline_choice=args.recovery_target_timeline,
            key=key,
            schema_source=backup_schema(args.input, args.key_file),
        )
    if args.json:
        doc = plan.as_dict()
        if not plan.ok:
            doc["error"] = _failure(plan)
        print_json(doc)
    else:
        _print(args, plan)
    if plan.ok:
        return 0
    if args.json:
        return 1  # the document says why
    return fail(PROG, _failure(plan))


def _key(args: argparse.Namespace, plan: RestorePlan):
    try:
        return read_key_for(args.input, args.key_file) or archive_key(args.key_file)
    except (RestoreError, CryptoError, NoKeyError) as exc:
        plan.problems.append(str(exc))
        return archive_key(args.key_file)


def _failure(plan: RestorePlan) -> str:
    return "the restore would fail: " + "; ".join(plan.problems)


def _print(args: argparse.Namespace, plan: RestorePlan) -> None:
    print(f"Restore plan for {args.data_dir or '(no --data-dir)'} (dry run: nothing was written)")
    print("Backups, in the order they are applied:")
    for n, b in enumerate(plan.backups, 1):
        state = f"{b.chunks} chunks verified" if b.verified else "DOES NOT VERIFY"
        kind = f"{b.backup_type} {b.backup_id}" if b.backup_id else "unreadable"
        print(f"  {n}. {b.path}  ({kind}, {human_size(b.file_bytes)}, {state})")
    if plan.archive_dir is not None:
        print(f"Archived WAL from {plan.archive_dir}, replayed up to {plan.target}:")
        for s in plan.segments:
            print(f"  {s.name}  {s.path}")
        print(
            f"  {len(plan.segments)} segments; {plan.transactions} transactions "
            f"({plan.records_replayed} records, {plan.row_changes} row changes, "
            f"{human_size(plan.wal_bytes)} of WAL) to replay"
        )
        if plan.last_txid is not None:
            print(f"  last transaction replayed: txid {plan.last_txid} at {format_time(plan.last_commit_time_us)}")
    seconds, basis = plan.estimate()
    print(f"Estimated time: {seconds:.1f} s ({basis})")
    if plan.ok:
        print("Every piece exists and verifies: the restore would succeed.")
    else:
        print("Problems:")
        for p in plan.problems:
            print(f"  - {p}")
