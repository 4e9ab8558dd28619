"""The storage engine of one data directory: databases, the WAL, txids, checkpoints.

This is synchronous code, called from trio worker threads. The order of a
commit is fixed (see ``commit``): WAL record appended (written, not yet
fsynced), then the SQLite commit that also stores ``applied_lsn`` (SQLite's
``synchronous=OFF``), then the shared WAL flush that covers the record, then
the answer to the client. SQLite may hold a commit our WAL has not made
durable yet, so SQLite never checkpoints by itself: the engine does
(``checkpoint_database``), after a flush with the database's commits paused,
recording it in the control file; recovery discards SQLite's -wal unless a
checkpoint was copying it (``_discard_sqlite_wals``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import apsw

from .. import datadir as _datadir
from .. import fileops as _fileops
from ..errors import ReportedError
from ..logsetup import get_logger
from ..settings import to_seconds
from ..wal import archive_status, retention
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal import segment as walseg
from ..wal import timeline as waltl
from ..wal import writer as wal_writer
from ..wal.lsn import format_lsn
from . import database, recovery, replay, sqlite_steps
from .lockwatch import WatchedLock
from .observer import EngineObserver

log = get_logger("rustydb.engine")

FIRST_SEGMENT = 1


class EngineError(ReportedError):
    """An error the client should see as a plain message (not a crash)."""

    def __init__(self, message: str, code: str = "engine_error"):
        super().__init__(message, code)


class FatalWalError(ReportedError):
    """The WAL cannot be trusted any more; the server must stop.

    The client whose commit found out hears it, and its connection ends.
    """

    def __init__(self, reason: str):
        super().__init__(
            f"the WAL could not be made durable ({reason}); nothing more is acknowledged and the server is stopping",
            "wal_failure",
            fatal=True,
        )


#: errno values that mean "no space": a full disk, or the user's quota spent.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    """True for every way a full disk shows up: an OSError, SQLite's, the engine's own.

    Not a failed WAL fsync, whatever its errno: that one is never retried.
    """
    if isinstance(e, wal_writer.WalFsyncError):
        return False
    if isinstance(e, (wal_writer.WalDiskFullError, apsw.FullError)):
        return True
    if isinstance(e, EngineError):
        return e.code == "disk_full"
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def _reason(e: BaseException) -> str:
    """What failed, for a message: the system's words and the file they are about."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


@dataclasses.dataclass
class DatabaseHandle:
    name: str
    path: str
    clock: Callable[[], float] = time.monotonic
    # Held from WAL append to SQLite commit, so a checkpoint can wait for commits
    # in flight and a failed SQLite commit can be caught up before the next one.
    commit_lock: WatchedLock = dataclasses.field(init=False)
    # Records that are durable in the WAL but whose SQLite commit failed (e.g. disk
    # full); applied before the next write to this database.
    pending: list = dataclasses.field(default_factory=list)
    sessions: int = 0
    dropped: bool = False
    # A database's checkpoints: attempted, and completed (every frame copied).
    checkpoints: int = 0
    checkpoints_complete: int = 0
    # The last checkpoint could not copy every frame (a reader's snapshot
    # held it back). SQLite copies, per page, only its newest frame, so the
    # file alone is then no whole state: the control file keeps naming the
    # database (recovery keeps its -wal) and each commit's WAL record is
    # made durable before SQLite commits it, until a checkpoint completes.
    durable_first: bool = False
    # Signalled whenever a write transaction on this database ends, so a
    # session waiting for SQLite's write lock retries at once instead of
    # sleeping through SQLite's own back-off.
    write_ended: threading.Condition = dataclasses.field(default_factory=threading.Condition)

    # A descriptor for sending the file as it is (a backup's sendfile). Closing
    # any descriptor of a file drops every POSIX lock this process holds on
    # it, SQLite's included, so it is opened once and closed only when the
    # database is gone (dropped, or the engine closed) and no one uses it.
    _read_fd: int | None = None
    _read_fd_users: int = 0
    _read_fd_closing: bool = False
    _read_fd_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # The engine's checkpoint connection (synchronous=NORMAL), kept open from
    # one checkpoint to the next: while any connection is open SQLite keeps
    # its wal-index (-shm), whereas the first connection after the last one
    # closed rebuilds it by reading the whole -wal (0.3 s for the 270 MB a
    # load leaves), which every checkpoint and backup of an idle database
    # then paid. One checkpoint uses it at a time; another at the same time
    # opens its own.
    _checkpoint_conn: apsw.Connection | None = None
    _checkpoint_conn_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _checkpoint_conn_closing: bool = False

    def __post_init__(self) -> None:
        self.commit_lock = WatchedLock(f'the commit lock of database "{self.name}"', "a commit", self.clock)

    def acquire_read_fd(self) -> int:
        """The file's read descriptor; give it back with release_read_fd()."""
        with self._read_fd_lock:
            if self._read_fd_closing:
                raise EngineError(f'database "{self.name}" is being closed or dropped', code="unknown_database")
            if self._read_fd is None:
                self._read_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._read_fd_users += 1
            return self._read_fd

    def release_read_fd(self) -> None:
        with self._read_fd_lock:
            self._read_fd_users -= 1
            self._close_read_fd_if_unused()

    def close_read_fd(self) -> None:
        """The database is gone: close the descriptor once its last user is done."""
        with self._read_fd_lock:
            self._read_fd_closing = True
            self._close_read_fd_if_unused()

    def _close_read_fd_if_unused(self) -> None:
        if self._read_fd_closing and self._read_fd_users == 0 and self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    @contextlib.contextmanager
    def checkpoint_connection(self, vfs: str | None) -> Iterator[apsw.Connection]:
        """A ``synchronous=NORMAL`` server connection for a checkpoint: the
        kept one if no other checkpoint uses it (never waiting for one), else
        one opened for this checkpoint and closed after it."""
        if not self._checkpoint_conn_lock.acquire(blocking=False):
            conn = database.open_connection(self.path, server=True, synchronous="NORMAL", vfs=vfs)
            try:
                yield conn
            finally:
                conn.close()
            return
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = database.open_connection(self.path, server=True, synchronous="NORMAL", vfs=vfs)
            yield self._checkpoint_conn
        finally:
            if self._checkpoint_conn_closing:
                self._close_checkpoint_conn()
            self._checkpoint_conn_lock.release()

    def close_checkpoint_connection(self) -> None:
        """Close the kept checkpoint connection now, or when the checkpoint
        using it ends (the database is dropped or the engine closes)."""
        self._checkpoint_conn_closing = True
        if self._checkpoint_conn_lock.acquire(blocking=False):
            try:
                self._close_checkpoint_conn()
            finally:
                self._checkpoint_conn_lock.release()

    def _close_checkpoint_conn(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def notify_write_ended(self) -> None:
        with self.write_ended:
            self.write_ended.notify_all()

    def wait_for_writer(self, timeout: float) -> None:
        with self.write_ended:
            self.write_ended.wait(timeout)


def _checkpoint_error(e: BaseException) -> EngineError:
    if is_disk_full(e):
        return EngineError(
            f"checkpoint failed: the disk is full ({_reason(e)}); nothing is lost (the WAL "
            "holds every commit) but the WAL keeps growing. Free disk space; the "
            "checkpointer tries again by itself",
            code="disk_full",
        )
    return EngineError(f"checkpoint failed: {_reason(e)}", code="io_error")


def _has_sqlite_wal(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except FileNotFoundError:
        return False


def now_us() -> int:
    return time.time_ns() // 1000


class Engine:
    #: The SQLite steps after a commit's WAL record is durable (a seam for tests).
    sqlite_steps: sqlite_steps.SqliteSteps = sqlite_steps.REAL

    def __init__(
        self,
        ddir: _datadir.DataDir,
        control: _datadir.Control,
        settings,
        fileops,
        observer: EngineObserver,
        change_tracking=None,
        archived_timelines: Callable[[], Iterable[int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.datadir = ddir
        self.clock = clock
        self.control = control
        self.settings = settings
        self.fileops = fileops
        self.databases: dict[str, DatabaseHandle] = {}
        # Every open client session (engine/session.py adds and removes itself),
        # so a checkpoint that cannot complete can say who holds it back.
        self.sessions: set = set()
        self.wal: wal_writer.WalWriter | None = None
        self._txid_lock = threading.Lock()
        self._next_txid = control.next_txid
        self._last_commit_us = control.last_commit_time_us
        self._registry_lock = WatchedLock("the database registry lock", "a session or database change", clock)
        self._checkpoint_lock = WatchedLock("the checkpoint lock", "a checkpoint", clock)
        # Held while the control file is built from self.control and written,
        # so concurrent writers (a checkpoint's marks, a backup's record) never
        # write an older picture over a newer one. Innermost: nothing is
        # taken while it is held.
        self._control_lock = threading.Lock()
        # Set when the control file may still name a database as being
        # checkpointed after its checkpoint ended (the end could not be
        # written): commits then flush before SQLite commits, as recovery
        # would keep that database's -wal, until a control write succeeds.
        self._durable_first = False
        self.last_checkpoint_lsn: int = control.checkpoint_lsn
        self._checkpoint_end_lsn: int | None = None  # where this process's last checkpoint record ends
        self.recovery_stats: dict = {}
        self.fatal_error: str | None = None
        # Transactions committed since start (GET /metrics).
        self._commits_lock = threading.Lock()
        self.commits = 0
        self.observer = observer
        self.archive_status_dir = ddir.join(_datadir.ARCHIVE_STATUS_DIR)
        # Told once per crossing of checkpoint_wal_size; a completed checkpoint rearms it.
        self._checkpoint_asked = False
        # Told of every durable record (backup/tracking.py), if the server gave one.
        self.change_tracking = change_tracking
        self._archived_timelines = archived_timelines
        self._dirty_segno: int | None = None  # segment holding records since...
        self._dirty_since: float | None = None  # ...this time.monotonic() (archive_timeout)
        # Set while the server is read-only because the disk was full when it
        # had to write (at startup: the control file saying "running"); says
        # what failed. Reads are served, writes refused with disk_full, and
        # every write attempt and the checkpointer try again (try_resume_writes).
        self.read_only_reason: str | None = None
        # What startup still has to write before a write may be accepted:
        # the new timeline of a restored directory, its end-of-recovery record,
        # the control file's "running" state (see _finish_startup).
        self._pending_branch = False
        self._branch: tuple[int, list] | None = None  # the new timeline and its history, once chosen
        self._pending_end_of_recovery: int | None = None  # the timeline left, whose record is due
        self._pending_running = False
        self._recovery_end_lsn = 0

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        ddir: _datadir.DataDir,
        settings,
        fileops=_fileops.REAL,
        observer: EngineObserver | None = None,
        change_tracking=None,
        archived_timelines: Callable[[], Iterable[int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Engine:
        """Initialize an empty data directory or recover an existing one.

        ``observer`` hears what the rest of the server acts on; ``change_tracking``
        (backup/tracking.py), if given, is told of every durable record;
        ``archived_timelines``, if given, lists the timelines the WAL archive
        has seen, which a restored directory's new timeline must avoid;
        ``clock`` times the engine's locks (``stall``).
        """
        fresh = not ddir.is_initialized()
        if fresh:
            control = ddir.initialize(segment_size=settings["wal_segment_size"])
            control.redo_lsn = control.segment_size * FIRST_SEGMENT + walseg.HEADER_SIZE
            ddir.write_control(control)
            log.info(
                "initialized data directory",
                data_dir=ddir.path,
                system_id=control.system_id,
                segment_size=control.segment_size,
            )
        else:
            ddir.check_version()
            control = ddir.read_control()
            _datadir.check_usable(control, ddir.path)
            if control.state == "restored" and control.previous_data_dir:
                log.info(
                    "this data directory was restored; the data directory it replaced is kept beside it, "
                    f"remove it once it is no longer needed: rm -rf {shlex.quote(control.previous_data_dir)}",
                    previous_data_dir=control.previous_data_dir,
                )
            ddir.create_layout()
        engine = cls(
            ddir, control, settings, fileops, observer or EngineObserver(), change_tracking, archived_timelines, clock
        )
        engine._recover()
        if fresh:
            engine.create_database(_datadir.DEFAULT_DATABASE)
        return engine

    def _recover(self) -> None:
        c = self.control
        t0 = time.perf_counter()
        discarded = self._discard_sqlite_wals()
        # Replay hands records to SQLite connections that may checkpoint: the
        # records must be durable first (after a crash the WAL's tail may
        # still be only in the page cache).
        self._sync_wal_from(c.redo_lsn)
        applier = recovery.RecordApplier(self.datadir)
        applier.last_commit_time_us = c.last_commit_time_us
        end_lsn = c.redo_lsn
        try:
            for entry in wal_reader.read_wal(
                self.datadir.wal_dir,
                timeline=c.timeline,
                segment_size=c.segment_size,
                start_lsn=c.redo_lsn,
                system_id=c.system_id,
            ):
                end_lsn = entry.end_lsn
                applier.apply(entry.lsn, walrec.decode_record(entry.body))
            applier.finish()
        except recovery.RecoveryError as e:
            applier.close()
            raise EngineError(str(e)) from e
        except BaseException:
            applier.close()
            raise
        replayed, skipped = applier.replayed, applier.skipped
        max_txid, last_time = applier.max_txid, applier.last_commit_time_us
        applied = applier.applied
        # The resume point can lie past the last record (after SWITCH WAL).
        end_lsn = max(
            end_lsn,
            wal_reader.find_wal_end(
                self.datadir.wal_dir,
                timeline=c.timeline,
                segment_size=c.segment_size,
                start_lsn=c.redo_lsn,
                system_id=c.system_id,
            ),
        )
        self._next_txid = max(self._next_txid, max_txid + 1)
        self._last_commit_us = last_time
        for name in sorted(applied):
            self.databases[name] = DatabaseHandle(name, self.datadir.database_path(name), self.clock)
        self._recovery_end_lsn = end_lsn
        self._pending_branch = self._must_leave_restored_timeline()
        self.wal = self._new_wal_writer(end_lsn)
        self._pending_running = True
        self._mark_completed_segments_ready(end_lsn)
        elapsed = time.perf_counter() - t0
        self.recovery_stats = {
            "was_clean": c.state == "shutdown",
            "sqlite_wals_discarded": discarded,
            "sqlite_wals_kept": sorted(set(c.checkpointing)),
            "replayed_records": replayed,
            "skipped_records": skipped,
            "redo_lsn": format_lsn(c.redo_lsn),
            "end_lsn": format_lsn(end_lsn),
            "seconds": round(elapsed, 3),
        }
        log.info("recovery complete", **self.recovery_stats, databases=len(self.databases))
        try:
            self._finish_startup()
        except Exception as e:
            if not is_disk_full(e):
                raise
            self._enter_read_only(e)

    def _discard_sqlite_wals(self) -> int:
        """Rule (d) of recovery: SQLite's -wal of a database may hold commits
        our WAL never made durable (sessions commit in SQLite first), so it is
        discarded, with its -shm, before anything opens the database: the file
        then holds exactly what the last checkpoint copied, all of it durable,
        and replay brings it up to date. The -wal of a database the control
        file says was being checkpointed is kept: the checkpoint ran after a
        flush with the database's commits paused, so every frame in it is
        durable, and SQLite redoes the copy the crash may have torn.

        A restored directory's first start keeps every file: the restore, not
        this server, wrote them. Returns how many -wal files were removed.
        """
        c = self.control
        if c.state == "restored":
            return 0
        keep = set(c.checkpointing)
        removed = 0
        for name in self.datadir.list_databases():
            if name in keep:
                log.info("a checkpoint was in progress: SQLite's WAL kept", database=name)
                continue
            path = self.datadir.database_path(name)
            for suffix in ("-wal", "-shm"):
                try:
                    self.fileops.unlink(path + suffix)
                except FileNotFoundError:
                    continue
                removed += suffix == "-wal"
        if removed:
            self.fileops.fsync_dir(self.datadir.databases_dir)
        return removed

    def _sync_wal_from(self, start_lsn: int) -> None:
        """fsync this timeline's segments from the one holding ``start_lsn`` on."""
        c = self.control
        first = start_lsn // c.segment_size
        for timeline, segno, name in walseg.list_segments(self.datadir.wal_dir):
            if timeline == c.timeline and segno >= first:
                self.fileops.fsync_file(os.path.join(self.datadir.wal_dir, name))

    def _new_wal_writer(self, start_lsn: int) -> wal_writer.WalWriter:
        c = self.control
        return wal_writer.WalWriter(
            self.datadir.wal_dir,
            timeline=c.timeline,
            system_id=c.system_id,
            segment_size=c.segment_size,
            start_lsn=start_lsn,
            fileops=self.fileops,
            on_segment_complete=self._segment_complete,
        )

    def _write_control(self, **changes) -> None:
        """Write the control file with ``changes``, then take them in memory.

        If the write fails, memory keeps what the file on disk says.
        """
        with self._control_lock:
            self.datadir.write_control(dataclasses.replace(self.control, **changes))
            for field, value in changes.items():
                setattr(self.control, field, value)
            self._durable_first = False

    def _finish_startup(self) -> None:
        """The writes that end startup; each step is done once, so a retry
        after a full disk goes on where the last attempt stopped."""
        c = self.control
        if self._pending_branch:
            previous = self._leave_restored_timeline(self._recovery_end_lsn)
            self._pending_branch = False
            # The writer was opened on the timeline left (it holds no segment
            # of it); new records go to the new one.
            self.wal.close()
            self.wal = self._new_wal_writer(self._recovery_end_lsn)
            self._pending_end_of_recovery = previous
        if self._pending_end_of_recovery is not None:
            rec = walrec.EndOfRecoveryRecord(c.timeline, self._pending_end_of_recovery, now_us())
            self._log_durably(rec, startup=True)
            self._pending_end_of_recovery = None
        if self._pending_running:
            # Recovery's last connection to each database checkpointed it
            # whole and removed its -wal; a database whose -wal is still
            # there stays marked, its commits durable first.
            marks = [n for n in c.checkpointing if n in self.databases and _has_sqlite_wal(self.databases[n].path)]
            for name in marks:
                self.databases[name].durable_first = True
            self._write_control(state="running", next_txid=self._next_txid, checkpointing=marks)
            self._pending_running = False

    def _enter_read_only(self, e: BaseException) -> None:
        self.read_only_reason = f"could not write the data directory at startup: {_reason(e)}"
        log.error(
            "the disk is full: the server starts read-only; reads are served, writes refused "
            "until disk space is freed, then it accepts writes again by itself",
            error=_reason(e),
            data_dir=self.datadir.path,
        )

    def try_resume_writes(self) -> bool:
        """Read-only for lack of space: try the skipped writes again; True once writable.

        Called by every write attempt and by the checkpointer, without engine
        locks held (it takes the checkpoint lock, which orders control file
        writes).
        """
        if self.read_only_reason is None:
            return True
        with self._checkpoint_lock.held("leaving read-only"):
            return self._try_resume_locked()

    def _try_resume_locked(self) -> bool:
        if self.read_only_reason is None:
            return True
        try:
            self._finish_startup()
        except FatalWalError:
            raise
        except Exception as e:
            if is_disk_full(e):
                return False
            raise EngineError(
                f"the server is read-only and could not write its data directory: {_reason(e)}",
                code="io_error",
            ) from e
        self.read_only_reason = None
        log.info("disk space is back: the server accepts writes again", data_dir=self.datadir.path)
        return True

    def _read_only_error(self) -> EngineError:
        return EngineError(
            f"the server is read-only because the disk is full ({self.read_only_reason}); reads "
            f"are served but nothing can be written. Free disk space on {self.datadir.path}; "
            "the server accepts writes again by itself",
            code="disk_full",
        )

    def ensure_writable(self) -> None:
        """Before a write: raise disk_full while the server stays read-only."""
        if self.read_only_reason is not None and not self.try_resume_writes():
            raise self._read_only_error()

    def _must_leave_restored_timeline(self) -> bool:
        c = self.control
        return c.state == "restored" and not any(
            tl == c.timeline for tl, _, _ in walseg.list_segments(self.datadir.wal_dir)
        )

    def _leave_restored_timeline(self, end_lsn: int) -> int:
        """First start after a restore: continue on a new timeline; return the old one.

        The old timeline's WAL after the backup already exists (in the archive, or
        on the old server); writing new WAL under the same segment names would
        clash with it. Like the end of a PostgreSQL recovery, the restored server
        gets a timeline no archive has seen, with a history file naming where it
        branched off. A PITR restore has done this already (its segment exists).
        The control file changes only once the history file is written, so a
        full disk leaves it naming the old timeline and a retry picks the same
        new one.
        """
        c = self.control
        if self._branch is None:
            seen = {c.timeline, *waltl.list_history_timelines(self.datadir.wal_dir)}
            if self._archived_timelines is not None:
                try:
                    seen.update(self._archived_timelines())
                except OSError as e:
                    log.warning("cannot list the archive to choose a new timeline", error=str(e))
            new = waltl.next_timeline(seen)
            try:
                ancestors = waltl.read_history(self.datadir.wal_dir, c.timeline)
            except waltl.HistoryError:
                ancestors = []
            backup = (c.last_backup or {}).get("backup_id", "a backup")
            self._branch = (new, waltl.branch(ancestors, c.timeline, end_lsn, f"restore of backup {backup}"))
        old, (new, history) = c.timeline, self._branch
        waltl.write_history(self.datadir.wal_dir, new, history, self.fileops)
        self._write_control(timeline=new)
        log.info(
            "restored data directory continues on a new timeline",
            timeline=new,
            previous_timeline=old,
            lsn=format_lsn(end_lsn),
        )
        return old

    def _mark_completed_segments_ready(self, end_lsn: int) -> None:
        """A crash between finishing a segment and marking it leaves no .ready; fix that."""
        current = end_lsn // self.control.segment_size
        for timeline, segno, name in walseg.list_segments(self.datadir.wal_dir):
            if timeline == self.control.timeline and segno >= current:
                continue
            if not archive_status.is_marked(self.archive_status_dir, name):
                self._segment_complete(name)

    def _segment_complete(self, name: str) -> None:
        try:
            archive_status.mark_ready(self.archive_status_dir, name, self.fileops)
        except OSError as e:
            log.warning("cannot mark WAL segment ready for archiving", segment=name, error=str(e))
            return
        self.observer.segment_ready(name)

    # ------------------------------------------------------------- txids
    def allocate_txid(self) -> int:
        with self._txid_lock:
            txid = self._next_txid
            self._next_txid += 1
            return txid

    def peek_next_txid(self) -> int:
        return self._next_txid

    def _commit_time(self) -> int:
        # Commit times never go backwards, so a time target in PITR is a cut
        # through the WAL, even if the wall clock steps back.
        with self._txid_lock:
            t = max(now_us(), self._last_commit_us)
            self._last_commit_us = t
            return t

    # --------------------------------------------------------- databases
    def get_database(self, name: str) -> DatabaseHandle:
        handle = self.databases.get(name)
        if handle is None or handle.dropped:
            raise EngineError(
                f'database "{name}" does not exist; CREATE DATABASE {name} makes it',
                code="unknown_database",
            )
        return handle

    def attach_session(self, name: str) -> DatabaseHandle:
        with self._registry_lock.held("a new session"):
            handle = self.get_database(name)
            handle.sessions += 1
            return handle

    def detach_session(self, handle: DatabaseHandle) -> None:
        with self._registry_lock:
            handle.sessions -= 1

    def _log_durably(self, rec, *, startup: bool = False) -> tuple[int, int]:
        """Append ``rec`` and flush the WAL over it: durable on return."""
        lsn, end = self._append(rec, startup=startup)
        self.flush_wal(end)
        return lsn, end

    def _append(self, rec, *, startup: bool = False) -> tuple[int, int]:
        """Write ``rec`` to the WAL, not yet durable; return (lsn, end).

        Raises EngineError (disk_full, io_error) when nothing was written.
        The record becomes durable at the next flush, or the server stops
        (a failed fsync is fatal), so the change tracker hears of it now, in
        the order of the caller's lock (a database's commit lock).
        """
        if self.read_only_reason is not None and not startup:
            raise self._read_only_error()
        # A large changeset goes from the session's buffer to the WAL file as
        # it is: no msgpack body, no joined fragments (a bulk load's record).
        body = walrec.encode_record_parts(rec)
        try:
            lsn, end = self.wal.append(body)
        except wal_writer.WalFsyncError as e:
            self._fatal(str(e))
        except OSError as e:
            if is_disk_full(e):
                raise EngineError(
                    f"could not write the WAL: {e}; the transaction was rolled back and "
                    "nothing was committed. Free disk space; the server resumes by itself",
                    code="disk_full",
                ) from e
            raise EngineError(
                f"could not write the WAL: {e}; the transaction was rolled back",
                code="io_error",
            ) from e
        segno = (end - 1) // self.control.segment_size
        if segno != self._dirty_segno:
            self._dirty_segno, self._dirty_since = segno, time.monotonic()
            self.observer.segment_started()
        if not self._checkpoint_asked and end - self.control.redo_lsn >= self.settings["checkpoint_wal_size"]:
            self._checkpoint_asked = True
            self.observer.checkpoint_due()
        if self.change_tracking is not None:
            self.change_tracking.logged(lsn, rec)
        return lsn, end

    def flush_wal(self, upto: int | None = None) -> int:
        """Make the WAL durable up to ``upto`` (default: all of it); return the
        flushed LSN. One fdatasync covers every record written meanwhile, from
        any session and database (group commit); a failed one stops the server."""
        try:
            return self.wal.flush(upto)
        except (wal_writer.WalFsyncError, OSError) as e:
            self._fatal(str(e))

    def is_durable(self, lsn: int) -> bool:
        """Whether the WAL is durable up to ``lsn``, without waiting."""
        return self.wal.flushed_lsn >= lsn

    def segment_dirty_since(self) -> float | None:
        """When the current WAL segment got its first record (None: it has none)."""
        current = self.wal.end_lsn // self.control.segment_size
        return self._dirty_since if self._dirty_segno == current else None

    def _fatal(self, reason: str):
        self.fatal_error = reason
        log.critical(
            "WAL fsync failed: stopping the server without acknowledging anything more; "
            "restart it to recover from the WAL",
            error=reason,
        )
        self.observer.wal_failed(reason)
        raise FatalWalError(reason)

    def create_database(self, name: str, if_not_exists: bool = False) -> bool:
        _datadir.validate_database_name(name)
        self.ensure_writable()
        with self._registry_lock.held("CREATE DATABASE"):
            if name in self.databases and not self.databases[name].dropped:
                if if_not_exists:
                    return False
                raise EngineError(f'database "{name}" already exists', code="duplicate_database")
            lsn, _ = self._log_durably(walrec.DatabaseRecord("create", name, now_us()))
            path = self.datadir.database_path(name)
            try:
                database.create_database_file(path, lsn)
            except (OSError, apsw.Error) as e:
                if not is_disk_full(e):
                    raise
                # The record is durable: recovery would create the database
                # at the next start; running CREATE DATABASE again now does
                # it at once (recovery takes the first create of a name).
                raise EngineError(
                    f'the disk is full: database "{name}" is in the WAL but its file could not be '
                    f"created ({_reason(e)}). Free disk space and run CREATE DATABASE {name} again "
                    "(a restart also creates it)",
                    code="disk_full",
                ) from e
            handle = self.databases[name] = DatabaseHandle(name, path, self.clock)
            # Named as being checkpointed (a mark a failed write left): its
            # -wal would be kept by recovery, so its commits are durable first.
            handle.durable_first = name in self.control.checkpointing
        log.info("database created", database=name, lsn=format_lsn(lsn))
        return True

    def drop_database(self, name: str, if_exists: bool = False, current=None) -> bool:
        self.ensure_writable()
        with self._registry_lock.held("DROP DATABASE"):
            handle = self.databases.get(name)
            if handle is None or handle.dropped:
                if if_exists:
                    return False
                raise EngineError(f'database "{name}" does not exist', code="unknown_database")
            others = handle.sessions - (1 if current is handle else 0)
            if current is handle or others > 0:
                raise EngineError(
                    f'database "{name}" is being accessed by '
                    + (
                        "this session; switch to another database first"
                        if current is handle
                        else f"{others} other session(s); disconnect them first"
                    ),
                    code="database_in_use",
                )
            with handle.commit_lock.held("DROP DATABASE"):
                lsn, _ = self._log_durably(walrec.DatabaseRecord("drop", name, now_us()))
                handle.dropped = True
                handle.close_checkpoint_connection()
                database.remove_database_files(handle.path)
                handle.close_read_fd()
                del self.databases[name]
                if name in self.control.checkpointing:
                    # A database created later under the name must not
                    # inherit the mark (recovery would keep its -wal).
                    try:
                        self._mark_checkpointing(name, False)
                    except OSError as e:
                        log.warning("the control file still names a dropped database as checkpointed", error=_reason(e))
        log.info("database dropped", database=name, lsn=format_lsn(lsn))
        return True

    # ------------------------------------------------------------ commit
    def commit(self, handle: DatabaseHandle, conn, txid: int | None, steps) -> tuple[int, int, int]:
        """Log and commit the session's open SQLite transaction; return (lsn, txid, time).

        Caller holds an open write transaction on ``conn``. Under the
        database's commit lock the record is written to the WAL (not yet
        durable) and SQLite commits with the record's LSN as ``applied_lsn``,
        releasing its write lock for the next transaction at once; then,
        outside the lock, this waits for the flush that covers the record
        (one fdatasync for every commit that arrived meanwhile). Nothing
        reads the commit before that flush either (``SqlSession``'s
        visibility wait), and SQLite copies nothing into the database file
        before it (``checkpoint_database``).

        An EngineError raised before the record was written means the
        transaction was rolled back and nothing was committed. Once it is
        written the transaction IS committed (recovery replays it once it is
        durable, and the server stops if it cannot be made so): if SQLite
        then fails, the record is made durable and applied from the WAL and
        the commit answered as usual, or, if that fails too, the error is
        ``committed_not_applied``, which says so (see ``_after_durable_failure``).
        """
        if self.read_only_reason is not None:
            self.try_resume_writes()  # still read-only: the WAL append below refuses
        with handle.commit_lock:
            if handle.pending:
                conn.execute("ROLLBACK")
                try:
                    self._catch_up(handle)
                except EngineError as e:
                    raise EngineError(
                        f"{e}; your transaction was rolled back and nothing of it was committed", code=e.code
                    ) from e
                raise EngineError(
                    f'database "{handle.name}" was catching up after a failed commit; '
                    "your transaction was rolled back, run it again",
                    code="serialization_failure",
                )
            if txid is None:
                txid = self.allocate_txid()
            commit_time = self._commit_time()
            rec = walrec.TxRecord(txid, commit_time, handle.name, tuple(steps))
            try:
                lsn, end = self._append(rec)
            except (EngineError, FatalWalError):
                conn.execute("ROLLBACK")
                raise
            if self._durable_first or handle.durable_first:
                # The control file may name this database as being
                # checkpointed: its -wal would survive a crash, so nothing
                # may reach it before it is durable.
                self.flush_wal(end)
            try:
                self.sqlite_steps.commit(conn, lsn, txid, commit_time)
            except Exception as e:
                self.flush_wal(end)
                self._after_durable_failure(handle, conn, lsn, rec, e)
            finally:
                handle.notify_write_ended()
        self.flush_wal(end)
        with self._commits_lock:
            self.commits += 1
        return lsn, txid, commit_time

    def _after_durable_failure(self, handle: DatabaseHandle, conn, lsn: int, rec, error: Exception) -> None:
        """SQLite failed after ``rec`` was durable at ``lsn``: the transaction is
        committed all the same. Apply it from the WAL now (a no-op if SQLite's
        commit did happen), so the answer is a plain success; if it cannot be
        applied yet, say that it IS committed and what that means. Never
        "failed": a client that retried would commit it twice."""
        handle.pending.append((lsn, rec))
        try:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
        except Exception:
            pass
        what = "VACUUM" if tuple(rec.steps) == replay.VACUUM_STEPS else f"transaction {rec.txid}"
        log.error(
            "SQLite failed after the WAL record was durable; applying the record from the WAL",
            database=handle.name,
            lsn=format_lsn(lsn),
            txid=rec.txid,
            error=str(error),
        )
        try:
            self._catch_up(handle)
        except EngineError as e:
            full = isinstance(error, apsw.FullError) or isinstance(e.__cause__, apsw.FullError)
            raise EngineError(
                f"{what} IS committed: its WAL record is durable and it will be in database "
                f'"{handle.name}" after any restart, but SQLite could not apply it yet '
                f"({'the disk is full' if full else error}). Do not run it again. Reads of "
                f'"{handle.name}" show it once it is applied; writes to "{handle.name}" are refused '
                "until then" + (" (free disk space)" if full else "") + "; the server applies it at the "
                "next write or checkpoint",
                code="committed_not_applied",
            ) from error
        log.warning(
            "a commit that SQLite failed was applied from its WAL record", database=handle.name, lsn=format_lsn(lsn)
        )

    def vacuum(self, handle: DatabaseHandle, conn) -> int:
        """Log and run VACUUM (outside any transaction, as SQLite requires)."""
        self.ensure_writable()
        # VACUUM rewrites the whole file: long, but working, so not a stall.
        with handle.commit_lock.held("VACUUM", bounded=False):
            if handle.pending:
                self._catch_up(handle)
            txid = self.allocate_txid()
            rec = walrec.TxRecord(txid, self._commit_time(), handle.name, replay.VACUUM_STEPS)
            lsn, _ = self._log_durably(rec)
            try:
                self.sqlite_steps.vacuum(conn, lsn, txid, rec.commit_time_us)
            except Exception as e:
                self._after_durable_failure(handle, conn, lsn, rec, e)
        log.info("vacuum complete", database=handle.name, lsn=format_lsn(lsn))
        return lsn

    def ensure_caught_up(self, handle: DatabaseHandle) -> None:
        """Before a write starts: apply records whose SQLite commit failed earlier."""
        if handle.pending:
            with handle.commit_lock.held("catching up a committed transaction"):
                if handle.pending:
                    self._catch_up(handle)

    def require_caught_up(self, handle: DatabaseHandle) -> None:
        """With ``handle``'s commit lock held (a backup snapshot): apply what is
        pending, or refuse, since the database file would lack a committed
        transaction."""
        if handle.pending:
            self._catch_up(handle)

    def _catch_up(self, handle: DatabaseHandle) -> None:
        """Apply ``handle.pending`` (committed records SQLite failed) from the WAL."""
        try:
            conn = replay.open_replay_connection(handle.path, server=True, vfs=self.fileops.sqlite_vfs)
        except Exception as e:
            raise self._catching_up_error(handle, e) from e
        try:
            applied = database.read_state(conn)["applied_lsn"]
            while handle.pending:
                lsn, rec = handle.pending[0]
                if lsn > applied:
                    try:
                        self.sqlite_steps.apply(conn, lsn, rec)
                    except Exception as e:
                        raise self._catching_up_error(handle, e) from e
                handle.pending.pop(0)
            log.info("database caught up after a failed commit", database=handle.name)
        except apsw.Error as e:
            raise self._catching_up_error(handle, e) from e
        finally:
            conn.close()

    def _catching_up_error(self, handle: DatabaseHandle, e: Exception) -> EngineError:
        full = isinstance(e, apsw.FullError) or isinstance(e.__cause__, apsw.FullError)
        return EngineError(
            f'database "{handle.name}" cannot apply a committed transaction yet ({e}); writes to it are '
            "refused until it can" + (" (free disk space)" if full else "") + ", reads go on",
            code="catching_up",
        )

    def durable_first_databases(self) -> list[str]:
        """Databases whose last checkpoint did not complete: their commits
        flush before SQLite commits them until one does."""
        return sorted(h.name for h in list(self.databases.values()) if h.durable_first)

    def pending_databases(self) -> list[str]:
        """Databases holding committed transactions SQLite has not applied yet."""
        return sorted(h.name for h in list(self.databases.values()) if h.pending)

    def record_backup(self, manifest) -> None:
        """Remember the latest backups (``manifest`` is a completed backup's
        backup.manifest.Manifest): incrementals start from them, and the WAL
        they need is kept until the next backup."""
        if manifest.partial:
            return  # a backup of some databases only is no base for an incremental
        info = manifest.control_record()
        with self._checkpoint_lock.held("recording a backup"):
            changes = {"last_backup": info}
            if manifest.backup_type.is_full_base:
                changes["last_full_backup"] = info
            try:
                self._write_control(**changes)
            except OSError as e:
                for field, value in changes.items():
                    setattr(self.control, field, value)
                if not is_disk_full(e):
                    raise
                # The backup itself is whole; the server knows it as the base
                # of the next incremental, and the next checkpoint's control
                # file write records it on disk.
                log.warning(
                    "the disk is full: the backup is complete, but the control file could not record it yet",
                    backup_id=info.get("backup_id"),
                    error=_reason(e),
                )
            if self.change_tracking is not None:
                bases = [b["end_lsn"] for b in (self.control.last_backup, self.control.last_full_backup) if b]
                self.change_tracking.keep(bases, manifest.end_lsn)

    def _backup_keep_lsn(self) -> int | None:
        """The oldest LSN a future incremental or differential still needs."""
        marks = [
            b["end_lsn"]
            for b in (self.control.last_backup, self.control.last_full_backup)
            if b and b.get("timeline") == self.control.timeline
        ]
        return min(marks) if marks else None

    # ------------------------------------------------------- admin records
    def create_restore_point(self, name: str) -> int:
        self.ensure_writable()
        lsn, _ = self._log_durably(walrec.RestorePointRecord(name, now_us()))
        log.info("restore point created", name=name, lsn=format_lsn(lsn))
        return lsn

    def switch_wal(self) -> int:
        self.ensure_writable()
        self._log_durably(walrec.SwitchRecord(now_us()))
        try:
            lsn = self.wal.switch_segment()
        except wal_writer.WalFsyncError as e:
            self._fatal(str(e))
        except OSError as e:
            if not is_disk_full(e):
                raise EngineError(
                    f"could not switch the WAL: {_reason(e)}; the switch record is logged, the segment "
                    "was not switched. Check the disk (the system log), then run SWITCH WAL again",
                    code="io_error",
                ) from e
            raise EngineError(
                f"could not switch the WAL: the disk is full ({_reason(e)}); the switch record is "
                "logged, the segment was not switched. Free disk space and run SWITCH WAL again",
                code="disk_full",
            ) from e
        self._dirty_segno = self._dirty_since = None
        log.info("WAL switched", lsn=format_lsn(lsn))
        return lsn

    # ---------------------------------------------------------- checkpoint
    def checkpoint(self, reason: str = "requested", *, skip_if_idle: bool = False) -> dict:
        """Make every commit so far durable in SQLite, then move the redo point.

        ``skip_if_idle``: do nothing if nothing was logged since the last
        checkpoint, as PostgreSQL skips its timed checkpoints on an idle
        server (each would log a record, so archive_timeout would archive a
        new segment holding nothing but it, forever).
        """
        with self._checkpoint_lock:
            if not self._try_resume_locked():
                raise self._read_only_error()
            try:
                return self._checkpoint_locked(reason, skip_if_idle)
            except (EngineError, FatalWalError):
                raise
            except (OSError, apsw.Error) as e:
                raise _checkpoint_error(e) from e

    def _checkpoint_locked(self, reason: str, skip_if_idle: bool) -> dict:
        t0 = time.perf_counter()
        redo = self.wal.end_lsn
        if skip_if_idle and redo == self._checkpoint_end_lsn and not self.pending_databases():
            return {"complete": True, "skipped": True, "reason": reason}
        incomplete = []
        for handle in list(self.databases.values()):
            try:
                self.checkpoint_ahead(handle)
            except FileNotFoundError:
                continue
            # Pauses this database's commits (waiting for one in flight)
            # while the rest of its checkpoint runs; the others' go on.
            with handle.commit_lock.held("a checkpoint"):
                if handle.pending:
                    try:
                        self._catch_up(handle)
                    except EngineError as e:
                        log.warning("checkpoint could not apply a committed transaction", error=str(e))
                    if handle.pending:
                        # Recovery must still replay it: redo from its record.
                        redo = min(redo, handle.pending[0][0])
                try:
                    complete = self.checkpoint_database(handle)
                except FileNotFoundError:
                    continue
            if not complete:
                incomplete.append(handle.name)
        if incomplete:
            # A reader kept SQLite from copying every frame; keep the old redo
            # point so recovery still starts early enough.
            log.info("checkpoint incomplete, redo point kept", reason=reason, databases=incomplete)
            return {"complete": False, "databases": incomplete}
        ck_lsn, self._checkpoint_end_lsn = self._log_durably(walrec.CheckpointRecord(redo, self._next_txid, now_us()))
        moved = {
            "redo_lsn": redo,
            "checkpoint_lsn": ck_lsn,
            "next_txid": self._next_txid,
            "last_commit_time_us": self._last_commit_us,
        }
        # Written before it is taken in: if the disk is full, the redo point
        # stays where the control file on disk says it is.
        self._write_control(**moved)
        self._checkpoint_asked = False
        removed = self._remove_old_segments(redo)
        self.last_checkpoint_lsn = ck_lsn
        figures = {
            "reason": reason,
            "redo_lsn": format_lsn(redo),
            "segments_removed": removed,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        log.info("checkpoint complete", **figures)
        return {"complete": True, **figures}

    def checkpoint_database(self, handle: DatabaseHandle, conn=None) -> bool:
        """Run a SQLite checkpoint of ``handle``'s database; True when every
        frame of its SQLite WAL is now in the database file.

        The caller holds ``handle.commit_lock``, so no commit of the
        database runs meanwhile. SQLite may hold commits whose WAL record is
        not durable yet, so the WAL is flushed first: every frame the
        checkpoint copies is then a durable commit. The control file names
        the database from before the copy starts to after it ends (both
        written with fsync), so that recovery keeps SQLite's -wal if a crash
        tears the copy, and discards it otherwise. ``conn`` (a server
        connection opened with ``synchronous=NORMAL``) is used if given, else
        one is opened for the checkpoint. A reader's snapshot never makes it
        wait: frames it still needs are left for the next checkpoint (False).
        SQLite then copied only each page's newest frame older than that
        snapshot, which leaves the file alone in no whole state: the control
        file keeps naming the database, so recovery keeps its -wal, and its
        commits make their WAL record durable before SQLite commits them
        (``DatabaseHandle.durable_first``) until a checkpoint completes.
        A database with no frame to copy skips the marks and the copy
        (``_nothing_to_copy``). Without ``conn`` the database's kept
        checkpoint connection is used (``DatabaseHandle.checkpoint_connection``).
        """
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(handle.checkpoint_connection(self.fileops.sqlite_vfs))
            self.flush_wal()
            if self._nothing_to_copy(handle, conn):
                complete = True
            else:
                complete = self._copy_marked(handle, conn)
        handle.checkpoints += 1
        handle.checkpoints_complete += complete
        return complete

    def _copy_marked(self, handle: DatabaseHandle, conn) -> bool:
        """checkpoint_database's copy, with the database named in the control file around it."""
        if handle.name not in self.control.checkpointing:
            try:
                self._mark_checkpointing(handle.name, True)
            except OSError as e:
                raise _checkpoint_error(e) from e
        complete = False
        try:
            complete = database.checkpoint(conn)
        except apsw.BusyError:
            pass  # another connection's checkpoint is running
        finally:
            if complete:
                self._mark_checkpointing(handle.name, False)
                handle.durable_first = False
            else:
                # Half copied, or not at all: the mark stays (see
                # DatabaseHandle.durable_first) until one completes.
                handle.durable_first = True
        return complete

    def _nothing_to_copy(self, handle: DatabaseHandle, conn, *, reading: bool = False) -> bool:
        """Whether a checkpoint of ``handle`` would copy no frame, so that it
        may skip the control file's marks and SQLite's checkpoint: the caller
        holds the database's commit lock and has flushed the WAL. Only for a
        database in the plain state (not named in the control file, its
        commits not durable first, the last control file write succeeded):
        any other goes the whole way, which puts it back in that state.
        SQLite's wal-index is read inside a read transaction of ``conn``
        (``reading``: the caller has one open), so it is current; no frame
        beyond what a completed checkpoint copied and synced means the file
        already holds every commit, durably, and recovery would discard the
        -wal whether or not a mark had been written and cleared."""
        if handle.name in self.control.checkpointing or handle.durable_first or self._durable_first:
            return False
        if reading:
            return database.wal_frames_to_copy(handle.path) == 0
        conn.execute("BEGIN")
        try:
            database.read_state(conn)
            return database.wal_frames_to_copy(handle.path) == 0
        finally:
            conn.execute("COMMIT")

    def checkpoint_ahead(self, handle: DatabaseHandle) -> None:
        """Copy most of SQLite's WAL of ``handle`` into its file without
        pausing its commits, before ``checkpoint_database`` copies the rest
        with them paused (a bulk load leaves hundreds of MB to copy).

        With the commit lock held for a moment: the WAL is flushed, the
        database named in the control file, its commits switched to durable
        first (each WAL record flushed before SQLite commits it), and a read
        transaction opened, whose snapshot holds only durable commits. Then,
        without the lock, a PASSIVE checkpoint copies what that snapshot
        holds and no more, while commits go on at the speed of one fsync
        each: every frame SQLite's -wal gets meanwhile is durable, so
        recovery may keep it. The caller's ``checkpoint_database`` then
        clears the mark and the switch if it completes. A database with no
        frame to copy (``_nothing_to_copy``, decided under the lock after the
        flush) gets neither the mark nor the switch nor the copy.
        """
        vfs = self.fileops.sqlite_vfs
        with handle.checkpoint_connection(vfs) as conn:
            pin = database.open_connection(handle.path, server=True, vfs=vfs)
            try:
                with handle.commit_lock.held("a checkpoint's start"):
                    self.flush_wal()
                    pin.execute("BEGIN")
                    database.read_state(pin)
                    if self._nothing_to_copy(handle, pin, reading=True):
                        # Idle since its last complete checkpoint: no mark,
                        # no copy (checkpoint_database finds the same).
                        return
                    if handle.name not in self.control.checkpointing:
                        try:
                            self._mark_checkpointing(handle.name, True)
                        except OSError as e:
                            raise _checkpoint_error(e) from e
                    handle.durable_first = True
                try:
                    database.checkpoint(conn)
                except apsw.BusyError:
                    pass  # another connection's checkpoint is running
            finally:
                pin.close()  # ends its read transaction (nothing was written)

    def _mark_checkpointing(self, name: str, started: bool) -> None:
        """Name ``name`` in the control file's ``checkpointing`` (or remove it), durably."""
        with self._control_lock:
            now = [n for n in self.control.checkpointing if n != name]
            marks = [*now, name] if started else now
            try:
                self.datadir.write_control(dataclasses.replace(self.control, checkpointing=marks))
            except BaseException:
                # The file on disk may say either: until a control write
                # succeeds, commits flush before SQLite commits.
                self._durable_first = True
                if not started:
                    self.control.checkpointing = marks
                raise
            self.control.checkpointing = marks
            self._durable_first = False

    def _remove_old_segments(self, redo: int) -> int:
        archive_on = self.settings["archive_mode"]
        # Decided on the .done marks as they are now: a segment marked ready
        # below may be archived while this runs, and is kept until next time.
        segments = [
            retention.SegmentFacts(segno, name, archive_status.is_archived(self.archive_status_dir, name))
            for _timeline, segno, name in walseg.list_segments(self.datadir.wal_dir)
        ]
        if archive_on:
            self._mark_completed_segments_ready(self.wal.end_lsn)
        doomed = retention.recyclable(
            segments,
            segment_size=self.control.segment_size,
            redo_lsn=redo,
            keep_bytes=self.settings["wal_keep_size"],
            archive_mode=archive_on,
            backup_keep_lsn=self._backup_keep_lsn(),
        )
        removed = 0
        for name in doomed:
            try:
                self.fileops.unlink(os.path.join(self.datadir.wal_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
            archive_status.remove_marks(self.archive_status_dir, name)
        if removed:
            self.fileops.fsync_dir(self.datadir.wal_dir)
        return removed

    def stall(self, bound: float | None = None) -> str | None:
        """Why commits cannot go on, or None: one of the engine's locks held,
        or waited for, longer than ``bound`` seconds (by default
        ``engine_stall_timeout``). Never blocks; the health check, the systemd
        watchdog and a stop that cannot finish ask it."""
        if bound is None:
            bound = to_seconds("engine_stall_timeout", self.settings["engine_stall_timeout"])
            if not bound:
                return None
        now = self.clock()
        locks = [self._registry_lock, self._checkpoint_lock, *(h.commit_lock for h in list(self.databases.values()))]
        for lock in locks:
            reason = lock.stall(bound, now)
            if reason is not None:
                return reason
        return None

    def wal_bytes_since_checkpoint(self) -> int:
        return self.wal.end_lsn - self.control.redo_lsn

    # --------------------------------------------------------------- close
    def close(self, clean: bool = True) -> None:
        if clean and self.fatal_error is None:
            try:
                self.checkpoint(reason="shutdown")
            except Exception as e:  # the WAL still has everything; recovery redoes it
                log.error("shutdown checkpoint failed", error=str(e))
                clean = False
        if self.wal is not None:
            self.wal.close()
        for handle in self.databases.values():
            handle.close_checkpoint_connection()
            handle.close_read_fd()
        if clean and self.fatal_error is None:
            try:
                self._write_control(state="shutdown", next_txid=self._next_txid)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                # Recovery at the next start redoes from the checkpoint just made.
                log.error("the disk is full: the control file could not record the clean shutdown", error=_reason(e))
                return

    def status(self) -> dict:
        return {
            "wal_lsn": format_lsn(self.wal.end_lsn) if self.wal else None,
            "wal_flushed_lsn": format_lsn(self.wal.flushed_lsn) if self.wal else None,
            "timeline": self.control.timeline,
            "next_txid": self._next_txid,
            "databases": sorted(self.databases),
            "last_checkpoint_lsn": format_lsn(self.last_checkpoint_lsn),
        }
