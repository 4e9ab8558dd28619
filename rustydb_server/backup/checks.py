"""What the restore drill and the scheduled verify found, per backup: ``backup_checks.json``.

Kept beside the backup catalog in the data directory, in a file of its own:
the catalog is the server's (it rewrites it whole from memory on every
change), while a drill may be run by ``rusty-db-restore --drill`` next to a
running server. Each writer (the drill tool, the server's verify task) reads,
changes and replaces this file under an exclusive ``flock`` on
``backup_checks.lock``, so two of them never lose each other's outcome, and
replaces it atomically through FileOps. Readers (the backup listing) read it
without the lock: the file is always whole.

Per backup id, the fields a listing merges into the catalog's entry:
``verified_at``, ``verify_outcome`` (``ok`` / ``failed``), ``verify_error``,
``drilled_at``, ``drill_outcome`` (``ok`` / ``failed``), ``drill_reason``.
Times are epoch seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from .. import fileops as _fileops

CHECKS_FILE = "backup_checks.json"
LOCK_FILE = "backup_checks.lock"
OK, FAILED = "ok", "failed"
VERIFY, DRILL = "verify", "drill"
FIELDS = ("verified_at", "verify_outcome", "verify_error", "drilled_at", "drill_outcome", "drill_reason")


def load(data_dir: str) -> dict[str, dict]:
    """Every backup's recorded checks; empty when none were recorded or the file is unreadable."""
    try:
        with open(os.path.join(data_dir, CHECKS_FILE), "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return {}
    backups = data.get("backups") if isinstance(data, dict) else None
    if not isinstance(backups, dict):
        return {}
    return {k: {f: v.get(f) for f in FIELDS} for k, v in backups.items() if isinstance(k, str) and isinstance(v, dict)}


def record(
    data_dir: str,
    backup_id: str,
    kind: str,
    outcome: str,
    reason: str | None = None,
    *,
    at: float | None = None,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> dict:
    """Record one drill or verify outcome of ``backup_id``; returns its checks afterwards."""
    if kind not in (VERIFY, DRILL) or outcome not in (OK, FAILED):
        raise ValueError(f"unknown check {kind!r} / outcome {outcome!r}")
    when = int(at if at is not None else time.time())
    fields = (
        {"verified_at": when, "verify_outcome": outcome, "verify_error": reason}
        if kind == VERIFY
        else {"drilled_at": when, "drill_outcome": outcome, "drill_reason": reason}
    )
    with _locked(data_dir):
        current = load(data_dir)
        entry = current.get(backup_id) or dict.fromkeys(FIELDS)
        entry.update(fields)
        current[backup_id] = entry
        data = json.dumps({"format": 1, "backups": current}, indent=1).encode()
        fileops.write_file_atomic(os.path.join(data_dir, CHECKS_FILE), data)
    return dict(entry)


@contextlib.contextmanager
def _locked(data_dir: str):
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
