"""Bulk inserts logged as rows steps instead of through the session extension.

A client session's transaction captures its changes with SQLite's session
extension (engine/session.py). For a statement that only appends rows to one
table, that capture costs more than the insert (the preupdate hook records
each row, then the changeset is built from the records), so such a statement
runs with the capture switched off and the rows it adds are logged at the end
of the capture (a DDL statement, a SAVEPOINT, the commit) as one "rows" step
(engine/rows_image.py) holding every row of the table above its largest rowid
when the transaction first appended to it.

What makes that exact:

* The statement's shape: ``[WITH ...] INSERT [OR ABORT|FAIL|IGNORE|ROLLBACK]
  INTO [main.]t`` from a SELECT (or a VALUES list of 16 KiB or more), no
  RETURNING, no ``DO UPDATE``, a single statement. The table: a rowid table of
  main (not virtual, not shadowed by a temp table), no triggers (main or temp),
  no foreign key whose action could change it, no generated columns, no
  REPLACE anywhere in its definition. Such a statement can only add rows to t.
* Its rows are all above the floor (the largest rowid when the capture first
  appended to t): each statement's rows are counted above t's largest rowid
  before it (so the count reads only the new rows) against what it added
  (``changes()``). A statement runs inside a savepoint; when the count
  differs (a row inserted below that rowid) or it fails, it is rolled back to
  the savepoint and run again captured.
* Nothing else changes t while its rows wait to be logged: once a table has
  pending rows, every statement is prepared afresh (not from the statement
  cache), so the authorizer names each table it writes (through triggers and
  foreign key actions too); a statement that writes a pending table other than
  as such an insert first ends the capture (the rows are logged), and from
  then on the session extension captures the table as usual.
* A table starts pending only in an empty capture (the capture is cut first
  otherwise), so no changeset in the same capture holds a change to it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import apsw

from . import rows_image
from .database import STATE_TABLE
from .rows_image import quote

WRITE_OPS = frozenset({apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE})
SAVEPOINT = "rustydb_bulk_insert"
#: An INSERT ... VALUES is taken as a bulk insert from this many bytes of text.
VALUES_BYTES = 16 * 1024

_SKIP = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)
_TOKEN = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+|.', re.S)
_VERBS = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "SELECT", "VALUES"})
_DO_UPDATE = re.compile(r"\bDO\s+UPDATE\b", re.I)
_NOT_LOGGABLE_SQL = re.compile(r"\bWITHOUT\s+ROWID\b|\bREPLACE\b|^\s*CREATE\s+VIRTUAL\b", re.I)
_SAFE_FK_ACTIONS = frozenset({"NO ACTION", "RESTRICT"})


def attach_image_schema(conn: apsw.Connection) -> None:
    """Attach the in-memory database rows steps are built in, to a client
    connection (which otherwise may attach none)."""
    authorizer, conn.authorizer = conn.authorizer, None
    allowed = conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 1)
    try:
        rows_image.attach(conn)
    finally:
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, allowed)
        conn.authorizer = authorizer


def detach_image_schema(conn: apsw.Connection) -> None:
    """Detach it (a VACUUM needs the connection's one attachment)."""
    authorizer, conn.authorizer = conn.authorizer, None
    try:
        conn.execute(f"DETACH {rows_image.SCHEMA}")
    finally:
        conn.authorizer = authorizer


def _words(sql: str):
    """(token, depth) of a statement's tokens, comments skipped."""
    depth, pos, n = 0, 0, len(sql)
    while pos < n:
        pos = _SKIP.match(sql, pos).end()
        m = _TOKEN.match(sql, pos)
        if not m:
            return
        tok = m.group()
        pos = m.end()
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        yield tok, depth


def insert_target(sql: str) -> str | None:
    """The table a bulk-insert-shaped statement appends to (see the module's
    doc), unquoted; None for any other statement."""
    lowered = sql.lower()  # the substring tests below are cheap; the tokenizer is not
    if "update" in lowered and _DO_UPDATE.search(sql):
        return None
    if len(sql) < VALUES_BYTES and "select" not in lowered:
        return None
    tokens = _words(sql)
    for tok, depth in tokens:
        if depth == 0 and tok.upper() in _VERBS:
            if tok.upper() != "INSERT":
                return None
            break
    else:
        return None
    rest = [t for t, _ in zip(tokens, range(6))]
    words = [t.upper() for t, _ in rest]
    i = 0
    if words[i : i + 1] == ["OR"]:
        if words[i + 1 : i + 2] not in (["ABORT"], ["FAIL"], ["IGNORE"], ["ROLLBACK"]):
            return None
        i += 2
    if words[i : i + 1] != ["INTO"] or len(rest) <= i + 1:
        return None
    name = rest[i + 1][0]
    if words[i + 2 : i + 3] == ["."]:
        if _unquote(name).lower() != "main" or len(rest) <= i + 3:
            return None
        name = rest[i + 3][0]
    if not (name[:1] in ('"', "`", "[") or re.fullmatch(r"[\w$]+", name)):
        return None
    # a long VALUES list, or a SELECT source (at the statement's own level)
    if len(sql) < VALUES_BYTES and not any(
        d == 0 and t.upper() == "SELECT" for t, d in itertools.chain(((t, d) for t, d in rest), tokens)
    ):
        return None
    return _unquote(name)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    """A table name as SQLite compares it (ASCII letters folded, nothing else)."""
    return name.translate(_ASCII_LOWER)


def _unquote(token: str) -> str:
    if token[:1] in ('"', "`") and token[-1:] == token[:1] and len(token) > 1:
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[:1] == "[" and token[-1:] == "]":
        return token[1:-1]
    return token


def loggable(conn: apsw.Connection, target: str) -> tuple[str, str] | None:
    """(name, rowid name) of main.``target`` if its appended rows can be
    logged as a rows step (see the module's doc); None otherwise."""
    found = conn.execute(
        "SELECT name, sql FROM main.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (target,)
    ).fetchall()
    if not found:
        return None
    name, sql = found[0]
    if name.lower() == STATE_TABLE.lower() or name.lower().startswith("sqlite_") or not sql:
        return None
    if _NOT_LOGGABLE_SQL.search(sql):
        return None
    for schema in ("main", "temp"):
        q = f"SELECT 1 FROM {schema}.sqlite_schema WHERE (type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE)" + (
            " OR (type = 'table' AND name = ?1 COLLATE NOCASE)" if schema == "temp" else ""
        )
        if conn.execute(q, (name,)).fetchall():
            return None
    for on_update, on_delete in conn.execute(
        "SELECT on_update, on_delete FROM main.pragma_foreign_key_list(?)", (name,)
    ).fetchall():
        if on_update.upper() not in _SAFE_FK_ACTIONS or on_delete.upper() not in _SAFE_FK_ACTIONS:
            return None
    columns = rows_image.table_columns(conn, name)
    if any(hidden for _, hidden in columns):
        return None
    rowid = rows_image.rowid_name([c for c, _ in columns])
    return None if rowid is None else (name, rowid)


@dataclasses.dataclass
class _Pending:
    name: str  # as sqlite_schema spells it
    rowid: str  # how its rowid is named in SQL
    floor: int | None  # its largest rowid when the capture first appended to it (None: it was empty)
    rows: int = 0  # rows appended since, every one above the floor
    top: int | None = None  # its largest rowid before the statement running now

    def largest_sql(self) -> str:
        return f"SELECT max({self.rowid}) FROM main.{quote(self.name)}"

    def count_sql(self) -> tuple[str, tuple]:
        """How many rows are above ``top``: those the statement added, if all of
        them are (the others were there before it)."""
        base = f"SELECT count(*) FROM main.{quote(self.name)}"
        if self.top is None:
            return base, ()
        return f"{base} WHERE {self.rowid} > ?", (self.top,)


class BulkInserts:
    """The tables one capture (of a SqlSession) leaves to rows steps."""

    def __init__(self) -> None:
        self.tables: dict[str, _Pending] = {}  # by fold(name)
        #: the main tables the authorizer saw the statement being prepared write
        self.written: set[str] = set()
        self._active: _Pending | None = None  # the statement running now appends to it, uncaptured
        self._allowed = True

    def drop(self) -> None:
        """The capture's changes were rolled back."""
        self.tables.clear()
        self._active = None

    def cut(self, conn: apsw.Connection) -> list:
        """The rows steps of the capture that ends (in the open transaction)."""
        steps = []
        for t in self.tables.values():
            if t.rows:
                payload = rows_image.build(conn, t.name, t.floor)
                if payload is not None:
                    steps.append(("rows", payload))
        self.tables.clear()
        return steps

    def before(self, session, sql: str, whole: str | None, description) -> None:
        """A statement of ``session`` is prepared and about to run (its exec trace)."""
        self._active = None
        target = None
        if self._allowed and not description and whole is not None and _same(sql, whole):
            target = insert_target(whole)
        key = fold(target) if target is not None else None
        if self.tables:
            hit = self.written & self.tables.keys()
            if hit and not (key in self.tables and hit == {key}):
                # it writes a pending table otherwise: log the rows so far first
                session._restart_capture(keep=True)
        if target is None:
            return
        conn = session.conn
        t = self.tables.get(key)
        if t is None:
            found = loggable(conn, target)
            if found is None:
                return
            if not session._capture.is_empty:
                session._restart_capture(keep=True)  # no changeset of this capture holds the table
            name, rowid = found
            t = _Pending(name, rowid, None)
            t.floor = conn.execute(t.largest_sql()).fetchall()[0][0]
            self.tables[key] = t
        t.top = conn.execute(t.largest_sql()).fetchall()[0][0] if t.rows else t.floor
        conn.execute(f"SAVEPOINT {SAVEPOINT}")
        session._capture.enabled = False
        self._active = t

    def run(self, session, execute):
        """``execute()`` the statement; check a bulk insert's rows and run it
        again captured when they cannot be logged as a rows step."""
        try:
            result = execute()
        except BaseException as e:
            if self._active is None:
                raise
            if not self._undo(session) or isinstance(e, apsw.InterruptError):
                raise
            return self._again(execute)
        t = self._active
        if t is None:
            return result
        conn = session.conn
        added = conn.changes()
        session._internal = True
        try:
            q, args = t.count_sql()
            if conn.execute(q, args).fetchall()[0][0] == added:
                self._active = None
                t.rows += added
                conn.execute(f"RELEASE {SAVEPOINT}")
                session._capture.enabled = True
                return result
        finally:
            session._internal = False
        self._undo(session)
        return self._again(execute)

    def _again(self, execute):
        self._allowed = False
        try:
            return execute()
        finally:
            self._allowed = True

    def _undo(self, session) -> bool:
        """Roll the statement back; False when its transaction is gone."""
        t, self._active = self._active, None
        conn = session.conn
        session._capture.enabled = True
        if conn.getautocommit():
            self.tables.clear()
            return False
        session._internal = True
        try:
            conn.execute(f"ROLLBACK TO {SAVEPOINT}")
            conn.execute(f"RELEASE {SAVEPOINT}")
            if t.rows:
                session._restart_capture(keep=True)  # its rows so far; the statement runs captured
            else:
                del self.tables[fold(t.name)]
        finally:
            session._internal = False
        return True


def _same(statement: str, whole: str) -> bool:
    """Whether the statement being traced is all of the text that was run."""
    return statement.strip().rstrip(";").strip() == whole.strip().rstrip(";").strip()
