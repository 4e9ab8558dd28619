"""The health report of GET /api/v1/admin/health: phase, WAL, archive, recovery.

"degraded" (HTTP 200: the server runs and serves, but needs attention) has
its causes in ``reasons``: the server found its disk full and is read-only
(``read_only``, ``read_only_reason``) until space is freed, or WAL archiving
is failing (the archiver's last error; WAL piles up in wal/ meanwhile and
PITR stops at the last archived segment). "unhealthy" and "starting" answer
503.

Before recovery has finished there is no engine or archiver yet, and the
report says "starting"; it never holds anything secret (it answers without
the API token).
"""

from __future__ import annotations

import time

from . import __version__
from .lifecycle import STARTING, STOPPING, Lifecycle
from .wal.lsn import format_lsn


def health_report(settings, lifecycle: Lifecycle, engine=None, archiver=None, sessions: int = 0) -> dict:
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
