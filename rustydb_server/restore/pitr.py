"""Point-in-time recovery: replay archived WAL on a restored base up to a target.

``restore_to_target`` is the whole restore: the base (a full or pitr-base
backup) is restored into a staging data directory, then ``recover`` reads
the archived segments it needs, one at a time in LSN order along the chosen
timeline's history (each unpacked ahead in a worker thread), and applies
their records with the same record applier as crash recovery, stopping at
the target: the segments after it are never opened. Recovery then starts a new
timeline (history file + end-of-recovery record) so the restored server never
writes WAL under names the archive already holds. Only then is the staging
directory swapped in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
import time

from .. import datadir as dd
from .. import fileops as _fileops
from .. import keys
from ..archive import segment_file as sf
from ..backup.manifest import Manifest
from ..container.reader import BackupReader
from ..engine.recovery import RecordApplier, RecoveryError
from ..repository import location
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal import segment as walseg
from ..wal import timeline as waltl
from ..wal.lsn import format_lsn, parse_lsn
from ..wal.writer import WalWriter
from .archived_wal import ArchivedSegments, ArchiveGapError
from .full import ProgressFn, RestoreResult, open_backup, read_key_for, restore_full


class PitrError(Exception):
    """Recovery to the target is impossible; nothing usable was produced."""


@dataclasses.dataclass
class Target:
    kind: str  # time | txid | name | lsn | immediate | end
    value: object = None
    inclusive: bool = True

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {format_time(self.value)}"
        if self.kind == "lsn":
            return f"LSN {format_lsn(self.value)}"
        if self.kind == "immediate":
            return "the end of the base backup"
        return f"{self.kind} {self.value!r}"


@dataclasses.dataclass
class PitrReport:
    target: str
    timeline: int
    new_timeline: int
    end_lsn: int
    records_replayed: int
    changed_rows: int
    last_txid: int | None
    last_commit_time_us: int | None
    seconds: float
    segments_read: int
    read_wait_seconds: float = 0.0  # the replay waiting for a segment still being unpacked

    def as_dict(self) -> dict:
        return {
            "recovery_target": self.target,
            "timeline": self.new_timeline,
            "previous_timeline": self.timeline,
            "end_lsn": format_lsn(self.end_lsn),
            "records_replayed": self.records_replayed,
            "changed_rows": self.changed_rows,
            "last_replayed_txid": self.last_txid,
            "last_replayed_commit_time": format_time(self.last_commit_time_us) if self.last_commit_time_us else None,
            # Not "seconds": a PITR restore's summary holds this report beside the
            # whole restore's own "seconds" (base restore + replay).
            "replay_seconds": round(self.seconds, 3),
            "segments_read": self.segments_read,
            "read_wait_seconds": round(self.read_wait_seconds, 3),
        }


def format_time(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).astimezone().isoformat(sep=" ", timespec="microseconds")


def parse_time(text: str) -> int:
    """'2025-12-11 14:30:00' (local time) or ISO 8601 with a zone -> UTC microseconds."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise PitrError(
            f"cannot read recovery target time {text!r}; use 'YYYY-MM-DD HH:MM:SS' (local "
            "time) or ISO 8601 with a zone, e.g. 2025-12-11T14:30:00+01:00"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # the operator's local time, as the guide's example
    return int(value.timestamp() * 1_000_000)


def make_target(kind: str, value, inclusive: bool = True) -> Target:
    """The target an operator asked for, ``value`` as typed: a time as
    ``parse_time`` reads it (PitrError if it cannot), an LSN like 0/1A2B3C4D
    (ValueError if it is not one), a txid or restore point name as it is."""
    if kind == "time":
        value = parse_time(value)
    elif kind == "lsn":
        value = parse_lsn(value)
    return Target(kind, value, inclusive)


def archive_key(key_file: str | None) -> keys.KeySource | None:
    """Archived WAL may be encrypted even when the base is not: same key sources."""
    try:
        return keys.resolve_kek(key_file)
    except keys.NoKeyError:
        return None


def restore_to_target(
    input_path: str,
    data_dir: str,
    archive_dir: str,
    target: Target,
    *,
    key_file: str | None = None,
    timeline_choice: str = "latest",
    threads: int = 1,
    verify_encryption: bool = False,
    integrity_check: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> tuple[RestoreResult, PitrReport]:
    """Restore the base ``input_path`` into ``data_dir``, recovered to ``target`` from ``archive_dir``."""
    key = read_key_for(input_path, key_file)
    wal_key = key or archive_key(key_file)
    report: PitrReport | None = None

    def replay(staging: str, manifest: Manifest) -> None:
        nonlocal report
        report = recover(
            staging,
            manifest,
            archive_dir,
            target,
            timeline_choice=timeline_choice,
            key=wal_key,
            threads=max(2, threads),
            fileops=fileops,
        )

    # (a PITR to the base's end reads no segment)
    ahead = None if target.kind == "immediate" else _derive_wal_key_ahead(input_path, archive_dir, wal_key)
    result = restore_full(
        input_path,
        data_dir,
        key=key,
        threads=threads,
        verify_encryption=verify_encryption,
        integrity_check=integrity_check,
        force=force,
        progress=progress,
        post_install=replay,
        fileops=fileops,
    )
    if ahead is not None:
        # Done by now: the replay needed the same KEK. A failed restore does not wait
        # for it (a daemon thread that only fills the process's KEK cache).
        ahead.join()
    return result, report


def _derive_wal_key_ahead(input_path, archive_dir: str, key) -> threading.Thread | None:
    """With a passphrase, derive the KEK of the first archived segment the replay
    reads in a thread, beside the base's restore (which derives the base's KEK,
    under another salt: another process wrote it). A KDF run is a PITR's
    largest fixed cost (scrypt's 32 MiB: 0.1-0.35 s); both run at once, and
    scrypt releases the GIL. Only a head start: whatever fails here is left for
    the replay, which reads that segment and reports what is wrong with it."""
    if key is None or key.kind != "passphrase":
        return None

    def derive() -> None:
        try:
            with open_backup(input_path) as f:
                manifest = Manifest.from_header(BackupReader(f).header)  # in the clear; checked by its parser
            segno = manifest.end_lsn // manifest.segment_size  # where TargetWalk starts reading
            name = sf.archive_name(walseg.segment_name(manifest.timeline, segno))
            sf.unlock(location.join(archive_dir, name), key)
        except Exception:  # noqa: BLE001 -- see the doc: the replay reports it
            pass

    thread = threading.Thread(target=derive, name="pitr-wal-key", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------ timelines
def timeline_path(
    archive_dir: str, base_timeline: int, base_lsn: int, choice: str, archived: dict | None = None
) -> list[tuple[int, int, int | None]]:
    """[(timeline, from_lsn, to_lsn or None)] to read, from the base to the target timeline.

    ``archived``: the caller's ``sf.list_archive(archive_dir)``, so that a
    restore lists the archive once (an S3 archive's listing is requests)."""
    if archived is None:
        archived = sf.list_archive(archive_dir)
    known = set(archived) | set(waltl.list_history_timelines(archive_dir)) | {base_timeline}
    if choice == "current":
        target = base_timeline
    elif choice == "latest":
        candidates = [
            tl for tl in sorted(known, reverse=True) if _descends_from(archive_dir, tl, base_timeline, base_lsn)
        ]
        target = candidates[0] if candidates else base_timeline
    else:
        try:
            target = int(choice)
        except ValueError:
            raise PitrError(f"--recovery-target-timeline must be latest, current or a number, not {choice!r}") from None
        if not _descends_from(archive_dir, target, base_timeline, base_lsn):
            raise PitrError(
                f"timeline {target} does not descend from the base backup's timeline "
                f"{base_timeline} after its LSN {format_lsn(base_lsn)}"
            )
    if target == base_timeline:
        return [(base_timeline, base_lsn, None)]
    history = waltl.read_history(archive_dir, target)  # ancestors, oldest first
    path = []
    start = base_lsn
    on_path = False
    for tl, switch_lsn, _reason in history:
        if tl == base_timeline:
            on_path = True
        if on_path:
            path.append((tl, start, switch_lsn))
            start = switch_lsn
    path.append((target, start, None))
    return path


def _descends_from(archive_dir: str, tl: int, base_tl: int, base_lsn: int) -> bool:
    if tl == base_tl:
        return True
    try:
        history = waltl.read_history(archive_dir, tl)
    except waltl.HistoryMissing:
        return False  # a damaged one is an error: "latest" must not quietly pass its timeline over
    for ancestor, switch_lsn, _ in history:
        if ancestor == base_tl:
            return switch_lsn >= base_lsn
    return False


# ------------------------------------------------------------- replay
def recover(
    staging: str,
    manifest: Manifest,
    archive_dir: str,
    target: Target,
    *,
    timeline_choice: str = "latest",
    key=None,
    progress=None,
    only_database: str | None = None,
    only_table: str | None = None,
    threads: int = 2,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> PitrReport:
    """Replay the archive onto the base in ``staging`` up to ``target``; new timeline.

    The archived segments are read lazily in LSN order, each unpacked in a
    worker thread a few segments ahead of the replay (``archived_wal``), and
    reading stops at the target: the segments after it are never opened.

    ``staging`` must be a restore's staging directory, thrown away if this
    fails (``StagingApplier``): its databases are written without a journal.
    They are fsynced before this returns.
    """
    t0 = time.perf_counter()
    ddir = dd.DataDir(staging, fileops)
    control = ddir.read_control()
    base_lsn = manifest.end_lsn
    base_time = manifest.last_commit_time_us
    _check_target_against_base(target, manifest)
    archive = sf.list_archive(archive_dir)
    path = timeline_path(archive_dir, manifest.timeline, base_lsn, timeline_choice, archive)
    # Until the new timeline is written (state "restored" again), no server starts on
    # this directory, even moved into place by hand: its databases may be torn.
    ddir.write_control(dataclasses.replace(control, state=REPLAYING))
    applier = StagingApplier(ddir, only_database=only_database, only_table=only_table)
    applier.last_commit_time_us = base_time
    suppliers: list[ArchivedSegments] = []

    def open_segments(have, tl, first, last):
        supplier = ArchivedSegments(
            have, tl, first=first, last=last, system_id=manifest.system_id, key=key, workers=threads
        )
        suppliers.append(supplier)
        return supplier

    walk = TargetWalk(archive_dir, archive, path, manifest, base_lsn, target, key, open_segments)
    try:
        with contextlib.closing(walk.records()) as records:
            for entry, rec in records:
                try:
                    applier.apply(entry.lsn, rec)
                except RecoveryError as e:
                    raise PitrError(str(e)) from None
                if progress is not None:
                    progress(entry.lsn)
        applier.finish()
    except BaseException:
        applier.close()
        raise
    for name in ddir.list_databases():  # written unsynced (StagingApplier): durable before the swap
        fileops.fsync_file(ddir.database_path(name))
    fileops.fsync_dir(ddir.databases_dir)
    end_lsn, last_time = walk.end_lsn, walk.last_time
    segments = sum(s.segments_read for s in suppliers)
    waited = sum(s.wait_seconds for s in suppliers)
    last_tl = path[-1][0] if target.kind != "immediate" else manifest.timeline
    control.next_txid = max(control.next_txid, applier.max_txid + 1)
    control.last_commit_time_us = max(control.last_commit_time_us, last_time or 0)
    new_tl = _start_new_timeline(ddir, control, archive_dir, archive, last_tl, end_lsn, target)
    return PitrReport(
        target=target.describe(),
        timeline=last_tl,
        new_timeline=new_tl,
        end_lsn=end_lsn,
        records_replayed=applier.replayed,
        changed_rows=applier.changed_rows,
        last_txid=applier.last_txid,
        last_commit_time_us=last_time,
        seconds=time.perf_counter() - t0,
        segments_read=segments,
        read_wait_seconds=waited,
    )


# The control file's state while a PITR replays: not one datadir.USABLE_STATES
# holds, so the server refuses the directory (check_usable) until it is "restored".
REPLAYING = "pitr-replaying"


class StagingApplier(RecordApplier):
    """The record applier of a restore's staging directory: each page written once.

    Crash recovery commits every batch into SQLite's WAL and checkpoints it into
    the database file: each changed page is written twice, and the WAL fsynced.
    A staging directory needs neither: whenever a restore fails it is removed
    (``staging.Staging``), and what a killed restore left is removed or set
    aside by the next run before it starts afresh (``TargetLock.stage``), so
    nothing ever goes on from a half-replayed one (nor starts on one moved back
    by hand: its control file says ``REPLAYING``). Its databases are therefore replayed with no
    journal and no syncs (journal_mode=OFF, synchronous=OFF; a failed batch is
    not rolled back but thrown away with the directory), put back in WAL mode
    when the replay is done, as the server expects them, and fsynced once by
    ``recover`` before the staging directory is swapped in.
    """

    def _open(self, name: str) -> None:
        super()._open(name)
        conn = self.replayers[name].conn
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")

    def finish(self) -> None:
        try:
            for replayer in self.replayers.values():
                replayer.flush()
                replayer.conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            self.close()
            raise
        super().finish()


class TargetWalk:
    """The archived records a recovery from a base to ``target`` replays, in LSN
    order along the timeline ``path``, and where the walk ended.

    ``open_segments(have, tl, first, last)`` gives one timeline's segment
    supplier (PITR's read-ahead, or one that also notes what it read). The
    records come from ``records()``, to be closed when the caller stops early
    (``contextlib.closing``): that stops the supplier's read-ahead. It raises
    PitrError when a needed segment is missing or the target is not reached.
    PITR, the restore's dry run and a query at a past point all walk this way.
    """

    def __init__(
        self, archive_dir, archive, path, manifest: Manifest, base_lsn: int, target: Target, key, open_segments
    ):
        self._archive_dir = archive_dir
        self._archive = archive
        self._path = path
        self._manifest = manifest
        self._target = target
        self._key = key
        self._open_segments = open_segments
        self.end_lsn = walseg.normalize_lsn(base_lsn, manifest.segment_size)
        self.last_time: int | None = None  # the commit time of the last transaction replayed
        self.names_seen: list[str] = []

    def records(self):
        target, path, size = self._target, self._path, self._manifest.segment_size
        system_id = self._manifest.system_id
        reached = target.kind == "immediate"
        if not reached:
            for step, (tl, start, stop) in enumerate(path):
                first = start // size
                have = self._archive.get(tl, {})
                if first not in have:
                    if stop is not None:
                        raise PitrError(
                            f"the archive has no segment {walseg.segment_name(tl, first)}, needed "
                            f"to follow timeline {tl} from LSN {format_lsn(start)}"
                        )
                    break
                last = None if stop is None else (stop - 1) // size
                decode = walrec.decode_record
                check = None if target.kind == "end" else _check  # the end: every record applies
                with self._open_segments(have, tl, first, last) as supplier:
                    try:
                        for entry in _read_timeline(supplier, tl, start, stop, size, system_id, path[step + 1 :]):
                            if stop is not None and entry.lsn >= stop:
                                break
                            rec = decode(entry.body)
                            verdict = "apply" if check is None else check(target, entry.lsn, rec)
                            if verdict == "stop_before":
                                reached = True
                                break
                            yield entry, rec
                            self.end_lsn = entry.end_lsn
                            if type(rec) is walrec.TxRecord:
                                self.last_time = rec.commit_time_us
                            elif isinstance(rec, walrec.RestorePointRecord):
                                self.names_seen.append(rec.name)
                            if verdict == "stop_after":
                                reached = True
                                break
                    except ArchiveGapError as e:
                        raise PitrError(str(e)) from None
                if reached:
                    break
            if target.kind == "end":
                reached = True  # everything archived along the path is replayed
        if not reached:
            message = _not_reached(target, self.end_lsn, self.last_time, self.names_seen)
            raise PitrError(_found_elsewhere(self._archive_dir, target, path, self._manifest, self._key) or message)


def _read_timeline(supplier: ArchivedSegments, tl: int, start: int, stop: int | None, size: int, system_id: int, rest):
    """The records of ``tl`` from ``start``, its segments asked of ``supplier`` as reading reaches them.

    A timeline left at a switch (``stop``) is read as far as the switch: the
    next timeline starts there, so a segment missing before it is refused,
    never skipped (the last timeline ends where the archive does).
    """
    entries = wal_reader.read_supplied_segments(
        supplier, timeline=tl, segment_size=size, start_lsn=start, system_id=system_id, stop_lsn=stop
    )
    if stop is None:
        yield from entries
        return
    try:
        yield from entries
    except wal_reader.WalCorruptError as e:
        try:
            segno = walseg.parse_segment_name(e.segment_name)[1]
        except ValueError:
            raise e from None
        if segno in supplier:
            raise
        raise PitrError(
            f"the archive is missing WAL segment {e.segment_name}, needed to follow timeline {tl} up to "
            f"LSN {format_lsn(stop)}, where timeline {rest[0][0]} branched off; recovery cannot skip it: "
            "copy the segment back into the archive directory and retry"
        ) from None


def _check_target_against_base(target: Target, manifest: Manifest) -> None:
    base_lsn = manifest.end_lsn
    if target.kind == "lsn" and target.value < base_lsn:
        raise PitrError(
            f"recovery target LSN {format_lsn(target.value)} is before the end of the base "
            f"backup ({format_lsn(base_lsn)}); use an older base backup"
        )
    if target.kind == "time" and target.value < manifest.last_commit_time_us:
        raise PitrError(
            f"recovery target time {format_time(target.value)} is before the end of the base "
            f"backup (its last commit is at {format_time(manifest.last_commit_time_us)}); "
            "use an older base backup"
        )


def _check(target: Target, lsn: int, rec) -> str:
    """'apply', 'stop_before' or 'stop_after' for this record."""
    k = target.kind
    if k == "end":
        return "apply"
    if k == "lsn":
        if lsn > target.value or (not target.inclusive and lsn >= target.value):
            return "stop_before"
        return "apply"
    if k == "name":
        if isinstance(rec, walrec.RestorePointRecord) and rec.name == target.value:
            return "stop_after"
        return "apply"
    if not isinstance(rec, walrec.TxRecord):
        return "apply"
    if k == "time":
        t = rec.commit_time_us
        if t > target.value or (not target.inclusive and t >= target.value):
            return "stop_before"
        return "apply"
    if k == "txid" and rec.txid == target.value:
        return "stop_after" if target.inclusive else "stop_before"
    return "apply"


def _not_reached(target: Target, end_lsn: int, last_time, names_seen) -> str:
    where = f"the archive ends at LSN {format_lsn(end_lsn)}"
    if last_time:
        where += f" (last commit {format_time(last_time)})"
    msg = f"recovery target {target.describe()} was not reached: {where}"
    if target.kind == "name":
        msg += (
            f"; restore points after the base: {', '.join(names_seen)}"
            if names_seen
            else "; no restore point was created after the base backup"
        )
    elif target.kind == "txid":
        msg += (
            "; that transaction committed before the base backup ended, never committed, or its WAL is not archived yet"
        )
    else:
        msg += "; wait for archiving to catch up (or SWITCH WAL on the server) and retry"
    return msg


def _found_elsewhere(archive_dir: str, target: Target, path, manifest: Manifest, key) -> str | None:
    """Where a restore point or txid that recovery did not meet is in the archive
    after all: before the base, or on a timeline the path from the base does not take."""
    if target.kind not in ("name", "txid"):
        return None
    from .walinfo import WalListing  # walinfo builds on this module

    on_path = {tl: (start, stop) for tl, start, stop in path}
    try:
        items = list(WalListing(archive_dir, key=key).transactions())
    except Exception:  # noqa: BLE001 -- only a better message was at stake; the plain one stands
        return None
    field = "restore_point" if target.kind == "name" else "txid"
    found = [i for i in items if i.get(field) == target.value]
    what = f"restore point {target.value!r}" if target.kind == "name" else f"transaction {target.value}"
    base = f"the base backup (timeline {manifest.timeline}, ending at LSN {format_lsn(manifest.end_lsn)})"
    taken = " -> ".join(str(tl) for tl, _, _ in path)
    for item in found:
        tl, lsn = item["timeline"], parse_lsn(item["lsn"])
        span = on_path.get(tl)
        if span is not None and lsn < manifest.end_lsn:
            return (
                f"{what} is at LSN {item['lsn']} on timeline {tl}, before the end of {base}: "
                "recovery can only go forward from its base; restore from an older base backup"
            )
        if span is None or (span[1] is not None and lsn >= span[1]):
            how = (
                f"restore with --recovery-target-timeline {tl}"
                if _descends_from(archive_dir, tl, manifest.timeline, manifest.end_lsn)
                else f"restore from a base backup taken on timeline {tl}'s history"
            )
            return (
                f"{what} is on timeline {tl} (LSN {item['lsn']}), another timeline's history than the one "
                f"recovery followed from {base} (timelines {taken}); {how}"
            )
    return None


def _start_new_timeline(
    ddir: dd.DataDir, control: dd.Control, archive_dir: str, archive, last_tl: int, end_lsn: int, target: Target
) -> int:
    """Pick an unused timeline, write its history and an end-of-recovery record."""
    used = set(archive) | set(waltl.list_history_timelines(archive_dir)) | {last_tl}
    new_tl = waltl.next_timeline(used)
    history = waltl.branch(
        waltl.read_history(archive_dir, last_tl), last_tl, end_lsn, f"recovery to {target.describe()}"
    )
    waltl.write_history(ddir.wal_dir, new_tl, history, ddir.fileops)
    end_lsn = walseg.normalize_lsn(end_lsn, control.segment_size)
    writer = WalWriter(
        ddir.wal_dir,
        timeline=new_tl,
        system_id=control.system_id,
        segment_size=control.segment_size,
        start_lsn=end_lsn,
        fileops=ddir.fileops,
    )
    try:
        lsn, _ = writer.append(
            walrec.encode_record(walrec.EndOfRecoveryRecord(new_tl, last_tl, time.time_ns() // 1000))
        )
        writer.flush()
    finally:
        writer.close()
    control.timeline = new_tl
    control.redo_lsn = lsn
    control.checkpoint_lsn = lsn
    control.state = "restored"
    ddir.write_control(control)
    return new_tl
