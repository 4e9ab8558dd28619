"""The archiver: copies each completed WAL segment to archive_dest, in order.

A component of the server's root nursery. For each segment marked ``.ready``
it writes ``<segment>.walz`` into archive_dest (temp name, fsync, rename,
fsync dir), then marks the segment ``.done``; a checkpoint never removes a
segment before that. It sleeps until there is work: the engine rings its
doorbell when a segment is ready or the current one gets its first record,
and a settings change wakes it; while archive_mode is off it waits for
nothing else. ALTER SYSTEM and the start make a missing archive_dest
(``destination.prepare``); the archiver never does: when the destination
is missing (unmounted, moved away), unwritable or full, it keeps
the WAL, logs the reason once per retry and backs off, so nothing is lost
when the destination comes back; ``failing()`` says why meanwhile (health
turns "degraded"). With archive_timeout it switches a segment
that has held commits for that long, so the archive is at most that far
behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import shutil
import time

import trio

from .. import fileops as _fileops
from .. import keys
from ..doorbell import Doorbell
from ..engine.instance import FatalWalError
from ..logsetup import get_logger
from ..repository import ObjectExists, Repository, RepositoryError, is_s3_url, location
from ..settings import to_seconds
from ..wal import archive_status, timeline
from . import destination, segment_file

log = get_logger("rustydb.archive")

MAX_BACKOFF_S = 60.0
#: After archive_timeout could not switch the segment (a full disk), try again this much later.
SWITCH_RETRY_S = 1.0


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def backoff_seconds(failures_in_a_row: int) -> float:
    """1, 2, 4, ... seconds after each failure in a row, at most MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, 2 ** min(failures_in_a_row - 1, 6))


@dataclasses.dataclass
class ArchiveProgress:
    last_archived_segment: str | None = None
    last_archived_time: float | None = None
    last_failed_segment: str | None = None
    last_failure_time: float | None = None
    last_failure_reason: str | None = None
    failures_in_a_row: int = 0
    archived_count: int = 0
    failing_since: float | None = None  # when the current run of failures began (metrics, alerts)
    archived_bytes: int = 0  # bytes written to archive_dest since start (metrics)


class Archiver:
    def __init__(
        self,
        engine,
        settings,
        doorbell: Doorbell,
        fileops: _fileops.FileOps = _fileops.REAL,
        run_sync=trio.to_thread.run_sync,
    ):
        self.engine = engine
        self.settings = settings
        self.fileops = fileops
        self.progress = ArchiveProgress()
        self.status_dir = engine.archive_status_dir
        self._work = doorbell  # rung by the engine: a segment is ready, or started
        # How blocking work runs: in worker threads (tests on the mock clock
        # run it inline, so time never jumps while a copy is in progress).
        self._run_sync = run_sync
        self._settings_changed = Doorbell()
        self.outcome = Doorbell()  # rung at each archive success or failure (the alerts' archive watch)
        self._retry_at: float | None = None  # trio time of the next try after failures
        self._switch_retry_at = -math.inf  # trio time before which a failed switch is not retried

    # ------------------------------------------------------------ state
    def report(self) -> dict:
        s = self.progress
        settings = self.settings
        pending = archive_status.waiting(self.status_dir) if settings["archive_mode"] else []
        return {
            "archive_mode": "on" if settings["archive_mode"] else "off",
            "archive_dest": settings["archive_dest"] or None,
            "archive_timeout_seconds": to_seconds("archive_timeout", settings["archive_timeout"]),
            "last_archived_segment": s.last_archived_segment,
            "last_archived_time": iso(s.last_archived_time),
            "last_failed_segment": s.last_failed_segment,
            "last_failure_time": iso(s.last_failure_time),
            "last_failure_reason": s.last_failure_reason,
            "failures_in_a_row": s.failures_in_a_row,
            "segments_waiting": len(pending),
            "oldest_waiting_segment": pending[0] if pending else None,
            "archived_since_start": s.archived_count,
        }

    def failing(self) -> str | None:
        """Why archiving fails now (health's "degraded" reason), or None while it works or is off."""
        s = self.progress
        if not self.settings["archive_mode"]:
            return None
        if not self.settings["archive_dest"]:
            return (
                "WAL archiving is on but archive_dest is not set: segments wait in wal/ and PITR cannot reach "
                "past the last archived one; run ALTER SYSTEM SET archive_dest = '/path';"
            )
        if not s.failures_in_a_row:
            return None
        waiting = len(archive_status.waiting(self.status_dir))
        return (
            f"WAL archiving is failing: {s.last_failure_reason} (segment {s.last_failed_segment}, "
            f"{s.failures_in_a_row} failure(s) in a row, {waiting} segment(s) waiting in wal/); "
            "see GET /api/v1/admin/archive"
        )

    def lag(self) -> tuple[int, float]:
        """How far the archive is behind: completed segments waiting, and how long
        the oldest has waited in seconds (its ``.ready`` mark's age); (0, 0.0) while off."""
        if not self.settings["archive_mode"]:
            return 0, 0.0
        pending = archive_status.waiting(self.status_dir)
        if not pending:
            return 0, 0.0
        try:
            marked = os.stat(os.path.join(self.status_dir, pending[0] + archive_status.READY)).st_mtime
        except OSError:
            return len(pending), 0.0
        return len(pending), max(0.0, time.time() - marked)

    def retry_now(self) -> None:
        """Try the waiting segments at once, without waiting out the backoff."""
        self._retry_at = None
        self._work.ring()

    def settings_changed(self) -> None:
        """archive_mode or archive_dest may have changed: look again at once."""
        self._settings_changed.ring()
        self.retry_now()

    # ------------------------------------------------------------- loop
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self.settings["archive_mode"]:
                await self._settings_changed.wait()
                continue
            await self._switch_if_due()
            if self._retry_at is None or trio.current_time() >= self._retry_at:
                await self._archive_waiting()
            with trio.move_on_at(self._next_wakeup()):
                await self._work.wait()

    def _next_wakeup(self) -> float:
        """The trio time of the next retry or archive_timeout switch, if any."""
        times = [math.inf]
        if self._retry_at is not None:
            times.append(self._retry_at)
        due = self._switch_due_in()
        if due is not None:
            times.append(max(trio.current_time() + due, self._switch_retry_at))
        return min(times)

    def _switch_due_in(self) -> float | None:
        """Seconds until archive_timeout switches the current segment (None: it holds nothing)."""
        since = self.engine.segment_dirty_since()
        if since is None:
            return None
        timeout = to_seconds("archive_timeout", self.settings["archive_timeout"])
        return max(0.0, since + timeout - time.monotonic())

    async def _switch_if_due(self) -> None:
        if self._switch_due_in() != 0.0 or trio.current_time() < self._switch_retry_at:
            return
        try:
            await self._run_sync(self.engine.switch_wal)
        except Exception as e:
            self._switch_retry_at = trio.current_time() + SWITCH_RETRY_S
            if not isinstance(e, FatalWalError):  # that one stops the server
                log.warning("archive_timeout could not switch the WAL segment", error=str(e))

    async def _archive_waiting(self) -> None:
        for name in archive_status.waiting(self.status_dir):
            try:
                await self._run_sync(self._archive_one, name)
            except Exception as e:
                self._failed(name, e)
                return
            self._succeeded(name)
        try:
            await self._run_sync(self._archive_histories)
        except (OSError, RepositoryError) as e:  # retried with the next segment; never fatal for the server
            log.warning("copying a timeline history file to the archive failed", error=str(e))

    def _succeeded(self, name: str) -> None:
        s = self.progress
        if s.failures_in_a_row:
            log.info("archiving works again", segment=name, after_failures=s.failures_in_a_row)
        s.last_archived_segment = name
        s.last_archived_time = time.time()
        s.archived_count += 1
        s.failures_in_a_row = 0
        s.failing_since = None
        self._retry_at = None
        self.outcome.ring()

    def _failed(self, name: str, error: Exception) -> None:
        s = self.progress
        s.failures_in_a_row += 1
        if s.failing_since is None:
            s.failing_since = time.time()
        s.last_failed_segment = name
        s.last_failure_time = time.time()
        s.last_failure_reason = str(error)
        backoff = backoff_seconds(s.failures_in_a_row)
        self._retry_at = trio.current_time() + backoff
        self.outcome.ring()
        log.warning(
            "archiving a WAL segment failed; the segment is kept and retried",
            segment=name,
            reason=str(error),
            retry_in_seconds=backoff,
            failures_in_a_row=s.failures_in_a_row,
            segments_waiting=len(archive_status.waiting(self.status_dir)),
        )

    # ------------------------------------------------------- one segment
    def _destination(self) -> str:
        dest = self.settings["archive_dest"]
        try:
            destination.check(dest)
        except destination.ArchiveDestError as e:
            raise segment_file.ArchiveError(str(e)) from None
        return dest

    def _key(self):
        if not self.settings["archive_encryption"]:
            return None
        try:
            return keys.resolve_kek(None, setting_key_file=self.settings["backup_key_file"] or None)
        except (keys.NoKeyError, keys.KeyFileError) as e:
            raise segment_file.ArchiveError(f"archive_encryption is on but {e}") from None

    def _repository(self, dest: str) -> Repository:
        """The repository prefix archived WAL goes to, for an s3:// archive_dest."""
        return location.repository(destination.location(dest), self.settings)

    def _archive_one(self, name: str) -> None:
        dest_dir = self._destination()
        if is_s3_url(dest_dir):
            self._archive_one_to_repository(name, self._repository(dest_dir))
            return
        src = os.path.join(self.engine.datadir.wal_dir, name)
        target = os.path.join(dest_dir, segment_file.archive_name(name))
        c = self.engine.control
        if os.path.exists(target):
            # Archived before a crash that came ahead of the .done mark? Then
            # it is the same segment; anything else is never overwritten.
            with open(src, "rb") as f:
                ours = hashlib.sha256(f.read()).hexdigest()
            if segment_file.archived_digest(target) != ours:
                raise segment_file.ArchiveError(
                    f"{target} already exists with different content; another server may "
                    "archive into the same archive_dest on the same timeline"
                )
        else:
            codec = self.settings["archive_compression"]
            segment_file.pack_segment(
                src,
                target,
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec=codec,
                key=self._key(),
                fileops=self.fileops,
            )
            self.progress.archived_bytes += os.path.getsize(target)
        archive_status.mark_done(self.status_dir, name, self.fileops)

    def _archive_one_to_repository(self, name: str, repo: Repository) -> None:
        """The segment as an object ``<name>.walz``: packed into a scratch file
        beside the archive marks, uploaded with ``if_absent`` (never replacing
        a different object), then marked ``.done``: only once the store has
        confirmed the complete object."""
        src = os.path.join(self.engine.datadir.wal_dir, name)
        key = segment_file.archive_name(name)
        existing = repo.stat(key)
        if existing is not None:
            self._same_segment_or_refuse(repo, key, src)
        else:
            c = self.engine.control
            scratch = os.path.join(self.status_dir, f".{key}.upload")
            try:
                segment_file.pack_segment(
                    src,
                    scratch,
                    system_id=c.system_id,
                    segment_size=c.segment_size,
                    codec=self.settings["archive_compression"],
                    key=self._key(),
                    fileops=self.fileops,
                )
                with open(scratch, "rb") as f:
                    try:
                        repo.put_stream(key, iter(lambda: f.read(1 << 20), b""), if_absent=True)
                    except ObjectExists:
                        # Archived meanwhile (or before a crash) with another
                        # container around it: the same segment is fine.
                        self._same_segment_or_refuse(repo, key, src)
            finally:
                try:
                    os.unlink(scratch)
                except FileNotFoundError:
                    pass
        archive_status.mark_done(self.status_dir, name, self.fileops)

    def _same_segment_or_refuse(self, repo: Repository, key: str, src: str) -> None:
        with open(src, "rb") as f:
            ours = hashlib.sha256(f.read()).hexdigest()
        if segment_file.archived_digest_of(io.BytesIO(repo.get_bytes(key))) != ours:
            raise segment_file.ArchiveError(
                f"{repo.url}/{key} already exists with different content; another server may "
                "archive into the same archive_dest on the same timeline"
            )

    def _archive_histories(self) -> None:
        """Copy timeline history files the archive does not have yet."""
        try:
            dest_dir = self._destination()
        except segment_file.ArchiveError:
            return
        wal_dir = self.engine.datadir.wal_dir
        if is_s3_url(dest_dir):
            repo = self._repository(dest_dir)
            for n in os.listdir(wal_dir):
                if n.endswith(timeline.HISTORY_SUFFIX) and repo.stat(n) is None:
                    with open(os.path.join(wal_dir, n), "rb") as f:
                        repo.put_bytes(n, f.read(), if_absent=True)
            return
        for n in os.listdir(wal_dir):
            if n.endswith(timeline.HISTORY_SUFFIX):
                target = os.path.join(dest_dir, n)
                if not os.path.exists(target):
                    tmp = target + ".tmp"
                    shutil.copyfile(os.path.join(wal_dir, n), tmp)
                    os.chmod(tmp, 0o600)
                    self.fileops.fsync_file(tmp)
                    self.fileops.rename(tmp, target)
                    self.fileops.fsync_dir(dest_dir)
