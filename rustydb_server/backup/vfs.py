"""Query a database inside a backup without restoring it: a read-only APSW VFS.

SQLite asks the VFS for pages; the VFS reads them from an EntryReader, which
decodes (decrypts, decompresses, checks) only the chunks those pages live in.
A point query on a big table therefore touches a handful of chunks, not the
whole entry.

The database image in a backup is a copy of a WAL-mode database with every
frame already in it (SQLite's backup API wrote it), and no -wal file belongs
to it. Opened with ``immutable=1`` SQLite takes no locks, never looks for a
journal or WAL file, and reads the image as it is. Writes, truncation and
sync are refused, so nothing can ever be written into a backup.
"""

from __future__ import annotations

import itertools
import threading

import apsw

from ..container.errors import EntryNotFoundError
from ..container.reader import DEFAULT_CACHE_CHUNKS, BackupReader, EntryReader

VFS_NAME = "rustydb-backup"


def entry_name(database_name: str) -> str:
    """The container entry holding a database's pages (as snapshot.py writes it)."""
    return f"databases/{database_name}.sqlite"


# Names of backup entry files in the VFS; never real paths.
PATH_PREFIX = "/rustydb-backup/"
SECTOR_SIZE = 4096


class BackupQueryError(Exception):
    """A backup cannot be opened for querying; the message says why and what to do."""


def _refuse_write(what: str):
    return apsw.ReadOnlyError(f"{what}: a backup is read-only; restore it to change its data")


class BackupEntryFile:
    """One open database file of the VFS: reads come from an EntryReader."""

    def __init__(self, reader: EntryReader, on_close) -> None:
        self._reader = reader
        self._on_close = on_close

    def xRead(self, amount: int, offset: int) -> bytes:
        # A short result at the end of the image is a short read: SQLite zero-fills.
        return self._reader.read(offset, amount)

    def xFileSize(self) -> int:
        return self._reader.size

    def xWrite(self, data, offset: int) -> None:
        raise _refuse_write("write")

    def xTruncate(self, size: int) -> None:
        raise _refuse_write("truncate")

    def xSync(self, flags: int) -> None:
        raise _refuse_write("sync")

    # Nothing else can change the image, so locking has nothing to protect.
    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False  # not handled: SQLite uses its defaults

    def xSectorSize(self) -> int:
        return SECTOR_SIZE

    def xDeviceCharacteristics(self) -> int:
        return apsw.mapping_device_characteristics["SQLITE_IOCAP_IMMUTABLE"]

    def xClose(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


class BackupVFS(apsw.VFS):
    """Serves registered backup entries read-only; temporary files (sorts,
    temp tables) go to the default VFS."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, base="")
        self._files: dict[str, EntryReader] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._opens: dict[str, int] = {}  # open handles per path: another connection may attach it

    def register(self, reader: EntryReader) -> str:
        """A fresh file name under which the VFS serves ``reader``."""
        # A number only: names from a backup never reach a URI or a path.
        path = f"{PATH_PREFIX}{next(self._ids)}.sqlite"
        with self._lock:
            self._files[path] = reader
        return path

    def unregister(self, path: str) -> EntryReader | None:
        with self._lock:
            return self._files.pop(path, None)

    def xOpen(self, name, flags):
        if name is None:  # an anonymous temporary file
            return super().xOpen(name, flags)
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        with self._lock:
            reader = self._files.get(path)
            if reader is not None:
                self._opens[path] = self._opens.get(path, 0) + 1
        if reader is None:
            # Journals and WAL files of a backup image do not exist; nor does anything else.
            raise apsw.CantOpenError(f"{path}: no such file in the backup VFS")
        flags[1] = apsw.SQLITE_OPEN_READONLY
        return BackupEntryFile(reader, lambda: self._close(path))

    def _close(self, path: str) -> None:
        """The last handle on ``path`` closed: the entry is served no more."""
        with self._lock:
            self._opens[path] -= 1
            if self._opens[path]:
                return
            del self._opens[path]
        reader = self.unregister(path)
        if reader is not None:
            reader.close()

    def xAccess(self, pathname: str, flags: int) -> bool:
        if pathname.startswith(PATH_PREFIX):
            with self._lock:
                known = pathname in self._files
            return known and flags != apsw.mapping_access["SQLITE_ACCESS_READWRITE"]
        return super().xAccess(pathname, flags)

    def xFullPathname(self, name: str) -> str:
        if name.startswith(PATH_PREFIX):
            return name  # not a real path: keep it exactly as registered
        return super().xFullPathname(name)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.startswith(PATH_PREFIX):
            raise _refuse_write("delete")
        super().xDelete(filename, syncdir)


_vfs: BackupVFS | None = None
_vfs_lock = threading.Lock()


def backup_vfs() -> BackupVFS:
    """The process-wide VFS, registered with SQLite on first use."""
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            _vfs = BackupVFS()
        return _vfs


class BackupConnection(apsw.Connection):
    """A read-only connection to a database inside a backup.

    ``entry_reader`` shows how much of the backup was decoded
    (``entry_reader.chunks_decoded`` of ``entry_reader.chunk_count``).
    """

    entry_reader: EntryReader
    database_name: str


def open_backup_database(
    path, database_name: str, key=None, *, cache_chunks: int = DEFAULT_CACHE_CHUNKS
) -> BackupConnection:
    """Open database ``database_name`` of the backup file at ``path`` read-only.

    ``path`` may also be an object whose ``open()`` gives a seekable file (a
    backup in a repository, read by byte ranges: restore/from_repository.py).

    ``key`` is a KeySource for an encrypted backup. Raises BackupQueryError when
    the backup holds no such database (naming the ones it holds); damage raises
    BackupCorruptError naming entry and chunk, when opening or when a query
    reads the damaged chunk.
    """
    vfs = backup_vfs()
    f = open(path, "rb") if isinstance(path, str) else path.open()
    try:
        reader = BackupReader(f, key=key)
        name = entry_name(database_name)
        try:
            entry = EntryReader(reader, name, cache_chunks=cache_chunks, owned_file=f)
        except EntryNotFoundError:
            held = [d.get("name") for d in reader.header.databases]
            raise BackupQueryError(
                f"backup {reader.header.backup_id} has no database {database_name!r}; "
                f"it holds: {', '.join(held) or '(none)'}. Pass one of those names"
            ) from None
    except BaseException:
        f.close()
        raise
    vpath = vfs.register(entry)
    try:
        conn = BackupConnection(
            f"file:{vpath}?immutable=1",
            flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
            vfs=VFS_NAME,
        )
    except BaseException:
        vfs.unregister(vpath)
        entry.close()
        raise
    conn.entry_reader = entry
    conn.database_name = database_name
    return conn
