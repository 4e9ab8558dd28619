"""The server's backup catalog: every backup it produced, its state and where it went.

Kept as ``backup_catalog.json`` in the data directory and replaced atomically on
every change. A backup still ``in_progress`` when the server starts again was
interrupted; it is marked ``failed`` with that reason.

``location`` is the backup file's absolute path: the server's own file for a
backup taken through the API (origin "api"), the file the client wrote for
one streamed to rusty-db-backup (origin "client"; the client names it in its
request and confirms it once the file is durable). Entries written before
clients said where ("client <address>") have no known path. ``base_for``
chooses the backup the next incremental or differential starts from among
those whose files (and whose chain's files) are still on disk.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable

from .. import fileops as _fileops
from ..container.format import BackupType
from ..logsetup import get_logger

log = get_logger("rustydb.backup")

CATALOG_FILE = "backup_catalog.json"

FIELDS = (
    "backup_id",
    "backup_type",
    "status",
    "started_at",
    "completed_at",
    "size_bytes",
    "location",
    "origin",
    "start_lsn",
    "end_lsn",
    "timeline",
    "parent_id",
    "base_full_id",
    "databases",
    "compression",
    "encryption",
    "error",
    "writers_paused_ms",
    "partial",
    # {repository URL: {"state": copied|pending|failing, "error", "attempts", "updated_at"}}:
    # where the backup is copied to (backup_repositories), written by backup/replicate.py.
    "repositories",
    # The backup history (backup/history.py): who started it, and how long it ran.
    "trigger",
    "duration_s",
    # Rows per table per database as the backup recorded them (an incremental's start from its parent's).
    "tables",
)


class CatalogError(Exception):
    pass


class CatalogDamaged(CatalogError):
    """The catalog file is not what this server writes (truncated, edited, garbage)."""


def _parse(raw: bytes) -> dict[str, dict]:
    """The catalog's entries by backup id; CatalogDamaged says what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CatalogDamaged(f"not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("backups"), list):
        raise CatalogDamaged('not a catalog (no "backups" list)')
    entries = {}
    for i, entry in enumerate(data["backups"]):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("backup_id"), str)
            or not isinstance(entry.get("status"), str)
        ):
            raise CatalogDamaged(f"entry {i} has no backup_id or status")
        _check_location(i, entry)
        entries[entry["backup_id"]] = {k: None for k in FIELDS} | entry
    return entries


def _check_location(i: int, entry: dict) -> None:
    """A backup the server wrote lives at <backup_dir>/<uuid>.backup, and the
    server removes its partial file after a crash: any other location in the
    file (edited or damaged) must never become a path the server unlinks."""
    if entry.get("origin") != "api" or entry.get("location") is None:
        return
    location, backup_id = entry["location"], entry["backup_id"]
    try:
        canonical = str(uuid.UUID(backup_id)) == backup_id
    except ValueError:
        canonical = False
    if not (canonical and isinstance(location, str) and os.path.isabs(location)):
        raise CatalogDamaged(f"entry {i} has a backup id or location the server never writes")
    if os.path.basename(location) != f"{backup_id}.backup" or "\x00" in location:
        raise CatalogDamaged(f"entry {i}'s location {location!r} is not that backup's file")


def load_entries(data_dir: str) -> list[dict]:
    """The catalog's entries, read only (a damaged file is CatalogDamaged, not set aside)."""
    path = os.path.join(data_dir, CATALOG_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CatalogError(
            f"cannot read backup catalog {path}: {e.strerror or e}; check its owner and permissions"
        ) from None
    try:
        return list(_parse(raw).values())
    except CatalogDamaged as e:
        raise CatalogDamaged(f"backup catalog {path} is damaged: {e}") from None


class Catalog:
    def __init__(self, data_dir: str, fileops: _fileops.FileOps = _fileops.REAL):
        self.path = os.path.join(data_dir, CATALOG_FILE)
        self.fileops = fileops
        self.set_aside: str | None = None  # where a damaged catalog was moved
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        # Told of every backup that ends (completed or failed), with its final
        # entry: the metrics and the alerts. A listener must be quick.
        self.listeners: list[Callable[[dict], None]] = []
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise CatalogError(
                f"cannot read backup catalog {self.path}: {e.strerror or e}; check its owner and permissions"
            ) from None
        try:
            self._entries = _parse(raw)
        except CatalogDamaged as e:
            self._set_aside(str(e))

    def _set_aside(self, reason: str) -> None:
        """A damaged catalog must not keep the server (and its data) down: it is
        kept under another name for inspection and the server starts without it.
        The backup files are not affected, nor are incrementals (their parent
        comes from the control file); the listing and the delete checks only
        know the backups taken from then on."""
        aside = f"{self.path}.damaged-{int(time.time())}"
        self.fileops.rename(self.path, aside)
        self.fileops.fsync_dir(os.path.dirname(self.path))
        self.set_aside = aside
        log.error(
            "backup catalog damaged; set aside, starting with an empty catalog",
            path=self.path,
            kept_as=aside,
            reason=reason,
            consequence="GET /api/v1/admin/backups lists only backups taken from now "
            "on; the backup files and incrementals are not affected",
        )

    def _save(self) -> None:
        data = json.dumps({"format": 1, "backups": list(self._entries.values())}, indent=1)
        self.fileops.write_file_atomic(self.path, data.encode())

    def mark_interrupted(self) -> list[str]:
        """Backups left in_progress by a previous run are failed; return their ids."""
        with self._lock:
            stale = [b for b in self._entries.values() if b["status"] == "in_progress"]
            for b in stale:
                b["status"] = "failed"
                b["error"] = "interrupted: the server stopped while the backup ran"
                b["completed_at"] = None
            if stale:
                self._save()
            return [b["backup_id"] for b in stale]

    def add(self, **fields) -> dict:
        entry = {k: None for k in FIELDS}
        entry.update(fields)
        entry["status"] = entry["status"] or "in_progress"  # FIELDS made the key None
        entry["started_at"] = entry["started_at"] or int(time.time())
        with self._lock:
            self._entries[entry["backup_id"]] = entry
            try:
                self._save()
            except BaseException:
                # Not on disk (a full disk): not listed either, never "in_progress" forever.
                del self._entries[entry["backup_id"]]
                raise
        return dict(entry)

    def update(self, backup_id: str, **fields) -> dict:
        with self._lock:
            entry = self._entries[backup_id]
            entry.update(fields)
            self._save()
            return dict(entry)

    def update_repository(self, backup_id: str, url: str, **state) -> dict | None:
        """Record the copy of a backup to one repository; None if the backup is gone."""
        with self._lock:
            entry = self._entries.get(backup_id)
            if entry is None:
                return None
            repositories = dict(entry.get("repositories") or {})
            repositories[url] = {**repositories.get(url, {}), **state, "updated_at": int(time.time())}
            entry["repositories"] = repositories
            self._save()
            return dict(entry)

    def complete(self, backup_id: str, **fields) -> dict:
        return self._ended(
            self.update(backup_id, status="completed", completed_at=int(time.time()), error=None, **fields)
        )

    def fail(self, backup_id: str, error: str) -> dict:
        return self._ended(self.update(backup_id, status="failed", completed_at=int(time.time()), error=error))

    def _ended(self, entry: dict) -> dict:
        for listener in list(self.listeners):
            try:
                listener(dict(entry))
            except Exception as e:  # a listener's bug never fails a backup's bookkeeping
                log.error("a backup listener failed", listener=repr(listener), error=repr(e))
        return entry

    def get(self, backup_id: str) -> dict | None:
        with self._lock:
            entry = self._entries.get(backup_id)
            return dict(entry) if entry else None

    def dependents(self, backup_id: str) -> list[str]:
        """Every backup whose chain goes through ``backup_id`` (children first found)."""
        with self._lock:
            out: list[str] = []
            frontier = [backup_id]
            while frontier:
                current = frontier.pop()
                for e in self._entries.values():
                    if e["backup_id"] in out or e["status"] == "failed":
                        continue
                    if e.get("parent_id") == current or (
                        e.get("backup_type") == BackupType.DIFFERENTIAL and e.get("base_full_id") == current
                    ):
                        out.append(e["backup_id"])
                        frontier.append(e["backup_id"])
            return out

    def remove(self, backup_id: str) -> dict:
        with self._lock:
            entry = self._entries.pop(backup_id)
            self._save()
            return entry

    def missing_file(self, backup_id: str) -> str | None:
        """The first file of ``backup_id``'s chain (itself, then its parents) known
        to be gone from disk, or None. A backup the catalog does not know, or
        whose location is no path (a client's, before clients said where), is
        taken to be there: nothing says otherwise."""
        with self._lock:
            seen: set[str] = set()
            current: str | None = backup_id
            while current and current not in seen:
                seen.add(current)
                entry = self._entries.get(current)
                if entry is None:
                    return None
                location = entry.get("location")
                if known_path(location) and not os.path.isfile(location):
                    return location
                kind = _type_of(entry.get("backup_type"))
                if kind is not None and kind.needs_parent:
                    current = entry.get("base_full_id" if kind is BackupType.DIFFERENTIAL else "parent_id")
                else:
                    current = None
            return None

    def base_candidates(self, backup_type: BackupType, timeline: int) -> list[dict]:
        """Completed whole-server backups an incremental (any type) or a
        differential (full bases only) could start from, newest first."""
        with self._lock:
            out = []
            for e in self._entries.values():
                if e["status"] != "completed" or e.get("partial") is not False or e.get("timeline") != timeline:
                    continue
                kind = _type_of(e.get("backup_type"))
                if kind is None or not isinstance(e.get("end_lsn"), int):
                    continue
                if backup_type is BackupType.DIFFERENTIAL and not kind.is_full_base:
                    continue
                out.append(dict(e))
            return sorted(out, key=lambda e: (e["end_lsn"], e["completed_at"] or 0), reverse=True)

    def in_file_order(self) -> list[dict]:
        """The entries as the catalog file holds them: in the order they were added
        (retention orders backups of the same second by it)."""
        with self._lock:
            return [dict(e) for e in self._entries.values()]

    def list(self) -> list[dict]:
        with self._lock:
            return sorted(
                (dict(e) for e in self._entries.values()), key=lambda e: (e["started_at"] or 0, e["backup_id"])
            )


def known_path(location) -> bool:
    """Whether a catalog location is a file's path (not "client <address>")."""
    return isinstance(location, str) and os.path.isabs(location)


def _type_of(value) -> BackupType | None:
    try:
        return BackupType(value)
    except ValueError:
        return None
