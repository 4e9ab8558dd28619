"""A request for a backup, and the one function that checks it.

Requests come as the HTTP API's JSON body (``POST /api/v1/admin/backup``)
and as the wire protocol's backup message (``rusty-db-backup --type``); each
path names the fields it accepts, and both become a ``BackupRequest`` through
``parse_request``, so the same mistake gets the same answer on either path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rustydb_client.protocol import events

from .. import codecs
from ..container.format import BackupType


class BackupRequestError(Exception):
    """A backup request that cannot be carried out; the message says why.
    ``status`` is the HTTP status the API answers it with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BackupRequest:
    backup_type: BackupType = BackupType.FULL
    databases: list[str] | None = None  # None: every database
    codec: str = "none"
    encrypt: bool = False
    threads: int = 2
    # Where an incremental starts when not at the server's last backup (wire only).
    base_backup: dict | None = None
    # Answer only once the backup has finished (HTTP only; the wire always streams it whole).
    wait: bool = False
    # Who asked, as the backup history shows it (backup/history.py): "api" or "schedule".
    trigger: str = "api"


#: The fields of the HTTP API's JSON body.
API_FIELDS = frozenset({"backup_type", "compression", "encryption", "databases", "threads", "wait"})
#: The fields of the wire protocol's backup message; the tool compresses and encrypts itself.
WIRE_FIELDS = frozenset({"backup_type", "databases", "base_backup"})


def parse_request(fields: Any, settings, allowed: frozenset[str] = API_FIELDS) -> BackupRequest:
    """Check a request's ``fields`` (only ``allowed`` ones) against ``settings``."""
    if not isinstance(fields, Mapping):
        raise BackupRequestError("the request body must be a JSON object", status=400)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise BackupRequestError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    backup_type = fields.get("backup_type", BackupType.FULL)
    if not isinstance(backup_type, str):
        raise BackupRequestError("backup_type must be a string")
    backup_type = _check_type(backup_type, settings)
    compression = fields.get("compression", False)
    if isinstance(compression, bool):
        codec = settings["backup_compression"] if compression else "none"
    elif isinstance(compression, str) and compression in codecs.CODECS:
        codec = compression
    else:
        raise BackupRequestError("compression must be true, false or one of lz4, zstd, snappy, none")
    encryption = fields.get("encryption", False)
    if not isinstance(encryption, bool):
        raise BackupRequestError("encryption must be true or false")
    databases = fields.get("databases")
    if databases is not None and (
        not isinstance(databases, list) or not databases or not all(isinstance(d, str) for d in databases)
    ):
        raise BackupRequestError("databases must be a non-empty list of database names")
    if databases is not None:
        _check_each_named_once(databases)
    threads = fields.get("threads", settings["backup_threads"])
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 64:
        raise BackupRequestError("threads must be an integer from 1 to 64")
    # Only the wire path allows it, and its protocol checked its shape.
    base_backup = fields.get("base_backup")
    wait = fields.get("wait", False)
    if not isinstance(wait, bool):
        raise BackupRequestError("wait must be true or false")
    return BackupRequest(backup_type, databases, codec, encryption, threads, base_backup, wait)


def _check_each_named_once(databases: list[str]) -> None:
    """A database named twice is refused, not merged: a repeated name in a
    script usually stands where another database was meant, and a backup that
    silently left that one out would be found missing only at restore time."""
    seen: set[str] = set()
    for name in databases:
        if name in seen:
            raise BackupRequestError(f'database "{name}" is named more than once in databases; name each database once')
        seen.add(name)


def wire_fields(event: events.BackupRequested) -> dict:
    """A wire request's fields; an empty database list has always meant every database there."""
    return {"backup_type": event.backup_type, "databases": event.databases or None, "base_backup": event.base_backup}


def _check_type(backup_type: str, settings) -> BackupType:
    """The type of backup asked for, if the server can take it now."""
    taken = BackupType.taken_by_server()
    if backup_type not in taken:
        raise BackupRequestError(f"unknown backup_type {backup_type!r}; use one of {', '.join(taken)}")
    backup_type = BackupType(backup_type)
    if backup_type is BackupType.PITR_BASE and not settings["archive_mode"]:
        raise BackupRequestError(
            "a pitr-base backup needs WAL archiving: run ALTER SYSTEM SET archive_mode = on; "
            "and ALTER SYSTEM SET archive_dest = '/path'; first"
        )
    return backup_type
