"""Reading a backup file's header, for the verbs that need only its metadata:
--info, --query, and --base-backup of an incremental."""

from __future__ import annotations

from ...container.errors import BackupError
from ...container.format import BackupHeader
from ...container.reader import BackupReader


class UnreadableBackup(Exception):
    """The file cannot be read or is not a usable backup; the message says which."""


def read_file_header(path: str) -> BackupHeader:
    try:
        with open(path, "rb") as f:
            return BackupReader(f).header
    except OSError as exc:
        raise UnreadableBackup(f"cannot read backup {path}: {exc.strerror or exc}") from None
    except BackupError as exc:
        raise UnreadableBackup(f"{path} is not a usable backup: {exc}") from None
