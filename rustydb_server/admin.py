"""Admin SQL that the server handles itself (never passed to SQLite).

Parsing is in ``admin_parse``; this module carries a parsed command out
against the running server, on behalf of one session's dispatcher
(``dispatch.py``), and says what happened in a result the dispatcher sends
like any other statement's.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from . import admin_parse as ap
from . import auth
from . import roles as roles_mod
from . import settings as settings_mod
from .archive import destination
from .audit import DENIED, OK, audit
from .backup import history as backup_history
from .backup.expire import ExpireFailed
from .engine.session import MAX_ROW_BYTES, SqlSession
from .errors import ReportedError
from .logsetup import get_logger
from .wal.lsn import format_lsn

if TYPE_CHECKING:
    from .forensics import live as forensics_live

log = get_logger("rustydb.admin")


@dataclasses.dataclass
class AdminResult:
    status: str
    columns: list[str] | None = None
    rows: list[list] | None = None
    notices: list[str] = dataclasses.field(default_factory=list)
    after: Callable[[], None] | None = None  # runs once the client has its answer


async def execute(dispatcher, cmd) -> AdminResult:
    handler = _HANDLERS[type(cmd)]
    action = _AUDITED.get(type(cmd))
    if action is None:
        return await handler(dispatcher, cmd)
    session = dispatcher.session
    who = {"user": getattr(session, "user", None), "peer": dispatcher.peer, "session": dispatcher.session_id}
    try:
        result = await handler(dispatcher, cmd)
    except ReportedError as e:
        audit(action, "failed", **who, **_audit_details(dispatcher, cmd, done=False), error=str(e))
        raise
    audit(action, "ok", **who, **_audit_details(dispatcher, cmd, done=True))
    return result


# The admin commands of the audit trail (audit.py), by the action they are logged as.
_AUDITED = {
    ap.AlterSystemSet: "alter_system",
    ap.AlterSystemReset: "alter_system",
    ap.Shutdown: "shutdown",
    ap.CreateRestorePoint: "restore_point",
    ap.ExpireBackups: "expire",
}


def _audit_details(dispatcher, cmd, *, done: bool) -> dict:
    """What an audited command did: the setting (with its new value once set: a
    refused value is not logged, it may be a password pasted in the wrong place),
    the shutdown's mode, the restore point's name."""
    if isinstance(cmd, ap.AlterSystemSet):
        details = {"statement": "ALTER SYSTEM SET", "setting": cmd.name}
        if done:
            name = settings_mod.lookup(cmd.name).name
            details["setting"] = name
            details["value"] = settings_mod.format_value(name, settings_mod.parse_value(name, cmd.raw_value))
        return details
    if isinstance(cmd, ap.AlterSystemReset):
        return {"statement": "ALTER SYSTEM RESET", "setting": cmd.name or "ALL"}
    if isinstance(cmd, ap.Shutdown):
        return {"mode": "immediate" if cmd.immediate else "graceful"}
    if isinstance(cmd, ap.ExpireBackups):
        return {"via": "sql", "dry_run": cmd.dry_run}
    return {"name": cmd.name}


# The privilege each admin statement needs (roles.may); SHOW and USE need none
# (USE is checked by the statements run after it).
_ACTIONS = {
    ap.AlterSystemSet: roles_mod.ALTER_SYSTEM,
    ap.AlterSystemReset: roles_mod.ALTER_SYSTEM,
    ap.Shutdown: roles_mod.SHUTDOWN,
    ap.Checkpoint: roles_mod.CHECKPOINT,
    ap.CreateRestorePoint: roles_mod.CREATE_RESTORE_POINT,
    ap.SwitchWal: roles_mod.SWITCH_WAL,
    ap.CreateDatabase: roles_mod.CREATE_DATABASE,
    ap.DropDatabase: roles_mod.DROP_DATABASE,
    ap.CreateRole: roles_mod.MANAGE_ROLES,
    ap.AlterRole: roles_mod.MANAGE_ROLES,
    ap.DropRole: roles_mod.MANAGE_ROLES,
    ap.Grant: roles_mod.MANAGE_ROLES,
    ap.ExpireBackups: roles_mod.TAKE_BACKUP,
}


def required_action(cmd) -> str | None:
    """What ``cmd`` needs the privilege of, as named in "permission denied for ..."."""
    return _ACTIONS.get(type(cmd))


def _settings_not_saved(e: OSError) -> ReportedError:
    """rustydb.auto.toml could not be written: the setting is unchanged."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ReportedError(
            f"the disk is full: cannot save rustydb.auto.toml ({e.strerror or e}); the setting "
            "was not changed. Free disk space and run ALTER SYSTEM again",
            "disk_full",
        )
    return ReportedError(f"cannot save rustydb.auto.toml ({e.strerror or e}); the setting was not changed", "io_error")


def _thread(dispatcher, fn, *args):
    return trio.to_thread.run_sync(fn, *args, limiter=dispatcher.services.db_limiter)


async def _alter_set(dispatcher, cmd: ap.AlterSystemSet) -> AdminResult:
    services = dispatcher.services
    data_dir = services.settings["data_dir"]
    try:
        setting = settings_mod.lookup(cmd.name)
        dest = _archive_dest_after(
            services.settings, setting.name, settings_mod.parse_value(setting.name, cmd.raw_value)
        )
        if dest is not None:
            await _thread(dispatcher, _prepare_archive_dest, dest, services.settings)
        for extra in _archive_extra_dests_after(services.settings, setting.name, cmd.raw_value):
            await _thread(dispatcher, _prepare_archive_dest, extra, services.settings)
        value = settings_mod.set_auto(data_dir, setting.name, cmd.raw_value)
        result = services.settings.reload()
    except settings_mod.SettingError as e:
        raise ReportedError(str(e), "invalid_setting") from None
    except OSError as e:
        raise _settings_not_saved(e) from None
    shown = settings_mod.format_value(setting.name, value)
    log.info("ALTER SYSTEM SET", setting=setting.name, value=shown, session=dispatcher.session_id)
    notices = []
    if setting.context == settings_mod.RESTART:
        notices.append(f"{setting.name} = {shown} is saved; it takes effect after a restart")
    elif setting.name not in result.applied and services.settings.source(setting.name) == "command line":
        notices.append(f"{setting.name} is saved, but a command-line flag overrides it until restart")
    services.settings_changed()
    return AdminResult("ALTER SYSTEM", notices=notices)


def _archive_dest_after(settings, name: str, value) -> str | None:
    """The archive_dest that archiving would use once ``name = value`` is set
    (None: archiving would stay off, or the setting changes nothing now)."""
    if name not in ("archive_mode", "archive_dest") or settings.source(name) == settings_mod.SOURCE_CLI:
        return None
    mode = value if name == "archive_mode" else settings["archive_mode"]
    dest = value if name == "archive_dest" else settings["archive_dest"]
    if not mode or not dest:
        return None
    if settings_mod.is_url(dest):
        return dest
    return os.path.normpath(os.path.join(settings["data_dir"], dest))


def _archive_extra_dests_after(settings, name: str, raw_value) -> list[str]:
    """The archive_extra_dests to make or probe once ``name = raw_value`` is set (none while archiving is off)."""
    if name not in ("archive_mode", "archive_extra_dests") or settings.source(name) == settings_mod.SOURCE_CLI:
        return []
    value = settings_mod.parse_value(name, raw_value)
    mode = value if name == "archive_mode" else settings["archive_mode"]
    extras = value if name == "archive_extra_dests" else settings["archive_extra_dests"]
    return list(extras or []) if mode and settings["archive_dest"] else []


def _prepare_archive_dest(dest: str, settings=None) -> None:
    try:
        made = destination.prepare(dest, settings=settings, probe=True)
    except destination.ArchiveDestError as e:
        raise ReportedError(f"{e}. The setting was not changed", "invalid_setting") from None
    if made:
        log.info("archive_dest created", path=dest, mode="0700")


async def _alter_reset(dispatcher, cmd: ap.AlterSystemReset) -> AdminResult:
    services = dispatcher.services
    try:
        settings_mod.reset_auto(services.settings["data_dir"], cmd.name)
        services.settings.reload()
    except settings_mod.SettingError as e:
        raise ReportedError(str(e), "invalid_setting") from None
    except OSError as e:
        raise _settings_not_saved(e) from None
    log.info("ALTER SYSTEM RESET", setting=cmd.name or "ALL", session=dispatcher.session_id)
    services.settings_changed()
    return AdminResult("ALTER SYSTEM")


async def _show(dispatcher, cmd: ap.Show) -> AdminResult:
    settings = dispatcher.services.settings
    if cmd.name is None:
        rows = [list(r) for r in settings_mod.show_all(settings)]
        return AdminResult("SHOW", ["name", "setting", "unit", "context", "source", "description"], rows)
    special = _special_show(dispatcher, cmd.name.lower())
    if special is not None:
        return AdminResult("SHOW", [cmd.name.lower()], [[special]])
    try:
        setting = settings_mod.lookup(cmd.name)
    except settings_mod.SettingError as e:
        raise ReportedError(str(e), "invalid_setting") from None
    value = settings_mod.format_value(setting.name, settings[setting.name])
    return AdminResult("SHOW", [setting.name], [[value]])


def _special_show(dispatcher, name: str):
    engine = dispatcher.services.engine
    if name == "server_version":
        from . import __version__

        return __version__
    if name in ("wal_lsn", "current_wal_lsn"):
        return format_lsn(engine.wal.end_lsn)
    if name == "timeline":
        return str(engine.control.timeline)
    if name == "databases":
        return ", ".join(sorted(engine.databases))
    if name == "role":
        return dispatcher.role.name
    return None


async def _shutdown(dispatcher, cmd: ap.Shutdown) -> AdminResult:
    mode = "immediate" if cmd.immediate else "graceful"
    log.info("SHUTDOWN requested", mode=mode, session=dispatcher.session_id, peer=dispatcher.peer)
    return AdminResult(
        "SHUTDOWN",
        notices=[f"the server is shutting down ({mode})"],
        after=lambda: dispatcher.services.lifecycle.request_shutdown(mode),
    )


async def _checkpoint(dispatcher, cmd) -> AdminResult:
    result = await dispatcher.services.checkpointer.checkpoint()
    if not result["complete"]:
        pinned = result.get("pinned_by") or []
        who = "; ".join(
            f"session {p['session']}" + (f" ({p['peer']})" if p["peer"] else "") + f" for {p['seconds']:g} s"
            for p in pinned[:5]
        )
        return AdminResult(
            "CHECKPOINT",
            notices=[
                "checkpoint incomplete: a long-running reader kept SQLite from copying every "
                "page; the redo point did not move" + (f"; holding a snapshot: {who}" if who else "")
            ],
        )
    return AdminResult("CHECKPOINT")


async def _restore_point(dispatcher, cmd: ap.CreateRestorePoint) -> AdminResult:
    lsn = await _thread(dispatcher, dispatcher.services.engine.create_restore_point, cmd.name)
    return AdminResult("CREATE RESTORE POINT", ["restore_point", "lsn"], [[cmd.name, format_lsn(lsn)]])


async def _switch_wal(dispatcher, cmd) -> AdminResult:
    lsn = await _thread(dispatcher, dispatcher.services.engine.switch_wal)
    return AdminResult("SWITCH WAL", ["lsn"], [[format_lsn(lsn)]])


async def _create_database(dispatcher, cmd: ap.CreateDatabase) -> AdminResult:
    created = await _thread(dispatcher, dispatcher.services.engine.create_database, cmd.name, cmd.if_not_exists)
    notices = [] if created else [f'database "{cmd.name}" already exists, skipping']
    return AdminResult("CREATE DATABASE", notices=notices)


async def _drop_database(dispatcher, cmd: ap.DropDatabase) -> AdminResult:
    current = dispatcher.session.handle if dispatcher.session else None
    dropped = await _thread(dispatcher, dispatcher.services.engine.drop_database, cmd.name, cmd.if_exists, current)
    notices = [] if dropped else [f'database "{cmd.name}" does not exist, skipping']
    return AdminResult("DROP DATABASE", notices=notices)


async def _use(dispatcher, cmd: ap.Use) -> AdminResult:
    await _thread(dispatcher, dispatcher.session.use, cmd.name)
    return AdminResult("USE")


def _role_store(dispatcher) -> roles_mod.RoleStore:
    return dispatcher.services.role_store


def _save_roles(dispatcher, roles: roles_mod.Roles, what: str, name: str) -> None:
    try:
        _role_store(dispatcher).save(roles)
    except OSError as e:
        code = "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"
        raise ReportedError(f"cannot save the roles file ({e.strerror or e}); the role was not changed", code) from None
    audit("role", OK, user=dispatcher.role.name, peer=dispatcher.peer, statement=what, role=name)


def _role_changes(options: ap.RoleOptions) -> dict:
    changes = {}
    if options.login is not None:
        changes["login"] = options.login
    if options.password is not None:
        changes["verifier"] = auth.format_verifier(options.password)
    elif options.clear_password:
        changes["verifier"] = None
    if options.attribute is not None:
        changes["attribute"] = options.attribute
    elif options.clear_attribute:
        changes["attribute"] = None
    return changes


async def _create_role(dispatcher, cmd: ap.CreateRole) -> AdminResult:
    changes = _role_changes(cmd.options)
    try:
        roles = _role_store(dispatcher).roles.create(roles_mod.Role(cmd.name, **changes))
    except roles_mod.RoleError as e:
        raise ReportedError(str(e), "role_error") from None
    _save_roles(dispatcher, roles, "CREATE ROLE", cmd.name)
    return AdminResult("CREATE ROLE")


async def _alter_role(dispatcher, cmd: ap.AlterRole) -> AdminResult:
    try:
        roles = _role_store(dispatcher).roles.alter(cmd.name, **_role_changes(cmd.options))
    except roles_mod.RoleError as e:
        raise ReportedError(str(e), "role_error") from None
    _save_roles(dispatcher, roles, "ALTER ROLE", cmd.name)
    return AdminResult("ALTER ROLE")


async def _drop_role(dispatcher, cmd: ap.DropRole) -> AdminResult:
    try:
        roles = _role_store(dispatcher).roles.drop(cmd.name, cmd.if_exists)
    except roles_mod.RoleError as e:
        raise ReportedError(str(e), "role_error") from None
    if roles is None:
        return AdminResult("DROP ROLE", notices=[f'role "{cmd.name}" does not exist, skipping'])
    _save_roles(dispatcher, roles, "DROP ROLE", cmd.name)
    return AdminResult("DROP ROLE")


async def _grant(dispatcher, cmd: ap.Grant) -> AdminResult:
    store = _role_store(dispatcher)
    privileges = roles_mod.privileges_of(cmd.privilege)
    if cmd.revoke and cmd.privilege == "WRITE":
        privileges = frozenset({roles_mod.WRITE})
    try:
        change = store.roles.revoke if cmd.revoke else store.roles.grant
        roles = change(cmd.role, cmd.database, privileges)
    except roles_mod.RoleError as e:
        raise ReportedError(str(e), "role_error") from None
    verb = "REVOKE" if cmd.revoke else "GRANT"
    _save_roles(dispatcher, roles, verb, cmd.role)
    return AdminResult(verb)


_HANDLERS = {
    ap.AlterSystemSet: _alter_set,
    ap.AlterSystemReset: _alter_reset,
    ap.Show: _show,
    ap.Shutdown: _shutdown,
    ap.Checkpoint: _checkpoint,
    ap.CreateRestorePoint: _restore_point,
    ap.SwitchWal: _switch_wal,
    ap.CreateDatabase: _create_database,
    ap.DropDatabase: _drop_database,
    ap.Use: _use,
    ap.CreateRole: _create_role,
    ap.AlterRole: _alter_role,
    ap.DropRole: _drop_role,
    ap.Grant: _grant,
}


# --- SHOW BACKUP SCHEDULE (the backup scheduler, schedule/scheduler.py) ---
async def _show_backup_schedule(dispatcher, cmd: ap.ShowBackupSchedule) -> AdminResult:
    scheduler = dispatcher.services.backups.scheduler
    if scheduler is None:
        raise ReportedError("this server runs no backup scheduler", "not_available")
    return AdminResult("SHOW", list(scheduler.SHOW_COLUMNS), scheduler.show_rows())


_HANDLERS[ap.ShowBackupSchedule] = _show_backup_schedule


# --- SHOW BACKUPS (the backup history, backup/history.py) ---
async def _show_backups(dispatcher, cmd: ap.ShowBackups) -> AdminResult:
    rows = await _thread(dispatcher, dispatcher.services.backups.history)
    return AdminResult("SHOW", list(backup_history.SHOW_COLUMNS), backup_history.show_rows(rows))


_HANDLERS[ap.ShowBackups] = _show_backups


# --- UNDO TRANSACTION and AS OF (forensics/) ---
def _require(dispatcher, allowed, what: str) -> None:
    """Refuse, as a missing privilege is refused, unless ``allowed(role, database)``."""
    database = dispatcher.session.database
    if not allowed(dispatcher._current_role(), database):
        audit("privilege", DENIED, user=dispatcher.role.name, peer=dispatcher.peer, privilege=what)
        raise ReportedError(f"permission denied for {what}", "permission_denied")


# UNDO and AS OF import the forensics modules (and the WAL reading behind them)
# when first used, not at the server's start, which would wait for them.
def _undo_request(cmd: ap.UndoTransaction) -> forensics_live.UndoRequest:
    from .forensics import live as forensics_live
    from .restore.pitr import PitrError, parse_time

    if cmd.txid is not None:
        return forensics_live.UndoRequest(txid=cmd.txid, mode=cmd.mode)
    try:
        start, end = parse_time(cmd.from_time), parse_time(cmd.to_time)
    except PitrError as e:
        raise ReportedError(str(e).replace("recovery target time", "time"), "syntax_error") from None
    if start > end:
        raise ReportedError("the range's start time is after its end time", "syntax_error")
    return forensics_live.UndoRequest(from_us=start, to_us=end, table=cmd.table, mode=cmd.mode)


async def _undo(dispatcher, cmd: ap.UndoTransaction) -> AdminResult:
    session = dispatcher.session
    database = session.database
    _require(dispatcher, roles_mod.may_write, f'writing to database "{database}"')
    if session.in_transaction:
        raise ReportedError(
            "UNDO cannot run inside a transaction block; COMMIT or ROLLBACK first", "active_transaction"
        )
    request = _undo_request(cmd)
    from .forensics import live as forensics_live

    engine = dispatcher.services.engine
    who = {"user": getattr(session, "user", None), "peer": dispatcher.peer, "session": dispatcher.session_id}
    asked = {"database": database, "mode": cmd.mode}
    asked.update({"txid": cmd.txid} if cmd.txid is not None else {"from": cmd.from_time, "to": cmd.to_time})
    if cmd.table:
        asked["table"] = cmd.table

    def new_session():
        return SqlSession(engine, database, dispatcher.session_id, peer=dispatcher.peer, user=session.user)

    try:
        outcome = await _thread(dispatcher, forensics_live.undo, engine, new_session, database, request)
    except ReportedError as e:
        audit("undo", "failed", **who, **asked, error=str(e))
        raise
    audit("undo", OK, **who, **asked, undone=outcome.undone, new_txid=outcome.txid, rows=outcome.rows)
    log.info("transactions undone", undone=outcome.undone, txid=outcome.txid, rows=outcome.rows, database=database)
    rows = [[outcome.txid, table, count] for table, count in sorted(outcome.rows.items())]
    undone = ", ".join(map(str, outcome.undone[:20])) + (
        f" and {len(outcome.undone) - 20} more" if len(outcome.undone) > 20 else ""
    )
    notices = [f"undid transaction{'s' if len(outcome.undone) > 1 else ''} {undone} as transaction {outcome.txid}"]
    if outcome.skipped:
        notices.append(f"{outcome.skipped} row(s) changed since were left as they are (NONCONFLICTING)")
    return AdminResult("UNDO", ["txid", "table", "rows_restored"], rows, notices)


async def _as_of(dispatcher, cmd: ap.AsOf) -> AdminResult:
    database = dispatcher.session.database
    _require(dispatcher, roles_mod.may_read, f'database "{database}"')
    from .forensics import asof as forensics_asof
    from .forensics import live as forensics_live
    from .restore.pitr import PitrError, parse_time

    if cmd.txid is not None:
        query = forensics_asof.AsOfQuery(cmd.sql, cmd.table, txid=cmd.txid)
    else:
        try:
            query = forensics_asof.AsOfQuery(cmd.sql, cmd.table, time_us=parse_time(cmd.time))
        except PitrError as e:
            raise ReportedError(str(e).replace("recovery target time", "AS OF time"), "syntax_error") from None
    engine = dispatcher.services.engine
    try:
        columns, rows = await _thread(dispatcher, forensics_live.as_of, engine, database, query, MAX_ROW_BYTES)
    except forensics_asof.AsOfRefused as e:
        raise ReportedError(str(e), "as_of_refused") from None
    return AdminResult(f"SELECT {len(rows)}", columns, rows)


_HANDLERS[ap.UndoTransaction] = _undo
_HANDLERS[ap.AsOf] = _as_of


# --- EXPIRE BACKUPS [DRY RUN] (retention in the running server, backup/expire.py) ---
EXPIRE_COLUMNS = ["action", "kind", "id", "type", "location", "reason"]


async def _expire_backups(dispatcher, cmd: ap.ExpireBackups) -> AdminResult:
    expirer = dispatcher.services.backups.expirer
    if expirer is None:
        raise ReportedError("this server runs no retention", "not_available")
    try:
        doc = await expirer.run(dry_run=cmd.dry_run)
    except ExpireFailed as e:
        raise ReportedError(str(e), "expire_failed") from None
    refused = {r["backup_id"]: r["reason"] for r in doc["refused"]}
    verb = "would expire" if cmd.dry_run else "expired"
    rows = []
    for b in doc["backups"]:
        if b["backup_id"] in refused:
            rows.append(["refused", "backup", b["backup_id"], b["type"], b["location"], refused[b["backup_id"]]])
        else:
            rows.append([verb, "backup", b["backup_id"], b["type"], b["location"], b["reason"]])
    for s in doc["segments"]:
        rows.append([verb, "wal segment", s["segment"], f"timeline {s['timeline']}", s["path"], s["reason"]])
    notices = []
    for x in doc.get("extra_archives") or []:  # archive_extra_dests, each expired on its own
        for s in x["segments"]:
            if s["removed"] or cmd.dry_run:
                rows.append([verb, "wal segment", s["segment"], f"timeline {s['timeline']}", s["path"], s["reason"]])
        if x["error"]:
            notices.append(f"archived WAL in {x['destination']} not expired: {x['error']}")
    notice = (
        f"{'Dry run: ' if cmd.dry_run else ''}{len(doc['backups']) - len(refused)} backup(s) and "
        f"{len(doc['segments'])} WAL segment(s) {verb}; {len(doc['kept'])} backup(s) kept"
    )
    return AdminResult("EXPIRE BACKUPS", EXPIRE_COLUMNS, rows, notices=[notice, *notices])


_HANDLERS[ap.ExpireBackups] = _expire_backups
