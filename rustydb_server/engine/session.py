"""One client session's SQL: its SQLite connection, transaction state and change capture.

Synchronous, one call at a time per session: in a trio worker thread, or, for
a statement known to be short, on the event loop itself (``run`` with a
deadline: reads and plain BEGINs, stopped by SQLite's progress handler at
the deadline and never waiting for a lock, so they can run again in a worker;
and writes of one row inside a transaction, never stopped but never waiting
for a lock either). Write transactions are captured with SQLite's session extension: the
changes since the last DDL statement form one ``changeset`` step, and each DDL
statement is a ``ddl`` step of its own text, so replay sees them in order.

Two more things end a changeset step early. A SAVEPOINT does, so that ROLLBACK
TO it can drop the steps taken since (a DDL statement it undid must not be
replayed). And a transaction whose capture has grown past CUT_SESSION_BYTES
does, at the end of a statement: the session extension builds a changeset
holding the GIL (a 1M-row one for about 0.4 s of CPU, during which no other
client is served), so a bulk load of many statements is captured in pieces of
bounded size as it goes rather than all at its COMMIT. Replay applies the
pieces in order, which gives what one changeset of the whole would.
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
from . import bulk, database, rows_image
from .authorizer import decide
from .database import STATE_TABLE
from .instance import Engine, EngineError
from .statement_costs import shape

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

#: A transaction's capture is cut into a changeset step at the end of a
#: statement once the session extension holds this much memory for it (about
#: 240,000 inserted rows), which bounds the time one changeset takes to build.
CUT_SESSION_BYTES = 16 * 1024 * 1024


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


class RunInWorker(Exception):
    """An inline run stopped before it did anything lasting (its deadline
    passed, a lock was busy, or it turned out not to be a read): run the
    statement again in a worker thread."""

    def __init__(self, why: str, *, at_deadline: bool = False):
        super().__init__(why)
        self.at_deadline = at_deadline


_APPLIED_LSN = f"SELECT value FROM main.{STATE_TABLE} WHERE key = 'applied_lsn'"

#: Keywords of the statements that may run inline as reads (with SQLite's
#: own word that they are read-only).
INLINE_READ_KEYWORDS = frozenset({"SELECT", "VALUES", "WITH"})
#: An inline statement's deadline is checked every this many SQLite VM steps.
PROGRESS_STEPS = 200
#: Keywords of the writes that may run inline inside a transaction, when
#: SQLite's plan says they touch at most one row (``_point_plan``).
INLINE_WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
# The only plan step a point write may have: a search of one rowid.
_POINT_STEP = re.compile(r"SEARCH .+ USING INTEGER PRIMARY KEY \(rowid=\?\)")
#: How many statement shapes a session remembers the plan verdict of.
POINT_PLANS = 256


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
        # Tables the current capture leaves to rows steps (engine/bulk.py).
        self._bulk = bulk.BulkInserts()
        # The open savepoints, innermost last: (name, steps taken before it).
        self._savepoints: list[tuple[str, int]] = []
        self._internal = False
        self._ddl_ops: set[int] = set()
        self._trace: dict = {}
        # An inline run (on the event loop): its deadline (time.perf_counter),
        # and whether the progress handler stopped it there.
        self._inline = False
        self._inline_write = False
        self._deadline = 0.0
        self._deadline_passed = False
        # What the last successful run was ("read", "begin" or None: a kind
        # that never runs inline) and how long it took (seconds).
        self.last_kind: str | None = None
        self.last_seconds = 0.0
        # Durable-only visibility: after an inline run, the WAL LSN the flush
        # must reach before its answer goes out (the caller waits for it,
        # off the event loop); 0 when none. ``_snapshot_durable``: the open
        # transaction's snapshot was found durable (it never changes).
        self.durable_wait = 0
        self._snapshot_durable = False
        # Statement shape -> whether SQLite's plan makes it a point write
        # (cleared at each DDL statement of this session).
        self._point_plans: dict[str, bool] = {}
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
            conn = database.open_client_connection(handle.path, vfs=self.engine.fileops.sqlite_vfs)
        except Exception:
            self.engine.detach_session(handle)
            raise
        self.close()
        self.handle, self.conn = handle, conn
        bulk.attach_image_schema(conn)
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
        if dbname == rows_image.SCHEMA and not self._internal:
            # the server's own scratch database for rows steps
            self._audit_refusal(apsw.mapping_authorizer_function.get(op, str(op)), p1, p2)
            return apsw.SQLITE_DENY
        decision = decide(op, p1, p2, internal=self._internal)
        if op in bulk.WRITE_OPS and dbname == "main":
            self._bulk.written.add(bulk.fold(p1))
        if decision == apsw.SQLITE_OK and op in _DDL_OPS and dbname not in ("temp", rows_image.SCHEMA):
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
        if self._inline:
            return False  # never wait on the event loop: the worker will
        if attempts == 0:
            self._busy_since = time.monotonic()
        if time.monotonic() - self._busy_since > database.BUSY_TIMEOUT_MS / 1000:
            return False
        self.handle.wait_for_writer(0.005)
        return True

    def _past_deadline(self) -> bool:
        """SQLite's progress handler during an inline run: stop it at its deadline."""
        if time.perf_counter() > self._deadline:
            self._deadline_passed = True
            # A write cannot be stopped: SQLite would roll back its whole
            # transaction. It runs to its end; its time over the budget sends
            # it back to the worker from then on.
            return not self._inline_write
        return False

    def _txid_current(self) -> int:
        if self.txid is None:
            self.txid = self.engine.allocate_txid()
        return self.txid

    def _exec_trace(self, cursor, sql, bindings) -> bool:
        self._trace["description"] = cursor.description
        self._trace["readonly"] = cursor.is_readonly
        if self._trace.get("require_readonly"):
            return cursor.is_readonly
        # only an INSERT (or WITH ... INSERT) can be a bulk insert; any write
        # statement can touch a table whose rows are pending
        if self._capture is not None and (self._bulk.tables or self._trace.get("kw") in ("INSERT", "WITH")):
            self._internal = True
            try:
                self._bulk.before(self, sql, self._trace.get("sql"), cursor.description)
            finally:
                self._internal = False
        return True

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
        if self._bulk.tables:
            self._internal = True
            try:
                self._steps.extend(self._bulk.cut(self.conn))
            except (apsw.Error, MemoryError) as e:
                # The transaction must not commit without these rows.
                self._internal = False
                self._abandon_transaction()
                raise SqlError(
                    f"the rows of a bulk insert could not be logged ({e}); the transaction was rolled back",
                    code="bulk_log_failed",
                ) from e
            finally:
                self._internal = False

    def _abandon_transaction(self) -> None:
        if self.in_transaction:
            self.rollback()
        else:
            self._abort_autocommit()

    def _end_capture(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self._bulk.drop()
        self._steps = []
        self._savepoints = []

    def _restart_capture(self, *, keep: bool) -> None:
        """A new session object from here on; the old one's changes become a
        step (``keep``) or are dropped (they were rolled back)."""
        if keep:
            self._cut_changeset()
        else:
            if self._capture is not None:
                self._capture.close()
                self._capture = None
            self._bulk.drop()
        self._start_capture()

    # ------------------------------------------------------------ statements
    def start(self, sql: str, keywords: list[str]) -> StatementRun:
        """Run a statement up to its first row; the caller fetches and finishes."""
        kw = keywords[0] if keywords else ""
        kw2 = keywords[1] if len(keywords) > 1 else ""
        if kw in ("BEGIN",):
            return self._begin(sql)
        if kw in ("COMMIT", "END"):
            return self._done(sql, kw, self.commit())
        if kw == "ROLLBACK" and not _is_rollback_to(sql):
            return self._done(sql, kw, self.rollback())
        if kw in ("SAVEPOINT", "RELEASE") or (
            kw == "ROLLBACK" and kw2 in ("TO", "TRANSACTION") and _is_rollback_to(sql)
        ):
            if not self.in_transaction:
                raise SqlError(f"{kw} can only be used in transaction blocks; BEGIN first", code="no_transaction")
            return self._savepoint(sql, kw)
        if kw == "VACUUM":
            return self._vacuum(sql, keywords)
        if self.in_transaction:
            return self._execute(sql, kw, autocommit_write=False)
        if kw == "PRAGMA" and not self._is_logged_pragma(sql):
            # Connection pragmas (foreign_keys, ...) are no-ops inside a transaction.
            return self._execute(sql, kw, autocommit_write=False)
        if kw in READ_KEYWORDS and not (kw == "PRAGMA" and self._is_logged_pragma(sql)):
            try:
                return self._execute(sql, kw, autocommit_write=False, require_readonly=True)
            except apsw.ExecTraceAbort:
                pass  # a write behind a read keyword (WITH ... INSERT): take the write path
        return self._autocommit_write(sql, kw)

    def _savepoint(self, sql: str, kw: str) -> StatementRun:
        name = savepoint_name(sql)
        if name is None:
            raise SqlError(
                f"cannot read the savepoint name in {sql.strip()[:80]!r}; write it as "
                "SAVEPOINT name, RELEASE [SAVEPOINT] name or ROLLBACK [TRANSACTION] TO [SAVEPOINT] name",
                code="syntax_error",
            )
        if kw == "SAVEPOINT":
            # What was captured before the savepoint becomes a step of its
            # own: ROLLBACK TO drops only the steps after it.
            self._restart_capture(keep=True)
            run = self._execute(sql, kw, autocommit_write=False)
            self._savepoints.append((name, len(self._steps)))
            return run
        run = self._execute(sql, kw, autocommit_write=False)
        found = [i for i, (n, _) in enumerate(self._savepoints) if n == name]
        if found:
            at = found[-1]
            if kw == "RELEASE":
                del self._savepoints[at:]  # it and every savepoint after it
            else:
                # ROLLBACK TO keeps the savepoint and undoes everything after
                # it, DDL included: so are the steps taken since.
                del self._steps[self._savepoints[at][1] :]
                del self._savepoints[at + 1 :]
                self._restart_capture(keep=False)
        return run

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
        bulk.detach_image_schema(self.conn)  # VACUUM attaches its scratch database in its place
        try:
            self.engine.vacuum(self.handle, self.conn)
        except apsw.Error as e:
            raise SqlError(str(e)) from e
        finally:
            self._internal = False
            bulk.attach_image_schema(self.conn)
        return self._done(sql, "VACUUM", "VACUUM")

    def _begin(self, sql: str) -> StatementRun:
        if self.in_transaction:
            raise SqlError("there is already a transaction in progress", code="active_transaction")
        self.engine.ensure_caught_up(self.handle)
        self._sqlite(lambda: self.conn.execute(sql))
        self.in_transaction = True
        self._snapshot_durable = False
        self._steps = []
        self._savepoints = []
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
        is_ddl = kw in DDL_KEYWORDS or (kw == "PRAGMA" and self._is_logged_pragma(sql))
        if is_ddl:
            self._point_plans.clear()
        if is_ddl and self._capture is not None:
            self._cut_changeset()
        self._ddl_ops.clear()
        self._trace.clear()
        self._trace["require_readonly"] = require_readonly
        self._trace["sql"] = sql
        self._trace["kw"] = kw
        self._bulk.written.clear()
        cursor = self.conn.cursor()
        cursor.exec_trace = self._exec_trace
        # While rows steps are pending, every statement is prepared afresh, so
        # that the authorizer names each table it writes (bulk.py).
        can_cache = not is_ddl and not self._bulk.tables
        try:
            self._sqlite(lambda: self._bulk.run(self, lambda: cursor.execute(sql, can_cache=can_cache)))
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

    def run(self, sql: str, keywords: list[str], batch_rows: int, *, deadline: float | None = None):
        """Start a statement and fetch its first batch in one call (one thread hop).

        Returns (run, first_rows, finished): when the result fits in one batch
        the statement is also finished (and an autocommit write committed), and
        ``finished`` is (status, count); otherwise it is None and the caller
        fetches the rest. ``last_kind`` and ``last_seconds`` then say what it
        was and how long it took.

        With a ``deadline`` (time.perf_counter) the statement runs inline, on
        the caller's thread, the event loop's: only a read or a plain BEGIN
        may, and it raises RunInWorker instead of waiting for a lock, of
        running past the deadline, or of being anything else. Nothing lasting
        has happened then, so it can run again in a worker.
        """
        started = time.perf_counter()
        self.last_kind = None
        self.durable_wait = 0
        if self.open_since is None:
            self.open_since = time.monotonic()
        if deadline is not None:
            self._inline, self._deadline, self._deadline_passed = True, deadline, False
            self.conn.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
        try:
            self._trace.clear()
            run = self._start_inline(sql, keywords) if deadline is not None else self.start(sql, keywords)
            rows = self.fetch(run, batch_rows) if run.columns is not None else []
            wait = self._visibility_wait(run)
            if wait:
                if deadline is None:
                    self.engine.flush_wal(wait)  # in a worker thread: wait here
                else:
                    self.durable_wait = wait  # on the event loop: the caller waits
            if run.columns is None or run.done:
                finished = self.finish(run)
                self.last_kind = self._inline_kind(run, keywords)
                self.last_seconds = time.perf_counter() - started
                return run, rows, finished
        except BaseException:
            self._settle()
            raise
        finally:
            if deadline is not None:
                self._inline = self._inline_write = False
                self.conn.set_progress_handler(None)
        self.last_seconds = time.perf_counter() - started
        return run, rows, None

    def _visibility_wait(self, run: StatementRun) -> int:
        """The LSN the WAL must be durable to before ``run``'s answer goes
        out (0: it is already). A statement's snapshot may include commits
        SQLite made before their WAL flush; none of what it read may reach
        the client before they are durable.

        Every commit a snapshot sees wrote its WAL record before SQLite
        committed, so when the WAL is durable to its end as read now, after
        the snapshot was taken, there is nothing to wait for. Otherwise the
        database's ``applied_lsn`` read now (in the same snapshot while the
        transaction or statement is open, else in a newer one, whose value
        is never lower: a database's commits store increasing LSNs) names the
        last commit it can see; the flush must pass that record's LSN.
        """
        if run.status or run.autocommit_write or self._snapshot_durable:
            return 0  # no snapshot read (BEGIN, COMMIT, ...), or its own commit flushed
        wal = self.engine.wal
        end = wal.end_lsn
        if wal.flushed_lsn < end:
            self._internal = True
            try:
                applied = self._sqlite(lambda: self.conn.execute(_APPLIED_LSN).fetchall())[0][0]
            finally:
                self._internal = False
            if wal.flushed_lsn <= applied:
                return applied + 1
        if self.in_transaction and not self.conn.getautocommit():
            self._snapshot_durable = True
        return 0

    def _start_inline(self, sql: str, keywords: list[str]) -> StatementRun:
        kw = keywords[0] if keywords else ""
        if kw == "BEGIN" and _plain_begin(keywords) and not self.handle.pending:
            return self._begin(sql)
        if kw in INLINE_READ_KEYWORDS:
            return self._execute(sql, kw, autocommit_write=False, require_readonly=True)
        if self._may_write_inline(kw, sql):
            # A busy write lock raises RunInWorker before anything changed
            # (SQLite takes it at the statement's start, and rolls back only
            # the statement on SQLITE_BUSY): the worker then waits for it.
            self._inline_write = True
            return self._execute(sql, kw, autocommit_write=False)
        raise RunInWorker(kw)

    def _may_write_inline(self, kw: str, sql: str) -> bool:
        """A write inside a transaction that may run on the event loop: not a
        bulk insert in the making (rows steps pending, or a VALUES list that
        large), so it is captured by the session extension as it runs."""
        return (
            kw in INLINE_WRITE_KEYWORDS
            and self.in_transaction
            and self._capture is not None
            and not self._bulk.tables
            and len(sql) < bulk.VALUES_BYTES
        )

    def _point_plan(self, sql: str) -> bool:
        """Whether SQLite's plan for ``sql`` writes at most one row whatever
        its literals: an INSERT of VALUES, or a search of one rowid, and
        nothing else (no scan, no subquery). Learned writes run inline
        without a deadline (they cannot be stopped), so only these may."""
        key = shape(sql)
        known = self._point_plans.get(key)
        if known is None:
            try:
                plan = self.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            except apsw.Error:
                plan = None
            known = plan is not None and all(_POINT_STEP.fullmatch(step[3]) for step in plan)
            if len(self._point_plans) >= POINT_PLANS:
                self._point_plans.clear()
            self._point_plans[key] = known
        return known

    def _inline_kind(self, run: StatementRun, keywords: list[str]) -> str | None:
        """Whether a statement that just finished may run inline next time."""
        kw = run.keyword
        if kw == "BEGIN":
            return "begin" if _plain_begin(keywords) else None
        if kw in INLINE_READ_KEYWORDS and not run.autocommit_write and self._trace.get("readonly"):
            return "read"
        if not run.autocommit_write and self._may_write_inline(kw, run.sql) and self._point_plan(run.sql):
            return "point_write"
        return None

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
                    try:
                        row = next(run.cursor, None)
                    except apsw.Error as e:
                        self._sqlite(functools.partial(_reraise, e))  # what the user is told
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
        elif self.in_transaction and self._capture is not None and self._capture.memory_used > CUT_SESSION_BYTES:
            self._restart_capture(keep=True)  # see the module's doc
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
        if not any(kind in ("changeset", "rows") for kind, _ in steps):
            return steps
        if not self.conn.table_exists("main", "sqlite_sequence"):  # no query: a look in the schema
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
        self._snapshot_durable = False
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
                self._snapshot_durable = False
                self.txid = None
        return "ROLLBACK"

    def _done(self, sql, kw, status) -> StatementRun:
        return StatementRun(sql, kw, None, None, False, status=status)

    def _sqlite(self, fn):
        """Run a SQLite call, turning its errors into messages a user can act on."""
        try:
            return fn()
        except apsw.ExecTraceAbort:
            if self._inline:
                raise RunInWorker("not a read") from None
            raise
        except (apsw.BusyError, apsw.InterruptError) as e:
            if self._inline and (isinstance(e, apsw.BusyError) or (self._deadline_passed and not self._inline_write)):
                raise RunInWorker(str(e), at_deadline=self._deadline_passed) from None
            raise self._sqlite_error(e) from e
        except apsw.Error as e:
            raise self._sqlite_error(e) from e

    @staticmethod
    def _sqlite_error(e: apsw.Error) -> SqlError:
        """What a user is told of SQLite's error ``e``."""
        if isinstance(e, apsw.BusyError):
            return SqlError(
                f"could not serialize access due to a concurrent write ({e}); ROLLBACK and retry the transaction",
                code="serialization_failure",
            )
        if isinstance(e, apsw.InterruptError):
            return SqlError("statement canceled", code="query_canceled")
        if isinstance(e, apsw.AuthError):
            return SqlError(
                f"not allowed: {e} (ATTACH, internal tables and pragmas that "
                "would weaken durability are reserved to the server)",
                code="not_allowed",
            )
        if isinstance(e, apsw.FullError):
            return SqlError(f"disk full: {e}; nothing was committed", code="disk_full")
        return SqlError(str(e))


def _reraise(error: BaseException):
    raise error


def _plain_begin(keywords: list[str]) -> bool:
    """A BEGIN that takes no lock (deferred): it never waits for a writer."""
    return len(keywords) < 2 or keywords[1] not in ("IMMEDIATE", "EXCLUSIVE")


_COMMENT = re.compile(r"/\*.*?(\*/|$)|--[^\n]*", re.S)


def _is_plain_vacuum(sql: str) -> bool:
    """``VACUUM`` or ``VACUUM main``, nothing else (the engine runs a plain VACUUM,
    so anything more, such as ``VACUUM main INTO 'file'``, would be ignored)."""
    words = [w.strip('"[]`').upper() for w in _COMMENT.sub(" ", sql).replace(";", " ").split()]
    return words in (["VACUUM"], ["VACUUM", "MAIN"])


SEQUENCE_STEP_PREFIX = "UPDATE sqlite_sequence SET seq"

_SKIP = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)
_TOKEN = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+')
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _tokens(sql: str, n: int) -> list[str]:
    """The first ``n`` words or quoted names of a statement, skipping comments."""
    out: list[str] = []
    pos = 0
    while len(out) < n:
        pos = _SKIP.match(sql, pos).end()
        m = _TOKEN.match(sql, pos)
        if not m:
            break
        out.append(m.group())
        pos = m.end()
    return out


def _is_rollback_to(sql: str) -> bool:
    """ROLLBACK [TRANSACTION] TO ..., as opposed to a plain ROLLBACK."""
    words = [t.upper() for t in _tokens(sql, 3)]
    return words[1:2] == ["TO"] or words[1:3] == ["TRANSACTION", "TO"]


def savepoint_name(sql: str) -> str | None:
    """The savepoint a SAVEPOINT, RELEASE or ROLLBACK TO statement names, as
    SQLite compares names (unquoted, ASCII letters folded); None if unreadable."""
    tokens = _tokens(sql, 6)
    words = [t.upper() for t in tokens]
    if not words:
        return None
    i = 1
    if words[0] == "ROLLBACK":
        if words[i : i + 1] == ["TRANSACTION"]:
            i += 1
        if words[i : i + 1] != ["TO"]:
            return None
        i += 1
    if words[0] in ("RELEASE", "ROLLBACK") and words[i : i + 1] == ["SAVEPOINT"] and len(tokens) > i + 1:
        i += 1
    if words[0] not in ("SAVEPOINT", "RELEASE", "ROLLBACK") or len(tokens) <= i:
        return None
    token = tokens[i]
    if token[:1] in ('"', "'", "`") and token[-1:] == token[:1] and len(token) > 1:
        token = token[1:-1].replace(token[0] * 2, token[0])
    elif token[:1] == "[" and token[-1:] == "]":
        token = token[1:-1]
    return token.translate(_ASCII_LOWER)


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
