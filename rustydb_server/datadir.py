"""The data directory: its layout, the control file and the lock that keeps one owner.

Layout (see docs/internals.md):

    RUSTYDB_VERSION          on-disk format version
    control                  msgpack with a crc, replaced atomically
    rustydb.auto.toml        ALTER SYSTEM settings
    rustydb.pid              pid and ports; an flock on it keeps a second owner out
    backup_schedule.json     which scheduled backup runs are dealt with (schedule/scheduler.py)
    databases/<name>.sqlite  one SQLite file per database
    wal/                     WAL segments, archive_status/, timeline history files
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import secrets
import struct

import msgpack

from rustydb_server.crc import crc32c

from . import fileops as _fileops

FORMAT_VERSION = 1
VERSION_FILE = "RUSTYDB_VERSION"
CONTROL_FILE = "control"
PID_FILE = "rustydb.pid"
# Beside a data directory D, a restore builds D.restoring-<id> and, replacing
# D's contents, moves them to D.old-<time>-<pid> until the swap is done.
RESTORE_STAGING_MARK = ".restoring-"
RESTORE_OLD_MARK = ".old-"
# A restore over a stopped server's data directory D keeps it as D.pre-restore-<time>.
RESTORE_KEPT_MARK = ".pre-restore-"
DATABASES_DIR = "databases"
WAL_DIR = "wal"
ARCHIVE_STATUS_DIR = os.path.join("wal", "archive_status")
DEFAULT_DATABASE = "rustydb"

_CONTROL_MAGIC = b"RDBCTL01"
# Matched whole (fullmatch): with re.match, "$" would also take a name ending in a newline.
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class DataDirError(Exception):
    """The data directory cannot be used; the message says why and what to do."""


class DataDirLocked(DataDirError):
    pass


#: Control states whose databases are whole. A restore writes its own state
#: (e.g. "applying-incremental") while it changes databases in place, so a
#: directory it left half-done is never started on or read from.
USABLE_STATES = ("running", "shutdown", "restored")


def check_usable(control: Control, path: str) -> None:
    if control.state not in USABLE_STATES:
        raise DataDirError(
            f"{path} is not usable: a restore into it did not finish (state "
            f"{control.state!r}), so its databases may be half-changed; restore it again "
            "from the backups"
        )


@dataclasses.dataclass
class Control:
    system_id: int
    timeline: int
    segment_size: int
    state: str = "shutdown"  # USABLE_STATES, or a restore's own while it works
    checkpoint_lsn: int = 0
    redo_lsn: int = 0
    next_txid: int = 1
    last_commit_time_us: int = 0
    last_backup: dict | None = None  # {"backup_id", "type", "end_lsn", "timeline"}
    last_full_backup: dict | None = None
    # Set by a restore that kept the data directory it replaced: where it is.
    previous_data_dir: str | None = None
    # The databases a SQLite checkpoint is copying frames into right now
    # (written, fsynced, before it starts and again after it ends). Recovery
    # keeps their SQLite -wal (every frame in it is durable, SQLite redoes the
    # copy) and discards every other database's -wal and -shm.
    checkpointing: list = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        body = msgpack.packb(dataclasses.asdict(self), use_bin_type=True)
        return _CONTROL_MAGIC + struct.pack(">II", len(body), crc32c(body)) + body

    @classmethod
    def decode(cls, data: bytes, path: str) -> Control:
        if len(data) < 16 or data[:8] != _CONTROL_MAGIC:
            raise DataDirError(f"{path}: not a RustyDB control file (bad magic)")
        length, crc = struct.unpack(">II", data[8:16])
        body = data[16 : 16 + length]
        if len(body) != length or crc32c(body) != crc:
            raise DataDirError(
                f"{path}: control file is damaged (checksum mismatch); restore the data directory from a backup"
            )
        fields = msgpack.unpackb(body, raw=False)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})


def validate_database_name(name: str) -> str:
    if not isinstance(name, str) or not _DB_NAME.fullmatch(name):
        raise DataDirError(
            f"invalid database name {name!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return name


class DataDir:
    """Paths and small durable operations on one data directory."""

    def __init__(self, path: str, fileops: _fileops.FileOps = _fileops.REAL):
        self.path = os.path.abspath(path)
        self.fileops = fileops
        self._lock_fd: int | None = None

    # -- paths
    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def wal_dir(self) -> str:
        return self.join(WAL_DIR)

    @property
    def databases_dir(self) -> str:
        return self.join(DATABASES_DIR)

    def database_path(self, name: str) -> str:
        return self.join(DATABASES_DIR, validate_database_name(name) + ".sqlite")

    def list_databases(self) -> list[str]:
        try:
            names = os.listdir(self.databases_dir)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if n.endswith(".sqlite") and _DB_NAME.fullmatch(n[: -len(".sqlite")]):
                out.append(n[: -len(".sqlite")])
        return sorted(out)

    # -- state
    def is_initialized(self) -> bool:
        return os.path.exists(self.join(VERSION_FILE)) and os.path.exists(self.join(CONTROL_FILE))

    def is_empty(self) -> bool:
        return not os.path.exists(self.path) or not (set(os.listdir(self.path)) - {PID_FILE})

    def check_version(self) -> None:
        try:
            with open(self.join(VERSION_FILE)) as f:
                version = int(f.read().strip())
        except (OSError, ValueError) as e:
            raise DataDirError(f"{self.join(VERSION_FILE)}: cannot read format version: {e}") from None
        if version != FORMAT_VERSION:
            raise DataDirError(
                f"{self.path}: on-disk format version {version}, this server reads version {FORMAT_VERSION}"
            )

    def read_control(self) -> Control:
        path = self.join(CONTROL_FILE)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataDirError(f"{path}: cannot read control file: {e.strerror}") from None
        return Control.decode(data, path)

    def write_control(self, control: Control) -> None:
        self.fileops.write_file_atomic(self.join(CONTROL_FILE), control.encode())

    def create_layout(self) -> None:
        """Create the directories of a data directory, 0700 whatever the umask."""
        for d in (self.path, self.databases_dir, self.wal_dir, self.join(ARCHIVE_STATUS_DIR)):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)

    def interrupted_restore(self) -> list[str]:
        """What a restore into this directory left beside it if it was stopped
        before it finished: its staging directory, or the old contents it had
        moved aside. Empty when no restore was interrupted."""
        parent, base = os.path.split(self.path.rstrip(os.sep))
        try:
            names = os.listdir(parent or ".")
        except OSError:
            return []
        marks = (base + RESTORE_STAGING_MARK, base + RESTORE_OLD_MARK, base + RESTORE_KEPT_MARK)
        return sorted(os.path.join(parent, n) for n in names if n.startswith(marks))

    def initialize(self, segment_size: int, timeline: int = 1) -> Control:
        """Turn an empty directory into a data directory (control, version, layout).

        Refused where a restore into it was interrupted: a fresh, empty data
        directory would hide the data that restore had moved aside.
        """
        left = self.interrupted_restore()
        if left:
            raise DataDirError(
                f"{self.path} holds no data directory, but a restore into it did not finish or set "
                f"data aside: {', '.join(left)} {'is' if len(left) == 1 else 'are'} left beside it "
                f"(*{RESTORE_OLD_MARK}* and *{RESTORE_KEPT_MARK}*: data from before a restore; "
                f"*{RESTORE_STAGING_MARK}*: the restore's own). Run the restore again, or move the one "
                f"you want back to {self.path}; remove them all to start a new, empty data directory"
            )
        leftovers = set(os.listdir(self.path)) - {PID_FILE} if os.path.exists(self.path) else ()
        if leftovers:
            raise DataDirError(
                f"{self.path} is not empty and holds no RustyDB data directory; "
                "point --data-dir at an empty or new directory"
            )
        self.create_layout()
        control = Control(system_id=secrets.randbits(63) or 1, timeline=timeline, segment_size=segment_size)
        self.fileops.write_file_atomic(self.join(VERSION_FILE), f"{FORMAT_VERSION}\n".encode())
        self.write_control(control)
        return control

    # -- ownership
    def lock(self, what: str = "server") -> None:
        """Take the flock on rustydb.pid; raise DataDirLocked naming the holder."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except FileExistsError:
            raise DataDirError(f"{self.path} exists and is not a directory; choose another data directory") from None
        except OSError as e:
            raise DataDirError(
                f"cannot create data directory {self.path}: {e.strerror}; create it yourself or choose another one"
            ) from None
        path = self.join(PID_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip().splitlines()[0]
            except (OSError, IndexError):
                pass
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DataDirLocked(
                f"data directory {self.path} is in use by another RustyDB process{who}; "
                f"stop it first, or use a different --data-dir"
            ) from None
        try:
            before = os.pread(fd, 200, 0).decode(errors="replace").splitlines()
        except OSError:
            before = []
        self._lock_fd = fd
        if what == "server" and before[1:2] == ["restore"] and self.is_empty():
            # A restore that never finished (kill -9, power loss) leaves only its
            # lock behind; starting here would make a new, empty database where
            # the operator expects the restored one.
            os.close(fd)  # not unlock(): the marker stays for the next attempt too
            self._lock_fd = None
            raise DataDirError(
                f"data directory {self.path} is the target of a restore that did not finish "
                f"(rusty-db-restore, pid {before[0]}); run the restore again, or remove the "
                "directory to start a new, empty server there"
            )
        self.write_pid(what)

    def write_pid(self, what: str, **info) -> None:
        if self._lock_fd is None:
            return
        text = f"{os.getpid()}\n{what}\n" + "".join(f"{k}={v}\n" for k, v in info.items())
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, text.encode(), 0)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked_by_other(self) -> bool:
        path = self.join(PID_FILE)
        if not os.path.exists(path):
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
