"""Applying a stream of WAL records to a data directory's databases.

Used by crash recovery (records from the server's own WAL) and by
point-in-time recovery (records from the archive, up to a target). Each
database only takes the records above its own ``applied_lsn``, so applying a
record twice is impossible and starting from an early point is always safe.
"""

from __future__ import annotations

from .. import datadir as _datadir
from ..wal import record as walrec
from ..wal.lsn import format_lsn
from . import database, replay


class RecoveryError(Exception):
    """The records cannot be applied to this data directory."""


class RecordApplier:
    """Applies records in LSN order to every database of ``ddir``."""

    def __init__(
        self,
        ddir: _datadir.DataDir,
        *,
        only_database: str | None = None,
        only_table: str | None = None,
        batch: int = replay.BATCH_RECORDS,
        batch_bytes: int = replay.BATCH_BYTES,
    ):
        self.ddir = ddir
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.only_database = only_database
        self.only_table = only_table
        self.applied: dict[str, int] = {}
        self.replayers: dict[str, replay.Replayer] = {}
        self.replayed = 0
        self.skipped = 0
        self.max_txid = 0
        self.last_commit_time_us = 0
        self.last_txid: int | None = None
        for name in ddir.list_databases():
            self._open(name)

    def _open(self, name: str) -> None:
        path = self.ddir.database_path(name)
        conn = replay.open_replay_connection(path)
        self.replayers[name] = replay.Replayer(
            conn, name, batch=self.batch, only_table=self.only_table, batch_bytes=self.batch_bytes
        )
        self.applied[name] = database.read_state(conn)["applied_lsn"]

    def apply(self, lsn: int, rec) -> None:
        if self.only_database is not None and getattr(rec, "database", None) not in (None, self.only_database):
            return  # table-level recovery: other databases are not restored
        if type(rec) is walrec.TxRecord:  # once per transaction: comparisons, not max()
            if rec.txid > self.max_txid:
                self.max_txid = rec.txid
            if rec.commit_time_us > self.last_commit_time_us:
                self.last_commit_time_us = rec.commit_time_us
            replayer = self.replayers.get(rec.database)
            if replayer is None:
                raise RecoveryError(
                    f"WAL record at LSN {format_lsn(lsn)} belongs to database "
                    f"{rec.database!r}, whose file is missing from {self.ddir.databases_dir}"
                )
            if lsn > self.applied[rec.database]:
                replayer.apply(lsn, rec)
                self.replayed += 1
                self.last_txid = rec.txid
            else:
                self.skipped += 1
        elif isinstance(rec, walrec.DatabaseRecord):
            path = self.ddir.database_path(rec.database)
            if rec.action == "create" and rec.database not in self.replayers:
                database.create_database_file(path, lsn)
                self._open(rec.database)
                self.replayed += 1
            elif rec.action == "drop" and self.only_table is not None:
                raise RecoveryError(
                    f"database {rec.database!r} was dropped at LSN {format_lsn(lsn)}, before "
                    "the recovery target; choose an earlier target"
                )
            elif rec.action == "drop" and rec.database in self.replayers:
                if self.applied[rec.database] < lsn:
                    dropped = self.replayers.pop(rec.database)
                    self._closed_changes += dropped.changes
                    dropped.close()
                    self.applied.pop(rec.database)
                    database.remove_database_files(path)
                    self.replayed += 1
        elif isinstance(rec, walrec.CheckpointRecord):
            self.max_txid = max(self.max_txid, rec.next_txid - 1)

    @property
    def changed_rows(self) -> int:
        return self._closed_changes + sum(r.changes for r in self.replayers.values())

    def finish(self) -> None:
        """Commit what is applied and close every database."""
        try:
            for replayer in self.replayers.values():
                replayer.flush()
        finally:
            self.close()

    _closed_changes = 0

    def close(self) -> None:
        for replayer in self.replayers.values():
            try:
                self._closed_changes += replayer.changes
            except Exception:
                pass
            try:
                replayer.close()
            except Exception:  # already failing; the first error is the one to report
                pass
        self.replayers.clear()
