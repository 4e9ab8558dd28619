"""One RustyDB database = one SQLite file, opened the same way everywhere.

Each file carries a small internal table, ``__rustydb_state``, written in the
same SQLite transaction as the data it describes: ``applied_lsn`` is the LSN
of the last WAL record whose effects are in this file, so crash recovery
replays exactly the records above it (and each one at most once).
"""

from __future__ import annotations

import os
import struct
import time

import apsw

from ..fileops import REAL

STATE_TABLE = "__rustydb_state"
# The server names it with its schema everywhere: a client's temporary table
# or view of the same name would otherwise shadow it.
BUSY_TIMEOUT_MS = 30_000


class ReplayError(Exception):
    """A WAL record could not be applied; the database is left as it was."""


def open_connection(
    path: str, *, create: bool = False, server: bool = False, synchronous: str = "NORMAL", vfs: str | None = None
) -> apsw.Connection:
    """Open a database file in WAL mode.

    ``server``: a connection of the running server to one of its live
    databases. SQLite then never checkpoints by itself, neither when its WAL
    grows (``wal_autocheckpoint=0``) nor when the last connection closes: a
    session commits in SQLite before its WAL record is flushed, so only the
    engine, which flushes first, may let frames into the database file (see
    ``Engine.checkpoint_database``). ``synchronous``: sessions commit with
    ``OFF`` (our WAL is what makes a commit durable), the engine's checkpoint
    connection uses ``NORMAL`` (SQLite syncs its WAL before copying and the
    database file after). ``vfs``: the SQLite VFS (a power-cut simulation
    in tests; ``FileOps.sqlite_vfs``).
    """
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI
    if create:
        flags |= apsw.SQLITE_OPEN_CREATE
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    conn = apsw.Connection(path, flags=flags, vfs=vfs) if vfs else apsw.Connection(path, flags=flags)
    if server:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    _set_wal_mode(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if server:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    else:
        # Outside the running server (restores, PITR, recovery of durable
        # records) SQLite may checkpoint as it likes.
        conn.execute("PRAGMA wal_autocheckpoint=10000")
    return conn


def _set_wal_mode(conn: apsw.Connection) -> None:
    """journal_mode=WAL, waiting out a connection opening the same file at the
    same moment: SQLite answers SQLITE_BUSY at once, without its busy handler,
    while another connection rebuilds the WAL index, so two sessions opening a
    database together could fail one of them."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except apsw.BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def open_client_connection(path: str, vfs: str | None = None) -> apsw.Connection:
    """A client session's connection: a server connection that commits
    without syncing (synchronous=OFF: the engine's WAL flush makes a commit
    durable), then confined."""
    conn = open_connection(path, server=True, synchronous="OFF", vfs=vfs)
    confine(conn)
    return conn


def confine(conn: apsw.Connection) -> None:
    """Close the ways a client's SQL could reach past its database file.

    The authorizer (``authorizer.decide``) refuses each of them by name; these
    are SQLite's own switches behind it: defensive mode (no writable_schema,
    no journal_mode=OFF, no writes to shadow tables or a corrupting schema
    change), no extension loading at all, the schema trusted to call only
    functions without side effects, and no attached database (the server's
    VACUUM raises the limit to one for its scratch database while it runs).
    """
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
    conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
    conn.enable_load_extension(False)
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)


def create_database_file(path: str, lsn: int) -> None:
    """Create a new SQLite file with its state table, durable before return."""
    tmp = path + ".creating"
    for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    conn = apsw.Connection(tmp, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            f"CREATE TABLE {STATE_TABLE}(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
            f"INSERT INTO {STATE_TABLE} VALUES('applied_lsn', ?), ('created_lsn', ?),"
            "('last_txid', 0), ('last_commit_time_us', 0)",
            (lsn, lsn),
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    REAL.fsync_file(tmp)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    REAL.fsync_dir(os.path.dirname(path))


def remove_database_files(path: str) -> None:
    for p in (path, path + "-wal", path + "-shm"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_state(conn: apsw.Connection) -> dict:
    return dict(conn.execute(f"SELECT key, value FROM main.{STATE_TABLE}").fetchall())


_WRITE_STATE = (
    f"UPDATE main.{STATE_TABLE} SET value = CASE key WHEN 'applied_lsn' THEN ?1 "
    "WHEN 'last_txid' THEN coalesce(?2, value) "
    "ELSE coalesce(?3, value) END "
    "WHERE key IN ('applied_lsn', 'last_txid', 'last_commit_time_us')"
)


def write_state(conn: apsw.Connection, lsn: int, txid: int | None, commit_time_us: int | None):
    """Record, inside the caller's transaction, that the record at ``lsn`` is applied."""
    conn.execute(_WRITE_STATE, (lsn, txid, commit_time_us))


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes, safe for any name (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def user_tables(conn: apsw.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' "
        f"AND name != '{STATE_TABLE}' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


# SQLite's wal-index (the -shm file), as https://www.sqlite.org/walformat.html
# lays it out, in the machine's byte order: two copies of a 48-byte header
# (iVersion, unused, iChange, isInit, bigEndCksum, szPage, mxFrame, ...), then
# the checkpoint information, whose first field is nBackfill.
_WAL_INDEX_VERSION = 3007000
_WAL_HEADER = 48
_NBACKFILL_AT = 96


def wal_frames_to_copy(path: str) -> int | None:
    """How many frames of the database's SQLite WAL a checkpoint would copy
    (mxFrame - nBackfill of its wal-index), or None when that cannot be told
    (no -shm, a header being written, or one SQLite has yet to rebuild).

    Valid only while a connection to the database is open and has read it
    (the wal-index is then current) and no commit of it can run (the caller
    holds its commit lock). nBackfill is set only after a checkpoint copied
    those frames and synced the file, so 0 means the file holds every
    committed frame, durably: a checkpoint would copy nothing."""
    try:
        with open(path + "-shm", "rb") as f:
            head = f.read(_NBACKFILL_AT + 4)
    except FileNotFoundError:
        return None
    if len(head) < _NBACKFILL_AT + 4 or head[:_WAL_HEADER] != head[_WAL_HEADER : 2 * _WAL_HEADER]:
        return None
    version, _unused, _change, is_init = struct.unpack_from("=IIIB", head, 0)
    if version != _WAL_INDEX_VERSION or not is_init:
        return None
    (max_frame,) = struct.unpack_from("=I", head, 16)
    (backfilled,) = struct.unpack_from("=I", head, _NBACKFILL_AT)
    return max_frame - backfilled


def checkpoint(conn: apsw.Connection) -> bool:
    """Run a PASSIVE checkpoint; True when every frame reached the database file.

    On a ``synchronous=NORMAL`` connection SQLite syncs its WAL before it
    backfills and the database file after, so a complete checkpoint means every
    commit made so far is on disk. A PASSIVE checkpoint never waits for a
    reader: frames newer than the oldest reader's snapshot are left for the
    next one, and the file then holds the state of an older commit, whole.
    """
    busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
    return busy == 0 and (log_frames == -1 or done == log_frames)
