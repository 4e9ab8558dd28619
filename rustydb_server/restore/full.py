"""Restoring a full (or pitr-base) backup file into a data directory.

Read top to bottom, a restore is:

1. take the data directory's lock (a running server holds it, so it is
   refused; a second restore is kept out for the same reason) and check that
   the directory is empty unless ``force``;
2. open the backup, check its manifest: every entry must be exactly
   ``databases/<valid name>.sqlite`` and the file must hold nothing else
   (names in a backup are never trusted as paths);
3. with ``verify_encryption``, authenticate every chunk before writing a byte;
4. write the databases into a staging directory next to the target (same
   filesystem, 0700), files 0600, fsynced; then the control file and WAL layout
   (``install_data_dir``); with ``integrity_check``, run SQLite's integrity
   check and compare row counts with the manifest;
5. swap the staging directory into place with renames.

Any failure before the swap removes the staging directory and leaves the
target as it was, so no half-written directory a server would start on is
ever left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import apsw

from .. import datadir as dd
from .. import fileops as _fileops
from ..backup.container import BackupError, BackupHeader, BackupReader
from ..backup.file import manifest_of
from ..backup.keys import ENV_KEY_FILE, ENV_PASSPHRASE, KeySource, NoKeyError, resolve_kek
from ..engine import database as engine_db
from .install import install_data_dir

RESTORABLE_TYPES = ("full", "pitr-base")
STAGING_MARK = ".restoring-"
OLD_MARK = ".old-"

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


class RestoreError(Exception):
    """The restore cannot go on; the message says what, why and what to do."""


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
    checks: list[str] = field(default_factory=list)


def resolve_read_key(header: BackupHeader, key_file: str | None, env: dict | None = None) -> KeySource | None:
    """The key needed to read ``header``'s backup, or None when it is not encrypted."""
    if not header.encrypted:
        return None
    try:
        return resolve_kek(key_file, env)
    except NoKeyError:
        kdf = (header.encryption or {}).get("kdf")
        how = (
            f"set {ENV_PASSPHRASE} to its passphrase"
            if kdf and kdf != "keyfile"
            else f"pass --key-file PATH or set {ENV_KEY_FILE}"
        )
        raise NoKeyError(
            f"backup {header.backup_id} is encrypted ({kdf or 'unknown key type'}) and no key was given: {how}"
        ) from None


def expected_entry(name: str) -> str:
    return f"databases/{name}.sqlite"


def check_manifest(reader: BackupReader) -> dict:
    """The manifest, once every database name and entry in it is safe and matches the file."""
    header = reader.header
    bid = header.backup_id
    try:
        manifest = manifest_of(header)
    except ValueError as exc:
        raise RestoreError(str(exc)) from None
    if manifest.get("backup_id") != bid:
        raise RestoreError(
            f"backup {bid}: its manifest names another backup ({manifest.get('backup_id')!r}); the file is not usable"
        )
    kind = manifest.get("backup_type")
    if kind not in RESTORABLE_TYPES:
        raise RestoreError(
            f"backup {bid} is a {kind} backup; restore its full base backup first, then apply "
            "this one on top of it (incremental restore)"
        )
    dbs = manifest.get("databases")
    if not isinstance(dbs, list) or not dbs:
        raise RestoreError(f"backup {bid} holds no databases; there is nothing to restore")
    seen: set[str] = set()
    for db in dbs:
        name = db.get("name") if isinstance(db, dict) else None
        try:
            dd.validate_database_name(name)
        except dd.DataDirError:
            raise RestoreError(
                f"backup {bid} names a database {name!r} that is not a valid database name; "
                "refusing to use it as a file name"
            ) from None
        if db.get("entry") != expected_entry(name):
            raise RestoreError(
                f"backup {bid}: database {name!r} points at entry {db.get('entry')!r}, "
                f"expected {expected_entry(name)!r}; refusing an entry that is not a plain "
                "database file"
            )
        if name in seen:
            raise RestoreError(f"backup {bid} lists database {name!r} twice")
        seen.add(name)
    in_file = {e.name for e in reader.entries()}
    wanted = {expected_entry(n) for n in seen}
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
    post_install: Callable[[str, dict], None] | None = None,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> RestoreResult:
    """Restore ``input_path`` into ``data_dir``. ``post_install(staging, manifest)``
    runs on the installed staging directory before the swap (point-in-time
    recovery replays archived WAL there); if it raises, nothing is swapped in."""
    started = time.monotonic()
    target = os.path.abspath(data_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise RestoreError(f"{target} exists and is not a directory; choose another --data-dir")
    with _open_input(input_path) as f:
        reader = _open_reader(f, input_path, key)
        manifest = check_manifest(reader)
        with _TargetLock(target) as lock:
            _check_target(lock.ddir, force)
            if verify_encryption:
                _verify_before_writing(reader, threads, progress)
            staging = _make_staging(target, manifest["backup_id"])
            try:
                # With more to apply, the files are synced once at the end: pages the
                # incrementals change are then written to disk once, not twice.
                written = _write_databases(
                    reader, manifest, staging, threads, progress, fileops, sync=post_install is None
                )
                install_data_dir(staging, manifest, fileops=fileops)
                if post_install is not None:
                    post_install(staging, manifest)
                    _sync_databases(staging, fileops)
                checks = _check_integrity(staging, manifest) if integrity_check else []
                replaced = _swap_into_place(staging, target, lock, fileops)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            lock.installed = True
    return RestoreResult(
        backup_id=manifest["backup_id"],
        backup_type=manifest["backup_type"],
        data_dir=target,
        databases=[db["name"] for db in manifest["databases"]],
        tables=sum(len(db.get("tables", [])) for db in manifest["databases"]),
        bytes_written=written,
        seconds=time.monotonic() - started,
        verified_encryption=verify_encryption,
        integrity_checked=integrity_check,
        encrypted=reader.header.encrypted,
        replaced_old=replaced,
        checks=checks,
    )


@contextlib.contextmanager
def _open_input(path: str):
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


class _TargetLock:
    """The target's flock for the whole restore: a server cannot start on it
    meanwhile and a running one is refused. If the restore fails, the target is
    left as it was: a directory created only to hold the lock is removed, and a
    pid file the lock created or rewrote is removed or put back."""

    def __init__(self, target: str):
        self.target = target
        self.ddir = dd.DataDir(target)
        self.created = not os.path.exists(target)
        self.pid_path = os.path.join(target, dd.PID_FILE)
        self.old_pid: bytes | None = None
        self.installed = False

    def __enter__(self) -> Self:
        if self.ddir.is_locked_by_other():
            raise RestoreError(_locked_message(self.target, ""))
        try:
            with open(self.pid_path, "rb") as f:
                self.old_pid = f.read()
        except FileNotFoundError:
            pass
        try:
            self.ddir.lock("restore")
        except dd.DataDirLocked as exc:
            raise RestoreError(_locked_message(self.target, str(exc))) from None
        return self

    def __exit__(self, *exc) -> None:
        if not self.installed:
            # Still holding the lock, so no server can be using this pid file.
            if self.old_pid is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.pid_path)
            elif os.path.isdir(self.target):
                # A new inode under the old name: unlock() truncates the one we
                # locked, which is then no longer in the directory.
                tmp = self.pid_path + ".restore-tmp"
                with open(tmp, "wb") as f:
                    f.write(self.old_pid)
                os.rename(tmp, self.pid_path)
        self.ddir.unlock()
        if self.created and not self.installed:
            _remove_lock_only_dir(self.target)


def _locked_message(target: str, detail: str) -> str:
    return (
        f"data directory {target} is held by a running RustyDB server (or another restore)"
        + (f" [{detail}]" if detail else "")
        + "; stop the server first (systemctl stop rustydb, or rusty-db-cli --command "
        '"SHUTDOWN;"). --force never replaces a running server\'s data'
    )


def _remove_lock_only_dir(path: str) -> None:
    # Only what the lock created: the pid file and the (then empty) directory.
    try:
        os.unlink(os.path.join(path, dd.PID_FILE))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _check_target(ddir: dd.DataDir, force: bool) -> None:
    if not ddir.is_empty() and not force:
        raise RestoreError(
            f"data directory {ddir.path} is not empty; restore into an empty or new directory, "
            "or pass --force to replace its contents (the old contents are removed only after "
            "the restore succeeded)"
        )


def _verify_before_writing(reader: BackupReader, threads: int, progress: ProgressFn | None) -> None:
    report_progress = (lambda done, total: progress("verify", done, total)) if progress else None
    reader.verify(report_progress, threads=threads)


def _make_staging(target: str, backup_id: str) -> str:
    staging = f"{target}{STAGING_MARK}{backup_id[:8]}"
    if os.path.lexists(staging):
        # We hold the target's lock, so no other restore to it is running: this
        # is what an interrupted restore left behind.
        if os.path.islink(staging) or not os.path.isdir(staging):
            os.unlink(staging)
        else:
            shutil.rmtree(staging)
    os.mkdir(staging, 0o700)
    os.chmod(staging, 0o700)  # whatever the umask
    os.mkdir(os.path.join(staging, dd.DATABASES_DIR), 0o700)
    os.chmod(os.path.join(staging, dd.DATABASES_DIR), 0o700)
    return staging


def _write_databases(
    reader: BackupReader,
    manifest: dict,
    staging: str,
    threads: int,
    progress: ProgressFn | None,
    fileops: _fileops.FileOps,
    *,
    sync: bool = True,
) -> int:
    total = sum(reader.entry(db["entry"]).raw_size for db in manifest["databases"])
    done = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for db in manifest["databases"]:
        path = os.path.join(staging, dd.DATABASES_DIR, db["name"] + ".sqlite")
        fd = fileops.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            # A file synced here goes to disk as it is written. One that
            # incrementals change next (sync=False: a --chain-dir restore) is
            # left to the single fsync after the last of them: written back
            # now, every page they change would be written twice (measured on
            # the benchmark's chain: 2.56 s with writeback as we go, 2.3 s without).
            behind = _fileops.WriteBehind(fileops, fd) if sync else None
            for chunk in reader.read_entry(db["entry"], threads=threads):
                fileops.write_all(fd, chunk)  # in pieces: see fileops.WRITE_PIECE
                if behind is not None:
                    behind.wrote(len(chunk))
                done += len(chunk)
                if progress is not None:
                    progress("restore", done, total)
            if sync:
                fileops.fsync(fd)
        finally:
            fileops.close(fd)
    return done


def _sync_databases(staging: str, fileops: _fileops.FileOps) -> None:
    """fsync every file in the staging directory's databases/ (and the directory)."""
    directory = os.path.join(staging, dd.DATABASES_DIR)
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            fileops.fsync_file(path)
    fileops.fsync_dir(directory)


def _check_integrity(staging: str, manifest: dict) -> list[str]:
    """SQLite's integrity check and the manifest's row counts, per database."""
    report = []
    for db in manifest["databases"]:
        name = db["name"]
        path = os.path.join(staging, dd.DATABASES_DIR, name + ".sqlite")
        conn = apsw.Connection(path)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if result != ["ok"]:
                raise RestoreError(f"database {name!r} failed SQLite's integrity check: {'; '.join(result[:5])}")
            present = set(engine_db.user_tables(conn))
            for table in db.get("tables", []):
                tname, rows = table["name"], table["rows"]
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
            unexpected = present - {t["name"] for t in db.get("tables", [])}
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


def _swap_into_place(staging: str, target: str, lock: _TargetLock, fileops: _fileops.FileOps) -> bool:
    """Rename the staging directory to ``target``; True if old contents were replaced."""
    parent = os.path.dirname(target)
    old = None
    if lock.ddir.is_empty():
        # Empty apart from the pid file we hold the lock through: the lock fd
        # stays valid after the unlink and is released by unlock().
        _remove_lock_only_dir(target)
    else:
        old = f"{target}{OLD_MARK}{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError as exc:
        if old is not None:
            os.rename(old, target)  # put the old contents back where they were
        raise RestoreError(f"could not move the restored data into {target}: {exc.strerror or exc}") from None
    fileops.fsync_dir(parent)
    if old is not None and _carry_over(old, target):
        shutil.rmtree(old, ignore_errors=True)
    return old is not None


# What a restore replaces. Anything else in a replaced data directory (an archive
# or backups kept inside it as the operations guide does, settings made with
# ALTER SYSTEM, the backup catalog) is moved into the restored one, never lost.
_REPLACED = frozenset({dd.VERSION_FILE, dd.CONTROL_FILE, dd.PID_FILE, dd.DATABASES_DIR, dd.WAL_DIR, "backup_tmp"})


def _carry_over(old: str, target: str) -> bool:
    """Move what the restore does not replace from ``old`` into ``target``.

    Returns False (and leaves ``old`` in place) if anything could not be moved.
    """
    ok = True
    for name in os.listdir(old):
        if name in _REPLACED or name.startswith(dd.PID_FILE):
            continue
        src, dst = os.path.join(old, name), os.path.join(target, name)
        if os.path.lexists(dst):
            continue  # the backup brought its own; the old one stays in `old`
        try:
            os.rename(src, dst)
        except OSError:
            ok = False
    if not ok or any(n not in _REPLACED for n in os.listdir(old)):
        return False
    return True


__all__ = ["RestoreError", "RestoreResult", "check_manifest", "resolve_read_key", "restore_full"]
