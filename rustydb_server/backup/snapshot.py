"""A transactionally consistent snapshot of every database at one WAL position.

Writers are paused only while a read transaction is opened on each database:
every commit holds its database's commit lock from WAL append to SQLite
commit, so with all of them held, each SQLite snapshot contains exactly the
transactions logged before the recorded LSN.

While they are paused, a PASSIVE checkpoint also copies every committed frame
of SQLite's WAL into the database file (one ran just before, so few are left).
When it completes, the file itself holds the snapshot, and it keeps holding
it: SQLite never checkpoints frames newer than an open reader's snapshot into
the file, and writers only append to the WAL. The file is then sent as it is
(``file_range``: to a client with sendfile), from a descriptor the database's
handle keeps open for as long as the database exists, since closing any
descriptor of the file would drop SQLite's POSIX locks. When the checkpoint
cannot complete (another reader holds an older snapshot), that database's
pages are copied with SQLite's online backup API, from inside the read
transaction, into a scratch file that is streamed and deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Iterator

import apsw

from .. import __version__
from ..container.format import BackupType
from ..engine import database
from ..engine.instance import Engine
from ..logsetup import get_logger
from ..roles import stored_roles
from .manifest import DatabaseEntry, Manifest, TableRows

log = get_logger("rustydb.backup")

STREAM_CHUNK = 1024 * 1024
SCRATCH_DIR = "backup_tmp"
#: Upper bound for mapping a database while its rows are counted; SQLite
#: caps it at its compile-time SQLITE_MAX_MMAP_SIZE and maps the rest by reads.
COUNT_MMAP_BYTES = 1 << 40


class BackupCancelled(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class FileRange:
    """A database file that holds the snapshot, to be sent as it is (sendfile):
    ``size`` bytes from offset 0 of ``fd``, which the snapshot owns until closed."""

    fd: int
    size: int


def entry_name(database_name: str) -> str:
    return f"databases/{database_name}.sqlite"


class _Copy:
    """A database's page copy running in its own thread while rows are counted."""

    def __init__(self, snap: Snapshot, name: str, scratch_dir: str, cancel: threading.Event | None):
        self.path = _scratch_copy_path(scratch_dir, snap.backup_id, name)
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(snap, name, cancel), name=f"backup-copy-{name}", daemon=True
        )
        self._thread.start()

    def _run(self, snap: Snapshot, name: str, cancel) -> None:
        try:
            snap.copy_database(name, self.path, cancel)
        except BaseException as e:  # handed to the thread that streams it
            self.error = e

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def discard(self) -> None:
        self._thread.join()
        _remove_copy(self.path)


class Snapshot:
    """Read transactions on every chosen database, all at ``end_lsn``."""

    def __init__(
        self,
        engine: Engine,
        names: list[str] | None = None,
        *,
        backup_type: BackupType = BackupType.FULL,
        backup_id: str | None = None,
        scratch_dir: str | None = None,
        cancel: threading.Event | None = None,
    ):
        self.engine = engine
        # Each database once, in name order: its commit lock is taken once, and
        # two snapshots take theirs in the same order, so neither can deadlock.
        self.requested = sorted(set(names)) if names else None
        self.names: list[str] = []
        self.all_databases = True
        self.backup_type = BackupType(backup_type)
        self.backup_id = backup_id or str(uuid.uuid4())
        self.conns: dict[str, apsw.Connection] = {}
        self._count_conns: dict[str, apsw.Connection] = {}
        self._copies: dict[str, _Copy] = {}
        self._handles: dict = {}  # name -> the engine's DatabaseHandle
        self._read_fds: list = []  # handles whose read descriptor this snapshot holds
        self._geometry: dict[str, tuple[int, int]] = {}
        # Databases whose file holds the snapshot and is streamed as it is.
        self.direct: set[str] = set()
        self._scratch = scratch_dir
        self._cancel = cancel
        self.pause_seconds = 0.0
        # The start's steps, for the log: the checkpoint before writers pause
        # (checkpoint_ahead) and the whole start until the first byte can go.
        self.checkpoint_ahead_seconds = 0.0
        self.start_seconds = 0.0
        try:
            self._take()
        except BaseException:
            self.close()
            raise

    def _take(self) -> None:
        engine = self.engine
        t_start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            # The registry lock keeps CREATE/DROP DATABASE out while the set of
            # databases and the LSN are fixed: a database whose create record
            # lies before end_lsn is always in the backup.
            stack.enter_context(engine._registry_lock.held("a backup snapshot"))
            self.names = self.requested or sorted(engine.databases)
            self.all_databases = set(self.names) == set(engine.databases)
            handles = [engine.get_database(n) for n in self.names]  # unknown: a clear error
            for h in handles:
                self._handles[h.name] = h
                self.conns[h.name] = _open(engine, h.path)
                # A second reader at the same point counts rows while the
                # first one reads pages.
                self._count_conns[h.name] = _open(engine, h.path)
                # Most of SQLite's WAL reaches the file before writers pause.
                t = time.perf_counter()
                engine.checkpoint_ahead(h)
                self.checkpoint_ahead_seconds += time.perf_counter() - t
            t0 = time.perf_counter()
            for h in handles:  # sorted order: no deadlock with another snapshot
                stack.enter_context(h.commit_lock.held("a backup snapshot"))
                # A committed transaction SQLite failed to apply would be missing.
                engine.require_caught_up(h)
            self.end_lsn = engine.wal.end_lsn
            if engine.change_tracking is not None and self.all_databases:
                # Every commit lock is held: nothing is logged, so the tracker
                # sees exactly the records after this snapshot.
                engine.change_tracking.start(self.end_lsn)
            self.next_txid = engine.peek_next_txid()
            self.last_commit_time_us = engine._last_commit_us
            self.direct = {h.name for h in handles if engine.checkpoint_database(h, self.conns[h.name])}
            for name in self.direct:
                # Counting reads every page; mapped, it skips a pread per page.
                # Safe only where the file is the snapshot:
                # our read transaction, begun next on a fully checkpointed WAL,
                # keeps every checkpoint from writing or truncating the file
                # until it ends, so the mapping cannot lose pages (no SIGBUS).
                self._count_conns[name].execute(f"PRAGMA mmap_size={COUNT_MMAP_BYTES}")
            for conn in [*self.conns.values(), *self._count_conns.values()]:
                conn.execute("BEGIN")
                conn.execute(f"SELECT count(*) FROM {database.STATE_TABLE}").fetchall()
        self.pause_seconds = time.perf_counter() - t0
        self.created_us = time.time_ns() // 1000
        copied = [n for n in self.names if n not in self.direct]
        if self._scratch is not None and copied:
            # Only the first copied database: its copy overlaps the row counting;
            # the others are copied when streamed, so scratch space stays bounded.
            first = copied[0]
            self._copies[first] = _Copy(self, first, self._scratch, self._cancel)
        self.databases: list[DatabaseEntry] = []
        for name, conn in self._count_conns.items():
            state = database.read_state(conn)
            tables = tuple(
                TableRows(t, conn.execute(f"SELECT count(*) FROM {database.quote_ident(t)}").fetchall()[0][0])
                for t in database.user_tables(conn)
            )
            page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
            pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
            self._geometry[name] = (page_size, pages)
            self.databases.append(
                DatabaseEntry(
                    name=name,
                    entry=entry_name(name),
                    applied_lsn=state["applied_lsn"],
                    tables=tables,
                    size_bytes=page_size * pages,
                )
            )
        self.start_seconds = time.perf_counter() - t_start
        log.info(
            "snapshot taken",
            backup_id=self.backup_id,
            databases=self.names,
            lsn=self.end_lsn,
            writers_paused_ms=round(self.pause_seconds * 1000, 3),
            checkpoint_ahead_ms=round(self.checkpoint_ahead_seconds * 1000, 3),
            start_ms=round(self.start_seconds * 1000, 3),
            copied_through_scratch=copied,
        )

    def manifest(self) -> Manifest:
        c = self.engine.control
        return Manifest(
            backup_id=self.backup_id,
            backup_type=self.backup_type,
            system_id=c.system_id,
            timeline=c.timeline,
            segment_size=c.segment_size,
            start_lsn=self.end_lsn,
            end_lsn=self.end_lsn,
            next_txid=self.next_txid,
            last_commit_time_us=self.last_commit_time_us,
            server_version=__version__,
            created_us=self.created_us,
            databases=tuple(self.databases),
            # A backup of some databases only cannot be the base of an
            # incremental, which covers every database.
            all_databases=self.all_databases,
            roles=stored_roles(self.engine.datadir.path),
        )

    def copy_database(self, name: str, path: str, cancel: threading.Event | None) -> None:
        """Copy one database's pages at the snapshot into a scratch file."""
        dest = apsw.Connection(path)
        try:
            with dest.backup("main", self.conns[name], "main") as b:
                while not b.done:
                    if cancel is not None and cancel.is_set():
                        raise BackupCancelled("backup cancelled")
                    b.step(4096)
        finally:
            dest.close()

    def stream_database(self, name: str, scratch_dir: str, cancel: threading.Event | None = None) -> Iterator[bytes]:
        """One database's pages at the snapshot, in chunks."""
        if name in self.direct:
            return self._stream_file(name, scratch_dir, cancel)
        return self._stream_copy(name, scratch_dir, cancel)

    def _stream_file(self, name: str, scratch_dir: str, cancel: threading.Event | None) -> Iterator[bytes]:
        """The database file itself, which holds the snapshot (see the module's doc)."""
        file_range = self.file_range(name)
        if file_range is None:
            # Never stream a file that is not the snapshot; the backup API
            # copies it from inside the read transaction instead.
            yield from self._stream_copy(name, scratch_dir, cancel)
            return
        pos = 0
        while pos < file_range.size:
            if cancel is not None and cancel.is_set():
                raise BackupCancelled("backup cancelled")
            n = min(STREAM_CHUNK, file_range.size - pos)
            data = os.pread(file_range.fd, n, pos)
            if len(data) != n:  # cannot happen while our read transaction is open
                raise OSError(
                    f"database file {self._handles[name].path} ended at {pos + len(data)} "
                    f"bytes, inside the snapshot's {file_range.size}"
                )
            yield data
            pos += n

    def _stream_copy(self, name: str, scratch_dir: str, cancel: threading.Event | None) -> Iterator[bytes]:
        """Copy one database's pages at the snapshot to scratch, then yield them."""
        copy = self._copies.pop(name, None)
        if copy is not None:
            path = copy.path
        else:
            path = _scratch_copy_path(scratch_dir, self.backup_id, name)
        try:
            if copy is not None:
                copy.wait()
            else:
                self.copy_database(name, path, cancel)
            with open(path, "rb") as f:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise BackupCancelled("backup cancelled")
                    chunk = f.read(STREAM_CHUNK)
                    if not chunk:
                        break
                    yield chunk
        finally:
            _remove_copy(path)

    def entries(self, scratch_dir: str, cancel: threading.Event | None = None, *, ranges: bool = False):
        """(entry name, chunk iterator) for every database, in manifest order;
        with ``ranges``, a FileRange instead for a file that can be sent as it is."""
        for db in self.databases:
            name = db.name
            file_range = self.file_range(name) if ranges else None
            yield db.entry, file_range or self.stream_database(name, scratch_dir, cancel)

    def file_range(self, name: str) -> FileRange | None:
        """The database file itself when it holds the snapshot (see the module's
        doc), else None (stream_database copies it)."""
        if name not in self.direct:
            return None
        handle = self._handles[name]
        fd = handle.acquire_read_fd()
        self._read_fds.append(handle)
        page_size, pages = self._geometry[name]
        problem = _file_mismatch(os.fstat(fd).st_size, os.pread(fd, 100, 0), page_size, pages)
        if problem:
            log.warning("database file does not hold the snapshot; copying it instead", database=name, problem=problem)
            self.direct.discard(name)  # stream_database copies it from now on
            return None
        return FileRange(fd, page_size * pages)

    def close(self) -> None:
        for handle in self._read_fds:
            handle.release_read_fd()
        self._read_fds.clear()
        if self._copies and self._cancel is not None:
            self._cancel.set()  # a copy nobody will stream: stop it
        for copy in list(self._copies.values()):
            copy.discard()
        self._copies.clear()
        for conn in self._count_conns.values():
            with contextlib.suppress(apsw.Error):
                conn.execute("ROLLBACK")
            conn.close()
        self._count_conns.clear()
        for conn in self.conns.values():
            try:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
            except apsw.Error:
                pass
            conn.close()
        self.conns.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _scratch_copy_path(scratch_dir: str, backup_id: str, name: str) -> str:
    os.makedirs(scratch_dir, mode=0o700, exist_ok=True)
    return os.path.join(scratch_dir, f"{backup_id}-{name}.sqlite")


def _remove_copy(path: str) -> None:
    """A scratch copy and whatever SQLite kept next to it."""
    for p in (path, path + "-journal", path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _open(engine, path: str) -> apsw.Connection:
    """A server connection to a live database (SQLite checkpoints only when the
    engine says), syncing its checkpoints (``Engine.checkpoint_database``)."""
    return database.open_connection(path, server=True, synchronous="NORMAL", vfs=engine.fileops.sqlite_vfs)


def _file_mismatch(file_size: int, head: bytes, page_size: int, pages: int) -> str | None:
    """Why a database file's header disagrees with the snapshot's geometry, or None."""
    if file_size < page_size * pages:
        return f"file is {file_size} bytes, the snapshot has {pages} pages of {page_size}"
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return "no SQLite header"
    raw_size = int.from_bytes(head[16:18], "big")
    if (65536 if raw_size == 1 else raw_size) != page_size:
        return f"header page size {raw_size}, snapshot page size {page_size}"
    counter, valid_for = head[24:28], head[92:96]
    in_header = int.from_bytes(head[28:32], "big")
    if counter == valid_for and in_header != pages:
        return f"header says {in_header} pages, the snapshot has {pages}"
    return None
