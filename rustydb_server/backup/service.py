"""Backups run by the server: streamed to rusty-db-backup, or written by the server itself.

Both kinds take the same snapshot (``snapshot.py``) and are recorded in the
catalog. The service is a component of the server's root nursery and owns a
nursery of its own: a backup the server writes (started from the HTTP API)
runs there, so shutting the server down cancels it, the catalog records it
failed and its partial file is removed. A streamed backup runs in its
client connection's task and ends with it. Work in worker threads stops at
the next chunk once the backup's cancel scope is cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from rustydb_client.protocol import events

from .. import keys
from ..archive import destination, segment_file
from ..audit import audit
from ..container.file import PARTIAL_SUFFIX, BackupFile
from ..container.format import BackupType
from ..engine.instance import EngineError
from ..logsetup import get_logger
from ..repository import RepositoryError, location
from ..settings import to_seconds
from ..wal import archive_status
from ..wal import segment as walseg
from . import checks, history, repo_catalog
from .catalog import Catalog, known_path
from .incremental import IncrementalSource, IncrementalUnavailable, check_parent
from .manifest import Manifest
from .replicate import Replicator, initial_states, is_s3, location_in
from .repo_catalog import backup_key
from .request import WIRE_FIELDS, BackupRequest, BackupRequestError, parse_request, wire_fields
from .snapshot import SCRATCH_DIR, BackupCancelled, FileRange, Snapshot

log = get_logger("rustydb.backup")

READ_BATCH = 4  # chunks read per worker-thread hop
# Data per frame when a database file is sent as it is. Larger than the 1 MiB
# chunks (the client cuts them without a copy), so both sides pay their
# per-frame costs a quarter as often; 8 MiB gained nothing more (figures:
# docs/internals.md, "Measured choices"). The frame limit is 16 MiB.
FILE_FRAME = 4 * 1024 * 1024


def _clear_scratch(directory: str) -> list[str]:
    """Empty the server's backup scratch directory; returns what was removed."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return names


def _take(gen, n: int) -> list[bytes]:
    out = []
    for chunk in gen:
        out.append(chunk)
        if len(out) == n:
            break
    return out


async def _set_when_cancelled(flag: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        flag.set()


@contextlib.asynccontextmanager
async def cancel_flag() -> AsyncIterator[threading.Event]:
    """A flag that the enclosing cancel scope sets when it is cancelled.

    For the threads a snapshot starts itself, which cannot ask trio (worker
    threads of trio.to_thread use trio.from_thread.check_cancelled instead).
    Set at the end of the block too: the snapshot's copies stop with it.
    """
    flag = threading.Event()
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when_cancelled, flag)
            try:
                yield flag
            except BaseException as e:
                body_error = e
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup:
        # The flag's task adds a Cancelled when the enclosing scope was
        # cancelled; that scope raises it again at its next checkpoint. What
        # callers handle is the block's own error, or, when the block finished
        # before it noticed, its result.
        if body_error is not None:
            raise body_error from None


class ArchiveCheckFailed(Exception):
    """A pitr-base backup's start segment did not reach the archive in time."""


#: How long a failed backup waits for its streamed upload to be aborted in the store.
STREAM_ABORT_WAIT_S = 10.0

#: How often the archive check looks whether the segment has been archived.
ARCHIVE_CHECK_POLL_S = 0.1


class BackupService:
    def __init__(
        self,
        engine,
        settings,
        catalog: Catalog,
        wal_switched: Callable[[], None],
        archive_failing: Callable[[], str | None] = lambda: None,
    ):
        self.engine = engine
        self.settings = settings
        self.catalog = catalog
        self._wal_switched = wal_switched  # a pitr-base closed its segment: archive it now
        self._archive_failing = archive_failing  # the archiver's reason, while it fails
        self.scratch = os.path.join(engine.datadir.path, SCRATCH_DIR)
        self.limiter = trio.CapacityLimiter(2)
        self._nursery: trio.Nursery | None = None
        self._running: dict[str, trio.Event] = {}  # backups the server writes, set when each ends
        # The backup scheduler (schedule/scheduler.py), once the server runs one:
        # what SHOW BACKUP SCHEDULE and GET /api/v1/admin/schedule report.
        self.scheduler = None
        # Copies to backup_repositories, in the background (backup/replicate.py).
        self.replicator = Replicator(catalog, settings)
        # Retention in the running server (expire.Expirer), and while it removes
        # files, why a backup may not start (a 409: try again in a moment).
        self.expirer = None
        self.expiring: str | None = None
        self.streams = 0  # backups being streamed to rusty-db-backup
        # Running backups' progress (bytes done, total estimate): GET /api/v1/admin/backups, SHOW BACKUPS.
        self.progress: dict[str, history.Progress] = {}

    def history(self) -> list[dict]:
        """Every backup with its trigger, duration, chain, retention state, checks and progress
        (backup/history.py); reads backup_checks.json: call it in a worker thread."""
        return history.listing(
            self.catalog.list(),
            checks.load(self.engine.datadir.path),
            history.policy_of(self.settings),
            dict(self.progress),
            now=time.time(),
            monotonic_now=time.monotonic(),
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Tidy what the last run left, then own the backups the server writes until cancelled."""
        interrupted = self._tidy_interrupted()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.replicator.run)
                if interrupted:
                    nursery.start_soon(self._abort_interrupted_streams, interrupted)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _tidy_interrupted(self) -> list[str]:
        """Mark the backups the last run left unfinished failed, remove their files; their ids."""
        interrupted = self.catalog.mark_interrupted()
        if interrupted:
            log.warning(
                "backups interrupted by the last shutdown marked failed",
                backups=interrupted,
                partial_files_removed=self._remove_partials(interrupted),
            )
        leftovers = _clear_scratch(self.scratch)
        if leftovers:
            # Copies and WAL a backup running at a crash had made: nothing
            # runs yet, so none of it is in use, and a database copy is large.
            log.warning(
                "removed scratch files of backups interrupted by the last shutdown",
                directory=self.scratch,
                files=leftovers,
            )
        return interrupted

    async def _abort_interrupted_streams(self, backup_ids: list[str]) -> None:
        """The multipart uploads that backups cut off by a crash were streaming into an S3 first
        repository: never completed, never listed, but parts the store keeps (and bills) until
        aborted. One attempt, in the background: a store that is down is not waited for."""
        repos = self.repositories()
        if not repos or not is_s3(repos[0]):
            return
        url = repos[0]

        def abort_all() -> int:
            from ..repository.location import repository as shared_repository

            repo = shared_repository(url, self.settings)
            return sum(repo.abort_incomplete_uploads(backup_key(b)) for b in backup_ids)

        try:
            aborted = await trio.to_thread.run_sync(abort_all)
        except Exception as e:
            log.warning(
                "cannot clean up the uploads of backups interrupted by the last shutdown",
                repository=url,
                error=str(e),
            )
            return
        if aborted:
            log.warning(
                "aborted the uploads of backups interrupted by the last shutdown", repository=url, uploads=aborted
            )

    def _remove_partials(self, backup_ids: list[str]) -> list[str]:
        """The unfinished files of backups the server itself was writing when it
        stopped (a crash, kill -9): never complete, only taking space."""
        removed = []
        for backup_id in backup_ids:
            entry = self.catalog.get(backup_id) or {}
            if entry.get("origin") != "api" or not entry.get("location"):
                continue  # a client's backup: its tool removes its own file
            partial = entry["location"] + PARTIAL_SUFFIX
            try:
                os.unlink(partial)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot remove an interrupted backup's partial file", path=partial, error=e.strerror)
                continue
            removed.append(partial)
        return removed

    def repositories(self) -> list[str]:
        return list(self.settings["backup_repositories"] or [])

    def location_for(self, backup_id: str) -> str:
        """Where the server writes a backup: into the first repository when it is
        a local directory, else into backup_dir (and copied from there)."""
        repos = self.repositories()
        if repos and not is_s3(repos[0]):
            return location_in(repos[0], backup_key(backup_id))
        return os.path.join(self.backup_dir(), f"{backup_id}.backup")

    def _completed_in_repositories(self, backup_id: str, location: str | None) -> dict:
        """The catalog fields that queue a completed backup's copies (none without repositories)."""
        states = initial_states(self.repositories(), location, backup_id)
        return {} if states is None else {"repositories": states}

    def backup_dir(self) -> str:
        configured = self.settings["backup_dir"]
        return configured or os.path.join(self.engine.datadir.path, "backups")

    def parent_for(self, backup_type: BackupType, base_backup: dict | None) -> dict:
        """The backup an incremental or differential starts from."""
        return self.choose_parent(backup_type, base_backup)[0]

    def choose_parent(self, backup_type: BackupType, base_backup: dict | None) -> tuple[dict, str | None]:
        """The backup an incremental or differential starts from, and its file's
        path when the catalog knows it.

        The latest backup the server recorded (a differential: the latest full
        one) unless its file, or a file of its chain, is gone from disk; then
        the newest other completed backup whose chain is all there.
        """
        c = self.engine.control
        if base_backup is not None:
            return base_backup, self._location_of(base_backup["backup_id"])
        recorded = c.last_full_backup if backup_type is BackupType.DIFFERENTIAL else c.last_backup
        if recorded is None:
            raise BackupRequestError(
                f"{'an' if backup_type is BackupType.INCREMENTAL else 'a'} {backup_type} backup needs an "
                "earlier full backup of this server; take a full backup first"
            )
        candidates = [recorded] + [
            _record_of(e, c.system_id)
            for e in self.catalog.base_candidates(backup_type, c.timeline)
            if e["backup_id"] != recorded["backup_id"]
        ]
        gone = []
        for candidate in candidates:
            missing = self.catalog.missing_file(candidate["backup_id"])
            if missing is None:
                if gone:
                    log.warning("the latest backups' files are gone; basing on an earlier one", gone=gone)
                return candidate, self._location_of(candidate["backup_id"])
            gone.append(f"{candidate['backup_id']} ({missing} no longer exists)")
        raise BackupRequestError(
            f"no earlier backup to base this {backup_type} backup on is still on disk: {'; '.join(gone)}; "
            "take a full backup"
        )

    def _location_of(self, backup_id: str) -> str | None:
        location = (self.catalog.get(backup_id) or {}).get("location")
        return location if known_path(location) else None

    def check_request(self, req: BackupRequest) -> None:
        """Refuse now what could not succeed later: the one check both request
        paths (the wire's rusty-db-backup, the HTTP API) run before anything
        is recorded. An incremental or differential needs a base backup of this
        server on its timeline and the WAL since it (on the server or in the
        archive); a pitr-base needs a usable archive. BackupRequestError says
        why not."""
        if req.backup_type is BackupType.PITR_BASE and not self.settings["archive_dest"]:
            raise BackupRequestError(
                "a pitr-base backup needs WAL archiving, and archive_dest is not set: run ALTER SYSTEM "
                "SET archive_dest = '/path'; first"
            )
        if req.backup_type.needs_parent:
            parent = self.parent_for(req.backup_type, req.base_backup)
            try:
                check_parent(self.engine, parent)
            except IncrementalUnavailable as e:
                raise BackupRequestError(str(e)) from None

    def open_source(self, backup_type: BackupType, names, base_backup=None, backup_id=None, cancel=None):
        """A Snapshot (full, pitr-base) or the net WAL changes (incremental, differential)."""
        if backup_type.needs_parent:
            parent = self.parent_for(backup_type, base_backup)
            # The parent's row counts: the incremental's follow from them and its net changes.
            parent = dict(parent, tables=(self.catalog.get(parent["backup_id"]) or {}).get("tables"))
            try:
                return IncrementalSource(
                    self.engine, parent, backup_type, names, os.path.join(self.scratch, "wal"), backup_id
                )
            except IncrementalUnavailable as e:
                raise BackupRequestError(str(e)) from None
        return Snapshot(
            self.engine, names, backup_type=backup_type, backup_id=backup_id, scratch_dir=self.scratch, cancel=cancel
        )

    # ------------------------------------------------------------- to a client
    async def stream_to_client(self, conn, request: events.BackupRequested, *, user=None) -> AwaitingLocation | None:
        """Answer a backup request: header, data frames, end (or an error).

        A request naming its ``output`` returns the backup, to be recorded
        when the client confirms it (``client_stored``) or failed if it does
        not (``not_stored``)."""
        self.streams += 1  # before the stream's own check of ``expiring``: an expire waits for it
        try:
            async with cancel_flag() as cancel:
                return await self._stream(conn, request, cancel, user)
        finally:
            self.streams -= 1
            if self.expirer is not None:
                self.expirer.wake()

    async def _stream(
        self, conn, request: events.BackupRequested, cancel: threading.Event, user=None
    ) -> AwaitingLocation | None:
        try:
            req = parse_request(wire_fields(request), self.settings, WIRE_FIELDS)
            if self.expiring:
                raise BackupRequestError(self.expiring, status=409)
            if request.output is not None and not (os.path.isabs(request.output) or is_s3(request.output)):
                raise BackupRequestError(f"the backup's output {request.output!r} is not an absolute path")
            base, where = None, None
            if req.backup_type.needs_parent:
                base, where = self.choose_parent(req.backup_type, req.base_backup)
        except BackupRequestError as e:
            await conn.send(events.Error("invalid_backup_request", str(e)))
            return None
        try:
            await trio.to_thread.run_sync(self.check_request, req, limiter=self.limiter)
            snap = await trio.to_thread.run_sync(
                lambda: self.open_source(req.backup_type, req.databases, base, cancel=cancel),
                limiter=self.limiter,
            )
        except EngineError as e:
            await conn.send(events.Error(e.code, str(e)))
            return None
        except BackupRequestError as e:
            await conn.send(events.Error("invalid_backup_request", str(e)))
            return None
        manifest = snap.manifest()
        location = request.output or f"client {conn.peer[0]}"
        try:
            if req.backup_type is BackupType.PITR_BASE:
                await self._switch_for_base()
            self.catalog.add(**_catalog_fields(manifest, snap, origin="client", location=location), trigger="cli")
        except (EngineError, OSError) as e:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(snap.close, limiter=self.limiter)
            if isinstance(e, EngineError):
                await conn.send(events.Error(e.code, str(e)))
                return None
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("backup refused: disk full", error=str(e))
            await conn.send(
                events.Error(
                    "disk_full",
                    f"the disk is full: the backup catalog could not record a new backup ({e.strerror or e}); "
                    "no backup was taken. Free disk space on the data directory and run it again",
                )
            )
            return None
        audit(
            "backup",
            "ok",
            user=user,
            peer=conn.peer,
            via="wire",
            backup_id=snap.backup_id,
            backup_type=req.backup_type.value,
            output=request.output,
        )
        sent = 0
        t0 = time.perf_counter()
        self.progress[snap.backup_id] = history.Progress(
            time.monotonic(), total_estimate=sum(db.size_bytes for db in manifest.databases)
        )
        try:
            if base is not None:
                await conn.send(events.Notice(based_on(base, where)))
            await conn.send(events.BackupHeader(manifest.to_dict()))
            with conn.bulk_sending():
                sent = await self._send_entries(conn, snap, cancel)
            if req.backup_type is BackupType.PITR_BASE:
                try:
                    await self.check_archived(manifest.timeline, manifest.start_lsn)
                except ArchiveCheckFailed as e:
                    self.catalog.fail(snap.backup_id, str(e))
                    log.warning("backup failed", backup_id=snap.backup_id, error=str(e))
                    await conn.send(events.Error("archive_check_failed", str(e)))
                    return
            if request.output is not None:
                # Present only once the client says its file is durable.
                await conn.send(events.BackupEnd(manifest.end_lsn, sent, awaiting_location=True))
                log.info(
                    "backup streamed; waiting for the client to store it",
                    backup_id=snap.backup_id,
                    bytes=sent,
                    output=request.output,
                    peer=conn.peer,
                )
                return AwaitingLocation(snap.backup_id, manifest, request.output, sent, started=t0)
            await conn.send(events.BackupEnd(manifest.end_lsn, sent))
            try:
                self.catalog.complete(snap.backup_id, size_bytes=sent, duration_s=round(time.perf_counter() - t0, 3))
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # The client has the whole backup; only the listing lags behind.
                log.warning(
                    "the disk is full: the backup is complete, but the catalog could not record it",
                    backup_id=snap.backup_id,
                    error=str(e),
                )
            self.engine.record_backup(manifest)
            log.info(
                "backup streamed",
                backup_id=snap.backup_id,
                bytes=sent,
                seconds=round(time.perf_counter() - t0, 3),
                peer=conn.peer,
            )
        except BackupCancelled:
            self.catalog.fail(snap.backup_id, "the server shut down during the backup")
            await conn.send(events.Error("shutdown", "the server is shutting down; the backup was cancelled"))
        except BaseException as e:
            reason = (
                "the client disconnected during the backup"
                if isinstance(e, (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled))
                else f"backup failed: {e}"
            )
            self.catalog.fail(snap.backup_id, reason)
            log.warning("backup failed", backup_id=snap.backup_id, error=reason)
            raise
        finally:
            self.progress.pop(snap.backup_id, None)
            with trio.CancelScope(shield=True):  # at shutdown too: descriptors, connections
                await trio.to_thread.run_sync(snap.close, limiter=self.limiter)

    def client_stored(self, awaiting: AwaitingLocation, location: str) -> None:
        """The client wrote the backup durably at ``location``: it is present."""
        # A backup rusty-db-backup --repo wrote into one of backup_repositories is
        # copied to the others; one written elsewhere (--output FILE) stays there.
        key = backup_key(awaiting.backup_id)
        in_repository = any(location == location_in(url, key) for url in self.repositories())
        queued = self._completed_in_repositories(awaiting.backup_id, location) if in_repository else {}
        duration = None if awaiting.started is None else round(time.perf_counter() - awaiting.started, 3)
        self.catalog.complete(
            awaiting.backup_id, size_bytes=awaiting.size_bytes, location=location, duration_s=duration, **queued
        )
        if queued:
            self.replicator.kick()
        self.engine.record_backup(awaiting.manifest)
        log.info("backup stored by the client", backup_id=awaiting.backup_id, location=location)

    def not_stored(self, awaiting: AwaitingLocation, reason: str) -> None:
        """The client did not confirm its file: the backup is not there to use."""
        self.catalog.fail(awaiting.backup_id, reason)
        log.warning("backup not stored by the client", backup_id=awaiting.backup_id, reason=reason)

    async def check_archived(self, timeline: int, start_lsn: int) -> None:
        """A pitr-base proves the archive works before it reports success (as
        pgBackRest's archive-check): wait, up to archive_check_timeout, until
        the archive holds the WAL segment of the backup's start (the backup
        switched it, so it is complete); ArchiveCheckFailed with the
        archiver's last error if it does not."""
        size = self.engine.control.segment_size
        segment = walseg.segment_name(timeline, walseg.normalize_lsn(start_lsn, size) // size)
        timeout = to_seconds("archive_check_timeout", self.settings["archive_check_timeout"])
        with trio.move_on_after(timeout):
            while not self._archived(segment):
                await trio.sleep(ARCHIVE_CHECK_POLL_S)
            return
        reason = self._archive_failing() or "the archiver has not copied it yet (no error so far)"
        raise ArchiveCheckFailed(
            f"the archive check failed: WAL segment {segment}, which holds the start of this pitr-base "
            f"backup, was not archived within archive_check_timeout ({timeout:g} s): {reason}. Without it "
            "the backup cannot be recovered to any point; fix archiving (GET /api/v1/admin/archive says "
            "why it fails) and take the backup again"
        )

    def _archived(self, segment: str) -> bool:
        if archive_status.is_archived(self.engine.archive_status_dir, segment):
            return True
        dest = self.settings["archive_dest"]  # the mark goes once a checkpoint removes the segment
        if not dest:
            return False
        where = location.join(destination.location(dest), segment_file.archive_name(segment))
        try:
            return location.exists(where)
        except RepositoryError:
            return False

    async def _switch_for_base(self) -> None:
        """Close the segment holding the base's start, so the archive gets it at once."""
        await trio.to_thread.run_sync(self.engine.switch_wal, limiter=self.limiter)
        self._wal_switched()

    async def _send_entries(self, conn, snap, cancel) -> int:
        """Every entry in order: a database file that holds the snapshot goes
        straight from the file to the socket (sendfile); other data is read in
        a worker thread while the chunks before it are being sent."""
        sent = 0
        progress = self.progress.get(snap.backup_id)
        entries = snap.entries(self.scratch, cancel, ranges=True)
        try:
            while True:
                item = await trio.to_thread.run_sync(next, entries, None, limiter=self.limiter)
                if item is None:
                    return sent
                entry, source = item
                if isinstance(source, FileRange):
                    sent += await self._send_file(conn, entry, source, progress)
                else:
                    sent += await self._send_chunks(conn, entry, source, progress)
                await conn.send_bulk(events.BackupData(entry, True, b""))
        finally:
            with trio.CancelScope(shield=True):  # a scratch copy is removed on close
                await trio.to_thread.run_sync(entries.close, limiter=self.limiter)

    async def _send_file(self, conn, entry: str, source: FileRange, progress=None) -> int:
        for offset in range(0, source.size, FILE_FRAME):
            size = min(FILE_FRAME, source.size - offset)
            await conn.send_file_bulk(entry, False, source.fd, offset, size)
            if progress is not None:
                progress.bytes_done += size
        return source.size

    async def _send_chunks(self, conn, entry: str, chunks, progress=None) -> int:
        """Read chunks in a worker thread while the previous ones are being sent."""
        send_ch, recv_ch = trio.open_memory_channel(8)
        sent = 0

        async def produce() -> None:
            async with send_ch:
                try:
                    while True:
                        batch = await trio.to_thread.run_sync(_take, chunks, READ_BATCH, limiter=self.limiter)
                        for chunk in batch:
                            await send_ch.send(chunk)
                        if len(batch) < READ_BATCH:
                            break
                finally:
                    await trio.to_thread.run_sync(chunks.close, limiter=self.limiter)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                async with recv_ch:
                    async for chunk in recv_ch:
                        await conn.send_bulk(events.BackupData(entry, False, chunk))
                        sent += len(chunk)
                        if progress is not None:
                            progress.bytes_done += len(chunk)
        except BaseExceptionGroup as group:
            # One failure (a cancelled backup, a dropped client) is what callers handle.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return sent

    # --------------------------------------------------------- written by us
    def start_backup(self, req: BackupRequest) -> dict:
        """Record the backup and start it in the service's nursery; return its catalog entry at once."""
        if self.expiring:
            raise BackupRequestError(self.expiring, status=409)
        key = None
        if req.encrypt:
            try:
                key = keys.resolve_kek(None, setting_key_file=self.settings["backup_key_file"] or None)
            except (keys.NoKeyError, keys.KeyFileError) as e:
                raise BackupRequestError(
                    f"encryption was requested but the server has no usable backup key: {e}"
                ) from None
        for name in req.databases or ():
            if name not in self.engine.databases:
                raise BackupRequestError(f'database "{name}" does not exist', status=422)
        self.check_request(req)
        backup_id = str(uuid.uuid4())
        location = self.location_for(backup_id)
        try:
            _usable_backup_dir(os.path.dirname(location))
        except BackupRequestError as e:
            fallback = os.path.join(self.backup_dir(), f"{backup_id}.backup")
            if fallback == location:
                raise
            # The first repository is down: the backup goes to backup_dir, and
            # into the repository by the copies once it is back.
            log.warning(
                "the first backup repository cannot be written; writing the backup to backup_dir",
                repository=self.repositories()[0],
                error=str(e),
                location=fallback,
            )
            location = fallback
            _usable_backup_dir(os.path.dirname(location))
        entry = self.catalog.add(
            backup_id=backup_id,
            backup_type=req.backup_type,
            status="in_progress",
            started_at=int(time.time()),
            location=location,
            origin="api",
            compression=req.codec,
            encryption=req.encrypt,
            databases=req.databases,
            trigger=req.trigger,
        )
        self.progress[backup_id] = history.Progress(time.monotonic())
        self._running[backup_id] = trio.Event()
        self._nursery.start_soon(self._run_job, req, backup_id, location, key)
        return entry

    async def finished(self, backup_id: str) -> dict:
        """Wait until a backup the server writes has ended; its final catalog entry.
        Cancelling the wait (a client that went away) leaves the backup running."""
        event = self._running.get(backup_id)
        if event is not None:
            await event.wait()
        return self.catalog.get(backup_id) or {}

    async def _run_job(self, req, backup_id, location, key) -> None:
        try:
            await self._job(req, backup_id, location, key)
        finally:
            self.progress.pop(backup_id, None)
            self._running.pop(backup_id).set()

    async def _job(self, req, backup_id, location, key) -> None:
        t0 = time.perf_counter()
        url, stream = await self._open_stream(backup_id, location)
        try:
            if await self._written(req, backup_id, location, key, stream, url, t0) and stream is not None:
                # The backup is complete on disk; its upload finishes in the background.
                self._nursery.start_soon(self._finish_stream, backup_id, url, stream, location)
                stream = None
        finally:
            if stream is not None:  # the backup failed or was cancelled: nothing of it in the bucket
                stream.abort("the backup did not complete")
                self.replicator.stream_ended(url, backup_id)
                # At shutdown too: the store drops the parts sent before the server exits,
                # unless it does not answer (then a later cleanup of the bucket must).
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(stream.join, STREAM_ABORT_WAIT_S)

    async def _open_stream(self, backup_id: str, location: str):
        """(url, the streamed upload) of a backup into the first repository when that is S3
        (S3Repository.open_upload), else (None, None); a repository that cannot even be set
        up is left to the background copy."""
        repos = self.repositories()
        if not repos or not is_s3(repos[0]) or location != os.path.join(self.backup_dir(), f"{backup_id}.backup"):
            return None, None
        url = repos[0]
        wait = to_seconds("repository_s3_stream_wait", self.settings["repository_s3_stream_wait"])

        def open_upload():
            from ..repository.location import repository as shared_repository

            # The S3 client is kept per bucket and settings: making one costs 0.2 s of CPU, more on a busy machine.
            return shared_repository(url, self.settings).open_upload(
                backup_key(backup_id), if_absent=True, wait_budget=wait
            )

        try:
            stream = await trio.to_thread.run_sync(open_upload)
        except Exception as e:  # RepositoryError, a setting it refuses: never the backup's failure
            log.warning(
                "the backup cannot be streamed into the first repository; the background copy uploads it",
                backup_id=backup_id,
                repository=url,
                error=str(e),
            )
            return None, None
        return url, stream

    async def _finish_stream(self, backup_id: str, url: str, stream, location: str) -> None:
        """Wait for the streamed upload to complete, then record it in the repository's catalog
        and as copied; given up or failed, the replicator copies the backup from its file."""
        self.replicator.begin_stream(url, backup_id)
        size = os.path.getsize(location)
        try:
            async with cancel_flag() as cancel:
                timeline = await trio.to_thread.run_sync(
                    self._complete_stream, backup_id, stream, location, size, cancel
                )
        except Exception as e:
            log.warning(
                "the backup's streamed upload did not complete; the background copy uploads it",
                backup_id=backup_id,
                repository=url,
                error=str(e),
                waited_s=round(stream.waited, 3),
            )
        else:
            self.replicator.streamed(url, backup_id, size, **timeline)
        finally:
            self.replicator.stream_ended(url, backup_id)

    def _complete_stream(self, backup_id: str, stream, location: str, size: int, cancel: threading.Event) -> dict:
        """Finish the upload (what a store slower than the backup did not take as it was
        written is read back from the file) and record it in the repository's catalog;
        where the time went (StreamedUpload.timeline, and ``catalog_s``: the catalog's writes)."""
        info = stream.finish(cancel, rest_from=location)
        if info.size != size:
            raise RepositoryError(f"the streamed object holds {info.size} bytes, the backup file {size}")
        entry = self.catalog.get(backup_id)
        t0 = time.monotonic()
        if entry is not None:  # else deleted meanwhile: its removal from the repositories follows
            repo_catalog.record(stream.repo, repo_catalog.entry_document(entry, size))
        return dict(stream.timeline(), catalog_s=round(time.monotonic() - t0, 3))

    async def _written(self, req, backup_id, location, key, stream, url, t0) -> bool:
        """Write the backup (teed into ``stream``), check it, record it; whether it completed."""
        try:
            async with cancel_flag() as cancel:
                summary = await trio.to_thread.run_sync(
                    self._write_file, req, backup_id, location, key, cancel, stream, limiter=self.limiter
                )
        except BackupCancelled:
            self.catalog.fail(backup_id, "the server shut down during the backup")
            return False
        except trio.Cancelled:
            self.catalog.fail(backup_id, "the server shut down during the backup")
            raise
        except Exception as e:
            self.catalog.fail(backup_id, str(e))
            log.error("backup failed", backup_id=backup_id, error=str(e))
            return False
        if req.backup_type is BackupType.PITR_BASE:
            self._wal_switched()  # archive the start segment now, whatever the backoff
            try:
                entry = self.catalog.get(backup_id) or {}
                await self.check_archived(entry["timeline"], entry["start_lsn"])
            except ArchiveCheckFailed as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(location)  # no pitr-base without its archive: nothing to restore from
                self.catalog.fail(backup_id, str(e))
                log.error("backup failed", backup_id=backup_id, error=str(e))
                return False
            except trio.Cancelled:
                self.catalog.fail(backup_id, "the server shut down during the backup's archive check")
                raise
        if stream is not None:
            self.replicator.begin_stream(url, backup_id)  # before its copy is due
        self.catalog.complete(
            backup_id,
            duration_s=round(time.perf_counter() - t0, 3),
            **summary,
            **self._completed_in_repositories(backup_id, location),
        )
        self.replicator.kick()
        log.info(
            "backup completed",
            backup_id=backup_id,
            location=location,
            size_bytes=summary["size_bytes"],
            seconds=round(time.perf_counter() - t0, 3),
            streamed=None if stream is None else (f"given up: {stream.error}" if stream.given_up else "finishing"),
        )
        return True

    def _write_file(self, req, backup_id, location, key, cancel, stream=None) -> dict:
        _usable_backup_dir(os.path.dirname(location))
        with self.open_source(req.backup_type, req.databases, backup_id=backup_id, cancel=cancel) as snap:
            manifest = snap.manifest()
            progress = self.progress.get(backup_id) or history.Progress(time.monotonic())
            progress.total_estimate = sum(db.size_bytes for db in manifest.databases)
            if req.backup_type is BackupType.PITR_BASE:
                self.engine.switch_wal()
            self.catalog.update(
                backup_id,
                **{
                    k: v
                    for k, v in _catalog_fields(manifest, snap, origin="api", location=location).items()
                    if k in ("start_lsn", "end_lsn", "timeline", "databases", "writers_paused_ms", "partial", "tables")
                },
            )
            with BackupFile(
                location,
                manifest.to_header(),
                key=key,
                codec=req.codec,
                threads=req.threads,
                nice=self.settings["backup_nice"],
                fileops=self.engine.fileops,
                tee=stream,
            ) as bf:
                for entry, chunks in snap.entries(self.scratch, cancel):
                    bf.begin_entry(entry)
                    for chunk in chunks:
                        trio.from_thread.check_cancelled()
                        bf.write(chunk)
                        progress.bytes_done += len(chunk)
                    bf.end_entry()
                summary = bf.commit()
            self.engine.record_backup(manifest)
        return {
            "size_bytes": summary.size_bytes,
            "parent_id": manifest.parent_id,
            "base_full_id": manifest.base_full_id,
        }


def _usable_backup_dir(directory: str) -> None:
    """Make backup_dir (mode 0700) if it is missing; refuse one the server cannot write."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.path.isdir(directory):
            raise NotADirectoryError(errno.ENOTDIR, "it is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "the server's user cannot write it")
    except OSError as e:
        raise BackupRequestError(
            f"cannot use backup_dir {directory}: {e.strerror}; set backup_dir to a directory the server can write"
        ) from None


def _catalog_fields(manifest: Manifest, snap: Snapshot, *, origin: str, location: str) -> dict:
    return {
        "backup_id": manifest.backup_id,
        "backup_type": manifest.backup_type,
        "status": "in_progress",
        "origin": origin,
        "location": location,
        "start_lsn": manifest.start_lsn,
        "end_lsn": manifest.end_lsn,
        "timeline": manifest.timeline,
        "databases": manifest.database_names,
        "writers_paused_ms": round(snap.pause_seconds * 1000, 3),
        "parent_id": manifest.parent_id,
        "base_full_id": manifest.base_full_id,
        "partial": manifest.partial,
        # Rows per table, per database that recorded them: the next incremental's counts start from them.
        "tables": {db.name: {t.name: t.rows for t in db.tables} for db in manifest.databases if db.tables},
    }


def based_on(base: dict, where: str | None) -> str:
    """The notice that says which backup an incremental or differential starts from."""
    at = where or "a location the server does not know (taken before backups recorded their path)"
    return f"based on {base['backup_id']} at {at}"


@dataclass
class AwaitingLocation:
    """A backup streamed to a client that said where it writes it: recorded as
    present once the client confirms the file is durable (BackupStored)."""

    backup_id: str
    manifest: Manifest
    output: str
    size_bytes: int
    started: float | None = None  # time.perf_counter() when the backup began: its duration at the end


def _record_of(entry: dict, system_id: int) -> dict:
    """A catalog entry as the control file records a backup (Manifest.control_record)."""
    return {
        "backup_id": entry["backup_id"],
        "type": entry["backup_type"],
        "end_lsn": entry["end_lsn"],
        "timeline": entry["timeline"],
        "system_id": system_id,
        "base_full_id": entry.get("base_full_id") or entry["backup_id"],
    }
