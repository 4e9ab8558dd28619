"""One client session's SQL: its SQLite connection, transaction state and change capture.

Synchronous; every method runs in a trio worker thread, one call at a time per
session. Write transactions are captured with SQLite's session extension: the
changes since the last DDL statement form one ``changeset`` step, and each DDL
statement is a ``ddl`` step of its own text, so replay sees them in order.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import apsw

from rustydb_client.protocol.frames import DEFAULT_MAX_FRAME

from ..audit import audit
from ..errors import ReportedError
from . import database
from .authorizer import decide
from .database import STATE_TABLE
from .instance import Engine, EngineError

DDL_KEYWORDS = frozenset({"CREATE", "DROP", "ALTER", "REINDEX", "ANALYZE"})
READ_KEYWORDS = frozenset({"SELECT", "VALUES", "WITH", "EXPLAIN", "PRAGMA"})
# PRAGMAs that change the database file itself and so must be replayed.
LOGGED_PRAGMAS = frozenset({"user_version", "application_id"})

_DDL_OPS = frozenset(
    getattr(apsw, n)
    for n in (
        "SQLITE_CREATE_INDEX",
        "SQLITE_CREATE_TABLE",
        "SQLITE_CREATE_TRIGGER",
        "SQLITE_CREATE_VIEW",
        "SQLITE_DROP_INDEX",
        "SQLITE_DROP_TABLE",
        "SQLITE_DROP_TRIGGER",
        "SQLITE_DROP_VIEW",
        "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX",
        "SQLITE_ANALYZE",
        "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_VTABLE",
    )
)
_PRAGMA_ASSIGN = re.compile(r"^\s*PRAGMA\s+(?:main\.)?(\w+)\s*(=|\()", re.I)


#: A batch of rows for a client stops before it grows past this (estimated as
#: msgpack will encode it); smaller batches also keep the server's memory flat.
BATCH_BYTES = 1024 * 1024
#: The largest row a client can be sent: a message's limit, less room for the
#: rest of the message.
MAX_ROW_BYTES = DEFAULT_MAX_FRAME - 64 * 1024


def row_bytes(row) -> int:
    """About how many bytes msgpack needs for ``row`` (never fewer)."""
    total = 5
    for v in row:
        if isinstance(v, str):
            total += 5 + (len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass")))
        elif isinstance(v, bytes):
            total += 5 + len(v)
        else:
            total += 9
    return total


class SqlError(ReportedError):
    """A statement failed; the session stays usable."""

    def __init__(self, message: str, code: str = "sql_error"):
        super().__init__(message, code)


@dataclasses.dataclass
class StatementRun:
    """A statement that has started; rows are fetched in batches, then it finishes."""

    sql: str
    keyword: str
    columns: list[str] | None
    cursor: apsw.Cursor | None
    autocommit_write: bool
    rows_seen: int = 0
    first_row: tuple | None = None
    status: str = ""

    @property
    def done(self) -> bool:
        """Every row was fetched."""
        return self.cursor is None and self.first_row is None


class SqlSession:
    def __init__(self, engine: Engine, database_name: str, session_id: int, *, peer=None, user=None):
        self.engine = engine
        self.session_id = session_id
        self.peer = peer  # the client's (host, port), for the logs
        self.user = user  # the user the client named, for the audit trail
        # time.monotonic() since which a statement or transaction has been open
        # (holding a SQLite snapshot that keeps checkpoints from completing).
        self.open_since: float | None = None
        self.handle = None
        self.conn: apsw.Connection | None = None
        self.in_transaction = False
        self.txid: int | None = None
        self._capture: apsw.Session | None = None
        self._steps: list = []
        self._internal = False
        self._ddl_ops: set[int] = set()
        self._trace: dict = {}
        self.use(database_name)

    # ------------------------------------------------------------ lifecycle
    @property
    def database(self) -> str:
        return self.handle.name if self.handle else ""

    def use(self, name: str) -> None:
        if self.in_transaction:
            raise SqlError(
                "cannot switch database inside a transaction; COMMIT or ROLLBACK first", code="active_transaction"
            )
        handle = self.engine.attach_session(name)
        try:
            conn = database.open_client_connection(handle.path)
        except Exception:
            self.engine.detach_session(handle)
            raise
        self.close()
        self.handle, self.conn = handle, conn
        self.engine.sessions.add(self)
        conn.authorizer = self._authorize
        conn.create_scalar_function("txid_current", self._txid_current, 0)
        conn.set_busy_handler(self._busy)

    def close(self) -> None:
        self.engine.sessions.discard(self)
        self.open_since = None
        if self.conn is not None:
            try:
                if not self.conn.getautocommit():
                    self.conn.execute("ROLLBACK")
            except apsw.Error:
                pass
            self._end_capture()
            self.conn.close()
            self.conn = None
        if self.handle is not None:
            self.engine.detach_session(self.handle)
            self.handle = None
        self.in_transaction = False
        self.txid = None

    def interrupt(self) -> None:
        """Called from another thread to stop a long statement (timeouts, shutdown)."""
        if self.conn is not None:
            self.conn.interrupt()

    # ------------------------------------------------------- sqlite hooks
    def _authorize(self, op, p1, p2, dbname, trigger):
        decision = decide(op, p1, p2, internal=self._internal)
        if decision == apsw.SQLITE_OK and op in _DDL_OPS and dbname != "temp":
            self._ddl_ops.add(op)
        elif decision == apsw.SQLITE_DENY:
            self._audit_refusal(apsw.mapping_authorizer_function.get(op, str(op)), p1, p2)
        return decision

    def _audit_refusal(self, refused: str, target, argument) -> None:
        audit(
            "sql",
            "denied",
            user=self.user,
            peer=self.peer,
            session=self.session_id,
            database=self.database,
            refused=refused,
            target=target,
            argument=argument,
        )

    def _busy(self, attempts: int) -> bool:
        """Wait for the writer holding the lock to finish; give up after the busy timeout."""
        if attempts == 0:
            self._busy_since = time.monotonic()
        if time.monotonic() - self._busy_since > database.BUSY_TIMEOUT_MS / 1000:
            return False
        self.handle.wait_for_writer(0.005)
        return True

    def _txid_current(self) -> int:
        if self.txid is None:
            self.txid = self.engine.allocate_txid()
        return self.txid

    def _exec_trace(self, cursor, sql, bindings) -> bool:
        self._trace["description"] = cursor.description
        self._trace["readonly"] = cursor.is_readonly
        return not self._trace.get("require_readonly") or cursor.is_readonly

    # -------------------------------------------------------- change capture
    def _start_capture(self) -> None:
        s = apsw.Session(self.conn, "main")
        # Tables without a PRIMARY KEY are captured by rowid.
        s.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        s.table_filter(lambda name: name != STATE_TABLE)
        s.attach()
        self._capture = s

    def _cut_changeset(self) -> None:
        if self._capture is not None:
            cs = self._capture.changeset()
            if cs:
                self._steps.append(("changeset", cs))
            self._capture.close()
            self._capture = None

    def _end_capture(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self._steps = []

    # ------------------------------------------------------------ statements
    def start(self, sql: str, keywords: list[str]) -> StatementRun:
        """Run a statement up to its first row; the caller fetches and finishes."""
        kw = keywords[0] if keywords else ""
        kw2 = keywords[1] if len(keywords) > 1 else ""
        if kw in ("BEGIN",):
            return self._begin(sql)
        if kw in ("COMMIT", "END"):
            return self._done(sql, kw, self.commit())
        if kw == "ROLLBACK" and kw2 != "TO":
            return self._done(sql, kw, self.rollback())
        if kw in ("SAVEPOINT", "RELEASE") or (kw == "ROLLBACK" and kw2 == "TO"):
            if not self.in_transaction:
                raise SqlError(f"{kw} can only be used in transaction blocks; BEGIN first", code="no_transaction")
            return self._execute(sql, kw, autocommit_write=False)
        if kw == "VACUUM":
            return self._vacuum(sql, keywords)
        if self.in_transaction:
            return self._execute(sql, kw, autocommit_write=False)
        if kw == "PRAGMA" and not self._is_logged_pragma(sql):
            # Connection pragmas (foreign_keys, ...) are no-ops inside a transaction.
            return self._execute(sql, kw, autocommit_write=False)
        if kw in READ_KEYWORDS and not self._is_logged_pragma(sql):
            try:
                return self._execute(sql, kw, autocommit_write=False, require_readonly=True)
            except apsw.ExecTraceAbort:
                pass  # a write behind a read keyword (WITH ... INSERT): take the write path
        return self._autocommit_write(sql, kw)

    def _vacuum(self, sql: str, keywords: list[str]) -> StatementRun:
        if self.in_transaction:
            raise SqlError("VACUUM cannot run inside a transaction block", code="active_transaction")
        if not _is_plain_vacuum(sql):
            self._audit_refusal("VACUUM INTO", sql[:200], None)
            # VACUUM INTO writes a file anywhere the server can; schema names
            # other than main do not exist here.
            raise SqlError(
                "only plain VACUUM is allowed (VACUUM INTO would write outside the "
                "data directory; take a backup instead)",
                code="not_allowed",
            )
        self._internal = True
        try:
            self.engine.vacuum(self.handle, self.conn)
        except apsw.Error as e:
            raise SqlError(str(e)) from e
        finally:
            self._internal = False
        return self._done(sql, "VACUUM", "VACUUM")

    def _begin(self, sql: str) -> StatementRun:
        if self.in_transaction:
            raise SqlError("there is already a transaction in progress", code="active_transaction")
        self.engine.ensure_caught_up(self.handle)
        self._sqlite(lambda: self.conn.execute(sql))
        self.in_transaction = True
        self._steps = []
        self._start_capture()
        return self._done(sql, "BEGIN", "BEGIN")

    def _autocommit_write(self, sql: str, kw: str) -> StatementRun:
        # Read-only for lack of space: refused before SQLite does any work.
        self.engine.ensure_writable()
        self.engine.ensure_caught_up(self.handle)
        self._sqlite(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        self._steps = []
        self._start_capture()
        try:
            return self._execute(sql, kw, autocommit_write=True)
        except BaseException:
            self._abort_autocommit()
            raise

    def _abort_autocommit(self) -> None:
        try:
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
        except apsw.Error:
            pass
        self.handle.notify_write_ended()
        self._end_capture()
        self.txid = None

    def _is_logged_pragma(self, sql: str) -> bool:
        m = _PRAGMA_ASSIGN.match(sql)
        return bool(m and m.group(1).lower() in LOGGED_PRAGMAS and m.group(2) == "=")

    def _execute(self, sql, kw, *, autocommit_write, require_readonly=False) -> StatementRun:
        is_ddl = kw in DDL_KEYWORDS or self._is_logged_pragma(sql)
        if is_ddl and self._capture is not None:
            self._cut_changeset()
        self._ddl_ops.clear()
        self._trace.clear()
        self._trace["require_readonly"] = require_readonly
        cursor = self.conn.cursor()
        cursor.exec_trace = self._exec_trace
        try:
            self._sqlite(lambda: cursor.execute(sql, can_cache=not is_ddl))
            first = self._sqlite(lambda: next(cursor, None))
        except BaseException:
            if is_ddl and self._capture is None and (self.in_transaction or autocommit_write):
                self._start_capture()
            raise
        if is_ddl:
            if self._ddl_ops or self._is_logged_pragma(sql):
                self._steps.append(("ddl", sql))
            if self.in_transaction or autocommit_write:
                self._start_capture()
        desc = self._trace.get("description") or ()
        columns = [d[0] for d in desc] if desc else None
        return StatementRun(sql, kw, columns, cursor, autocommit_write, first_row=first)

    def run(self, sql: str, keywords: list[str], batch_rows: int):
        """Start a statement and fetch its first batch in one call (one thread hop).

        Returns (run, first_rows, finished): when the result fits in one batch
        the statement is also finished (and an autocommit write committed), and
        ``finished`` is (status, count); otherwise it is None and the caller
        fetches the rest.
        """
        if self.open_since is None:
            self.open_since = time.monotonic()
        try:
            run = self.start(sql, keywords)
            rows = self.fetch(run, batch_rows) if run.columns is not None else []
            if run.columns is None or run.done:
                return run, rows, self.finish(run)
        except BaseException:
            self._settle()
            raise
        return run, rows, None

    def _settle(self) -> None:
        """A statement ended: outside a transaction, no snapshot is held now."""
        if not self.in_transaction:
            self.open_since = None

    def pinning(self) -> dict | None:
        """What the logs say of this session while it holds a snapshot: id,
        peer, database and for how many seconds; None when it holds none."""
        since = self.open_since
        if since is None:
            return None
        peer = self.peer
        return {
            "session": self.session_id,
            "peer": f"{peer[0]}:{peer[1]}" if peer and peer[0] else None,
            "database": self.database,
            "seconds": round(time.monotonic() - since, 1),
        }

    def fetch(self, run: StatementRun, n: int, *, for_client: bool = True) -> list[list]:
        """Up to ``n`` more rows. For a client, a batch also stops before it
        grows past BATCH_BYTES (it travels as one message, whose size is
        limited), and a single row too large for any message is an error."""
        rows: list[list] = []
        size = 0
        try:
            while len(rows) < n:
                if run.first_row is not None:
                    row, run.first_row = run.first_row, None
                elif run.cursor is None:
                    break
                else:
                    row = self._sqlite(functools.partial(next, run.cursor, None))
                    if row is None:
                        run.cursor = None  # done: nothing more to fetch
                        break
                if for_client:
                    weight = row_bytes(row)
                    if weight > MAX_ROW_BYTES:
                        raise SqlError(
                            f"row {run.rows_seen + len(rows) + 1} of the result is about "
                            f"{weight / 1e6:.1f} MB, more than the {MAX_ROW_BYTES / 1e6:.1f} MB "
                            "one message can carry; select large values in parts, e.g. "
                            "substr(column, 1, 10000000)",
                            "row_too_large",
                        )
                    if rows and size + weight > BATCH_BYTES:
                        run.first_row = row  # it starts the next batch
                        break
                    size += weight
                rows.append(list(row))
        except BaseException:
            if run.autocommit_write:
                self._abort_autocommit()
            self._settle()
            raise
        run.rows_seen += len(rows)
        return rows

    def finish(self, run: StatementRun) -> tuple[str, int]:
        """Drain the statement, commit an autocommit write, and return (status, rows)."""
        try:
            return self._finish(run)
        finally:
            self._settle()

    def _finish(self, run: StatementRun) -> tuple[str, int]:
        if run.status:
            return run.status, 0
        try:
            while run.first_row is not None or (run.cursor is not None and self._more(run)):
                self.fetch(run, 10_000, for_client=False)
        except BaseException:
            if run.autocommit_write:
                self._abort_autocommit()
            raise
        # WITH ... INSERT (UPDATE, DELETE) reports what its statement did, as the plain form does
        kw = statement_verb(run.sql) if run.keyword == "WITH" else run.keyword
        changes = self.conn.changes() if kw in WRITE_VERBS else 0
        if run.autocommit_write:
            self._commit_autocommit()
        return status_for(kw, run.sql, run.rows_seen, changes), (changes if kw in WRITE_VERBS else run.rows_seen)

    def _more(self, run: StatementRun) -> bool:
        row = self._sqlite(lambda: next(run.cursor, None))
        if row is None:
            run.cursor = None
            return False
        run.first_row = row
        return True

    def _sequence_step(self, steps) -> list:
        """AUTOINCREMENT counters are not in changesets: log them, so a replayed
        database never hands out an id the original had already used."""
        if not any(kind == "changeset" for kind, _ in steps):
            return steps
        if not self.conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'").fetchall():
            return steps
        rows = self.conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        if not rows:
            return steps
        cases = " ".join(f"WHEN {_sql_str(n)} THEN {int(v)}" for n, v in rows)
        names = ", ".join(_sql_str(n) for n, _ in rows)
        return steps + [("ddl", f"{SEQUENCE_STEP_PREFIX} = max(seq, CASE name {cases} END) WHERE name IN ({names})")]

    def _commit_autocommit(self) -> None:
        self._cut_changeset()
        steps, self._steps = self._sequence_step(self._steps), []
        txid, self.txid = self.txid, None
        if not steps:
            self.conn.execute("COMMIT")
            self.handle.notify_write_ended()
            return
        self._engine_commit(txid, steps)

    def _engine_commit(self, txid, steps) -> None:
        # The commit writes applied_lsn into the state table, which the
        # authorizer keeps out of reach of the user's own statements.
        self._internal = True
        try:
            self.engine.commit(self.handle, self.conn, txid, steps)
        finally:
            self._internal = False

    # ----------------------------------------------------------- tx control
    def commit(self) -> str:
        if not self.in_transaction:
            return "COMMIT"  # like PostgreSQL: a warning at most, never an error
        self._cut_changeset()
        steps, self._steps = self._sequence_step(self._steps), []
        txid = self.txid
        self.in_transaction = False
        self.txid = None
        try:
            if steps:
                self._engine_commit(txid, steps)
            elif not self.conn.getautocommit():
                self.conn.execute("COMMIT")
                self.handle.notify_write_ended()
        except EngineError:
            raise
        except apsw.Error as e:
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
            raise SqlError(f"COMMIT failed, transaction rolled back: {e}") from e
        return "COMMIT"

    def rollback(self) -> str:
        if self.in_transaction or not self.conn.getautocommit():
            try:
                if not self.conn.getautocommit():
                    self.conn.execute("ROLLBACK")
            finally:
                self.handle.notify_write_ended()
                self._end_capture()
                self.in_transaction = False
                self.txid = None
        return "ROLLBACK"

    def _done(self, sql, kw, status) -> StatementRun:
        return StatementRun(sql, kw, None, None, False, status=status)

    def _sqlite(self, fn):
        """Run a SQLite call, turning its errors into messages a user can act on."""
        try:
            return fn()
        except apsw.ExecTraceAbort:
            raise
        except apsw.BusyError as e:
            raise SqlError(
                f"could not serialize access due to a concurrent write ({e}); ROLLBACK and retry the transaction",
                code="serialization_failure",
            ) from e
        except apsw.InterruptError as e:
            raise SqlError("statement canceled", code="query_canceled") from e
        except apsw.AuthError as e:
            raise SqlError(
                f"not allowed: {e} (ATTACH, internal tables and pragmas that "
                "would weaken durability are reserved to the server)",
                code="not_allowed",
            ) from e
        except apsw.FullError as e:
            raise SqlError(f"disk full: {e}; nothing was committed", code="disk_full") from e
        except apsw.Error as e:
            raise SqlError(str(e)) from e


_COMMENT = re.compile(r"/\*.*?(\*/|$)|--[^\n]*", re.S)


def _is_plain_vacuum(sql: str) -> bool:
    """``VACUUM`` or ``VACUUM main``, nothing else (the engine runs a plain VACUUM,
    so anything more, such as ``VACUUM main INTO 'file'``, would be ignored)."""
    words = [w.strip('"[]`').upper() for w in _COMMENT.sub(" ", sql).replace(";", " ").split()]
    return words in (["VACUUM"], ["VACUUM", "MAIN"])


SEQUENCE_STEP_PREFIX = "UPDATE sqlite_sequence SET seq"


def pinning_sessions(engine: Engine, databases=None) -> list[dict]:
    """The sessions holding a snapshot (on ``databases``, if given), longest first:
    the ones that can keep a checkpoint from completing."""
    found = [p for s in list(engine.sessions) if (p := s.pinning()) is not None]
    if databases is not None:
        found = [p for p in found if p["database"] in databases]
    return sorted(found, key=lambda p: -p["seconds"])


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_VERBS = frozenset({*WRITE_VERBS, "SELECT", "VALUES"})


def statement_verb(sql: str) -> str:
    """The verb of a statement that starts with a WITH clause: the first of
    SELECT, VALUES, INSERT, REPLACE, UPDATE, DELETE outside parentheses,
    quotes and comments (every common table expression's body is in
    parentheses). "WITH" when there is none."""
    depth, i, n = 0, 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            i = sql.find(close, i + 1)
            if i < 0:
                break
        elif sql.startswith("--", i):
            i = sql.find("\n", i)
            if i < 0:
                break
        elif sql.startswith("/*", i):
            i = sql.find("*/", i + 2)
            if i < 0:
                break
            i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and (ch.isalpha() or ch == "_"):
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            word = sql[i:j].upper()
            if word in _VERBS:
                return word
            i = j
            continue
        i += 1
    return "WITH"


def status_for(kw: str, sql: str, rows: int, changes: int) -> str:
    if kw in ("SELECT", "VALUES", "WITH", "EXPLAIN", "PRAGMA"):
        return f"SELECT {rows}"
    if kw in ("INSERT", "REPLACE"):
        return f"INSERT {changes}"
    if kw in ("UPDATE", "DELETE"):
        return f"{kw} {changes}"
    words = sql.split()
    if kw in ("CREATE", "DROP", "ALTER") and len(words) > 1:
        second = words[1].upper()
        if second in ("UNIQUE", "TEMP", "TEMPORARY", "VIRTUAL") and len(words) > 2:
            second = words[2].upper()
        return f"{kw} {second}"
    return kw or "OK"
