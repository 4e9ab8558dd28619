"""Statement dispatch: what one client session's requests run, and how the answers go back.

The wire listener's connection (``wire.py``) moves bytes and hands each
request of an open session here. A query is one statement: the server's own
admin SQL goes to ``admin``, everything else to the session's SQLite
connection, and the columns, rows and completion stream back. A statement
known to be short (``engine/statement_costs.py``: a read, a plain BEGIN or a
one-row write in a transaction that ran in a worker thread within
``inline_statement_budget``) runs right here on
the event loop, with no thread hop, under a deadline: past it, or on a busy
lock, it stops having done nothing lasting and runs again in a worker.
Everything else runs in the session's own worker thread (``session_worker.py``:
a cheaper hand-off than trio's thread cache), interrupted after
``statement_timeout``. A backup request goes to the backup
service, which streams on the connection itself. Any ``ReportedError``
becomes an error message with its code; a fatal one ends the connection.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import time
from collections.abc import Callable

import trio

from rustydb_client.protocol import events
from rustydb_client.sqlsplit import leading_keywords, split_statements

from . import __version__, admin
from . import roles as roles_mod
from .admin_parse import may_be_as_of, parse_admin
from .audit import DENIED, audit
from .backup.service import BackupService
from .checkpointer import Checkpointer
from .datadir import DEFAULT_DATABASE
from .engine.instance import Engine
from .engine.session import RunInWorker, SqlError, SqlSession
from .engine.statement_costs import StatementCosts
from .errors import ReportedError
from .lifecycle import Lifecycle
from .logsetup import get_logger
from .session_worker import SessionWorker
from .settings import Settings, to_seconds

log = get_logger("rustydb.wire")


@dataclasses.dataclass(frozen=True)
class Services:
    """The server's parts that every session's statements act on."""

    engine: Engine
    settings: Settings
    lifecycle: Lifecycle
    checkpointer: Checkpointer
    backups: BackupService
    settings_changed: Callable[[], None]
    # The SQLite calls that run in trio's worker threads run under it (opening and
    # closing sessions, admin statements); a session's statements run in its
    # own worker thread (session_worker.py), one at a time.
    db_limiter: trio.CapacityLimiter
    role_store: roles_mod.RoleStore
    # Which statements are short enough to run on the event loop (learned).
    statement_costs: StatementCosts = dataclasses.field(default_factory=StatementCosts)


class Dispatcher:
    """One connection's session, from its opening to its close.

    ``conn`` is the connection answers go out on: ``send(*events)`` writes
    them in one go, and the backup service streams a backup through it.
    """

    def __init__(self, services: Services, conn, session_id: int):
        self.services = services
        self.conn = conn
        self.peer = conn.peer
        self.session_id = session_id
        self.role: roles_mod.Role = conn.role  # who the session acts as (wire.py's handshake)
        self.session: SqlSession | None = None
        # A backup streamed to this client, waiting for its BackupStored.
        self.awaiting_location = None
        # The thread the session's statements run in when not inline.
        self.worker = SessionWorker(f"session {session_id}")

    async def open_session(self, request: events.SessionRequested) -> events.Ready:
        """Open the session's SQLite connection; the answer the client waits for."""
        name = request.database or DEFAULT_DATABASE
        self.session = await trio.to_thread.run_sync(
            functools.partial(
                SqlSession, self.services.engine, name, self.session_id, peer=self.peer, user=request.user
            ),
            limiter=self.services.db_limiter,
        )
        log.info(
            "session opened",
            peer=self.peer,
            session=self.session_id,
            user=request.user,
            database=name,
            client=request.client,
        )
        return events.Ready(__version__, name, self.session_id)

    async def close(self) -> None:
        """Roll back whatever transaction is open and close the SQLite connection."""
        self._not_stored("the client disconnected before saying its backup file was stored")
        self.worker.close()
        if self.session is not None:
            session, self.session = self.session, None
            await trio.to_thread.run_sync(session.close, limiter=self.services.db_limiter)

    def interrupt(self) -> None:
        """Stop the running statement (it fails with query_canceled)."""
        if self.session is not None:
            self.session.interrupt()

    async def handle(self, request: events.Query | events.BackupRequested | events.BackupStored) -> None:
        """Answer one request of the open session."""
        if isinstance(request, events.BackupStored):
            await self._backup_stored(request)
            return
        self._not_stored(f"the client sent a {request.type} request instead of saying its backup file was stored")
        if isinstance(request, events.Query):
            await self._query(request)
        elif not self._allowed(roles_mod.TAKE_BACKUP):
            await self.conn.send(self._denied(roles_mod.TAKE_BACKUP))
        else:
            self.awaiting_location = await self.services.backups.stream_to_client(
                self.conn, request, user=self.session.user
            )

    async def _backup_stored(self, stored: events.BackupStored) -> None:
        awaiting, self.awaiting_location = self.awaiting_location, None
        if awaiting is None or awaiting.backup_id != stored.backup_id:
            await self.conn.send(
                events.Error(
                    "no_backup_pending",
                    f"backup {stored.backup_id} is not the backup this session just streamed; nothing was recorded",
                )
            )
            return
        if not (os.path.isabs(stored.location) or stored.location.startswith("s3://")):
            self.services.backups.not_stored(awaiting, f"the client named no absolute path ({stored.location!r})")
            await self.conn.send(
                events.Error("invalid_backup_request", f"{stored.location!r} is not an absolute path; not recorded")
            )
            return
        try:
            self.services.backups.client_stored(awaiting, stored.location)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("backup not recorded: disk full", backup_id=awaiting.backup_id, error=str(e))
            await self.conn.send(
                events.Error(
                    "disk_full",
                    f"the disk is full: the backup catalog could not record where backup {awaiting.backup_id} "
                    f"is ({e.strerror or e}); the file is complete. Free disk space on the data directory",
                )
            )
            return
        await self.conn.send(self._complete("BACKUP STORED", 0))

    def _not_stored(self, reason: str) -> None:
        awaiting, self.awaiting_location = self.awaiting_location, None
        if awaiting is not None:
            self.services.backups.not_stored(awaiting, reason)

    async def _query(self, query: events.Query) -> None:
        # One statement per query message, so every query gets exactly one
        # complete or error; rusty-db-cli and the client library split scripts.
        statements = split_statements(query.sql)
        if not statements:
            await self.conn.send(self._complete("EMPTY", 0))
            return
        if len(statements) > 1:
            await self.conn.send(
                events.Error(
                    "multiple_statements",
                    f"a query message holds {len(statements)} statements; send one statement "
                    "per query (rusty-db-cli splits scripts for you)",
                    statement_line=statements[1].line,
                )
            )
            return
        statement = statements[0]
        try:
            keywords = leading_keywords(statement.sql, 2)
            cmd = (
                parse_admin(statement.sql) if _maybe_admin(keywords) or _maybe_as_of(keywords, statement.sql) else None
            )
            action = self._denied_action(cmd, statement.sql, keywords)
            if action is not None:
                await self.conn.send(self._denied(action, statement.line))
            elif cmd is None:
                await self._sql(statement.sql, keywords, query.batch_rows)
            else:
                await self._admin(cmd)
        except ReportedError as e:
            if e.fatal:
                raise
            log.info("statement failed", session=self.session_id, code=e.code, error=str(e))
            await self.conn.send(events.Error(e.code, str(e), statement_line=statement.line))
        except OSError as e:
            # Whatever write a statement caused, a full disk is the client's
            # clear error, never an internal one that drops the connection.
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("statement failed: disk full", session=self.session_id, error=str(e))
            await self.conn.send(
                events.Error(
                    "disk_full",
                    f"the disk is full: {e.strerror or e}; the statement could not write what it "
                    "needed. Free disk space and run it again",
                    statement_line=statement.line,
                )
            )

    # ------------------------------------------------------- privileges
    def _allowed(self, action: str) -> bool:
        return roles_mod.may(self._current_role(), action)

    def _current_role(self) -> roles_mod.Role:
        """The session's role as the roles file has it now (ALTER ROLE and DROP ROLE
        apply to open sessions at their next statement)."""
        if self.role.name == roles_mod.SUPERUSER_ROLE:
            return self.role
        return self.services.role_store.roles.get(self.role.name) or roles_mod.Role(self.role.name)

    def _denied_action(self, cmd, sql: str, keywords: list[str]) -> str | None:
        """The action this statement needs and the session's role lacks, or None."""
        role = self._current_role()
        if role.superuser:
            return None
        if cmd is not None:
            action = admin.required_action(cmd)
            return action if action is not None and not roles_mod.may(role, action) else None
        database = self.session.database
        if not roles_mod.may_read(role, database):
            return f'database "{database}"'
        if not roles_mod.may_write(role, database) and not _reads_only(sql, keywords):
            return f'writing to database "{database}"'
        return None

    def _denied(self, action: str, line: int | None = None) -> events.Error:
        audit("privilege", DENIED, user=self.role.name, peer=self.peer, privilege=action)
        return events.Error("permission_denied", f"permission denied for {action}", statement_line=line)

    async def _admin(self, cmd) -> None:
        result = await admin.execute(self, cmd)
        answer = []
        if result.columns is not None:
            answer.append(events.Columns(result.columns))
            if result.rows:
                answer.append(events.Rows(result.rows))
        answer.extend(events.Notice(notice) for notice in result.notices)
        answer.append(self._complete(result.status, len(result.rows or ())))
        await self.conn.send(*answer)
        if result.after is not None:
            result.after()

    async def _sql(self, sql: str, keywords: list[str], batch_rows: int) -> None:
        session = self.session
        settings = self.services.settings
        budget = to_seconds("inline_statement_budget", settings["inline_statement_budget"])
        result = None
        if budget:
            costs = self.services.statement_costs
            key = costs.key(session.database, sql)
            if costs.may_inline(key):
                result = self._inline(key, sql, keywords, batch_rows, budget)
                if result is not None and session.durable_wait:
                    # What it read includes commits not yet durable: the
                    # answer waits for their flush, off the event loop.
                    await self.worker.run(self.services.engine.flush_wal, session.durable_wait)
        if result is None:
            result = await self._in_thread(session.run, sql, keywords, batch_rows)
            if budget:
                costs.record(key, session.last_seconds, session.last_kind, budget, inline=False)
        run, rows, finished = result
        answer = []
        if run.columns is not None:
            answer.append(events.Columns(run.columns))
            if rows:
                answer.append(events.Rows(rows))
        if finished is None:
            if answer:
                await self.conn.send(*answer)
                answer = []
            while True:
                rows = await self._in_thread(session.fetch, run, batch_rows)
                if rows:
                    await self.conn.send(events.Rows(rows))
                if run.done:
                    break
            finished = await self._in_thread(session.finish, run)
        answer.append(self._complete(*finished))
        # One write for a small answer: fewer syscalls and packets.
        await self.conn.send(*answer)

    def _inline(self, key, sql: str, keywords: list[str], batch_rows: int, budget: float):
        """Run a statement known to be short on the event loop, with no thread
        hop: the result of ``session.run``, or None when it must run in a
        worker after all (stopped at its deadline, a lock busy, not a read:
        nothing lasting was done). A statement_timeout shorter than the
        budget cancels it as it would in a worker."""
        costs = self.services.statement_costs
        session = self.session
        timeout = to_seconds("statement_timeout", self.services.settings["statement_timeout"])
        limit = min(budget, timeout) if timeout else budget
        started = time.perf_counter()
        try:
            result = session.run(sql, keywords, batch_rows, deadline=started + limit)
        except RunInWorker as stopped:
            if stopped.at_deadline:
                costs.ran_over(key, time.perf_counter() - started)
                if limit < budget:
                    raise SqlError("statement canceled", code="query_canceled") from None
            return None
        # A result larger than one batch leaves rows pending: never inline again.
        costs.record(key, session.last_seconds, session.last_kind if result[2] else None, budget, inline=True)
        return result

    async def _in_thread(self, fn, *args):
        """Run SQLite work in the session's worker thread, interrupting it after statement_timeout."""
        timeout = to_seconds("statement_timeout", self.services.settings["statement_timeout"])
        if not timeout:
            return await self.worker.run(fn, *args)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._interrupt_after, timeout)
                try:
                    return await self.worker.run(fn, *args)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The statement's own error (SqlError, ...) is what the caller reports.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _interrupt_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.interrupt()

    def _complete(self, status: str, rows: int) -> events.Complete:
        session = self.session
        return events.Complete(status, rows, session.database, session.in_transaction)


_ADMIN_WORDS = frozenset({"SHOW", "SHUTDOWN", "CHECKPOINT", "USE", "SWITCH", "GRANT", "REVOKE", "UNDO"})
_ADMIN_PAIRS = {
    "ALTER": {"SYSTEM", "ROLE"},
    "CREATE": {"RESTORE", "DATABASE", "ROLE"},
    "DROP": {"DATABASE", "ROLE"},
    "EXPIRE": {"BACKUPS"},
}

# What a role without WRITE on a database may run there: reading statements
# and transaction control. Conservative: a WITH naming a writing verb anywhere
# is refused, and so is any PRAGMA with an argument.
_READ_WORDS = frozenset({"SELECT", "VALUES", "EXPLAIN", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_WRITING_WORD = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|UPSERT)\b", re.IGNORECASE)


def _reads_only(sql: str, keywords: list[str]) -> bool:
    first = keywords[0] if keywords else ""
    if first in _READ_WORDS:
        return True
    if first == "WITH":
        return not _WRITING_WORD.search(sql)
    if first == "PRAGMA":
        return "=" not in sql and "(" not in sql
    return False


def _maybe_as_of(keywords: list[str], sql: str) -> bool:
    """A SELECT with an AS OF clause (admin.py serves it from the WAL)."""
    return bool(keywords) and keywords[0] in ("SELECT", "WITH") and may_be_as_of(sql)


def _maybe_admin(keywords: list[str]) -> bool:
    """Cheap first look, so ordinary SQL skips the admin parser."""
    if not keywords:
        return False
    first = keywords[0]
    if first in _ADMIN_WORDS:
        return True
    second = keywords[1] if len(keywords) > 1 else ""
    return second in _ADMIN_PAIRS.get(first, ())
