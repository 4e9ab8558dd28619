"""The transactions of a WAL, read from wherever it is and filtered.

The core is pure: ``Transaction`` (one committed transaction record, where it
is and what it changed), ``RowChange`` (one row of its changesets, decoded),
``Filter`` (time, txid and LSN ranges, database, tables, operations) and
``transactions`` (WAL entries in, matching transactions out).

The sources read entries in LSN order, one segment at a time, so a scan of
any size holds one segment (an archive: a few, unpacked ahead) and one
transaction in memory:

* ``wal_dir_entries``: a server's ``wal/`` directory, even while the server
  writes to it. Segments are mapped, not copied, and the reading ends at the
  torn tail: a record being written is not returned and is not damage.
* ``archive_entries``: an archive directory (archive_dest), or an s3:// prefix
  read through repository/location.py as a restore reads it, encrypted or not,
  every timeline from where it began, or one timeline's history.
* ``supplied_entries``: segments handed over by a ``SegmentSupplier`` (the
  server's own WAL and the archive joined, with the writer's flushed LSN as
  the end), for a reader inside the server.

Every source raises ``WalScanError`` (with what failed and where) for a
damaged segment, a gap, a wrong key or an unreadable archive.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator

import apsw

from .. import datadir as dd
from ..archive import segment_file as sf
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..crypto import CryptoError
from ..engine import rows_image
from ..engine.session import SEQUENCE_STEP_PREFIX
from ..repository import RepositoryError, location
from ..restore.archived_wal import ArchivedSegments, ArchiveGapError
from ..restore.pitr import PitrError
from ..restore.walinfo import TimelineInfo, WalListing
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal import segment as walseg
from ..wal.lsn import format_lsn
from ..wal.timeline import HistoryError

OPERATIONS = ("insert", "update", "delete")


class WalScanError(Exception):
    """The WAL cannot be read on; the message names the segment or file and why."""


class _Unchanged:
    """An UPDATE's column that the update did not change (its value is not in the WAL)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclasses.dataclass(frozen=True)
class RowChange:
    """One row a changeset inserted, updated or deleted.

    ``old`` is the row before (None for an insert), ``new`` after (None for a
    delete). In an update, ``old`` holds the primary key and the old values
    of the changed columns, ``new`` the new values of the changed columns;
    every other position is ``UNCHANGED``.
    """

    table: str
    op: str  # insert | update | delete
    old: tuple | None
    new: tuple | None
    pk_columns: frozenset[int]

    @property
    def column_count(self) -> int:
        return len(self.old if self.old is not None else self.new)

    @property
    def key(self) -> tuple:
        """The row's primary key values (from the old image, else the new)."""
        row = self.old if self.old is not None else self.new
        return tuple(row[i] for i in sorted(self.pk_columns))

    def changed_columns(self) -> list[int]:
        """An update's changed column positions; every column for an insert or delete."""
        if self.op != "update":
            return list(range(self.column_count))
        return [i for i, v in enumerate(self.new) if v is not UNCHANGED]


def _values(row) -> tuple | None:
    if row is None:
        return None
    return tuple(UNCHANGED if v is apsw.no_change else v for v in row)


def decode_changeset(payload: bytes) -> Iterator[RowChange]:
    """The rows of one changeset step, in changeset order."""
    for change in apsw.Changeset.iter(payload):
        op = change.op if isinstance(change.op, str) else _OP_NAMES[change.op]
        yield RowChange(
            table=change.name,
            op=op.lower(),
            old=_values(change.old),
            new=_values(change.new),
            pk_columns=frozenset(change.pk_columns),
        )


_OP_NAMES = {apsw.SQLITE_INSERT: "INSERT", apsw.SQLITE_UPDATE: "UPDATE", apsw.SQLITE_DELETE: "DELETE"}


@dataclasses.dataclass(frozen=True)
class TableCounts:
    insert: int = 0
    update: int = 0
    delete: int = 0

    def add(self, op: str) -> TableCounts:
        return dataclasses.replace(self, **{op: getattr(self, op) + 1})

    def as_dict(self) -> dict[str, int]:
        return {"insert": self.insert, "update": self.update, "delete": self.delete}


class _Steps:
    """What a list of WAL steps (DDL and changesets) changed; ``steps`` is the subclass's field."""

    steps: tuple

    def row_changes(self) -> Iterator[RowChange]:
        """Every row change, in the order they were made (DDL steps left out)."""
        for kind, payload in self.steps:
            if kind == "changeset":
                yield from decode_changeset(payload)

    @property
    def ddl(self) -> list[str]:
        """The schema statements run (the engine's own bookkeeping of AUTOINCREMENT
        counters, also a "ddl" step in the WAL, is not one of them)."""
        return [p for kind, p in self.steps if kind == "ddl" and not p.startswith(SEQUENCE_STEP_PREFIX)]

    @property
    def sequence_updates(self) -> list[str]:
        """The AUTOINCREMENT counter updates the engine logged with the changes."""
        return [p for kind, p in self.steps if kind == "ddl" and p.startswith(SEQUENCE_STEP_PREFIX)]

    @functools.cached_property
    def counts(self) -> dict[str, TableCounts]:
        """Rows inserted, updated and deleted per table, tables in first-touched order."""
        out: dict[str, TableCounts] = {}
        for change in self.row_changes():
            out[change.table] = out.get(change.table, TableCounts()).add(change.op)
        return out

    @property
    def tables(self) -> list[str]:
        return list(self.counts)


@dataclasses.dataclass(frozen=True)
class Transaction(_Steps):
    """One committed transaction of the WAL."""

    timeline: int
    lsn: int
    end_lsn: int
    txid: int
    commit_time_us: int
    database: str
    steps: tuple[walrec.Step, ...]

    @classmethod
    def from_record(cls, timeline: int, entry: wal_reader.WalEntry, rec: walrec.TxRecord) -> Transaction:
        # a rows step (a bulk insert) is read as the changeset it stands for
        steps = rows_image.expand(rec.steps)
        return cls(timeline, entry.lsn, entry.end_lsn, rec.txid, rec.commit_time_us, rec.database, steps)

    @property
    def size(self) -> int:
        """The record's bytes in the WAL (its fragments' headers included)."""
        return self.end_lsn - self.lsn


@dataclasses.dataclass(frozen=True)
class NetChanges(_Steps):
    """An incremental or differential backup's changes to one database: the net
    effect of ``transactions`` transactions between two LSNs (a row inserted then
    updated is one insert of its last values; one inserted then deleted is gone),
    so they have no txids or commit times of their own. ``created``/``dropped``:
    the database was created or dropped in that range."""

    database: str
    start_lsn: int
    end_lsn: int
    transactions: int | None
    steps: tuple
    created: bool = False
    dropped: bool = False

    @classmethod
    def from_backup_steps(cls, database, start_lsn, end_lsn, transactions, steps) -> NetChanges:
        kept = tuple((k, p) for k, p in steps if k in ("ddl", "changeset"))
        kinds = {k for k, _ in steps}
        return cls(database, start_lsn, end_lsn, transactions, kept, "create" in kinds, "drop" in kinds)


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which transactions (and, with ``tables`` / ``operations``, which rows) to keep.

    Every bound is inclusive; None leaves that side open. A transaction
    matches when it is inside every range, is in ``database``, and has at
    least one row change that is both in ``tables`` and one of ``operations``
    (when either is given).
    """

    from_time_us: int | None = None
    to_time_us: int | None = None
    from_txid: int | None = None
    to_txid: int | None = None
    from_lsn: int | None = None
    to_lsn: int | None = None
    database: str | None = None
    tables: frozenset[str] | None = None
    operations: frozenset[str] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.operations or ()) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operation(s) {sorted(unknown)}; use {', '.join(OPERATIONS)}")

    def row_matches(self, change: RowChange) -> bool:
        return (self.tables is None or change.table in self.tables) and (
            self.operations is None or change.op in self.operations
        )

    def matches(self, tx: Transaction) -> bool:
        if not _within(tx.commit_time_us, self.from_time_us, self.to_time_us):
            return False
        if not _within(tx.txid, self.from_txid, self.to_txid):
            return False
        if not _within(tx.lsn, self.from_lsn, self.to_lsn):
            return False
        return self.changes_match(tx)

    def changes_match(self, changes: Transaction | NetChanges) -> bool:
        """The database, table and operation part of ``matches`` (all there is to
        match for a backup's net changes, which have no txid, time or LSN of their own)."""
        if self.database is not None and changes.database != self.database:
            return False
        if self.tables is None and self.operations is None:
            return True
        return any(self.row_matches(c) for c in changes.row_changes())

    @property
    def has_ranges(self) -> bool:
        """Whether a time, txid or LSN bound is set."""
        bounds = (self.from_time_us, self.to_time_us, self.from_txid, self.to_txid, self.from_lsn, self.to_lsn)
        return any(b is not None for b in bounds)

    def past_end(self, lsn: int) -> bool:
        """Whether nothing at or after ``lsn`` of one timeline can match."""
        return self.to_lsn is not None and lsn > self.to_lsn


def _within(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


#: A WAL entry and the timeline it was read on.
TimelineEntry = tuple[int, wal_reader.WalEntry]


def transactions(entries: Iterable[TimelineEntry], flt: Filter | None = None) -> Iterator[Transaction]:
    """The transaction records among ``entries`` that ``flt`` keeps, in the order read.

    Other records (checkpoints, restore points, segment switches, database
    creation) are passed over. A record that does not decode is WalScanError.
    """
    flt = flt or Filter()
    for timeline, entry in entries:
        if flt.past_end(entry.lsn):
            continue  # the source stops reading this timeline (see _until)
        try:
            rec = walrec.decode_record(entry.body)
        except walrec.WalRecordError as exc:
            raise WalScanError(
                f"the WAL record at LSN {format_lsn(entry.lsn)} (timeline {timeline}) is damaged: {exc}"
            ) from None
        if isinstance(rec, walrec.TxRecord):
            tx = Transaction.from_record(timeline, entry, rec)
            if flt.matches(tx):
                yield tx


def find_transaction(entries: Iterable[TimelineEntry], txid: int) -> Transaction | None:
    """The transaction ``txid`` (the last one read, if a timeline switch repeats it)."""
    found = None
    for tx in transactions(entries, Filter(from_txid=txid, to_txid=txid)):
        found = tx
    return found


# ------------------------------------------------------------------ sources
def _until(entries: Iterator[wal_reader.WalEntry], to_lsn: int | None) -> Iterator[wal_reader.WalEntry]:
    for entry in entries:
        if to_lsn is not None and entry.lsn > to_lsn:
            return  # the reader is left where it is: later segments are never opened
        yield entry


def _guarded(entries: Iterator[TimelineEntry]) -> Iterator[TimelineEntry]:
    try:
        yield from entries
    except walseg.WalCorruptError as exc:
        raise WalScanError(str(exc).replace("; recovery stopped", "")) from None
    except (
        ArchiveGapError,
        sf.ArchiveError,
        PitrError,
        HistoryError,
        CryptoError,
        BackupError,
        RepositoryError,
    ) as exc:
        raise WalScanError(str(exc)) from None


def wal_dir_timelines(wal_dir: str) -> list[int]:
    """The timelines with segments in ``wal_dir``, oldest first."""
    try:
        return sorted({tl for tl, _segno, _name in walseg.list_segments(wal_dir)})
    except OSError as exc:
        raise WalScanError(f"cannot list the WAL directory {wal_dir}: {exc.strerror or exc}") from None


def wal_dir_entries(
    wal_dir: str,
    *,
    timeline: int | None = None,
    to_lsn: int | None = None,
) -> Iterator[TimelineEntry]:
    """The records in a WAL directory, timeline by timeline (only ``timeline`` if given),
    each from its oldest segment (skipping the tail of a record begun before it) to
    its torn tail."""
    return _guarded(_wal_dir_entries(wal_dir, timeline, to_lsn))


def _wal_dir_entries(wal_dir: str, timeline: int | None, to_lsn: int | None) -> Iterator[TimelineEntry]:
    listed = walseg.list_segments(wal_dir) if os.path.isdir(wal_dir) else None
    if listed is None:
        raise WalScanError(f"{wal_dir} is not a directory; give the server's WAL directory (DATA_DIR/wal)")
    timelines = sorted({tl for tl, _, _ in listed}) if timeline is None else [timeline]
    for tl in timelines:
        segnos = [segno for t, segno, _ in listed if t == tl]
        if not segnos:
            if timeline is not None:
                raise WalScanError(f"{wal_dir} holds no WAL segment of timeline {tl}")
            continue
        first = min(segnos)
        size = _local_segment_size(os.path.join(wal_dir, walseg.segment_name(tl, first)))
        entries = wal_reader.read_wal(
            wal_dir, timeline=tl, segment_size=size, start_lsn=first * size, skip_partial_first=True
        )
        for entry in _until(entries, to_lsn):
            yield tl, entry


def _local_segment_size(path: str) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(walseg.HEADER_SIZE)
        return walseg.decode_segment_header(head).segment_size
    except OSError as exc:
        raise WalScanError(f"cannot read WAL segment {path}: {exc.strerror or exc}") from None
    except walseg.SegmentHeaderError as exc:
        raise WalScanError(f"WAL segment {path} has a damaged header: {exc}") from None


def data_dir_wal(data_dir: str) -> str:
    """The WAL directory of a data directory (WalScanError if it is not one)."""
    ddir = dd.DataDir(data_dir)
    if not ddir.is_initialized():
        raise WalScanError(
            f"{data_dir} is not a RustyDB data directory (no control file); give the server's --data-dir, "
            "or read a WAL directory (--wal-dir) or an archive (--archive-dir)"
        )
    return ddir.wal_dir


def archive_timelines(archive_dir: str, *, timeline: int | None = None) -> list[TimelineInfo]:
    """The timelines an archive holds (with ``timeline``: those on its history)."""
    try:
        return WalListing(archive_dir, timeline=timeline).timelines
    except (sf.ArchiveError, PitrError, HistoryError, OSError, RepositoryError) as exc:
        raise WalScanError(str(exc)) from None


def archive_entries(
    archive_dir: str,
    *,
    key=None,
    timeline: int | None = None,
    to_lsn: int | None = None,
) -> Iterator[TimelineEntry]:
    """The records of an archive directory.

    Without ``timeline``: every timeline from where it began (its first
    archived segment, or the switch LSN of its history file) to where its
    archive ends. With ``timeline``: that timeline's history, as a recovery
    along it reads it (each ancestor up to its switch LSN, then itself).
    Segments are unpacked (decrypted, checked) a few ahead of the reading.
    """
    return _guarded(_archive_entries(archive_dir, key, timeline, to_lsn))


def _archive_entries(archive_dir: str, key, timeline: int | None, to_lsn: int | None) -> Iterator[TimelineEntry]:
    if not location.isdir(archive_dir):
        raise WalScanError(f"{archive_dir} is not a directory; give the archive directory (archive_dest)")
    listing = WalListing(archive_dir, timeline=timeline)
    archive = sf.list_archive(archive_dir)
    for tl, start, stop in listing.stretches:
        segments = archive.get(tl, {})
        if not segments:
            raise WalScanError(f"the archive has no segments of timeline {tl}, whose history the scan follows")
        size = archived_segment_size(segments[min(segments)])
        first = min(segments) if start is None else max(min(segments), start // size)
        if start is not None and first * size > start:
            start = None  # the archive begins after the branch point: from its first segment
        last = None if stop is None else (stop - 1) // size
        with ArchivedSegments(segments, tl, first=first, last=last, system_id=None, key=key) as supplier:
            entries = wal_reader.read_supplied_segments(
                supplier,
                timeline=tl,
                segment_size=size,
                start_lsn=first * size if start is None else start,
                skip_partial_first=start is None,
            )
            for entry in _until(entries, to_lsn):
                if stop is not None and entry.lsn >= stop:
                    break
                yield tl, entry


def archived_segment_size(archived_path: str) -> int:
    """The segment size an archived segment's header records (no key needed)."""
    try:
        with location.open_read(archived_path) as f:
            header = BackupReader(f).header
    except (BackupError, OSError, RepositoryError) as exc:
        raise WalScanError(f"{archived_path} is not a readable archived WAL segment: {exc}") from None
    return header.end_lsn - header.start_lsn


def supplied_entries(
    supplier: wal_reader.SegmentSupplier,
    *,
    timeline: int,
    segment_size: int,
    start_lsn: int,
    stop_lsn: int | None = None,
    skip_partial_first: bool = False,
) -> Iterator[TimelineEntry]:
    """The records of ``timeline`` from segments a supplier hands over (see
    ``wal/reader.read_supplied_segments``); with ``stop_lsn`` the WAL must reach it."""

    def read() -> Iterator[TimelineEntry]:
        for entry in wal_reader.read_supplied_segments(
            supplier,
            timeline=timeline,
            segment_size=segment_size,
            start_lsn=start_lsn,
            stop_lsn=stop_lsn,
            skip_partial_first=skip_partial_first,
        ):
            yield timeline, entry

    return _guarded(read())


class LocalThenArchived:
    """A ``SegmentSupplier`` of one timeline: each segment from the server's own
    ``wal/`` while it is there, else from the archive (where a checkpoint that
    removed it had it archived first). Used with ``server_entries``."""

    def __init__(self, wal_dir: str, archive_dir: str | None, timeline: int, *, key=None) -> None:
        self._wal_dir = wal_dir
        self._timeline = timeline
        self._key = key
        self._archived = sf.list_archive(archive_dir).get(timeline, {}) if archive_dir else {}
        self.local = {segno for tl, segno, _ in walseg.list_segments(wal_dir) if tl == timeline}

    def segments(self) -> list[int]:
        return sorted(self.local | set(self._archived))

    def get(self, segno: int) -> bytes | None:
        if segno in self.local:
            try:
                with open(os.path.join(self._wal_dir, walseg.segment_name(self._timeline, segno)), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                self.local.discard(segno)  # removed by a checkpoint since: the archive has it
        path = self._archived.get(segno)
        if path is None:
            return None
        _name, data = sf.unpack_segment(path, key=self._key)
        return data

    def later(self, segno: int) -> list[int]:
        return [s for s in self.segments() if s > segno]


def server_entries(
    wal_dir: str,
    archive_dir: str | None,
    *,
    timeline: int,
    segment_size: int,
    stop_lsn: int | None = None,
    key=None,
) -> Iterator[TimelineEntry]:
    """The records of ``timeline`` as far back as the server's ``wal/`` or the
    archive reach, up to ``stop_lsn`` (a running server's flushed LSN: reading
    stops there, and a WAL ending before it is WalScanError, never a silent end).
    Only ``timeline`` is read: transactions of an ancestor timeline are not."""
    supplier = LocalThenArchived(wal_dir, archive_dir, timeline, key=key)
    held = supplier.segments()
    if not held:
        return iter(())
    return supplied_entries(
        supplier,
        timeline=timeline,
        segment_size=segment_size,
        start_lsn=held[0] * segment_size,
        stop_lsn=stop_lsn,
        skip_partial_first=True,
    )
