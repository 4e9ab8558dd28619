"""The server's backup catalog: every backup it produced, its state and where it went.

Kept as ``backup_catalog.json`` in the data directory and replaced atomically on
every change. A backup still ``in_progress`` when the server starts again was
interrupted; it is marked ``failed`` with that reason.
"""

from __future__ import annotations

import json
import os
import threading
import time

from .. import fileops as _fileops

CATALOG_FILE = "backup_catalog.json"

FIELDS = (
    "backup_id", "backup_type", "status", "started_at", "completed_at", "size_bytes",
    "location", "origin", "start_lsn", "end_lsn", "timeline", "parent_id", "base_full_id",
    "databases", "compression", "encryption", "error", "writers_paused_ms",
)


class CatalogError(Exception):
    pass


class Catalog:
    def __init__(self, data_dir: str, fileops: _fileops.FileOps = _fileops.REAL):
        self.path = os.path.join(data_dir, CATALOG_FILE)
        self.fileops = fileops
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise CatalogError(f"cannot read backup catalog {self.path}: {e}") from None
        for entry in data.get("backups", []):
            self._entries[entry["backup_id"]] = entry

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
        entry.setdefault("status", "in_progress")
        entry["started_at"] = entry["started_at"] or int(time.time())
        with self._lock:
            self._entries[entry["backup_id"]] = entry
            self._save()
        return dict(entry)

    def update(self, backup_id: str, **fields) -> dict:
        with self._lock:
            entry = self._entries[backup_id]
            entry.update(fields)
            self._save()
            return dict(entry)

    def complete(self, backup_id: str, **fields) -> dict:
        return self.update(backup_id, status="completed", completed_at=int(time.time()),
                           error=None, **fields)

    def fail(self, backup_id: str, error: str) -> dict:
        return self.update(backup_id, status="failed", completed_at=int(time.time()),
                           error=error)

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
                            e.get("backup_type") == "differential"
                            and e.get("base_full_id") == current):
                        out.append(e["backup_id"])
                        frontier.append(e["backup_id"])
            return out

    def remove(self, backup_id: str) -> dict:
        with self._lock:
            entry = self._entries.pop(backup_id)
            self._save()
            return entry

    def list(self) -> list[dict]:
        with self._lock:
            return sorted((dict(e) for e in self._entries.values()),
                          key=lambda e: (e["started_at"] or 0, e["backup_id"]))
