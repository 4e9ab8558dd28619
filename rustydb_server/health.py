"""The health report of GET /api/v1/admin/health: phase, WAL, archive, recovery.

"degraded" (HTTP 200: the server runs and serves, but needs attention) has
its causes in ``reasons``: the server found its disk full and is read-only
(``read_only``, ``read_only_reason``) until space is freed, or WAL archiving
is failing (the archiver's last error; WAL piles up in wal/ meanwhile and
PITR stops at the last archived segment). "unhealthy" and "starting" answer
503.

It also turns "degraded" when the backups need attention
(``attention_reasons``): the last scheduled backup failed, no full backup
completed within ``health_full_backup_max_age``, the archive is further
behind than ``health_archive_lag_max_segments`` or
``health_archive_lag_max_seconds``, or the file system of backup_dir or
archive_dest has less than ``health_min_free_percent`` free. Each check is
off at 0.

Before recovery has finished there is no engine or archiver yet, and the
report says "starting"; it never holds anything secret (it answers without
the API token).
"""

from __future__ import annotations

import os
import time

from . import __version__
from .lifecycle import STARTING, STOPPING, Lifecycle
from .settings import is_url
from .wal.lsn import format_lsn


def free_space(path: str) -> tuple[int, int] | None:
    """(bytes free to an unprivileged user, file system size) where ``path`` is, or
    would be made (its nearest existing parent); None when that cannot be known."""
    current = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(current)
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def attention_reasons(settings, backups=None, archiver=None, now: float | None = None) -> list[str]:
    """Why the backups need attention (health "degraded"); each check off at 0."""
    now = time.time() if now is None else now
    reasons = []
    scheduler = getattr(backups, "scheduler", None)
    if scheduler is not None and scheduler.history:
        last = next((r for r in reversed(scheduler.history) if r["outcome"] in ("completed", "failed")), None)
        if last is not None and last["outcome"] == "failed":
            retry = f"; retried at {last['retry_at']}" if last.get("retry_at") else "; no retries left"
            reasons.append(
                f"the last scheduled backup ({last['backup_type']}, started {last['started_at']}) failed: "
                f"{last['error']}{retry}; see SHOW BACKUP SCHEDULE"
            )
    max_age = settings["health_full_backup_max_age"]
    if max_age and backups is not None:
        newest = max(
            (
                e["completed_at"]
                for e in backups.catalog.list()
                if e["status"] == "completed" and e["backup_type"] in ("full", "pitr-base") and e["completed_at"]
            ),
            default=None,
        )
        if newest is None or now - newest > max_age:
            if newest is None:
                since = "no full backup was ever taken"
            else:
                since = f"the newest completed {round((now - newest) / 3600, 1)} h ago"
            reasons.append(
                f"no full backup completed within health_full_backup_max_age ({max_age} s): {since}; "
                "take one (POST /api/v1/admin/backup) and check the schedule"
            )
    if archiver is not None:
        segments, seconds = archiver.lag()
        max_segments = settings["health_archive_lag_max_segments"]
        max_seconds = settings["health_archive_lag_max_seconds"]
        if (max_segments and segments > max_segments) or (max_seconds and seconds > max_seconds):
            reasons.append(
                f"the WAL archive is behind: {segments} segment(s) waiting, the oldest for {round(seconds)} s "
                f"(health_archive_lag_max_segments {max_segments}, health_archive_lag_max_seconds {max_seconds}); "
                "see GET /api/v1/admin/archive"
            )
    min_free = settings["health_min_free_percent"]
    if min_free and backups is not None:
        dirs = [("backup_dir", backups.backup_dir())]
        replicator = getattr(backups, "replicator", None)
        for url in replicator.urls() if replicator is not None else []:
            if not url.startswith("s3://"):  # an object store's free space cannot be known
                dirs.append(("backup repository", url))
        if settings["archive_mode"] and settings["archive_dest"] and not is_url(settings["archive_dest"]):
            dirs.append(("archive_dest", settings["archive_dest"]))  # an object store has no file system to watch
        for role, path in dirs:
            space = free_space(path)
            if space is not None and space[1] and space[0] * 100 / space[1] < min_free:
                reasons.append(
                    f"the file system of {role} {path} is nearly full: {space[0] * 100 / space[1]:.1f}% free "
                    f"(health_min_free_percent {min_free}); free space or run retention "
                    "(POST /api/v1/admin/expire)"
                )
    return reasons


def health_report(settings, lifecycle: Lifecycle, engine=None, archiver=None, sessions: int = 0, backups=None) -> dict:
    status = {STARTING: "starting", STOPPING: "unhealthy"}.get(lifecycle.phase, "healthy")
    problem = None
    if engine is not None:
        # A fatal WAL error, or commits that cannot go on (engine.stall).
        problem = engine.fatal_error or engine.stall()
    if problem:
        status = "unhealthy"
    read_only = engine.read_only_reason if engine is not None else None
    reasons = []
    if read_only:
        reasons.append(f"the disk is full: {read_only}; free disk space, writes resume by themselves")
    archiving = archiver.failing() if archiver is not None else None
    if archiving:
        reasons.append(archiving)
    if engine is not None:
        reasons.extend(attention_reasons(settings, backups, archiver))
    if reasons and status == "healthy":
        status = "degraded"
    report = {
        "status": status,
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - lifecycle.started, 3),
        "phase": lifecycle.phase,
        "data_directory": {
            "path": settings["data_dir"],
            "state": engine.control.state if engine else "recovering",
        },
        "connections": sessions,
    }
    if status == "degraded":
        report["reasons"] = reasons
    if engine is not None:
        report["wal"] = {
            "lsn": format_lsn(engine.wal.end_lsn),
            "flushed_lsn": format_lsn(engine.wal.flushed_lsn),
            "timeline": engine.control.timeline,
            "bytes_since_checkpoint": engine.wal_bytes_since_checkpoint(),
        }
        report["databases"] = sorted(engine.databases)
        catching_up = engine.pending_databases()
        if catching_up:
            # Committed transactions SQLite could not apply yet (a full disk):
            # reads go on, writes wait; not unhealthy, but worth an alert.
            report["catching_up"] = catching_up
        if archiver is not None:
            report["archive"] = archiver.report()
        report["recovery"] = engine.recovery_stats
        report["read_only"] = read_only is not None
        if read_only:
            report["read_only_reason"] = reasons[0]
        if problem:
            report["error"] = problem
    return report
