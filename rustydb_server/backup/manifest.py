"""A server backup's manifest: what the backup holds and where it sits in the
server's history (system id, timeline, LSNs, next txid), which a restore
needs to write the control file.

It travels as a map: in the container header's ``extra["manifest"]`` and in
the wire protocol's backup header. ``to_dict`` writes that map key for key as
every version has (the same keys in the same order), and ``from_dict`` reads
the maps of older backups too, which lack the keys added since; keys it does
not know (a newer server's) are kept and written back as they came.

Every name a restore later builds a path from is checked here, once: a
database name must be one (``datadir.validate_database_name``), so a damaged
or forged backup cannot make a restore write outside its target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import datadir as dd
from ..container.format import BackupHeader, BackupType

#: The manifest's own version, written into every manifest.
MANIFEST_FORMAT = 1


class ManifestError(ValueError):
    """A manifest map that lacks a field or holds one of the wrong type."""


@dataclass(frozen=True)
class TableRows:
    name: str
    rows: int


@dataclass(frozen=True)
class DatabaseEntry:
    """One database in a backup and the container entry holding it."""

    name: str
    entry: str
    tables: tuple[TableRows, ...]
    size_bytes: int
    applied_lsn: int | None = None  # full and pitr-base backups
    transactions: int | None = None  # incremental and differential backups
    unknown: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "entry": self.entry}
        if self.applied_lsn is not None:
            out["applied_lsn"] = self.applied_lsn
        out["tables"] = [{"name": t.name, "rows": t.rows} for t in self.tables]
        out["size_bytes"] = self.size_bytes
        if self.transactions is not None:
            out["transactions"] = self.transactions
        out.update(self.unknown)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> DatabaseEntry:
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest's databases[] must be maps, not {type(d).__name__}")
        tables = _field(d, "tables", list, "databases[].")
        for t in tables:
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and _is_int(t.get("rows"))):
                raise ManifestError("a manifest's databases[].tables[] needs a name and an int row count")
        name = _field(d, "name", str, "databases[].")
        try:
            dd.validate_database_name(name)
        except dd.DataDirError:
            raise ManifestError(
                f"a manifest names database {name!r}, which is not a database name: "
                "the backup is damaged or was not written by RustyDB"
            ) from None
        return cls(
            name=name,
            entry=_field(d, "entry", str, "databases[]."),
            tables=tuple(TableRows(t["name"], t["rows"]) for t in tables),
            size_bytes=_field(d, "size_bytes", int, "databases[]."),
            applied_lsn=_field(d, "applied_lsn", int, "databases[].", required=False),
            transactions=_field(d, "transactions", int, "databases[].", required=False),
            unknown={k: v for k, v in d.items() if k not in _DATABASE_KEYS},
        )


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    backup_type: BackupType
    system_id: int
    timeline: int
    segment_size: int
    start_lsn: int
    end_lsn: int
    next_txid: int
    last_commit_time_us: int
    server_version: str
    created_us: int
    databases: tuple[DatabaseEntry, ...]
    parent_id: str | None = None  # incremental: the previous backup; differential: its full one
    base_full_id: str | None = None  # the full backup a chain starts from (absent on full ones)
    wal_records: int | None = None  # incremental and differential backups
    # False: some databases only, so no base for an incremental. None: written
    # before such backups existed, when every backup held every database.
    all_databases: bool | None = None
    # The server's roles when the backup was taken (roles.Roles.stored()); a
    # restore writes them back. None: a backup from before roles.
    roles: Mapping[str, Any] | None = None
    unknown: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    format: int = MANIFEST_FORMAT

    @property
    def partial(self) -> bool:
        """Holds some databases only: no base for the next incremental."""
        return self.all_databases is False

    @property
    def chain_base_id(self) -> str | None:
        """The full backup this one's chain starts from: itself, for a full one."""
        return self.base_full_id or (self.backup_id if self.backup_type.is_full_base else None)

    @property
    def database_names(self) -> list[str]:
        return [d.name for d in self.databases]

    def control_record(self) -> dict:
        """This backup as the control file remembers it: where the next
        incremental (or differential) starts."""
        return {
            "backup_id": self.backup_id,
            "type": self.backup_type,
            "end_lsn": self.end_lsn,
            "timeline": self.timeline,
            "system_id": self.system_id,
            "base_full_id": self.chain_base_id,
        }

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": self.format, "backup_id": self.backup_id, "backup_type": self.backup_type}
        if self.parent_id is not None:
            out["parent_id"] = self.parent_id
        if self.base_full_id is not None:
            out["base_full_id"] = self.base_full_id
        out.update(
            system_id=self.system_id,
            timeline=self.timeline,
            segment_size=self.segment_size,
            start_lsn=self.start_lsn,
            end_lsn=self.end_lsn,
            next_txid=self.next_txid,
            last_commit_time_us=self.last_commit_time_us,
            server_version=self.server_version,
            created_us=self.created_us,
            databases=[d.to_dict() for d in self.databases],
        )
        if self.wal_records is not None:
            out["wal_records"] = self.wal_records
        if self.all_databases is not None:
            out["all_databases"] = self.all_databases
        if self.roles is not None:
            out["roles"] = dict(self.roles)
        out.update(self.unknown)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest must be a map, not {type(d).__name__}")
        for name in ("start_lsn", "end_lsn"):
            if _is_int(d.get(name)) and d[name] < 0:
                raise ManifestError(f"a manifest's {name} is negative ({d[name]}): the backup is damaged")
        backup_type = _field(d, "backup_type", str)
        if backup_type not in BackupType.taken_by_server():
            raise ManifestError(f"a manifest's backup_type {backup_type!r} is not a server backup's type")
        databases = tuple(DatabaseEntry.from_dict(db) for db in _field(d, "databases", list))
        _check_entries(BackupType(backup_type), databases)
        return cls(
            format=_field(d, "format", int),
            backup_id=_field(d, "backup_id", str),
            backup_type=BackupType(backup_type),
            system_id=_field(d, "system_id", int),
            timeline=_field(d, "timeline", int),
            segment_size=_field(d, "segment_size", int),
            start_lsn=_field(d, "start_lsn", int),
            end_lsn=_field(d, "end_lsn", int),
            next_txid=_field(d, "next_txid", int),
            last_commit_time_us=_field(d, "last_commit_time_us", int),
            server_version=_field(d, "server_version", str),
            created_us=_field(d, "created_us", int),
            databases=databases,
            parent_id=_field(d, "parent_id", str, required=False),
            base_full_id=_field(d, "base_full_id", str, required=False),
            wal_records=_field(d, "wal_records", int, required=False),
            all_databases=_field(d, "all_databases", bool, required=False),
            roles=_field(d, "roles", dict, required=False),
            unknown={k: v for k, v in d.items() if k not in _MANIFEST_KEYS},
        )

    def to_header(self) -> BackupHeader:
        """The container header of a backup this manifest describes."""
        manifest = self.to_dict()
        return BackupHeader(
            backup_id=self.backup_id,
            backup_type=self.backup_type,
            created_us=self.created_us,
            server_version=self.server_version,
            system_id=str(self.system_id),
            start_lsn=self.start_lsn,
            end_lsn=self.end_lsn,
            timeline=self.timeline,
            parent_id=self.parent_id,
            base_full_id=self.base_full_id,
            # The header's own list, which --info shows: names, tables and sizes only.
            databases=[
                {"name": d["name"], "tables": d["tables"], "size_bytes": d["size_bytes"]} for d in manifest["databases"]
            ],
            extra={"manifest": manifest},
        )

    @classmethod
    def from_header(cls, header: BackupHeader) -> Manifest:
        manifest = header.extra.get("manifest") if isinstance(header.extra, dict) else None
        if not isinstance(manifest, dict):
            raise ManifestError(
                f"backup {header.backup_id} has no manifest; it was not written by rusty-db-backup or the server"
            )
        try:
            return cls.from_dict(manifest)
        except ManifestError as e:
            raise ManifestError(f"backup {header.backup_id} has an unusable manifest: {e}") from None


def database_entry(backup_type: BackupType, name: str) -> str:
    """The container entry that holds database ``name`` in a backup of this type."""
    if backup_type.is_full_base:
        return f"databases/{name}.sqlite"
    return f"incremental/{name}.steps"


def _check_entries(backup_type: BackupType, databases: tuple[DatabaseEntry, ...]) -> None:
    seen: set[str] = set()
    for db in databases:
        expected = database_entry(backup_type, db.name)
        if db.entry != expected:
            raise ManifestError(
                f"database {db.name!r} points at entry {db.entry!r}, expected {expected!r}; "
                "refusing an entry that is not that database's own"
            )
        if db.name in seen:
            raise ManifestError(f"a manifest lists database {db.name!r} twice")
        seen.add(db.name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(d: dict, name: str, kind: type, where: str = "", *, required: bool = True) -> Any:
    value = d.get(name)
    if value is None:
        if required:
            raise ManifestError(f"a manifest lacks its {where}{name} field")
        return None
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise ManifestError(f"a manifest's {where}{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


# The keys each version so far has written; any other is a newer server's, kept as it is.
_DATABASE_KEYS = frozenset({"name", "entry", "applied_lsn", "tables", "size_bytes", "transactions"})
_MANIFEST_KEYS = frozenset(
    {
        "format",
        "backup_id",
        "backup_type",
        "parent_id",
        "base_full_id",
        "system_id",
        "timeline",
        "segment_size",
        "start_lsn",
        "end_lsn",
        "next_txid",
        "last_commit_time_us",
        "server_version",
        "created_us",
        "databases",
        "wal_records",
        "all_databases",
        "roles",
    }
)
