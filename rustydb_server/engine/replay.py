"""Applying WAL transaction records to a database: crash recovery, catch-up, PITR.

A record's steps are replayed in order: DDL text is executed, changesets are
applied, the rows of rows steps (engine/rows_image.py) inserted: from their
image attached to the connection when the record is applied in a transaction
of its own (``apply_tx_record``, and ``Replayer`` for a record with rows
steps), otherwise as the changeset they stand for. Triggers are switched off
and foreign-key actions are not run on the replay connection, because a
changeset already holds every row a trigger or cascade changed when the
transaction first ran; firing them again would apply those changes twice.
"""

from __future__ import annotations

import re

import apsw

from ..wal.lsn import format_lsn
from . import database, rows_image
from .database import ReplayError


def open_replay_connection(path: str, **options) -> apsw.Connection:
    """A connection that applies records; ``options`` as ``database.open_connection``'s."""
    conn = database.open_connection(path, **options)
    configure_replay_connection(conn)
    return conn


def configure_replay_connection(conn: apsw.Connection) -> None:
    """No triggers, no foreign-key actions: the changesets hold their effects."""
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    conn.execute("PRAGMA foreign_keys=OFF")


def _refuse_conflict(reason: int, change: apsw.TableChange) -> int:
    return apsw.SQLITE_CHANGESET_ABORT


def apply_steps(conn: apsw.Connection, steps, *, table_filter=None, images=None) -> None:
    """Apply steps inside the caller's transaction; raise ReplayError on a conflict.
    ``images``: the schema each rows step (by its index in ``steps``) is
    attached as (``attach_images``); a rows step without one is applied as its
    changeset."""
    for index, (kind, payload) in enumerate(steps):
        if kind == "rows":
            schema = images.get(index) if images else None
            if schema is None:
                if table_filter is not None and not table_filter(rows_image.parse_header(payload)[0].table):
                    continue
                try:
                    kind, payload = "changeset", rows_image.to_changeset(payload)
                except rows_image.RowsImageError as e:
                    raise ReplayError(str(e)) from None
            else:
                header = rows_image.parse_header(payload)[0]
                if table_filter is None or table_filter(header.table):
                    conn.execute(rows_image.insert_sql(header, schema))
                continue
        if kind == "ddl":
            conn.execute(payload)
        elif kind == "changeset":
            if table_filter is None:
                apsw.Changeset.apply(
                    payload,
                    conn,
                    conflict=_refuse_conflict,
                    flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION,
                )
            else:
                apsw.Changeset.apply(
                    payload,
                    conn,
                    filter=table_filter,
                    conflict=_refuse_conflict,
                    flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION,
                )
        else:
            raise ReplayError(f"unknown step kind {kind!r}")


VACUUM_STEPS = (("ddl", "VACUUM"),)
#: Rows steps of one record attached at once; any more are applied as changesets.
MAX_IMAGES = 8


def attach_images(conn: apsw.Connection, steps, table_filter=None) -> dict[int, str]:
    """Attach the images of a record's rows steps (outside a transaction):
    {step index: schema}; ``detach_images`` undoes it."""
    images: dict[int, str] = {}
    allowed = conn.limit(apsw.SQLITE_LIMIT_ATTACHED, -1)
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, max(allowed, MAX_IMAGES + 1))
    try:
        for index, (kind, payload) in enumerate(steps):
            if kind == "rows" and len(images) < MAX_IMAGES:
                if table_filter is not None and not table_filter(rows_image.parse_header(payload)[0].table):
                    continue
                schema = f"rustydb_rows_{len(images)}"
                rows_image.load(conn, schema, payload)
                images[index] = schema
    except rows_image.RowsImageError as e:
        detach_images(conn, images)
        raise ReplayError(str(e)) from None
    except BaseException:
        detach_images(conn, images)
        raise
    finally:
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, allowed)
    return images


def detach_images(conn: apsw.Connection, images: dict[int, str]) -> None:
    for schema in images.values():
        conn.execute(f"DETACH {schema}")
    images.clear()


def _has_rows(steps) -> bool:
    return any(kind == "rows" for kind, _ in steps)


def apply_tx_record(conn: apsw.Connection, lsn: int, record) -> None:
    """Apply one TxRecord atomically together with the new applied_lsn."""
    if tuple(record.steps) == VACUUM_STEPS:
        # VACUUM cannot run inside a transaction. Running it twice after a crash
        # between these two statements is harmless: it renumbers rowids the same
        # way on the same contents.
        conn.execute("VACUUM")
    images: dict[int, str] = {}
    try:
        if _has_rows(record.steps) and conn.getautocommit():
            images = attach_images(conn, record.steps)
        conn.execute("BEGIN IMMEDIATE")
        if tuple(record.steps) != VACUUM_STEPS:
            apply_steps(conn, record.steps, images=images)
        database.write_state(conn, lsn, record.txid, record.commit_time_us)
        conn.execute("COMMIT")
    except (apsw.Error, ReplayError) as e:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
        raise ReplayError(
            f"cannot apply WAL record at LSN {format_lsn(lsn)} (txid {record.txid}) "
            f"to database {record.database!r}: {e}"
        ) from e
    finally:
        detach_images(conn, images)


_IDENT = r'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+)'
_QUAL = rf"(?:{_IDENT}\s*\.\s*)?({_IDENT})"
_DDL_NAME = re.compile(
    r"^\s*(?:CREATE\s+(?:TEMP\s+|TEMPORARY\s+|UNIQUE\s+|VIRTUAL\s+)?"
    r"(TABLE|INDEX|TRIGGER|VIEW)|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)|ALTER\s+(TABLE))"
    rf"\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?{_QUAL}",
    re.I | re.S,
)
_ON_TABLE = re.compile(rf"\bON\s+{_QUAL}", re.I | re.S)


def unquote_ident(token: str) -> str:
    if token[:1] in ('"', "`") and token[-1:] == token[:1]:
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[:1] == "[" and token[-1:] == "]":
        return token[1:-1]
    return token


def ddl_touches(sql: str, table: str, conn: apsw.Connection) -> bool:
    """Whether a logged DDL statement concerns ``table`` or one of its indexes/triggers."""
    m = _DDL_NAME.match(sql)
    if not m:
        return False
    kind = (m.group(1) or m.group(2) or m.group(3)).upper()
    name = unquote_ident(m.group(4))
    if kind == "TABLE":
        return name.lower() == table.lower()
    if sql.lstrip()[:4].upper() == "DROP":
        found = conn.execute("SELECT tbl_name FROM sqlite_schema WHERE name = ?", (name,)).fetchall()
        return bool(found) and found[0][0].lower() == table.lower()
    on = _ON_TABLE.search(sql, m.end())
    return bool(on) and unquote_ident(on.group(1)).lower() == table.lower()


# A batch's bounds: records per SQLite transaction, and changeset bytes merged
# into one changegroup before it is applied (its memory).
BATCH_RECORDS = 50_000
BATCH_BYTES = 32 * 1024 * 1024


class Replayer:
    """Applies many records to one database per SQLite transaction (recovery, PITR).

    Batching is safe because ``applied_lsn`` is written in the same transaction
    as the batch: after a crash the whole batch is simply replayed again.
    A batch ends after ``batch`` records or ``batch_bytes`` bytes of
    changesets (what the changegroup holds in memory), at a VACUUM, and at
    ``flush`` (the caller's end: a recovery target, the end of the WAL).
    """

    def __init__(
        self,
        conn: apsw.Connection,
        database_name: str,
        batch: int = BATCH_RECORDS,
        only_table: str | None = None,
        batch_bytes: int = BATCH_BYTES,
    ):
        self.conn = conn
        self.database_name = database_name
        self.only_table = only_table
        self.batch = batch
        self.batch_bytes = batch_bytes
        self._bytes = 0
        self.applied = 0
        self._changes_before = conn.total_changes()
        self._pending = None  # (lsn, txid, commit_time_us) of the last record in the batch
        self._count = 0
        self._group: apsw.ChangesetBuilder | None = None
        self._group_lsns = [0, 0]

    def apply(self, lsn: int, record) -> None:
        if tuple(record.steps) == VACUUM_STEPS:
            self.flush()
            apply_tx_record(self.conn, lsn, record)
            self.applied += 1
            return
        if _has_rows(record.steps):
            # its images are attached outside a transaction: a batch of its own
            self.flush()
            self._apply_with_images(lsn, record)
            self.applied += 1
            return
        if self._pending is None:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, payload in record.steps:
                if kind == "changeset":
                    self._add_to_group(lsn, payload)
                    self._bytes += len(payload)
                else:
                    self._apply_group()
                    if self.only_table is None or ddl_touches(payload, self.only_table, self.conn):
                        self.conn.execute(payload)
        except (apsw.Error, ReplayError) as e:
            self._abandon()
            if isinstance(e, ReplayError):
                raise
            raise ReplayError(
                f"cannot apply WAL record at LSN {format_lsn(lsn)} (txid {record.txid}) "
                f"to database {self.database_name!r}: {e}"
            ) from e
        self._pending = (lsn, record.txid, record.commit_time_us)
        self._count += 1
        self.applied += 1
        if self._count >= self.batch or self._bytes >= self.batch_bytes:
            self.flush()

    def _apply_with_images(self, lsn: int, record) -> None:
        table = self.only_table
        keep = None if table is None else (lambda t: t == table)
        images: dict[int, str] = {}
        try:
            images = attach_images(self.conn, record.steps, keep)
            self.conn.execute("BEGIN IMMEDIATE")
            for index, step in enumerate(record.steps):
                if step[0] == "ddl" and table is not None and not ddl_touches(step[1], table, self.conn):
                    continue
                apply_steps(
                    self.conn, [step], table_filter=keep, images={0: images[index]} if index in images else None
                )
            database.write_state(self.conn, lsn, record.txid, record.commit_time_us)
            self.conn.execute("COMMIT")
        except (apsw.Error, ReplayError) as e:
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
            raise ReplayError(
                f"cannot apply WAL record at LSN {format_lsn(lsn)} (txid {record.txid}) "
                f"to database {self.database_name!r}: {e}"
            ) from e
        finally:
            detach_images(self.conn, images)

    # Consecutive changesets are merged into one changegroup and applied with a
    # single call: applying a changeset prepares statements for each of its
    # tables, which costs more than the rows of a small transaction. The merged
    # result is what applying them one by one would give.
    def _add_to_group(self, lsn: int, changeset: bytes) -> None:
        if self._group is None:
            self._group = apsw.ChangesetBuilder()
            self._group_lsns = [lsn, lsn]
        try:
            self._group.add(changeset)
        except apsw.Error:
            # Cannot be merged (a table's shape differs): apply what we have,
            # then this one on its own.
            self._apply_group()
            self._apply_changeset(changeset, lsn, lsn)
            return
        self._group_lsns[1] = lsn

    def _apply_group(self) -> None:
        if self._group is None:
            return
        out = self._group.output()
        self._group.close()
        self._group = None
        if out:
            self._apply_changeset(out, *self._group_lsns)

    def _apply_changeset(self, changeset: bytes, first: int, last: int) -> None:
        table = self.only_table
        try:
            apply_steps(
                self.conn, [("changeset", changeset)], table_filter=None if table is None else (lambda t: t == table)
            )
        except apsw.Error as e:
            where = f"LSN {format_lsn(first)}" if first == last else f"LSNs {format_lsn(first)}..{format_lsn(last)}"
            raise ReplayError(f"cannot apply the WAL records at {where} to database {self.database_name!r}: {e}") from e

    def _abandon(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
        if not self.conn.getautocommit():
            self.conn.execute("ROLLBACK")
        self._pending = None
        self._count = 0
        self._bytes = 0

    @property
    def changes(self) -> int:
        """Rows changed so far (changesets applied plus the state row updates)."""
        return self.conn.total_changes() - self._changes_before

    def flush(self) -> None:
        if self._pending is not None:
            try:
                self._apply_group()
            except ReplayError:
                self._abandon()
                raise
            database.write_state(self.conn, *self._pending)
            self.conn.execute("COMMIT")
            self._pending = None
            self._count = 0
            self._bytes = 0

    def close(self) -> None:
        self.flush()
        self.conn.close()
