"""Listing the transactions in archived WAL: find the one to recover to (or before).

Each transaction record is shown with its LSN, txid, commit time, database and
what it changed (rows inserted, updated and deleted per table, DDL text), so
an operator can pick --recovery-target-txid or --recovery-target-lsn for the
moment just before a bad transaction.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator

import apsw

from ..archive import segment_file as sf
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..engine import rows_image
from ..repository import RepositoryError, location
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal import timeline as waltl
from ..wal.lsn import format_lsn
from . import pitr


def summarize_steps(steps) -> list[str]:
    out = []
    for kind, payload in steps:
        if kind == "ddl":
            out.append(payload if len(payload) <= 120 else payload[:117] + "...")
            continue
        if kind == "rows":  # a bulk insert's rows: the count is in the step's header
            header = rows_image.parse_header(payload)[0]
            out.append(f"{header.table}: +{header.rows}")
            continue
        counts: dict[str, list[int]] = {}
        for change in apsw.Changeset.iter(payload):
            c = counts.setdefault(change.name, [0, 0, 0])
            c[
                {apsw.SQLITE_INSERT: 0, apsw.SQLITE_UPDATE: 1, apsw.SQLITE_DELETE: 2}[
                    change.op if isinstance(change.op, int) else _op(change.op)
                ]
            ] += 1
        for table, (ins, upd, dele) in counts.items():
            parts = [f"+{ins}" if ins else "", f"~{upd}" if upd else "", f"-{dele}" if dele else ""]
            out.append(f"{table}: {' '.join(p for p in parts if p)}")
    return out


def _op(name: str) -> int:
    return {"INSERT": apsw.SQLITE_INSERT, "UPDATE": apsw.SQLITE_UPDATE, "DELETE": apsw.SQLITE_DELETE}[name]


@dataclasses.dataclass(frozen=True)
class TimelineInfo:
    """One timeline of an archive: where it branched off and how many segments it has there."""

    timeline: int
    parent: int | None
    switch_lsn: int | None  # the parent's LSN where this timeline began
    reason: str
    segments: int

    def as_dict(self) -> dict:
        return {
            "timeline": self.timeline,
            "parent": self.parent,
            "switch_lsn": None if self.switch_lsn is None else format_lsn(self.switch_lsn),
            "reason": self.reason or None,
            "segments": self.segments,
        }

    def describe(self) -> str:
        count = f"{self.segments} archived segment{'' if self.segments == 1 else 's'}"
        if self.parent is None:
            return f"timeline {self.timeline} ({count})"
        because = f": {self.reason}" if self.reason else ""
        return (
            f"timeline {self.timeline}, branched from timeline {self.parent} at LSN "
            f"{format_lsn(self.switch_lsn)}{because} ({count})"
        )


class WalListing:
    """The transactions of an archive, timeline by timeline.

    Without ``timeline``: every timeline the archive holds, each read from
    where it began (its first archived segment for timeline 1, the switch LSN
    its history file names for the others, part-way through a segment) to
    where its archive ends. With ``timeline``: that timeline's history, as a
    recovery along it would replay it: each ancestor up to its switch LSN,
    then the timeline itself. Every item names its timeline.
    """

    def __init__(
        self,
        archive_dir: str,
        *,
        timeline: int | None = None,
        key=None,
        since_us: int | None = None,
        database: str | None = None,
    ) -> None:
        self.archive_dir = archive_dir
        self._archive = sf.list_archive(archive_dir)
        self._key = key
        self._since = since_us
        self._database = database
        known = sorted(set(self._archive) | set(waltl.list_history_timelines(archive_dir)))
        self.timelines = [self._info(tl) for tl in known]
        if timeline is None:
            self.stretches = [
                (info.timeline, info.switch_lsn, None) for info in self.timelines if info.timeline in self._archive
            ]
        else:
            if timeline not in known:
                held = ", ".join(str(tl) for tl in known) or "none"
                raise pitr.PitrError(
                    f"the archive {archive_dir} holds no timeline {timeline} (timelines there: {held})"
                )
            self.stretches = waltl.path_to(waltl.read_history(archive_dir, timeline), timeline)
            self.timelines = [i for i in self.timelines if i.timeline in {tl for tl, _, _ in self.stretches}]

    def _info(self, timeline: int) -> TimelineInfo:
        segments = len(self._archive.get(timeline, {}))
        start = waltl.branch_point(waltl.read_history(self.archive_dir, timeline))
        if start is None:
            return TimelineInfo(timeline, None, None, "", segments)
        return TimelineInfo(timeline, start.timeline, start.lsn, start.reason, segments)

    def transactions(self) -> Iterator[dict]:
        """Transactions and restore points, in the order of ``stretches``; WalCorruptError,
        ArchiveError or PitrError where the archive is damaged or has a gap."""
        for tl, start, stop in self.stretches:
            yield from self._stretch(tl, start, stop)

    def _stretch(self, tl: int, start: int | None, stop: int | None) -> Iterator[dict]:
        segments = self._archive.get(tl, {})
        if not segments:
            raise pitr.PitrError(f"the archive has no segments of timeline {tl}, whose history the listing follows")
        size = _segment_size(segments[min(segments)])
        first = min(segments) if start is None else max(min(segments), start // size)
        last = None if stop is None else (stop - 1) // size
        if start is not None and first * size > start:
            start = None  # the archive begins after the branch point: from its first segment
        scratch = tempfile.mkdtemp(prefix="rustydb-walinfo-")
        try:
            paths = []
            for segno in sorted(s for s in segments if s >= first and (last is None or s <= last)):
                name, data = sf.unpack_segment(segments[segno], key=self._key)
                path = os.path.join(scratch, name)
                with open(path, "wb") as f:
                    f.write(data)
                paths.append(path)
            for entry in wal_reader.read_segments(paths, start, timeline=tl, segment_size=size):
                if stop is not None and entry.lsn >= stop:
                    return
                item = self._item(tl, entry)
                if item is not None:
                    yield item
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _item(self, tl: int, entry) -> dict | None:
        rec = walrec.decode_record(entry.body)
        if isinstance(rec, walrec.TxRecord):
            if self._since is not None and rec.commit_time_us < self._since:
                return None
            if self._database is not None and rec.database != self._database:
                return None
            return {
                "timeline": tl,
                "lsn": format_lsn(entry.lsn),
                "txid": rec.txid,
                "commit_time": pitr.format_time(rec.commit_time_us),
                "database": rec.database,
                "changes": summarize_steps(rec.steps),
            }
        if isinstance(rec, walrec.RestorePointRecord):
            if self._since is not None and rec.time_us < self._since:
                return None
            return {
                "timeline": tl,
                "lsn": format_lsn(entry.lsn),
                "restore_point": rec.name,
                "time": pitr.format_time(rec.time_us),
            }
        return None


def _segment_size(archived_path: str) -> int:
    """The segment size an archived segment's header records (no key needed)."""
    try:
        with location.open_read(archived_path) as f:
            header = BackupReader(f).header
    except RepositoryError as exc:
        raise sf.ArchiveError(f"cannot read archived WAL segment {archived_path}: {exc}") from None
    except BackupError as exc:
        raise sf.ArchiveError(f"{archived_path} is not a readable archived WAL segment: {exc}") from None
    return header.end_lsn - header.start_lsn
