"""Finding a backup's chain (full, then incrementals in order) among backup files."""

from __future__ import annotations

import os

from ..backup.container import BackupError, BackupReader
from .errors import RestoreError


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
    while header.backup_type in ("incremental", "differential"):
        parent_id = header.parent_id if header.backup_type == "incremental" else (header.base_full_id)
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
