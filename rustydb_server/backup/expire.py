"""Expiring backups and archived WAL: the facts gathered for backup/retention.py's
plan, and the plan applied.

Applying is ordered so that a crash part-way leaves a state a second run
completes: the backup files go first, then their catalog entries (one
atomic rewrite of the catalog per entry), then the archived segments, each
directory fsynced after its removals. Every destination of
archive_extra_dests is expired after archive_dest, on its own (the segments
it holds that no kept backup needs): one that cannot be read or cleaned is
reported and tried again at the next expire, never stopping the others. A file already gone counts as removed;
nothing the plan does not name is touched, and a backup file is removed only
when its header carries the backup id the plan names (the catalog's path may
since hold another file).
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable

import trio

from .. import fileops as _fileops
from ..archive import destination, segment_file
from ..archive.segment_file import ArchiveError
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..datadir import DataDir, DataDirError
from ..doorbell import Doorbell
from ..logsetup import get_logger
from ..repository import RepositoryError, location
from ..settings import SettingError
from ..wal import timeline as waltl
from ..wal.timeline import HistoryError
from . import retention
from .catalog import Catalog, CatalogError, known_path, load_entries

log = get_logger("rustydb.backup")


@dataclasses.dataclass
class Facts:
    entries: list[dict]
    segments: list[retention.Segment]
    histories: dict[int, list[waltl.Switch]]
    segment_size: int
    unreadable: list[str]  # archive files left alone: no readable header


def gather(data_dir: str, archive_dir: str | None, entries: list[dict] | None = None) -> Facts:
    """Read the catalog (unless the running server gives its ``entries``), the
    control file's segment size and the archive.

    CatalogError, DataDirError, HistoryError or ArchiveError say what could not be read."""
    entries = load_entries(data_dir) if entries is None else entries
    segment_size = DataDir(data_dir).read_control().segment_size
    segments, histories, unreadable = _archive(archive_dir) if archive_dir else ([], {}, [])
    return Facts(entries, segments, histories, segment_size, unreadable)


def _archive(archive_dir: str) -> tuple[list[retention.Segment], dict[int, list[waltl.Switch]], list[str]]:
    """The segments (with when each was archived), timeline histories and unreadable files of an archive."""
    segments: list[retention.Segment] = []
    histories: dict[int, list[waltl.Switch]] = {}
    unreadable: list[str] = []
    for tl, by_segno in sorted(segment_file.list_archive(archive_dir).items()):
        for segno, path in sorted(by_segno.items()):
            archived_at = _archived_at(path)
            if archived_at is None:
                unreadable.append(path)
                continue
            segments.append(retention.Segment(tl, segno, path, archived_at))
    for tl in waltl.list_history_timelines(archive_dir):
        histories[tl] = waltl.read_history(archive_dir, tl)
    return segments, histories, unreadable


def _archived_at(path: str) -> float | None:
    try:
        if location.is_url(path):  # the header only, not the whole segment
            try:
                return BackupReader(io.BytesIO(location.read_head(path, HEAD_BYTES))).header.created_us / 1e6
            except BackupError:
                pass  # a header longer than that: read the object
        with location.open_read(path) as f:
            return BackupReader(f).header.created_us / 1e6
    except (OSError, BackupError, RepositoryError):
        return None


#: What one ranged read of an archived segment in an object store fetches for its header.
HEAD_BYTES = 64 * 1024


@dataclasses.dataclass
class ExtraArchive:
    """One destination of archive_extra_dests, expired on its own: the segments it holds that
    no kept backup needs (the same rule as archive_dest's, applied to what this one holds),
    what was removed, and what failed there (a destination that is down: reported, the
    others still expire, and the next expire tries it again)."""

    destination: str  # the setting's value
    archive_dir: str  # where its segments are (an s3:// repository's wal/)
    segments: list[retention.ExpireSegment] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def extra_archives(dests) -> list[ExtraArchive]:
    """archive_extra_dests as ExtraArchives (none planned yet)."""
    out = []
    for dest in dests or []:
        where = destination.location(dest) if location.is_url(dest) else os.path.abspath(dest)
        out.append(ExtraArchive(dest, where))
    return out


def plan_extras(extras: list[ExtraArchive], facts: Facts, policy: retention.Policy, now: float | None = None) -> None:
    """Fill each extra destination's ``segments`` (or its ``error``): what expires there."""
    now = time.time() if now is None else now
    for x in extras:
        x.segments, x.unreadable, x.error = [], [], None
        try:
            if not location.is_url(x.archive_dir) and not os.path.isdir(x.archive_dir):
                raise ArchiveError(f"{x.archive_dir} does not exist or is not a directory (unmounted?)")
            segments, histories, x.unreadable = _archive(x.archive_dir)
            x.segments = retention.plan(
                facts.entries,
                policy,
                now=now,
                segments=segments,
                histories=histories,
                segment_size=facts.segment_size,
            ).segments
        except (ArchiveError, HistoryError, RepositoryError, OSError) as e:
            x.error = f"cannot read it: {e}; its WAL is expired at the next expire"


def apply_extras(extras: list[ExtraArchive], fileops: _fileops.FileOps = _fileops.REAL) -> None:
    """Remove each extra destination's planned segments; a failure is kept in its ``error``."""
    for x in extras:
        if x.error is not None:
            continue
        try:
            _remove_segments(x.segments, fileops, x.removed)
        except (OSError, RepositoryError) as e:
            x.error = f"removing expired WAL failed: {e}; the next expire removes the rest"


def make_plan(facts: Facts, policy: retention.Policy, now: float | None = None) -> retention.Plan:
    return retention.plan(
        facts.entries,
        policy,
        now=time.time() if now is None else now,
        segments=facts.segments,
        histories=facts.histories,
        segment_size=facts.segment_size,
    )


@dataclasses.dataclass
class Outcome:
    removed_files: list[str] = dataclasses.field(default_factory=list)
    removed_entries: list[str] = dataclasses.field(default_factory=list)
    removed_segments: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (backup id, why)
    # (backup id, repository, error): a copy in backup_repositories that could not be removed
    repository_errors: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def apply(
    plan: retention.Plan,
    data_dir: str,
    fileops: _fileops.FileOps = _fileops.REAL,
    catalog: Catalog | None = None,
    forget: Callable[[str, str], None] | None = None,
) -> Outcome:
    """Remove what ``plan`` names (see the module doc for the order). The caller
    holds the data directory's lock, or is the running server and gives its
    own ``catalog`` (it keeps the catalog in memory).
    ``forget(url, backup_id)`` removes a backup's copy from a repository of
    backup_repositories (its catalog entry, then its file): done first, so no
    repository lists a backup whose file is gone."""
    out = Outcome()
    removable = []
    for b in plan.backups:
        why = _file_mismatch(b)
        if why:
            out.refused.append((b.backup_id, why))
        else:
            removable.append(b)
    catalog = Catalog(data_dir, fileops) if catalog is None else catalog
    if forget is not None:
        for b in removable:
            for url in (catalog.get(b.backup_id) or {}).get("repositories") or {}:
                try:
                    forget(url, b.backup_id)
                except Exception as e:  # a repository that is down: the rest still expires
                    out.repository_errors.append((b.backup_id, url, str(e)))
    dirs: set[str] = set()
    for b in removable:
        if known_path(b.location) and _unlink(fileops, b.location):
            out.removed_files.append(b.location)
            dirs.add(os.path.dirname(b.location))
    for d in sorted(dirs):
        fileops.fsync_dir(d)
    for b in removable:
        if catalog.get(b.backup_id) is not None:
            catalog.remove(b.backup_id)
        out.removed_entries.append(b.backup_id)
    _remove_segments(plan.segments, fileops, out.removed_segments)
    return out


def _remove_segments(segments: list[retention.ExpireSegment], fileops: _fileops.FileOps, removed: list[str]) -> None:
    dirs = set()
    for s in segments:
        if location.is_url(s.path):  # an object store: the delete is durable when it returns
            location.remove(s.path)
            removed.append(s.path)
        elif _unlink(fileops, s.path):
            removed.append(s.path)
            dirs.add(os.path.dirname(s.path))
    for d in sorted(dirs):
        fileops.fsync_dir(d)


def _file_mismatch(b: retention.ExpireBackup) -> str | None:
    """Why ``b``'s file must not be removed, or None (also when it is already gone)."""
    if not known_path(b.location) or not os.path.exists(b.location):
        return None
    try:
        with open(b.location, "rb") as f:
            found = BackupReader(f).header.backup_id
    except OSError as e:
        return f"cannot read {b.location}: {e.strerror or e}"
    except BackupError as e:
        return f"{b.location} is not a readable backup ({e}); remove it by hand if it is this backup's"
    if found != b.backup_id:
        return f"{b.location} now holds backup {found}, not {b.backup_id}; left in place"
    return None


def _unlink(fileops: _fileops.FileOps, path: str) -> bool:
    """Remove ``path``; False when it was already gone (a re-run after a crash)."""
    try:
        fileops.unlink(path)
    except FileNotFoundError:
        return False
    return True


def policy_of(settings) -> retention.Policy:
    """The retention settings as a Policy; SettingError when they keep nothing in particular."""
    days, count, archive_days = (
        settings["backup_retention_days"],
        settings["backup_retention_full_count"],
        settings["archive_retention_days"],
    )
    if not days and not count:
        raise SettingError(
            "backup_retention_days and backup_retention_full_count are both 0: nothing says which "
            "backups to keep; set one of them (ALTER SYSTEM SET backup_retention_days = 30)"
        )
    return retention.Policy(backup_days=days or None, full_count=count or None, archive_days=archive_days or None)


def document(
    data_dir: str,
    archive_dir: str | None,
    policy: retention.Policy,
    facts: Facts,
    plan: retention.Plan,
    outcome: Outcome | None,
    extras: list[ExtraArchive] = (),
) -> dict:
    """What was (``outcome``) or would be (None: a dry run) removed and why: the
    document of ``rusty-db-backup --expire --json`` and ``POST /api/v1/admin/expire``."""
    refused = dict(outcome.refused) if outcome else {}
    return {
        "ok": not refused,
        "dry_run": outcome is None,
        "data_dir": data_dir,
        "archive_dir": archive_dir,
        "policy": {
            "backup_retention_days": policy.backup_days or 0,
            "backup_retention_full_count": policy.full_count or 0,
            "archive_retention_days": policy.archive_days or 0,
        },
        "kept": plan.kept,
        "backups": [
            {
                "backup_id": b.backup_id,
                "type": b.backup_type,
                "location": b.location,
                "reason": b.reason,
                "removed": outcome is not None and b.backup_id not in refused,
            }
            for b in plan.backups
        ],
        "segments": [_segment_doc(s, outcome is not None) for s in plan.segments],
        # archive_extra_dests, each expired on its own (error: it could not be read or cleaned now)
        "extra_archives": [
            {
                "destination": x.destination,
                "archive_dir": x.archive_dir,
                "segments": [_segment_doc(s, s.path in x.removed) for s in x.segments],
                "unreadable_segments": x.unreadable,
                "error": x.error,
            }
            for x in extras
        ],
        "refused": [{"backup_id": b, "reason": why} for b, why in refused.items()],
        "unreadable_segments": facts.unreadable,
        # copies in backup_repositories that could not be removed (a repository down)
        "repository_errors": [
            {"backup_id": b, "repository": url, "error": e}
            for b, url, e in (outcome.repository_errors if outcome else [])
        ],
    }


def _segment_doc(s: retention.ExpireSegment, removed: bool) -> dict:
    return {
        "segment": os.path.basename(s.path),
        "path": s.path,
        "timeline": s.timeline,
        "segno": s.segno,
        "reason": s.reason,
        "removed": removed,
    }


class ExpireFailed(Exception):
    """Retention could not run in the server; the message says why and what to do."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


class Expirer:
    """Retention run by the running server, on its own catalog.

    It never races a backup: it waits until no backup is in progress (one the
    server writes, or one streamed to rusty-db-backup), and while it removes
    files the backup service refuses to start another (``service.expiring``,
    409: try again in a moment). A dry run only reads, and runs at once.
    One expire runs at a time.
    """

    def __init__(self, service, settings):
        self._service = service
        self._settings = settings
        self._lock = trio.Lock()
        # Rung when a backup ends (the catalog's listener) or a stream does (``wake``).
        self._changed = Doorbell()
        self._token = trio.lowlevel.current_trio_token()
        service.catalog.listeners.append(lambda entry: self.wake())

    def wake(self) -> None:
        """A backup ended: look again whether any still runs (from any thread)."""
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            self._token.run_sync_soon(self._changed.ring)
        else:
            self._changed.ring()

    def archive_dir(self) -> str | None:
        dest = self._settings["archive_dest"]
        if dest and location.is_url(dest):  # an s3:// repository: its wal/
            return destination.location(dest)
        return dest if dest and os.path.isdir(dest) else None

    def _extra_dests(self) -> list[str]:
        try:
            return list(self._settings["archive_extra_dests"] or [])
        except KeyError:  # settings without it (a test's): archive_dest alone
            return []

    def _busy(self) -> list[str]:
        busy = [e["backup_id"] for e in self._service.catalog.list() if e["status"] == "in_progress"]
        if self._service.streams and not busy:  # one starting: its entry is not written yet
            busy.append(f"{self._service.streams} backup(s) starting for rusty-db-backup")
        return busy

    async def run(self, *, dry_run: bool) -> dict:
        """The document of ``document``; ExpireFailed says why it could not run."""
        try:
            policy = policy_of(self._settings)
        except SettingError as e:
            raise ExpireFailed(str(e), 409) from None
        service = self._service
        data_dir = service.engine.datadir.path
        archive_dir = self.archive_dir()
        extras = extra_archives(self._extra_dests())
        if dry_run:
            facts, plan = await trio.to_thread.run_sync(self._plan, data_dir, archive_dir, policy, extras)
            return document(data_dir, archive_dir, policy, facts, plan, None, extras)
        async with self._lock:
            waited = False
            while busy := self._busy():
                if not waited:
                    log.info("expire waits for running backups to end", backups=busy)
                    waited = True
                await self._changed.wait()
            # No await between the check and the flag: no backup can start in between.
            service.expiring = "retention is removing expired backups right now; try again in a moment"
            try:
                facts, plan, outcome = await trio.to_thread.run_sync(self._apply, data_dir, archive_dir, policy, extras)
            finally:
                service.expiring = None
        doc = document(data_dir, archive_dir, policy, facts, plan, outcome, extras)
        for x in extras:
            if x.error is not None:
                log.warning(
                    "an archive_extra_dests destination was not expired", destination=x.destination, error=x.error
                )
        log.info(
            "expired backups and archived WAL",
            backups=[b["backup_id"] for b in doc["backups"] if b["removed"]],
            segments=len(doc["segments"]),
            kept=len(plan.kept),
            refused=doc["refused"] or None,
        )
        return doc

    def _plan(self, data_dir, archive_dir, policy, extras):
        try:
            facts = gather(data_dir, archive_dir, self._service.catalog.in_file_order())
        except (CatalogError, DataDirError, HistoryError, ArchiveError, RepositoryError) as e:
            raise ExpireFailed(str(e)) from None
        now = time.time()
        plan = make_plan(facts, policy, now)
        plan_extras(extras, facts, policy, now)
        return facts, plan

    def _apply(self, data_dir, archive_dir, policy, extras):
        facts, plan = self._plan(data_dir, archive_dir, policy, extras)
        try:
            outcome = apply(
                plan,
                data_dir,
                self._service.engine.fileops,
                self._service.catalog,
                forget=self._service.replicator.forget,
            )
        except (OSError, RepositoryError) as e:
            raise ExpireFailed(f"removing expired backups failed: {e}; the next expire finishes the job") from None
        apply_extras(extras, self._service.engine.fileops)
        return facts, plan, outcome
