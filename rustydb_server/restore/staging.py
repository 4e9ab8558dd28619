"""Where every restore writes: the target's lock, a staging directory, the swap.

A restore never writes into the data directory it restores. It

1. takes the target's flock (``TargetLock``): a running server holds it, so it
   is refused, and a second restore is kept out the same way; the target must
   be empty, or hold a (stopped) server's data directory, which is kept aside
   as ``<target>.pre-restore-<time>``, unless ``force`` (``check_target``);
2. builds the new data directory in a staging directory next to the target
   (same filesystem, 0700; ``TargetLock.stage``);
3. swaps it into place with renames (``Staging.swap``). The old contents are
   set aside and what is not part of a data directory (archives or backups
   kept inside it, ALTER SYSTEM settings, the backup catalog) is carried over
   into the new one; the rest (the old databases and WAL) stays in
   ``<target>.pre-restore-<time>``, or with ``force`` is removed.

Any failure before the swap removes the staging directory and leaves the
target as it was, so no half-written directory a server would start on is
ever left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Self

from .. import datadir as dd
from .. import fileops as _fileops
from ..roles import ROLES_FILE_NAME
from .errors import RestoreError

STAGING_MARK = dd.RESTORE_STAGING_MARK
OLD_MARK = dd.RESTORE_OLD_MARK
PRE_RESTORE_MARK = dd.RESTORE_KEPT_MARK

# What a restore replaces. Anything else in a replaced data directory is moved
# into the restored one, never lost.
_REPLACED = frozenset({dd.VERSION_FILE, dd.CONTROL_FILE, dd.PID_FILE, dd.DATABASES_DIR, dd.WAL_DIR, "backup_tmp"})
# What a restore itself writes into its stage: a stage holding nothing else
# may be its own half-built work (``_is_own_stage`` decides).
_STAGED = _REPLACED | {ROLES_FILE_NAME}


class TargetLock:
    """The target's flock for the whole restore: a server cannot start on it
    meanwhile and a running one is refused. If the restore fails, the target is
    left as it was: a directory created only to hold the lock is removed, and a
    pid file the lock created or rewrote is removed or put back."""

    def __init__(self, target: str):
        self.target = os.path.abspath(target)
        self.ddir = dd.DataDir(self.target)
        self.created = not os.path.exists(self.target)
        self.pid_path = os.path.join(self.target, dd.PID_FILE)
        self.old_pid: bytes | None = None
        self.installed = False
        # Where the data directory found in the target is kept (check_target).
        self.keep_as: str | None = None

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

    def check_target(self, force: bool) -> None:
        """Decide what becomes of the target's contents (replaced only by the swap).

        An empty target is simply filled. A stopped server's data directory is
        kept, renamed to ``<target>.pre-restore-<time>`` (``keep_as``), unless
        ``force`` discards it. Anything else that is not empty is refused
        unless ``force``: it is not ours to move.
        """
        if self.ddir.is_empty() or force:
            return
        if not self.ddir.is_initialized():
            raise RestoreError(
                f"{self.ddir.path} is not empty and holds no RustyDB data directory; restore into an "
                "empty or new directory, or pass --force to replace its contents (files that are not "
                "part of a data directory are carried over into the restored one)"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"{self.target}{PRE_RESTORE_MARK}{stamp}", 1
        while os.path.lexists(name):
            n += 1
            name = f"{self.target}{PRE_RESTORE_MARK}{stamp}-{n}"
        self.keep_as = name

    def stage(self, backup_id: str, fileops: _fileops.FileOps = _fileops.REAL) -> Staging:
        """A fresh staging directory (with its ``databases/``) for the backup ``backup_id``."""
        path = f"{self.target}{STAGING_MARK}{backup_id[:8]}"
        if os.path.lexists(path):
            # We hold the target's lock, so no other restore to it is running: this
            # is what an interrupted restore left behind.
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            elif not all(map(_is_staged_name, os.listdir(path))) or not _is_own_stage(path, backup_id):
                # Not only a half-built stage: a restore stopped right after its
                # exchange left the old contents here, some not carried over yet.
                os.rename(path, f"{self.target}{OLD_MARK}{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}")
            else:
                shutil.rmtree(path)
        for d in (path, os.path.join(path, dd.DATABASES_DIR)):
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)  # whatever the umask
        return Staging(path, self, fileops)


class Staging:
    """A staging directory; removed on leaving its ``with`` block unless swapped in."""

    def __init__(self, path: str, lock: TargetLock, fileops: _fileops.FileOps):
        self.path = path
        self.lock = lock
        self.fileops = fileops
        self.swapped = False
        self.kept: str | None = None  # where the old data directory was kept, if it was

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if not self.swapped:
            shutil.rmtree(self.path, ignore_errors=True)

    def swap(self) -> bool:
        """Move the staging directory to the target; True if old contents were replaced.

        Replacing contents is one atomic exchange where the system has it
        (Linux ``RENAME_EXCHANGE``): a crash leaves the target holding either
        the old data or the new, never nothing. Elsewhere it is two renames,
        and a crash between them leaves the target missing with both
        directories beside it, which the server then refuses to start on
        (DataDir.initialize) instead of creating an empty one.

        The old contents end in ``lock.keep_as`` (a data directory kept, named
        in ``kept``) or, with ``force``, a ``.old-`` directory removed once
        what is not part of a data directory has been carried over.
        """
        target = self.lock.target
        keep = self.lock.keep_as
        old = None
        if self.lock.ddir.is_empty():
            # Empty apart from the pid file we hold the lock through: the lock fd
            # stays valid after the unlink and is released by unlock().
            _remove_lock_only_dir(target)
        else:
            old = keep or f"{target}{OLD_MARK}{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
            try:
                self.fileops.exchange(self.path, target)
            except OSError:
                self.fileops.rename(target, old)
            else:
                self.swapped = self.lock.installed = True
                try:  # the old contents, under their own name
                    self.fileops.rename(self.path, old)
                except OSError:
                    old = self.path  # kept where the exchange put them
                self.fileops.fsync_dir(os.path.dirname(target))
                self._finish(old, target, keep)
                return True
        try:
            self.fileops.rename(self.path, target)
        except OSError as exc:
            if old is not None:
                self.fileops.rename(old, target)  # put the old contents back where they were
            raise RestoreError(f"could not move the restored data into {target}: {exc.strerror or exc}") from None
        self.swapped = self.lock.installed = True
        self.fileops.fsync_dir(os.path.dirname(target))
        if old is not None:
            self._finish(old, target, keep)
        return old is not None

    def _finish(self, old: str, target: str, keep: str | None) -> None:
        """Carry over what is not part of a data directory; keep or remove the rest."""
        carried = _carry_over(old, target)
        if keep is not None:
            self.kept = old
            self.fileops.fsync_dir(os.path.dirname(target))
        elif carried:
            shutil.rmtree(old, ignore_errors=True)


def _locked_message(target: str, detail: str) -> str:
    return (
        f"data directory {target} is held by a running RustyDB server (or another restore)"
        + (f" [{detail}]" if detail else "")
        + "; stop the server first (systemctl stop rustydb, or rusty-db-cli --command "
        '"SHUTDOWN;"). --force never replaces a running server\'s data'
    )


def _is_own_stage(path: str, backup_id: str) -> bool:
    """Whether a leftover staging directory is only a restore's own work.

    A restore killed right after its exchange leaves the old data directory
    under the stage's name: that one (a control file that is not a restore's
    of this backup) is set aside, never removed.
    """
    try:
        control = dd.DataDir(path).read_control()
    except dd.DataDirError:
        return not os.path.exists(os.path.join(path, dd.CONTROL_FILE))
    if control.state in ("running", "shutdown"):
        return False
    # A stage is named after the backup restored first; a chain's incrementals
    # then record the last one as last_backup, the full one stays.
    ids = [str((b or {}).get("backup_id", "")) for b in (control.last_backup, control.last_full_backup)]
    return any(i.startswith(backup_id[:8]) for i in ids if i)


def _is_staged_name(name: str) -> bool:
    """Whether ``name`` is one a restore writes into its stage, or the temporary
    name (fileops' ``<name>.tmp.<pid>``) of one it was writing when killed."""
    base, sep, pid = name.rpartition(".tmp.")
    return name in _STAGED or (bool(sep) and pid.isdigit() and base in _STAGED)


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
