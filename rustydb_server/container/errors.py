"""What goes wrong with a backup file: the errors the container raises."""

from __future__ import annotations


class BackupError(Exception):
    """Base class for backup container errors."""


class BackupCorruptError(BackupError):
    """The file is damaged, truncated or tampered with; names what and where."""

    def __init__(
        self,
        backup_id: str | None,
        reason: str,
        *,
        entry: str | None = None,
        chunk: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.backup_id = backup_id
        self.reason = reason
        self.entry = entry
        self.chunk = chunk
        self.offset = offset
        where = [f"backup {backup_id or '(unknown id)'}"]
        if entry is not None:
            where.append(f"entry {entry!r}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if offset is not None:
            where.append(f"at byte {offset}")
        super().__init__(f"{', '.join(where)}: {reason}")


class UnsupportedFormatError(BackupError):
    """A backup in a format this release cannot read (written by a newer one):
    not damaged, and not to be given up on."""


class EntryNotFoundError(BackupError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class UnsafeEntryNameError(BackupError, ValueError):
    pass
