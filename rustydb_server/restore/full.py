"""Restoring a full (or pitr-base) backup file into a data directory.

Read top to bottom, a restore is:

1. open the backup, check its manifest: every entry must be exactly
   ``databases/<valid name>.sqlite`` and the file must hold nothing else
   (names in a backup are never trusted as paths);
2. take the data directory's lock and check the target: empty, or a stopped
   server's data directory, which is kept aside as
   ``<target>.pre-restore-<time>`` (removed instead with ``force``); anything
   else is refused unless ``force`` (``staging.TargetLock.check_target``);
3. with ``verify_encryption``, authenticate every chunk before writing a byte;
4. write the databases into a staging directory next to the target, files
   0600, fsynced; then the control file and WAL layout (``install_data_dir``);
   run ``post_install`` (a chain's incrementals, point-in-time recovery); with
   ``integrity_check``, run SQLite's integrity check and compare row counts
   with the manifest;
5. swap the staging directory into place (``staging.Staging.swap``).

Any failure before the swap leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw

from .. import datadir as dd
from .. import fileops as _fileops
from ..backup.manifest import Manifest, ManifestError
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..engine import database as engine_db
from ..keys import KeySource, resolve_read_key
from ..roles import restore_roles
from .errors import RestoreError
from .install import control_from_manifest, install_data_dir
from .staging import TargetLock

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class RestoreResult:
    backup_id: str
    backup_type: str
    data_dir: str
    databases: list[str]
    tables: int
    bytes_written: int
    seconds: float
    verified_encryption: bool
    integrity_checked: bool
    encrypted: bool
    replaced_old: bool = False
    kept_old: str | None = None  # where the replaced data directory was kept
    checks: list[str] = field(default_factory=list)


def check_manifest(reader: BackupReader) -> Manifest:
    """The manifest, once every database name and entry in it is safe and matches the file."""
    header = reader.header
    bid = header.backup_id
    try:
        manifest = Manifest.from_header(header)
    except ManifestError as exc:
        raise RestoreError(str(exc)) from None
    if manifest.backup_id != bid:
        raise RestoreError(
            f"backup {bid}: its manifest names another backup ({manifest.backup_id!r}); the file is not usable"
        )
    if not manifest.backup_type.is_full_base:
        raise RestoreError(
            f"backup {bid} is a {manifest.backup_type} backup; restore its full base backup first, then apply "
            "this one on top of it (incremental restore)"
        )
    if not manifest.databases:
        raise RestoreError(f"backup {bid} holds no databases; there is nothing to restore")
    # Names and entries were checked by the manifest's parser.
    in_file = {e.name for e in reader.entries()}
    wanted = {db.entry for db in manifest.databases}
    if in_file != wanted:
        extra, missing = sorted(in_file - wanted), sorted(wanted - in_file)
        raise RestoreError(
            f"backup {bid}: its entries do not match its manifest"
            + (f"; unexpected entries {extra}" if extra else "")
            + (f"; missing entries {missing}" if missing else "")
        )
    return manifest


def restore_full(
    input_path: str,
    data_dir: str,
    *,
    key: KeySource | None = None,
    threads: int = 1,
    verify_encryption: bool = False,
    integrity_check: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    post_install: Callable[[str, Manifest], None] | None = None,
    fileops: _fileops.FileOps = _fileops.REAL,
    write_behind: bool = False,
) -> RestoreResult:
    """Restore ``input_path`` into ``data_dir``. ``post_install(staging, manifest)``
    runs on the installed staging directory before the swap (point-in-time
    recovery replays archived WAL there); if it raises, nothing is swapped in.
    ``write_behind``: with a ``post_install``, the databases still go to disk as
    they are written (what it then changes is written twice; see _write_databases)."""
    started = time.monotonic()
    target = os.path.abspath(data_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise RestoreError(f"{target} exists and is not a directory; choose another --data-dir")
    with open_backup(input_path) as f:
        reader = _open_reader(f, input_path, key)
        manifest = check_manifest(reader)
        with TargetLock(target) as lock:
            lock.check_target(force)
            if verify_encryption:
                _verify_before_writing(reader, threads, progress)
            with lock.stage(manifest.backup_id, fileops) as staging:
                # With more to apply, the files are synced once at the end: pages the
                # incrementals change are then written to disk once, not twice.
                written = _write_databases(
                    reader,
                    manifest,
                    staging.path,
                    threads,
                    progress,
                    fileops,
                    sync=post_install is None,
                    write_behind=write_behind or post_install is None,
                )
                control = control_from_manifest(manifest)
                control.previous_data_dir = lock.keep_as
                install_data_dir(staging.path, manifest, control, fileops=fileops)
                if manifest.roles is not None:
                    restore_roles(staging.path, manifest.roles, fileops)
                if post_install is not None:
                    post_install(staging.path, manifest)
                    _sync_databases(staging.path, fileops)
                checks = _check_integrity(staging.path, manifest) if integrity_check else []
                replaced = staging.swap()
    return RestoreResult(
        backup_id=manifest.backup_id,
        backup_type=manifest.backup_type,
        data_dir=target,
        databases=manifest.database_names,
        tables=sum(len(db.tables) for db in manifest.databases),
        bytes_written=written,
        seconds=time.monotonic() - started,
        verified_encryption=verify_encryption,
        integrity_checked=integrity_check,
        encrypted=reader.header.encrypted,
        replaced_old=replaced,
        kept_old=staging.kept,
        checks=checks,
    )


@contextlib.contextmanager
def open_backup(path):
    """The backup file; or an object in a repository (a RepositoryObject), read in place by ranges."""
    if not isinstance(path, str):
        with path.open() as f:
            yield f
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; only open() errors are translated
    except OSError as exc:
        raise RestoreError(f"cannot open backup {path}: {exc.strerror or exc}") from None
    with f:
        yield f


def _open_reader(f, input_path: str, key: KeySource | None) -> BackupReader:
    try:
        reader = BackupReader(f, key=key)
    except BackupError as exc:
        raise RestoreError(f"{input_path} is not a usable backup: {exc}") from None
    if reader.header.encrypted and key is None:
        resolve_read_key(reader.header, None, env={})  # raises NoKeyError saying how to give one
    return reader


def read_key_for(path: str, key_file: str | None) -> KeySource | None:
    """The key that reads the backup file at ``path`` (None if it is not encrypted)."""
    try:
        with open_backup(path) as f:
            header = BackupReader(f).header
    except OSError as exc:
        raise RestoreError(f"cannot open backup {path}: {exc.strerror or exc}") from None
    return resolve_read_key(header, key_file)


def _verify_before_writing(reader: BackupReader, threads: int, progress: ProgressFn | None) -> None:
    report_progress = (lambda done, total: progress("verify", done, total)) if progress else None
    reader.verify(report_progress, threads=threads)


def _write_databases(
    reader: BackupReader,
    manifest: Manifest,
    staging: str,
    threads: int,
    progress: ProgressFn | None,
    fileops: _fileops.FileOps,
    *,
    sync: bool = True,
    write_behind: bool = True,
) -> int:
    total = sum(reader.entry(db.entry).raw_size for db in manifest.databases)
    done = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for db in manifest.databases:
        path = os.path.join(staging, dd.DATABASES_DIR, db.name + ".sqlite")
        fd = fileops.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            # A file synced here goes to disk as it is written. One that
            # what follows changes (sync=False: a chain's incrementals, WAL
            # replay) is synced once after it; written back now
            # (write_behind), every page changed next is written twice, but
            # not all of a large file waits for that one fsync at the end.
            behind = _fileops.WriteBehind(fileops, fd) if write_behind else None
            with _Writer(fileops, fd, behind) as writer:
                for chunk in reader.read_entry(db.entry, threads=threads):
                    writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("restore", done, total)
            if sync:
                fileops.fsync(fd)
        finally:
            fileops.close(fd)
    return done


class _Writer:
    """Writes a database file's chunks on a thread of its own, while the next ones are
    read, checked and decompressed (a write gives up the GIL while the kernel copies):
    up to DEPTH chunks wait. A write that fails is raised by the next ``write`` or by
    the end of the ``with``; the chunks after it are dropped."""

    DEPTH = 8

    def __init__(self, fileops: _fileops.FileOps, fd: int, behind: _fileops.WriteBehind | None):
        self._fileops = fileops
        self._fd = fd
        self._behind = behind
        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="restore-write", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # failed: drain, so that ``write`` never blocks on a full queue
            try:
                self._fileops.write_all(self._fd, chunk)  # in pieces: see fileops.WRITE_PIECE
                if self._behind is not None:
                    self._behind.wrote(len(chunk))
            except BaseException as e:  # raised in the restoring thread
                self._error = e


def _sync_databases(staging: str, fileops: _fileops.FileOps) -> None:
    """fsync every file in the staging directory's databases/ (and the directory)."""
    directory = os.path.join(staging, dd.DATABASES_DIR)
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            fileops.fsync_file(path)
    fileops.fsync_dir(directory)


def _check_integrity(staging: str, manifest: Manifest) -> list[str]:
    """SQLite's integrity check and the manifest's row counts, per database."""
    report = []
    for db in manifest.databases:
        name = db.name
        path = os.path.join(staging, dd.DATABASES_DIR, name + ".sqlite")
        conn = apsw.Connection(path)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if result != ["ok"]:
                raise RestoreError(f"database {name!r} failed SQLite's integrity check: {'; '.join(result[:5])}")
            present = set(engine_db.user_tables(conn))
            for table in db.tables:
                tname, rows = table.name, table.rows
                if tname not in present:
                    raise RestoreError(
                        f"database {name!r}: table {tname!r} recorded in the backup is missing from the restored data"
                    )
                found = conn.execute(f"SELECT count(*) FROM {engine_db.quote_ident(tname)}").fetchall()[0][0]
                if found != rows:
                    raise RestoreError(
                        f"database {name!r}, table {tname!r}: {found} rows restored, the backup "
                        f"recorded {rows}; the backup does not match its own manifest"
                    )
            unexpected = present - {t.name for t in db.tables}
            if unexpected:
                raise RestoreError(
                    f"database {name!r}: tables {sorted(unexpected)} are not recorded in the backup's manifest"
                )
            report.append(f"{name}: integrity ok, {len(present)} tables, row counts match")
        except apsw.Error as exc:
            raise RestoreError(f"database {name!r} cannot be checked: {exc}") from None
        finally:
            conn.close()
    return report
