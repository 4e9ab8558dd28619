"""Applying an incremental or differential backup onto a restored data directory.

The data directory must hold exactly the backup this one was taken from (its
control file names the last backup applied): an incremental goes on top of
its parent, a differential on top of its full backup. Anything else (out of
order, twice, onto the wrong base, or onto a directory a server has already
run on) is refused, naming the expected and the found backup.
"""

from __future__ import annotations

import dataclasses
import os
import time

import apsw

from .. import datadir as dd
from .. import fileops as _fileops
from ..backup.manifest import Manifest
from ..backup.steps import decode_steps
from ..container.format import BackupType
from ..container.reader import BackupReader
from ..engine import database, replay
from ..roles import restore_roles
from ..wal import segment as walseg


class IncrementalRestoreError(Exception):
    pass


@dataclasses.dataclass
class IncrementalResult:
    backup_id: str
    backup_type: str
    parent_id: str
    databases: list[str]
    steps: int
    seconds: float


def expected_parent(control: dd.Control, manifest: Manifest) -> str | None:
    last = control.last_backup or {}
    if manifest.backup_type is BackupType.DIFFERENTIAL:
        full = control.last_full_backup or {}
        # a differential goes straight onto its full backup, nothing in between
        return full.get("backup_id") if last.get("backup_id") == full.get("backup_id") else None
    return last.get("backup_id")


def check_applicable(ddir: dd.DataDir, control: dd.Control, manifest: Manifest) -> None:
    bid, btype = manifest.backup_id, manifest.backup_type
    if not btype.needs_parent:
        raise IncrementalRestoreError(
            f"backup {bid} is a {btype} backup; --incremental applies incremental and "
            "differential backups (restore a full backup without --incremental)"
        )
    if str(control.system_id) != str(manifest.system_id):
        raise IncrementalRestoreError(f"backup {bid} belongs to another database system than {ddir.path}")
    last = control.last_backup or {}
    if last.get("backup_id") == bid:
        raise IncrementalRestoreError(f"backup {bid} is already applied to {ddir.path}")
    if control.state == "applying-incremental":
        raise IncrementalRestoreError(
            f"an earlier apply of an incremental to {ddir.path} did not finish, so its "
            "databases are half-changed; restore the chain again (the full backup, then "
            "each incremental in order)"
        )
    if control.state != "restored" or control.redo_lsn != walseg.normalize_lsn(
        last.get("end_lsn", -1), control.segment_size
    ):
        raise IncrementalRestoreError(
            f"{ddir.path} has changed since it was restored (a server ran on it); apply "
            "incrementals to a freshly restored directory, before starting the server"
        )
    want = manifest.parent_id if btype is BackupType.INCREMENTAL else manifest.base_full_id
    have = expected_parent(control, manifest)
    if btype is BackupType.DIFFERENTIAL and have is None:
        raise IncrementalRestoreError(
            f"differential backup {bid} applies to its full backup {want}, but "
            f"{ddir.path} already has backup {last.get('backup_id')} on top of "
            f"{(control.last_full_backup or {}).get('backup_id')}; restore the full "
            "backup again and apply only the differential"
        )
    if have != want:
        raise IncrementalRestoreError(
            f"backup {bid} ({btype}) must be applied on top of backup {want}, but "
            f"{ddir.path} holds backup {have}"
            + ("; apply the incrementals in order" if btype is BackupType.INCREMENTAL else "")
        )


def apply_incremental(
    reader: BackupReader,
    data_dir: str,
    *,
    threads: int = 1,
    progress=None,
    staging: bool = False,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> IncrementalResult:
    """Apply ``reader``'s backup onto ``data_dir``. ``staging=True``: ``data_dir``
    is a --chain-dir restore's staging directory, whose caller syncs the
    database files once after the whole chain and discards it if this fails."""
    t0 = time.perf_counter()
    ddir = dd.DataDir(data_dir, fileops)
    if ddir.is_locked_by_other():
        raise IncrementalRestoreError(f"{data_dir} is in use by a running server; stop it")
    ddir.lock("restore")
    try:
        control = ddir.read_control()
        manifest = Manifest.from_header(reader.header)
        check_applicable(ddir, control, manifest)
        reader.verify(threads=threads)  # no damaged byte may reach the databases
        # Until every database has it, the directory must not be started on.
        control.state = "applying-incremental"
        ddir.write_control(control)
        steps = 0
        try:
            for db in manifest.databases:
                name = dd.validate_database_name(db.name)
                if db.entry != f"incremental/{name}.steps":
                    raise IncrementalRestoreError(f"unexpected entry {db.entry!r} in the backup")
                chunks = reader.read_entry(db.entry, threads=threads)
                steps += _apply_database(ddir, name, decode_steps(chunks), manifest.end_lsn, sync=not staging)
                if progress is not None:
                    progress(name)
        except IncrementalRestoreError as exc:
            if staging:
                raise
            # Pages are written in place as the apply goes (no journal), so
            # nothing of it can be rolled back.
            raise IncrementalRestoreError(
                f"{exc}. {data_dir} is left half-changed: the server and rusty-db-export "
                "refuse it until the chain is restored again (the full backup, then each "
                "incremental in order)"
            ) from exc
        if manifest.roles is not None:
            # The roles as of this backup, not of the full one: a role made or
            # changed between them is in the chain's last manifest only.
            restore_roles(data_dir, manifest.roles, ddir.fileops)
        _advance_control(ddir, control, manifest)
    finally:
        ddir.unlock()
    return IncrementalResult(
        manifest.backup_id,
        manifest.backup_type,
        manifest.parent_id,
        manifest.database_names,
        steps,
        time.perf_counter() - t0,
    )


def _apply_database(ddir: dd.DataDir, name: str, steps, end_lsn: int, sync: bool) -> int:
    path = ddir.database_path(name)
    conn = None
    count = 0
    try:
        for kind, payload in steps:
            count += 1
            if kind == "create":
                if conn is None and os.path.exists(path):
                    database.remove_database_files(path)
                database.create_database_file(path, 0)
                continue
            if kind == "drop":
                if conn is not None:
                    conn.close()
                    conn = None
                database.remove_database_files(path)
                continue
            if conn is None:
                if not os.path.exists(path):
                    raise IncrementalRestoreError(
                        f"database {name!r} is missing from {ddir.path}; the base does not match this backup"
                    )
                conn = _open_for_apply(path)
                conn.execute("BEGIN IMMEDIATE")
            if (kind, payload) == replay.VACUUM_STEPS[0]:
                conn.execute("COMMIT")
                conn.execute("VACUUM")
                conn.execute("BEGIN IMMEDIATE")
                continue
            try:
                replay.apply_steps(conn, [(kind, payload)])
            except (apsw.Error, replay.ReplayError) as e:
                raise IncrementalRestoreError(
                    f"cannot apply the backup to database {name!r}: {e}; the data directory "
                    "does not hold the state this backup was taken from"
                ) from e
        if conn is None and os.path.exists(path):
            conn = _open_for_apply(path)
            conn.execute("BEGIN IMMEDIATE")
        if conn is not None:
            database.write_state(conn, end_lsn, None, None)
            conn.execute("COMMIT")
            _finish_apply(conn, path, sync, ddir.fileops)
    except BaseException:
        if conn is not None and not conn.getautocommit():
            conn.execute("ROLLBACK")
        raise
    finally:
        if conn is not None:
            conn.close()
    return count


def _open_for_apply(path: str):
    """A connection that writes pages in place: no journal, no SQLite WAL, no fsync.

    Nothing runs on the directory meanwhile and its control file says
    "applying-incremental" until the end, so a crash or a failed apply means
    "restore again", never a silently damaged database; the file is fsynced
    once at the end. That halves the writes of a large incremental (no WAL
    copy, no checkpoint).
    """
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(database.BUSY_TIMEOUT_MS)
    # synchronous before journal_mode: leaving WAL mode rewrites the file's
    # header, and under the default that commit fsyncs the whole file, which a
    # --chain-dir restore has just written and will sync once at the end.
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=OFF")
    replay.configure_replay_connection(conn)
    # SQLite's default page cache (2 MB) on purpose: without a journal a page
    # that leaves the cache is written to the file at once, as it would be at
    # commit, while a large cache costs a fault for each fresh page of memory
    # and a sort of every dirty page at commit (docs/internals.md, "Measured
    # choices").
    return conn


def _finish_apply(conn, path: str, sync: bool, fileops: _fileops.FileOps) -> None:
    conn.execute("PRAGMA journal_mode=WAL")  # as the server runs it
    if sync:
        fileops.fsync_file(path)


def _advance_control(ddir: dd.DataDir, control: dd.Control, manifest: Manifest) -> None:
    end = walseg.normalize_lsn(manifest.end_lsn, control.segment_size)
    control.redo_lsn = end
    control.checkpoint_lsn = end
    control.state = "restored"
    control.next_txid = max(control.next_txid, manifest.next_txid)
    control.last_commit_time_us = max(control.last_commit_time_us, manifest.last_commit_time_us)
    control.last_backup = manifest.control_record()
    ddir.write_control(control)
