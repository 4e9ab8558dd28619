"""Restoring a backup's whole chain: the full backup, then its incrementals in order.

``find_chain`` finds the chain of the last backup among the backup files of a
directory, following parent ids (an incremental's parent, a differential's
full backup). ``restore_chain`` restores the full backup and applies the rest
on top of it in the staging directory, before the swap: a failing
incremental leaves no half-restored data directory.
"""

from __future__ import annotations

import functools
import os

from .. import fileops as _fileops
from ..backup.manifest import Manifest
from ..container.errors import BackupError
from ..container.format import BackupType
from ..container.reader import BackupReader
from .errors import RestoreError
from .full import read_key_for, restore_full
from .incremental import apply_incremental


def _headers(directory: str) -> dict[str, tuple[str, object]]:
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or name.endswith(".partial"):
            continue
        try:
            with open(path, "rb") as f:
                header = BackupReader(f).header
        except (BackupError, OSError):
            continue  # not a backup file
        out[header.backup_id] = (path, header)
    return out


def find_chain(last_path: str, directory: str) -> list[str]:
    """Paths from the full backup to ``last_path``, in the order they must be applied."""
    with open(last_path, "rb") as f:
        last = BackupReader(f).header
    known = _headers(directory)
    chain = [os.path.abspath(last_path)]
    header = last
    seen = {header.backup_id}
    while header.backup_type.needs_parent:
        parent_id = header.parent_id if header.backup_type is BackupType.INCREMENTAL else header.base_full_id
        if parent_id not in known:
            raise RestoreError(
                f"backup {header.backup_id} ({header.backup_type}) needs backup {parent_id}, "
                f"which is not in {directory}"
            )
        path, header = known[parent_id]
        if header.backup_id in seen:
            raise RestoreError(f"the backups in {directory} form a loop at {header.backup_id}")
        seen.add(header.backup_id)
        chain.append(os.path.abspath(path))
    chain.reverse()
    return chain


def restore_chain(
    last_path: str,
    chain_dir: str,
    data_dir: str,
    *,
    key_file: str | None = None,
    threads: int = 1,
    verify_encryption: bool = False,
    force: bool = False,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> list[str]:
    """Restore the chain ending at ``last_path`` into ``data_dir``; return the chain's paths."""
    chain = find_chain(last_path, chain_dir)
    full, rest = chain[0], chain[1:]
    restore_full(
        full,
        data_dir,
        key=read_key_for(full, key_file),
        threads=threads,
        verify_encryption=verify_encryption,
        integrity_check=False,
        force=force,
        post_install=functools.partial(_apply_incrementals, rest, key_file, threads, fileops),
        fileops=fileops,
    )
    return chain


def _apply_incrementals(
    paths: list[str], key_file: str | None, threads: int, fileops: _fileops.FileOps, staging: str, manifest: Manifest
) -> None:
    for path in paths:
        with open(path, "rb") as f:
            reader = BackupReader(f, key=read_key_for(path, key_file))
            # restore_full syncs the chain's files once, and discards the
            # staging directory if anything fails
            apply_incremental(reader, staging, threads=threads, staging=True, fileops=fileops)
