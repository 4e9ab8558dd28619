"""Incremental and differential backups: the net changes in the WAL between two LSNs.

For each database the WAL's steps between the parent backup's end LSN and now
are compacted: consecutive changesets go through one changegroup
(``apsw.ChangesetBuilder``), so a row inserted and then updated ten times is
stored once with its last value and a row inserted and deleted is not stored
at all. A DDL step closes the group and is kept, in order, so schema changes
land between the right row changes. The size therefore grows with the number
of distinct rows changed, not with the database size or the number of updates.

Each database's net changes are one entry of the backup, in the format of
``backup/steps.py``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import apsw

from .. import __version__, keys
from ..archive import destination
from ..archive import segment_file as sf
from ..container.errors import BackupError
from ..container.format import BackupType
from ..crypto import CryptoError
from ..engine import database as engine_db
from ..engine import rows_image
from ..engine.instance import Engine
from ..engine.session import SEQUENCE_STEP_PREFIX
from ..logsetup import get_logger
from ..roles import stored_roles
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal import segment as walseg
from ..wal.lsn import format_lsn
from ..wal.segment import HEADER_SIZE
from .manifest import DatabaseEntry, Manifest, TableRows
from .steps import encode_steps, steps_entry

log = get_logger("rustydb.backup")


class IncrementalUnavailable(Exception):
    """The WAL an incremental needs is gone: a full backup is needed."""


class NetChanges:
    """The compacted steps of one database over an LSN range."""

    def __init__(self, name: str):
        self.name = name
        self.steps: list[tuple[str, object]] = []
        self.sequence: str | None = None
        self._builder: apsw.ChangesetBuilder | None = None
        self.transactions = 0

    def add_changeset(self, cs: bytes) -> None:
        if self._builder is None:
            self._builder = apsw.ChangesetBuilder()
        self._builder.add(cs)

    def _close_group(self) -> None:
        if self._builder is not None:
            out = self._builder.output()
            self._builder.close()
            self._builder = None
            if out:
                self.steps.append(("changeset", out))

    def add_ddl(self, sql: str) -> None:
        if sql.startswith(SEQUENCE_STEP_PREFIX):
            # Counters only grow (the statement takes max), so the last one
            # stands for all and moves to the end instead of splitting groups.
            self.sequence = sql
            return
        self._close_group()
        self.steps.append(("ddl", sql))

    def created(self) -> None:
        self._close_group()
        self.steps = [("create", "")]

    def dropped(self) -> None:
        self._close_group()
        created_in_range = self.steps[:1] == [("create", "")]
        self.steps = [] if created_in_range else [("drop", "")]

    def peek(self) -> list[tuple[str, object]]:
        """The steps so far, leaving this open to more (change tracking)."""
        steps = list(self.steps)
        if self._builder is not None:
            out = self._builder.output()  # the group stays as it is
            if out:
                steps.append(("changeset", out))
        if self.sequence and steps[-1:] != [("drop", "")]:
            steps.append(("ddl", self.sequence))
        return steps

    def finish(self) -> list[tuple[str, object]]:
        self._close_group()
        return self.peek()


@dataclass
class NetChangesAt:
    """The compacted steps of every database changed over a range of records."""

    steps: dict[str, list]
    transactions: dict[str, int]
    records: int  # transaction records in the range


class Compaction:
    """Records in, net changes of every database out (NetChanges per database)."""

    def __init__(self) -> None:
        self.per_db: dict[str, NetChanges] = {}
        self.records = 0
        self.changeset_bytes = 0  # taken in; bounds what the changegroups hold

    def add(self, rec) -> None:
        if isinstance(rec, walrec.TxRecord):
            net = self.per_db.setdefault(rec.database, NetChanges(rec.database))
            net.transactions += 1
            # a rows step (a bulk insert) is the changeset it stands for
            for kind, payload in rows_image.expand(rec.steps):
                if kind == "changeset":
                    self.changeset_bytes += len(payload)
                    net.add_changeset(payload)
                else:
                    net.add_ddl(payload)
            self.records += 1
        elif isinstance(rec, walrec.DatabaseRecord):
            net = self.per_db.setdefault(rec.database, NetChanges(rec.database))
            net.created() if rec.action == "create" else net.dropped()

    def peek(self) -> NetChangesAt:
        """The net changes so far; more records may follow."""
        return self._result({n: net.peek() for n, net in self.per_db.items()})

    def finish(self) -> NetChangesAt:
        return self._result({n: net.finish() for n, net in self.per_db.items()})

    def _result(self, steps: dict[str, list]) -> NetChangesAt:
        return NetChangesAt(steps, {n: net.transactions for n, net in self.per_db.items()}, self.records)


def _wal_records(engine: Engine, start: int, end: int, scratch: str) -> Iterator:
    """Records in [start, end) of the server's timeline, as one WAL.

    Each segment comes from the server's wal/ directory if it is still there,
    else from the archive (unpacked into ``scratch``); the whole sequence is
    then read by one reader, so a record that begins in an archived segment
    and ends in one still on the server is joined like any other.
    """
    c = engine.control
    size = c.segment_size
    located = _locate_segments(engine, start, end)
    if not located:
        return
    archive = _ArchivedSegments(engine)
    sequence: dict[int, str] = {}
    unpacked: list[str] = []
    try:
        for segno, (path, is_archived) in located.items():
            if not is_archived:
                sequence[segno] = path
                continue
            if not unpacked:
                os.makedirs(scratch, mode=0o700, exist_ok=True)
            name, data = archive.unpack(path, c.system_id)
            path = os.path.join(scratch, name)
            unpacked.append(path)
            with open(path, "wb") as f:
                f.write(data)
            sequence[segno] = path
        yield from wal_reader.read_segment_sequence(
            sequence,
            timeline=c.timeline,
            segment_size=size,
            start_lsn=start,
            system_id=c.system_id,
            stop_lsn=end,
        )
    finally:
        for p in unpacked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _locate_segments(engine: Engine, start: int, end: int) -> dict[int, tuple[str, bool]]:
    """Where each segment of [start, end) on the server's timeline is:
    {segno: (path, archived)}, in order, from the server's wal/ directory when
    it is still there, else from the archive. Only lists directories."""
    c = engine.control
    size = c.segment_size
    first = walseg.normalize_lsn(start, size) // size
    # The last segment holding a byte of the range (none if the range is empty).
    last = (end - HEADER_SIZE - 1) // size
    if last < first:
        return {}
    wal_dir = engine.datadir.wal_dir
    local = {
        segno: os.path.join(wal_dir, name)
        for tl, segno, name in walseg.list_segments(wal_dir)
        if tl == c.timeline and first <= segno <= last
    }
    archived: dict[int, str] | None = None
    out: dict[int, tuple[str, bool]] = {}
    for segno in range(first, last + 1):
        if segno in local:
            out[segno] = (local[segno], False)
            continue
        if archived is None:
            archive_dir = engine.settings["archive_dest"]
            try:
                archived = sf.list_archive(destination.location(archive_dir)).get(c.timeline, {}) if archive_dir else {}
            except sf.ArchiveError:
                archived = {}
        if segno not in archived:
            raise IncrementalUnavailable(_missing(c.timeline, segno, first, start))
        out[segno] = (archived[segno], True)
    return out


def _check_lineage(engine: Engine, parent: dict) -> None:
    c = engine.control
    if parent.get("system_id") not in (None, c.system_id):
        raise IncrementalUnavailable("the base backup belongs to another database system")
    if parent.get("timeline", c.timeline) != c.timeline:
        raise IncrementalUnavailable(
            f"the server is on timeline {c.timeline} but the base backup was taken on "
            f"timeline {parent['timeline']}; take a full backup"
        )


def check_parent(engine: Engine, parent: dict) -> None:
    """Whether an incremental or differential on ``parent`` can be taken now;
    IncrementalUnavailable says why not. Cheap (it reads no WAL, only lists
    where it is), so a request is refused before anything is recorded."""
    _check_lineage(engine, parent)
    end_lsn = engine.wal.end_lsn
    if parent["end_lsn"] > end_lsn:
        raise IncrementalUnavailable("the base backup is newer than this server's WAL")
    _locate_segments(engine, parent["end_lsn"], end_lsn)


class _ArchivedSegments:
    """Unpacks archived segments with the key the archiver seals them with
    (``backup_key_file`` or the server's environment), read once if needed."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._key = None
        self._looked = False

    def _get(self):
        if not self._looked:
            self._looked = True
            try:
                self._key = keys.resolve_kek(None, setting_key_file=self._engine.settings["backup_key_file"] or None)
            except keys.NoKeyError:
                self._key = None  # enough for unencrypted segments
        return self._key

    def unpack(self, path: str, system_id: int) -> tuple[str, bytes]:
        what = f"archived WAL segment {path}, needed since the parent backup,"
        try:
            return sf.unpack_segment(path, system_id=system_id, key=self._get())
        except keys.NoKeyError:
            raise IncrementalUnavailable(
                f"{what} is encrypted and the server has no key for it: set backup_key_file to the "
                "key file archive_encryption used, or take a full backup"
            ) from None
        except (sf.ArchiveError, BackupError, CryptoError) as e:
            raise IncrementalUnavailable(
                f"{what} cannot be read: {e}; repair the archive or take a full backup"
            ) from None


def _missing(timeline: int, segno: int, first: int, start: int) -> str:
    name = walseg.segment_name(timeline, segno)
    if segno == first:
        return (
            f"the WAL needed since the parent backup (from LSN {format_lsn(start)}, segment "
            f"{name}) is no longer available; take a full backup"
        )
    return f"WAL segment {name} is neither on the server nor in the archive; take a full backup"


def build(
    engine: Engine,
    parent: dict,
    backup_type: BackupType,
    names: list[str] | None,
    scratch: str,
    backup_id: str | None = None,
) -> tuple[Manifest, dict[str, list]]:
    """Compute the net changes since ``parent``; return (manifest, steps per database)."""
    c = engine.control
    _check_lineage(engine, parent)
    t0 = time.perf_counter()
    start = parent["end_lsn"]
    tracking = engine.change_tracking
    tracked = None
    with contextlib.ExitStack() as stack:
        # Nothing is logged while these are held (creating or dropping a
        # database takes the registry lock, every commit its database's), so
        # the end LSN, the tracked changes and the new tracker's base agree.
        stack.enter_context(engine._registry_lock.held("an incremental backup"))
        for name in sorted(engine.databases):
            stack.enter_context(engine.databases[name].commit_lock.held("an incremental backup"))
        end_lsn = engine.wal.end_lsn
        # Sessions commit in SQLite before their WAL flush: the incremental
        # holds only durable records.
        engine.flush_wal(end_lsn)
        next_txid = engine.peek_next_txid()
        last_commit = engine._last_commit_us
        if tracking is not None and start <= end_lsn:
            tracked = tracking.net_changes(start)
            tracking.start(end_lsn)  # the base of the next incremental, if this one completes
        # Readers pinned at end_lsn while nothing commits: they count the rows the
        # parent's counts and the net changes cannot tell, after the locks are released.
        readers = _pin_readers(engine, names)
    try:
        if start > end_lsn:
            raise IncrementalUnavailable("the base backup is newer than this server's WAL")
        net = _tracked(tracked)
        source = "tracked"
        if net is None:
            net = _from_wal(engine, start, end_lsn, scratch)
            source = "wal"
        wanted = set(names) if names else None
        steps = {n: s for n, s in sorted(net.steps.items()) if wanted is None or n in wanted}
        row_counts = _row_counts(readers, parent.get("tables"), steps)
    finally:
        for conn in readers.values():
            conn.close()
    databases = []
    for name in sorted(set(steps) | (set(engine.databases) if wanted is None else wanted)):
        databases.append(
            DatabaseEntry(
                name=name,
                entry=steps_entry(name),
                tables=row_counts.get(name, ()),
                size_bytes=sum(len(p) for _, p in steps.get(name, [])),
                transactions=net.transactions.get(name, 0),
            )
        )
        steps.setdefault(name, [])
    manifest = Manifest(
        backup_id=backup_id or str(uuid.uuid4()),
        backup_type=BackupType(backup_type),
        parent_id=parent["backup_id"],
        base_full_id=parent.get("base_full_id") or parent["backup_id"],
        system_id=c.system_id,
        timeline=c.timeline,
        segment_size=c.segment_size,
        start_lsn=start,
        end_lsn=end_lsn,
        next_txid=next_txid,
        last_commit_time_us=last_commit,
        server_version=__version__,
        created_us=time.time_ns() // 1000,
        databases=tuple(databases),
        wal_records=net.records,
        # Only the named databases' changes: no base for the next incremental.
        all_databases=wanted is None,
        roles=stored_roles(engine.datadir.path),
    )
    log.info(
        "incremental computed",
        backup_type=backup_type,
        parent=parent["backup_id"],
        start_lsn=format_lsn(start),
        end_lsn=format_lsn(end_lsn),
        records=net.records,
        source=source,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return manifest, steps


def _pin_readers(engine: Engine, names: list[str] | None) -> dict[str, apsw.Connection]:
    """A read transaction per database, begun with its commit lock held: the
    rows as of the incremental's end LSN (what the restore drill compares)."""
    readers: dict[str, apsw.Connection] = {}
    try:
        for name in sorted(names or engine.databases):
            handle = engine.databases.get(name)
            if handle is None or handle.dropped:
                continue
            engine.require_caught_up(handle)
            # A server connection: SQLite never checkpoints from it, not even
            # when it is the last to close (the engine's rule for live databases).
            conn = engine_db.open_connection(handle.path, server=True, vfs=engine.fileops.sqlite_vfs)
            readers[name] = conn
            conn.execute("BEGIN")
            conn.execute(f"SELECT count(*) FROM {engine_db.STATE_TABLE}").fetchall()
    except BaseException:
        for conn in readers.values():
            conn.close()
        raise
    return readers


def _row_counts(
    readers: dict[str, apsw.Connection], parent_tables: dict | None, steps: dict[str, list]
) -> dict[str, tuple[TableRows, ...]]:
    """Each database's rows per table as of the incremental's end: the parent's
    counts (its catalog entry's) plus the net changes' inserts and minus their
    deletes, where they tell it (changesets only); counted through the pinned
    reader where they cannot (schema changes, a database or parent unknown)."""
    out = {}
    for name, conn in readers.items():
        derived = _derived(((parent_tables or {}).get(name)), steps.get(name, []))
        if derived is None:
            derived = {
                t: conn.execute(f"SELECT count(*) FROM {engine_db.quote_ident(t)}").fetchall()[0][0]
                for t in engine_db.user_tables(conn)
            }
        out[name] = tuple(TableRows(t, n) for t, n in sorted(derived.items()))
    return out


def _derived(base, db_steps: list) -> dict[str, int] | None:
    if not isinstance(base, dict) or not all(isinstance(v, int) for v in base.values()):
        return None
    rows = dict(base)
    for kind, payload in db_steps:
        if kind == "ddl" and isinstance(payload, str) and payload.startswith(SEQUENCE_STEP_PREFIX):
            continue  # AUTOINCREMENT's counters: no table's rows
        if kind != "changeset":
            return None  # a schema change, a database created or dropped: count
        for change in apsw.Changeset.iter(payload):
            if change.name not in rows:
                return None
            if change.op == "INSERT":
                rows[change.name] += 1
            elif change.op == "DELETE":
                rows[change.name] -= 1
    return rows


#: How long an incremental waits for change tracking to catch up (a burst of
#: large transactions) before it reads the WAL instead.
TRACKED_WAIT_S = 30.0


def _tracked(future) -> NetChangesAt | None:
    if future is None:
        return None
    try:
        return future.result(timeout=TRACKED_WAIT_S)
    except FutureTimeout:
        future.cancel()
        log.warning("change tracking is behind; reading the WAL for this incremental")
        return None


def _from_wal(engine: Engine, start: int, end_lsn: int, scratch: str) -> NetChangesAt:
    """Read the WAL in [start, end_lsn) and compact it per database."""
    compaction = Compaction()
    # No segment removal while we read; reading a long WAL is work, not a stall.
    with engine._checkpoint_lock.held("reading the WAL for an incremental backup", bounded=False):
        try:
            for entry in _wal_records(engine, start, end_lsn, scratch):
                if entry.lsn >= start:
                    compaction.add(walrec.decode_record(entry.body))
        except wal_reader.WalCorruptError as e:
            raise IncrementalUnavailable(
                f"the WAL since the parent backup cannot be read: segment {e.segment_name} is corrupt "
                f"at offset {e.offset} ({e.reason}); take a full backup, and check the disk or archive "
                "that holds the segment"
            ) from None
    return compaction.finish()


class IncrementalSource:
    """The same shape as a Snapshot for the code that writes or streams a backup."""

    def __init__(
        self,
        engine: Engine,
        parent: dict,
        backup_type: BackupType,
        names: list[str] | None,
        scratch: str,
        backup_id: str | None = None,
    ):
        self._manifest, self.steps = build(engine, parent, backup_type, names, scratch, backup_id)
        self.backup_id = self._manifest.backup_id
        self.pause_seconds = 0.0

    def manifest(self) -> Manifest:
        return self._manifest

    def entries(self, scratch: str, cancel=None, *, ranges: bool = False):
        """(entry name, chunk iterator) per database; never a file to send as is."""
        for db in self._manifest.databases:
            yield db.entry, encode_steps(self.steps.get(db.name, []))

    def close(self) -> None:
        self.steps = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
