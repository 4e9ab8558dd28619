"""The archiver: copies each completed WAL segment to archive_dest, in order.

A task of the server's root nursery. For each segment marked ``.ready`` it
writes ``<segment>.walz`` into archive_dest (temp name, fsync, rename, fsync
dir), then marks the segment ``.done``; a checkpoint never removes a segment
before that. When the destination is missing, unwritable or full, it keeps
the WAL, logs the reason once per retry and backs off; nothing is lost when
the destination comes back. With archive_timeout it switches a segment that
has held commits for that long, so the archive is at most that far behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time

import trio

from .. import datadir as _datadir
from .. import fileops as _fileops
from .. import keys
from ..engine.instance import FatalWalError
from ..logsetup import get_logger
from ..settings import to_seconds
from ..wal import timeline
from . import segment_file

log = get_logger("rustydb.archive")

MAX_BACKOFF_S = 60.0
TICK_S = 0.2


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclasses.dataclass
class ArchiveStatus:
    last_archived_segment: str | None = None
    last_archived_time: float | None = None
    last_failed_segment: str | None = None
    last_failure_time: float | None = None
    last_failure_reason: str | None = None
    failures_in_a_row: int = 0
    archived_count: int = 0
    next_retry_at: float | None = None


class Archiver:
    def __init__(self, state, fileops: _fileops.FileOps = _fileops.REAL):
        self.state = state
        self.engine = state.engine
        self.fileops = fileops
        self.status = ArchiveStatus()
        self.wakeup = trio.Event()
        self.status_dir = self.engine.datadir.join(_datadir.ARCHIVE_STATUS_DIR)

    # ------------------------------------------------------------ state
    def pending_segments(self) -> list[str]:
        try:
            names = os.listdir(self.status_dir)
        except FileNotFoundError:
            return []
        ready = {n[: -len(".ready")] for n in names if n.endswith(".ready")}
        done = {n[: -len(".done")] for n in names if n.endswith(".done")}
        return sorted(ready - done)

    def report(self) -> dict:
        s = self.status
        settings = self.state.settings
        pending = self.pending_segments() if settings["archive_mode"] else []
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

    def poke(self) -> None:
        """Settings changed (or work arrived): retry at once, without the backoff."""
        self.status.next_retry_at = None
        self.wakeup.set()

    # ------------------------------------------------------------- loop
    async def run(self) -> None:
        while True:
            with trio.move_on_after(TICK_S):
                await self.wakeup.wait()
            self.wakeup = trio.Event()
            settings = self.state.settings
            if not settings["archive_mode"]:
                continue
            await self._switch_if_due()
            if self.status.next_retry_at and time.monotonic() < self.status.next_retry_at:
                continue
            await self._archive_pending()

    async def _switch_if_due(self) -> None:
        timeout = to_seconds("archive_timeout", self.state.settings["archive_timeout"])
        since = self.engine.segment_dirty_since()
        if since is not None and time.monotonic() - since >= timeout:
            try:
                await trio.to_thread.run_sync(self.engine.switch_wal)
            except FatalWalError:
                return  # the server is stopping
            except Exception as e:  # e.g. the WAL disk is full: switch again later
                log.warning("archive_timeout could not switch the WAL segment", error=str(e))

    async def _archive_pending(self) -> None:
        for name in self.pending_segments():
            try:
                await trio.to_thread.run_sync(self._archive_one, name)
            except Exception as e:
                self._failed(name, e)
                return
            self._succeeded(name)
        try:
            await trio.to_thread.run_sync(self._archive_histories)
        except OSError as e:  # retried with the next segment; never fatal for the server
            log.warning("copying a timeline history file to the archive failed", error=str(e))

    def _succeeded(self, name: str) -> None:
        s = self.status
        if s.failures_in_a_row:
            log.info("archiving works again", segment=name, after_failures=s.failures_in_a_row)
        s.last_archived_segment = name
        s.last_archived_time = time.time()
        s.archived_count += 1
        s.failures_in_a_row = 0
        s.next_retry_at = None

    def _failed(self, name: str, error: Exception) -> None:
        s = self.status
        s.failures_in_a_row += 1
        s.last_failed_segment = name
        s.last_failure_time = time.time()
        s.last_failure_reason = str(error)
        backoff = min(MAX_BACKOFF_S, 2 ** min(s.failures_in_a_row - 1, 6))
        s.next_retry_at = time.monotonic() + backoff
        log.warning(
            "archiving a WAL segment failed; the segment is kept and retried",
            segment=name,
            reason=str(error),
            retry_in_seconds=backoff,
            failures_in_a_row=s.failures_in_a_row,
            segments_waiting=len(self.pending_segments()),
        )

    # ------------------------------------------------------- one segment
    def _destination(self) -> str:
        dest = self.state.settings["archive_dest"]
        if not dest:
            raise segment_file.ArchiveError("archive_mode is on but archive_dest is not set")
        if not os.path.exists(dest):
            raise segment_file.ArchiveError(f"archive_dest {dest} does not exist")
        if not os.path.isdir(dest):
            raise segment_file.ArchiveError(f"archive_dest {dest} is not a directory")
        return dest

    def _key(self):
        if not self.state.settings["archive_encryption"]:
            return None
        try:
            return keys.resolve_kek(None, setting_key_file=self.state.settings["backup_key_file"] or None)
        except (keys.NoKeyError, keys.KeyFileError) as e:
            raise segment_file.ArchiveError(f"archive_encryption is on but {e}") from None

    def _archive_one(self, name: str) -> None:
        dest_dir = self._destination()
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
            codec = self.state.settings["archive_compression"]
            segment_file.pack_segment(
                src,
                target,
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec=codec,
                key=self._key(),
                fileops=self.fileops,
            )
        done = os.path.join(self.status_dir, name + ".done")
        fd = os.open(done, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        self.fileops.fsync_dir(self.status_dir)

    def _archive_histories(self) -> None:
        """Copy timeline history files the archive does not have yet."""
        try:
            dest_dir = self._destination()
        except segment_file.ArchiveError:
            return
        wal_dir = self.engine.datadir.wal_dir
        for n in os.listdir(wal_dir):
            if n.endswith(timeline.HISTORY_SUFFIX):
                target = os.path.join(dest_dir, n)
                if not os.path.exists(target):
                    tmp = target + ".tmp"
                    shutil.copyfile(os.path.join(wal_dir, n), tmp)
                    os.chmod(tmp, 0o600)
                    self.fileops.fsync_file(tmp)
                    os.rename(tmp, target)
                    self.fileops.fsync_dir(dest_dir)
