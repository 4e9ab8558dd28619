"""Restoring a backup's whole chain: the full backup, then its incrementals in order.

``find_chain`` finds the chain of the last backup among the backup files of
one or more directories, following parent ids (an incremental's parent, a
differential's full backup); a parent in none of them is looked for where the
backup catalog of the server's data directory records it (a CLI backup's
catalog entry holds the path it was written to). ``restore_chain`` restores the full backup and applies the rest
on top of it in the staging directory, before the swap: a failing
incremental leaves no half-restored data directory.
"""

from __future__ import annotations

import functools
import json
import os

from .. import fileops as _fileops
from ..backup.catalog import CATALOG_FILE, known_path
from ..backup.manifest import Manifest
from ..container.errors import BackupError
from ..container.format import BackupType
from ..container.reader import BackupReader
from .errors import RestoreError
from .full import open_backup, read_key_for, restore_full
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


def find_chain(last_path: str, directories: str | list[str], data_dir: str | None = None) -> list[str]:
    """Paths from the full backup to ``last_path``, in the order they must be applied.

    Parents are found among the backup files of ``directories``, else where the
    backup catalog in ``data_dir`` (a stopped server's) says they were written.
    """
    if isinstance(directories, str):
        directories = [directories]
    with open(last_path, "rb") as f:
        last = BackupReader(f).header
    known: dict[str, tuple[str, object]] = {}
    for directory in directories:
        for backup_id, found in _headers(directory).items():
            known.setdefault(backup_id, found)
    recorded = _catalog_locations(data_dir)
    where = ", ".join(directories)
    chain = [os.path.abspath(last_path)]
    header = last
    seen = {header.backup_id}
    while header.backup_type.needs_parent:
        parent_id = header.parent_id if header.backup_type is BackupType.INCREMENTAL else header.base_full_id
        found = known.get(parent_id) or _recorded_file(recorded.get(parent_id), parent_id)
        if found is None:
            also = (
                f", nor at {recorded[parent_id]} where the backup catalog recorded it" if parent_id in recorded else ""
            )
            raise RestoreError(
                f"backup {header.backup_id} ({header.backup_type}) needs backup {parent_id}, "
                f"which is not in {where}{also}; pass the directory holding it with --chain-dir "
                "(several may be given)"
            )
        path, header = found
        if header.backup_id in seen:
            raise RestoreError(f"the backups in {where} form a loop at {header.backup_id}")
        seen.add(header.backup_id)
        chain.append(os.path.abspath(path))
    chain.reverse()
    return chain


def _catalog_locations(data_dir: str | None) -> dict[str, str]:
    """backup id -> recorded file path, from a data directory's backup catalog (if any)."""
    if not data_dir:
        return {}
    try:
        with open(os.path.join(data_dir, CATALOG_FILE), "rb") as f:
            data = json.loads(f.read())
        entries = data["backups"]
        return {
            e["backup_id"]: e["location"]
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("backup_id"), str)
            and known_path(e.get("location"))
            and e.get("status") == "completed"
        }
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return {}  # no catalog, or not one: the directories are all there is


def _recorded_file(path: str | None, backup_id: str) -> tuple[str, object] | None:
    """The backup file the catalog recorded, if it is there and is that backup."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            header = BackupReader(f).header
    except (BackupError, OSError):
        return None
    return (path, header) if header.backup_id == backup_id else None


def restore_chain(
    last_path: str,
    chain_dir: str | list[str],
    data_dir: str,
    *,
    key_file: str | None = None,
    threads: int = 1,
    verify_encryption: bool = False,
    force: bool = False,
    fileops: _fileops.FileOps = _fileops.REAL,
    kept: list | None = None,
) -> list[str]:
    """Restore the chain ending at ``last_path`` into ``data_dir``; return the chain's
    paths (and, in ``kept``, where a data directory found there was kept)."""
    chain = find_chain(last_path, chain_dir, data_dir)
    restore_members(
        chain,
        data_dir,
        key_file=key_file,
        threads=threads,
        verify_encryption=verify_encryption,
        force=force,
        fileops=fileops,
        kept=kept,
    )
    return chain


def restore_members(
    chain: list,
    data_dir: str,
    *,
    key_file: str | None = None,
    threads: int = 1,
    verify_encryption: bool = False,
    force: bool = False,
    fileops: _fileops.FileOps = _fileops.REAL,
    kept: list | None = None,
) -> None:
    """Restore ``chain`` (the full backup, then the backups to apply on it, in order) into
    ``data_dir``. A member is a file path or an object whose ``open()`` gives the backup
    (one read in place from a repository, or one still arriving: restore/from_repository.py)."""
    full, rest = chain[0], chain[1:]
    result = restore_full(
        full,
        data_dir,
        key=read_key_for(full, key_file),
        threads=threads,
        verify_encryption=verify_encryption,
        integrity_check=False,
        force=force,
        post_install=functools.partial(_apply_incrementals, rest, key_file, threads, fileops),
        fileops=fileops,
        # A full backup streamed from an object store is written at the download's pace: it
        # goes to disk as it comes in, while the disk has little else to do, and only what
        # the incrementals change is written twice (left whole to the one fsync after them, a
        # 1 GB full made that fsync 0.43 s of a 3.4 s chain restore from a bucket). Read from
        # a local file, the restore goes at the disk's pace, and writing twice the pages an
        # incremental rewrites all over the file cost more than it saved (docs/internals.md).
        write_behind=not isinstance(full, str),
    )
    if kept is not None:
        kept.append(result.kept_old)


def _apply_incrementals(
    paths: list, key_file: str | None, threads: int, fileops: _fileops.FileOps, staging: str, manifest: Manifest
) -> None:
    for path in paths:
        with open_backup(path) as f:
            reader = BackupReader(f, key=read_key_for(path, key_file))
            # restore_full syncs the chain's files once, and discards the
            # staging directory if anything fails
            apply_incremental(reader, staging, threads=threads, staging=True, fileops=fileops)
