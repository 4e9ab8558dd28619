"""rusty-db-restore --archive-dir A --list-wal: list the archived transactions (timeline,
LSN, txid, commit time, what changed) to choose a recovery target; restores nothing.

Without --recovery-target-timeline every timeline of the archive is listed,
each from where it began; with it, that timeline's history (its ancestors up
to their switch points, then itself). With --json the listing is one JSON
document: ``{"archive_dir", "timelines": [...], "transactions": [...], "ok"}``,
the transactions written as they are read.
"""

from __future__ import annotations

import argparse

from ...archive.segment_file import ArchiveError
from ...container.errors import BackupError
from ...crypto import CryptoError
from ...repository import RepositoryError
from ...restore.pitr import PitrError, archive_key, parse_time
from ...restore.walinfo import WalListing
from ...wal.segment import WalCorruptError
from ...wal.timeline import HistoryError
from ..output import fail, json_output
from .failure import PROG


def run(args: argparse.Namespace) -> int:
    listed = False
    try:
        listing = _listing(args)
        doc = json_output()
        if doc is not None:
            stream = doc.stream(
                {"archive_dir": args.archive_dir, "timelines": [t.as_dict() for t in listing.timelines]},
                "transactions",
            )
        shown = None
        for item in listing.transactions():
            listed = True
            if doc is not None:
                stream.item(item)
                continue
            if item["timeline"] != shown:
                shown = item["timeline"]
                print(next(t.describe() for t in listing.timelines if t.timeline == shown))
            print(_line(item))
        if doc is not None:
            stream.close({"ok": True})
        return 0
    except (PitrError, ArchiveError, HistoryError, CryptoError, BackupError, RepositoryError) as exc:
        return fail(PROG, str(exc))
    except WalCorruptError as exc:
        before = "; the transactions before it are listed above" if listed else ""
        return fail(PROG, f"{exc}{before}")


def _listing(args: argparse.Namespace) -> WalListing:
    since = parse_time(args.since) if args.since else None
    choice = args.recovery_target_timeline
    if choice is None:
        timeline = None
    elif choice == "latest":
        timeline = max(WalListing(args.archive_dir).timelines, key=lambda t: t.timeline, default=None)
        timeline = timeline.timeline if timeline else None
    else:
        try:
            timeline = int(choice)
        except ValueError:
            raise PitrError(
                f"with --list-wal, --recovery-target-timeline is latest or a timeline number, not {choice!r}"
            ) from None
    return WalListing(
        args.archive_dir, timeline=timeline, key=archive_key(args.key_file), since_us=since, database=args.database
    )


def _line(item: dict) -> str:
    where = f"{item['lsn']:>18}  timeline {item['timeline']}"
    if "restore_point" in item:
        return f"{where}  restore point {item['restore_point']!r} at {item['time']}"
    return f"{where}  txid {item['txid']:<8} {item['commit_time']}  {item['database']}: {'; '.join(item['changes'])}"
