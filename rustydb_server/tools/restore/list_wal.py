"""rusty-db-restore --archive-dir A --list-wal: list the archived transactions (LSN,
txid, commit time, what changed) to choose a recovery target; restores nothing."""

from __future__ import annotations

import argparse

from ...archive.segment_file import ArchiveError
from ...container.errors import BackupError
from ...crypto import CryptoError
from ...restore.pitr import PitrError, archive_key, parse_time
from ...restore.walinfo import list_transactions
from ...wal.segment import WalCorruptError
from ...wal.timeline import HistoryError
from ..output import fail, print_json
from .failure import PROG


def run(args: argparse.Namespace) -> int:
    try:
        return _list(args)
    except (PitrError, ArchiveError, HistoryError, CryptoError, BackupError) as exc:
        return fail(PROG, str(exc))
    except WalCorruptError as exc:
        return fail(PROG, f"{exc}; the transactions before it are listed above")


def _list(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    timeline = None
    if args.recovery_target_timeline not in ("latest", "current"):
        timeline = int(args.recovery_target_timeline)
    for item in list_transactions(
        args.archive_dir, timeline=timeline, key=archive_key(args.key_file), since_us=since, database=args.database
    ):
        if args.json:
            print_json(item)
        elif "restore_point" in item:
            print(f"{item['lsn']:>18}  restore point {item['restore_point']!r} at {item['time']}")
        else:
            print(
                f"{item['lsn']:>18}  txid {item['txid']:<8} {item['commit_time']}  "
                f"{item['database']}: {'; '.join(item['changes'])}"
            )
    return 0
