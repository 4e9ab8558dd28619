"""Undo and AS OF on the running server: the thin shell around forensics/undo.py and asof.py.

Synchronous, run in a worker thread by the admin statements (admin.py).
The history of a database is read from the server's own WAL segments
(``wal/``, the current timeline, up to what is durable) through
forensics/walscan.py, and from the archive (archive_dest) too when the
segments needed were removed by a checkpoint after they were archived.

An undo is an ordinary transaction of a session of its own: BEGIN
IMMEDIATE, the inverse changeset applied, COMMIT through the session's
commit (so it is logged, replicated into backups and itself undoable). The
WAL is read once without any lock to find the transactions and plan; then,
holding the database's write lock, the records committed meanwhile are read
too and the plan is made again on the whole history, so nothing committed
between planning and applying is overwritten.

AS OF reads the database file in a read-only transaction of its own (one
snapshot: the applied_lsn it holds, and the rows), takes the inverse of every
change made to the table since the target point from the server's WAL, and
has asof.present show the table as it was then (a view over the live rows
and the before-images of the changed ones); the query runs on it, read-only.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Callable, Iterator

import apsw

from .. import keys
from ..archive import destination
from ..archive import segment_file as sf
from ..engine import database as dbfile
from ..engine import rows_image
from ..errors import ReportedError
from ..repository import is_s3_url
from ..restore.pitr import format_time
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal.lsn import format_lsn
from . import asof as asof_mod
from . import undo as undo_mod
from . import walscan


class ForensicsError(ReportedError):
    def __init__(self, message: str, code: str = "undo_refused"):
        super().__init__(message, code)


@dataclasses.dataclass
class History:
    """The transactions of one database in the WAL, in commit order."""

    txs: list[undo_mod.Tx]
    first_time_us: int | None  # the time of the first record read (any database): the WAL's reach
    first_lsn: int | None
    end_lsn: int | None  # after the last record read
    with_archive: bool = False  # read from the archive too
    # The first transaction worth keeping (None: all): the earlier ones are read
    # past without being kept, so memory holds only what the plan needs.
    keep_from: Callable[[undo_mod.Tx], bool] | None = None
    keeping: bool = False


def _archive(engine) -> tuple[str | None, object]:
    """The archive directory the server archives to (None: none set) and its key."""
    settings = engine.settings
    dest = settings["archive_dest"]
    if not dest:
        return None, None
    if is_s3_url(dest):  # an s3:// repository: the segments under its wal/
        path = destination.location(dest)
    else:
        path = os.path.normpath(os.path.join(settings["data_dir"], dest))
        if not os.path.isdir(path):
            return None, None
    key = None
    if settings["archive_encryption"]:
        try:
            key = keys.resolve_kek(None, setting_key_file=settings["backup_key_file"] or None)
        except (keys.NoKeyError, keys.KeyFileError) as e:
            raise ForensicsError(f"cannot read the encrypted WAL archive: {e}", "wal_unavailable") from None
    return path, key


def _entries(engine, start_lsn: int | None, with_archive: bool) -> Iterator[wal_reader.WalEntry]:
    """The durable records of the server's timeline: its own ``wal/`` segments,
    and (``with_archive``) the archived ones a checkpoint removed from there;
    from the oldest segment held (``start_lsn`` None) or from a record boundary."""
    control = engine.control
    archive_dir, key = _archive(engine) if with_archive else (None, None)
    try:
        supplier = walscan.LocalThenArchived(engine.datadir.wal_dir, archive_dir, control.timeline, key=key)
        held = supplier.segments()
        if not held:
            return
        entries = walscan.supplied_entries(
            supplier,
            timeline=control.timeline,
            segment_size=control.segment_size,
            start_lsn=held[0] * control.segment_size if start_lsn is None else start_lsn,
            stop_lsn=engine.wal.flushed_lsn,
            skip_partial_first=start_lsn is None,
        )
        for _timeline, entry in entries:
            yield entry
    except (walscan.WalScanError, sf.ArchiveError) as e:
        raise ForensicsError(f"cannot read the server's WAL: {e}", "wal_unavailable") from None


def _time_of(rec) -> int | None:
    if isinstance(rec, walrec.TxRecord):
        return rec.commit_time_us
    return getattr(rec, "time_us", None)


def read_history(
    engine, database: str, history: History | None = None, *, with_archive: bool = False, keep_from=None
) -> History:
    """The transactions of ``database`` in the server's WAL (or those after ``history``'s end, added to it),
    from the first one ``keep_from`` accepts on (all without it)."""
    if history is None:
        history = History([], None, None, None, with_archive, keep_from, keep_from is None)
    for entry in _entries(engine, history.end_lsn, history.with_archive):
        rec = walrec.decode_record(entry.body)
        if history.first_time_us is None:
            history.first_time_us = _time_of(rec)
            history.first_lsn = entry.lsn
        history.end_lsn = entry.end_lsn
        if isinstance(rec, walrec.TxRecord) and rec.database == database:
            tx = undo_mod.Tx(entry.lsn, rec.txid, rec.commit_time_us, rows_image.expand(rec.steps))
            history.keeping = history.keeping or history.keep_from(tx)
            if history.keeping:
                history.txs.append(tx)
        elif isinstance(rec, walrec.DatabaseRecord) and rec.database == database:
            # A database of this name dropped or created again: nothing before counts.
            history.txs.clear()
            history.keeping = history.keep_from is None
    return history


def _reach(history: History) -> str:
    where = "the server's WAL and its archive" if history.with_archive else "the server's WAL"
    if history.first_lsn is None:
        return f"{where} hold no records"
    when = f" (committed {format_time(history.first_time_us)})" if history.first_time_us else ""
    return f"the oldest record still in {where} is at LSN {format_lsn(history.first_lsn)}{when}"


# ------------------------------------------------------------------ undo


@dataclasses.dataclass(frozen=True)
class UndoRequest:
    txid: int | None = None  # one transaction, or
    from_us: int | None = None  # every transaction committed in [from_us, to_us]
    to_us: int | None = None
    table: str | None = None
    mode: str = undo_mod.REFUSE


@dataclasses.dataclass
class UndoOutcome:
    txid: int  # the undo's own transaction
    undone: list[int]
    rows: dict[str, int]  # rows restored per table
    skipped: int  # rows left alone (NONCONFLICTING)


def _history_for(engine, database: str, enough, keep_from) -> History:
    """The database's history from the server's own WAL, or, when that does not
    reach back far enough (``enough(history)`` is false), from the archive too."""
    history = read_history(engine, database, keep_from=keep_from)
    if enough(history) or _archive(engine)[0] is None:
        return history
    return read_history(engine, database, with_archive=True, keep_from=keep_from)


def _reaches(request: UndoRequest, history: History) -> bool:
    if request.txid is not None:
        return any(tx.txid == request.txid for tx in history.txs)
    return history.first_time_us is not None and history.first_time_us <= request.from_us


def _targets(request: UndoRequest, history: History, database: str) -> set[int]:
    if request.txid is not None:
        if any(tx.txid == request.txid for tx in history.txs):
            return {request.txid}
        raise ForensicsError(
            f'transaction {request.txid} is not in the WAL of database "{database}": it changed nothing '
            f"there, or its WAL is gone ({_reach(history)}). rusty-db-restore --list-wal shows the archive's "
            "transactions; restore the rows from a backup instead",
            "undo_not_found",
        )
    if history.first_time_us is None or history.first_time_us > request.from_us:
        raise ForensicsError(
            f"the WAL from the start of that range on is no longer on the server ({_reach(history)}); "
            "restore from a backup instead",
            "wal_unavailable",
        )
    found = {
        tx.txid
        for tx in history.txs
        if request.from_us <= tx.commit_time_us <= request.to_us
        and (request.table is None or undo_mod.keys_of(tx, request.table) or _ddl_on(tx, request.table))
    }
    if not found:
        where = f" that changed table {request.table}" if request.table else ""
        raise ForensicsError(
            f'no transaction of database "{database}"{where} was committed in that range', "undo_not_found"
        )
    return found


def _ddl_on(tx: undo_mod.Tx, table: str) -> bool:
    return any(undo_mod.ddl_may_touch(sql, {table.lower()}) for sql in undo_mod.ddl_steps(tx))


def _plan(request: UndoRequest, history: History, database: str) -> undo_mod.UndoPlan:
    targets = _targets(request, history, database)
    try:
        return undo_mod.plan_undo(history.txs, targets, request.mode, request.table)
    except undo_mod.UndoRefused as e:
        raise ForensicsError(str(e)) from None


def undo(engine, new_session, database: str, request: UndoRequest) -> UndoOutcome:
    """Undo as ``request`` says, in a transaction of ``new_session()`` (a SqlSession on ``database``)."""
    if request.txid is not None:
        keep_from = lambda tx: tx.txid == request.txid  # noqa: E731
    else:
        keep_from = lambda tx: tx.commit_time_us >= request.from_us  # noqa: E731
    history = _history_for(engine, database, lambda h: _reaches(request, h), keep_from)
    _plan(request, history, database)  # refuse early, before taking any lock
    session = new_session()
    try:
        session.start("BEGIN IMMEDIATE", ["BEGIN", "IMMEDIATE"])
        try:
            (txid,) = session.conn.execute("SELECT txid_current()").fetchone()
            # With the write lock held nothing more commits here: read what did meanwhile, plan again.
            history = read_history(engine, database, history)
            plan = _plan(request, history, database)
            rows = _apply(session.conn, plan)
            if not rows:
                raise ForensicsError(
                    "there is nothing to undo: the rows are already as they were before it "
                    "(its changes were undone since, or every row it changed was changed again and is left)"
                )
            session.commit()
        except BaseException:
            session.rollback()
            raise
    finally:
        session.close()
    skipped = len(plan.skip)
    return UndoOutcome(txid, plan.undone, rows, skipped)


def _apply(conn: apsw.Connection, plan: undo_mod.UndoPlan) -> dict[str, int]:
    """Apply the plan's inverse changeset in the caller's transaction; rows restored per table."""
    rows: dict[str, int] = {}
    conflicts: list[str] = []

    def wanted(change: apsw.TableChange) -> bool:
        if plan.wanted(change):
            rows[change.name] = rows.get(change.name, 0) + 1
            return True
        return False

    def conflict(reason: int, change: apsw.TableChange) -> int:
        key = undo_mod.row_key(change)
        conflicts.append(f"{change.name}{key[1]!r}")
        return apsw.SQLITE_CHANGESET_ABORT

    if not plan.changeset:
        return rows
    # The changesets hold what triggers and foreign-key actions did: running them again would do it twice.
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    try:
        apsw.Changeset.apply(
            plan.changeset, conn, filter_change=wanted, conflict=conflict, flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION
        )
    except apsw.AbortError:
        raise ForensicsError(
            "the rows to restore are not as the WAL says they were left "
            f"({', '.join(conflicts[:5]) or 'a constraint'}); nothing was undone",
            "undo_conflict",
        ) from None
    except apsw.Error as e:
        raise ForensicsError(f"the undo could not be applied ({e}); nothing was undone", "undo_conflict") from None
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
    return rows


# ------------------------------------------------------------------ AS OF


def as_of(engine, database: str, query: asof_mod.AsOfQuery, max_bytes: int) -> tuple[list[str], list[list]]:
    """Run ``query`` on its table as it was at its target point; (columns, rows)."""
    handle = engine.get_database(database)
    conn, applied, name, create_sql = _snapshot(handle.path, query.table)
    try:
        history = _history_for(
            engine, database, lambda h: asof_mod.reaches(h.txs, query, h.first_time_us), query.first_to_keep
        )
        try:
            later = asof_mod.after_target(history.txs, query, applied, reach_time_us=history.first_time_us)
        except asof_mod.AsOfRefused as e:
            raise ForensicsError(f"{e} ({_reach(history)})", "wal_unavailable") from None
        inverse = asof_mod.inverse_for_table(later, query.table)
        try:
            presented = asof_mod.present(
                conn, "src", name, create_sql, inverse, copy_all=asof_mod.names_rowid(query.sql)
            )
        except apsw.Error as e:
            raise ForensicsError(f"cannot rebuild table {query.table} as of then: {e}", "as_of_failed") from None
        return asof_mod.run_read_only(conn, query.sql, max_bytes, presented)
    finally:
        conn.close()  # ends the read transaction on the database file


def _snapshot(path: str, table: str) -> tuple[apsw.Connection, int, str, str]:
    """A new in-memory connection with the database file at ``path`` attached
    read-only as ``src`` inside a read transaction (one snapshot until it is
    closed); the applied_lsn of that snapshot, and ``table``'s name and CREATE
    statement."""
    conn = apsw.Connection(
        ":memory:", flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
    )
    try:
        conn.set_busy_timeout(dbfile.BUSY_TIMEOUT_MS)
        conn.execute("ATTACH DATABASE ? AS src", ("file:" + urllib.parse.quote(path) + "?mode=ro",))
        conn.execute("BEGIN")
        applied = int(dict(conn.execute(f"SELECT key, value FROM src.{dbfile.STATE_TABLE}").fetchall())["applied_lsn"])
        found = conn.execute(
            "SELECT name, sql FROM src.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
        ).fetchall()
        if not found or found[0][0] == dbfile.STATE_TABLE:
            raise ForensicsError(f'table "{table}" does not exist', "undefined_table")
    except BaseException:
        conn.close()
        raise
    return conn, applied, found[0][0], found[0][1]
