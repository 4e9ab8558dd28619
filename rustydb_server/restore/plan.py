"""What a restore would do, found out without writing anything (``--dry-run``).

``plan_restore`` reads what the real restore reads, in the same order, and
checks it the way the restore would: every chunk of each backup file (its
checksums, and the whole-file digest), and for a point-in-time restore the
archived segments along the same timeline path, unpacked and their digests
checked, records decoded, up to the same recovery target (``pitr.recover``'s
own rules decide where it stops). Nothing is written: no staging directory,
no database file, no history file.

The plan lists the backups in the order they are applied, the segments the
replay reads, the transactions (records) it would replay and their WAL
bytes, and every problem found; the restore would succeed only if there is
none.

The time estimate comes from rates measured by this dry run on this
machine: how fast it decoded the backups' chunks and read the WAL (the same
work the restore does), and how fast this machine applies the WAL's
changesets, measured on a sample applied to in-memory copies of the tables
(empty: a lower bound where the real tables are large).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import apsw

from .. import datadir as dd
from ..archive import segment_file as sf
from ..backup.manifest import Manifest
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..crypto import CryptoError
from ..engine import rows_image
from ..keys import NoKeyError, resolve_read_key
from ..wal import record as walrec
from ..wal import segment as walseg
from ..wal.lsn import format_lsn
from ..wal.segment import WalCorruptError
from ..wal.timeline import HistoryError
from . import pitr
from .archived_wal import ArchivedSegments, ArchiveGapError

#: Changesets applied to measure this machine's apply rate (the first ones replayed).
APPLY_SAMPLE_CHANGESETS = 200


@dataclasses.dataclass
class PlannedBackup:
    path: str
    backup_id: str | None = None
    backup_type: str | None = None
    file_bytes: int = 0
    chunks: int = 0
    verified: bool = False
    verify_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "backup_id": self.backup_id,
            "type": self.backup_type,
            "file_bytes": self.file_bytes,
            "chunks": self.chunks,
            "verified": self.verified,
        }


@dataclasses.dataclass
class PlannedSegment:
    timeline: int
    segno: int
    path: str

    @property
    def name(self) -> str:
        return walseg.segment_name(self.timeline, self.segno)

    def as_dict(self) -> dict:
        return {"timeline": self.timeline, "name": self.name, "path": self.path, "bytes": _size(self.path)}


@dataclasses.dataclass
class RestorePlan:
    backups: list[PlannedBackup] = dataclasses.field(default_factory=list)
    archive_dir: str | None = None
    target: str | None = None
    timeline_path: list[tuple[int, int, int | None]] = dataclasses.field(default_factory=list)
    segments: list[PlannedSegment] = dataclasses.field(default_factory=list)
    records_replayed: int = 0
    transactions: int = 0
    row_changes: int = 0
    wal_bytes: int = 0
    last_txid: int | None = None
    last_commit_time_us: int | None = None
    wal_read_seconds: float = 0.0
    apply_rows_per_second: float | None = None
    apply_sample_rows: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def backup_bytes(self) -> int:
        return sum(b.file_bytes for b in self.backups)

    def estimate(self) -> tuple[float, str]:
        """(seconds, how they were found) for the whole restore."""
        decode = sum(b.verify_seconds for b in self.backups)
        seconds = 2 * decode  # the restore verifies every chunk, then decodes it again to write it
        basis = [
            f"the backups: {len(self.backups)} file(s) verified by this dry run in {decode:.2f} s, "
            "counted twice (the restore verifies, then decodes again to write)"
        ]
        if self.archive_dir is not None:
            seconds += self.wal_read_seconds
            basis.append(f"reading the WAL: {self.wal_read_seconds:.2f} s measured by this dry run")
            if self.apply_rows_per_second:
                apply = self.row_changes / self.apply_rows_per_second
                seconds += apply
                basis.append(
                    f"applying {self.row_changes} row changes at {self.apply_rows_per_second:,.0f} rows/s, this "
                    f"machine's rate measured on a sample of {self.apply_sample_rows} rows applied to in-memory "
                    "copies of the tables (a lower bound for large tables)"
                )
        return seconds, "; ".join(basis)

    def as_dict(self) -> dict:
        seconds, basis = self.estimate()
        out = {
            "ok": self.ok,
            "dry_run": True,
            "backups": [b.as_dict() for b in self.backups],
            "backup_bytes": self.backup_bytes,
        }
        if self.archive_dir is not None:
            out.update(
                {
                    "archive_dir": self.archive_dir,
                    "recovery_target": self.target,
                    "timeline_path": [
                        {
                            "timeline": tl,
                            "from_lsn": format_lsn(start),
                            "to_lsn": None if stop is None else format_lsn(stop),
                        }
                        for tl, start, stop in self.timeline_path
                    ],
                    "segments": [s.as_dict() for s in self.segments],
                    "segments_read": len(self.segments),
                    "records_replayed": self.records_replayed,
                    "transactions": self.transactions,
                    "row_changes": self.row_changes,
                    "wal_bytes": self.wal_bytes,
                    "last_replayed_txid": self.last_txid,
                    "last_replayed_commit_time": (
                        pitr.format_time(self.last_commit_time_us) if self.last_commit_time_us else None
                    ),
                }
            )
        out["estimated_seconds"] = round(seconds, 3)
        out["estimate_basis"] = basis
        out["problems"] = list(self.problems)
        return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ------------------------------------------------------------------ backups
def check_backup(path: str, key_file: str | None, *, threads: int = 1, plan: RestorePlan) -> Manifest | None:
    """Verify one backup file as the restore would (every chunk, the file digest),
    a problem added to ``plan`` if it does not; its manifest if its header reads."""
    planned = PlannedBackup(path)
    manifest = None
    plan.backups.append(planned)
    try:
        with open(path, "rb") as f:
            header = BackupReader(f).header
            planned.backup_id, planned.backup_type = header.backup_id, str(header.backup_type)
            planned.file_bytes = os.fstat(f.fileno()).st_size
            manifest = Manifest.from_header(header)
            key = resolve_read_key(header, key_file)
            f.seek(0)
            reader = BackupReader(f, key=key)
            t0 = time.perf_counter()
            report = reader.verify(threads=threads)
            planned.verify_seconds = time.perf_counter() - t0
            planned.chunks = report.chunks
            planned.verified = True
    except FileNotFoundError:
        plan.problems.append(f"backup {path} does not exist")
    except OSError as exc:
        plan.problems.append(f"cannot read backup {path}: {exc.strerror or exc}")
    except (BackupError, CryptoError, NoKeyError) as exc:
        plan.problems.append(f"backup {path} does not verify: {exc}")
    return manifest


def check_data_dir(data_dir: str | None, plan: RestorePlan) -> None:
    """What the restore refuses up front about its target directory."""
    if not data_dir or not os.path.exists(data_dir):
        return
    ddir = dd.DataDir(data_dir)
    if ddir.is_locked_by_other():
        plan.problems.append(f"{data_dir} is in use by a running server; stop it first")


# ------------------------------------------------------------------ the WAL
def plan_replay(
    plan: RestorePlan,
    manifest: Manifest,
    archive_dir: str,
    target: pitr.Target,
    *,
    timeline_choice: str = "latest",
    key=None,
    schema_source=None,
) -> None:
    """Walk the archive as ``pitr.recover`` does, counting what it would replay.

    ``schema_source(database) -> [CREATE TABLE sql]`` gives the base's tables, for
    measuring the apply rate (None: no measurement)."""
    plan.archive_dir = archive_dir
    plan.target = target.describe()
    t0 = time.perf_counter()
    try:
        pitr._check_target_against_base(target, manifest)
        _walk(plan, manifest, archive_dir, target, timeline_choice, key)
    except (pitr.PitrError, ArchiveGapError, sf.ArchiveError, HistoryError, CryptoError, BackupError) as exc:
        plan.problems.append(str(exc))
    except WalCorruptError as exc:
        plan.problems.append(str(exc).replace("; recovery stopped", ""))
    plan.wal_read_seconds = time.perf_counter() - t0
    if schema_source is not None and plan.ok and plan.row_changes:
        _measure_apply(plan, manifest, archive_dir, target, timeline_choice, key, schema_source)


def _walk(plan, manifest, archive_dir, target, timeline_choice, key, on_tx=None) -> None:
    base_lsn = manifest.end_lsn
    archive = sf.list_archive(archive_dir)
    path = pitr.timeline_path(archive_dir, manifest.timeline, base_lsn, timeline_choice, archive)
    plan.timeline_path = path
    applied = {db.name: db.applied_lsn or 0 for db in manifest.databases}

    def open_segments(have, tl, first, last):
        return _Recording(have, tl, first=first, last=last, system_id=manifest.system_id, key=key, plan=plan)

    walk = pitr.TargetWalk(archive_dir, archive, path, manifest, base_lsn, target, key, open_segments)
    with contextlib.closing(walk.records()) as records:
        for entry, rec in records:
            _count(plan, applied, entry, rec, on_tx)


def _count(plan: RestorePlan, applied: dict[str, int], entry, rec, on_tx) -> None:
    """What ``RecordApplier.apply`` would count as replayed."""
    if isinstance(rec, walrec.TxRecord):
        if rec.database not in applied:
            raise pitr.PitrError(
                f"WAL record at LSN {format_lsn(entry.lsn)} belongs to database {rec.database!r}, "
                "which the base backup does not hold"
            )
        if entry.lsn > applied[rec.database]:
            plan.records_replayed += 1
            plan.transactions += 1
            plan.wal_bytes += entry.end_lsn - entry.lsn
            plan.last_txid = rec.txid
            plan.last_commit_time_us = rec.commit_time_us
            for kind, payload in rec.steps:
                if kind == "rows":  # a bulk insert's rows
                    plan.row_changes += rows_image.parse_header(payload)[0].rows
                if kind == "changeset":
                    plan.row_changes += sum(1 for _ in apsw.Changeset.iter(payload))
            if on_tx is not None:
                on_tx(rec)
    elif isinstance(rec, walrec.DatabaseRecord):
        if rec.action == "create" and rec.database not in applied:
            applied[rec.database] = 0
            plan.records_replayed += 1
        elif rec.action == "drop" and rec.database in applied and applied[rec.database] < entry.lsn:
            applied.pop(rec.database)
            plan.records_replayed += 1


class _Recording(ArchivedSegments):
    """ArchivedSegments that lists, in order, each segment the reading asks for."""

    def __init__(self, segments, timeline, *, plan: RestorePlan, **kw) -> None:
        super().__init__(segments, timeline, **kw)
        self._plan = plan
        self._all = segments

    def get(self, segno: int) -> bytes | None:
        data = super().get(segno)
        if data is not None:
            self._plan.segments.append(PlannedSegment(self.timeline, segno, self._all[segno]))
        return data


def _measure_apply(plan, manifest, archive_dir, target, timeline_choice, key, schema_source) -> None:
    """Apply the first changesets the replay would apply to in-memory copies of their
    database's tables, timed: this machine's rows per second."""
    conns: dict[str, apsw.Connection] = {}
    seen = {"changesets": 0, "rows": 0, "seconds": 0.0}

    class _Enough(Exception):
        pass

    def apply(rec) -> None:
        conn = conns.get(rec.database)
        if conn is None:
            conn = conns[rec.database] = apsw.Connection(":memory:")
            for sql in schema_source(rec.database):
                try:
                    conn.execute(sql)
                except apsw.Error:
                    pass
            conn.execute("BEGIN")  # one transaction for the sample, as the replay batches records
        for kind, payload in rows_image.expand(rec.steps):
            if kind == "ddl":
                try:
                    conn.execute(payload)
                except apsw.Error:
                    pass
                continue
            rows = sum(1 for _ in apsw.Changeset.iter(payload))
            t0 = time.perf_counter()
            apsw.Changeset.apply(payload, conn, conflict=lambda *_: apsw.SQLITE_CHANGESET_OMIT)
            seen["seconds"] += time.perf_counter() - t0
            seen["rows"] += rows
            seen["changesets"] += 1
        if seen["changesets"] >= APPLY_SAMPLE_CHANGESETS:
            raise _Enough

    scratch = RestorePlan()
    try:
        _walk(scratch, manifest, archive_dir, target, timeline_choice, key, on_tx=apply)
    except _Enough:
        pass
    except Exception:  # noqa: BLE001 -- only the estimate is at stake; the plan's checks were made
        return
    finally:
        for conn in conns.values():
            conn.close()
    if seen["rows"] and seen["seconds"] > 0:
        plan.apply_rows_per_second = seen["rows"] / seen["seconds"]
        plan.apply_sample_rows = seen["rows"]


def backup_schema(path: str, key_file: str | None):
    """``schema_source`` for ``plan_replay``: the tables of a full backup's databases,
    read in place through the backup VFS (only the schema pages are decoded)."""
    from ..backup.vfs import open_backup_database

    def tables(database: str) -> list[str]:
        try:
            with open(path, "rb") as f:
                header = BackupReader(f).header
            conn = open_backup_database(path, database, key=resolve_read_key(header, key_file))
        except Exception:  # noqa: BLE001 -- a database the backup lacks: no tables to copy
            return []
        try:
            return [
                r[0] for r in conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL")
            ]
        finally:
            conn.close()

    return tables
