"""The server's root nursery: each component started in it, in order, and the stop.

As in hypercorn's trio worker, every component is a class given its
collaborators and started with ``nursery.start(component.run)``; each owns
its own tasks. Stopping is letting the wire listener finish (or interrupt)
its sessions, then cancelling the nursery; the engine is closed once every
component has stopped.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

import trio

from . import __version__, alerts
from . import datadir as _datadir
from .alerts import Alerter, ArchiveWatch
from .archive import destination, segment_file
from .archive.archiver import Archiver
from .audit import audit
from .backup.catalog import Catalog
from .backup.expire import ExpireFailed, Expirer
from .backup.service import BackupService
from .backup.tracking import ChangeTracking
from .checkpointer import Checkpointer
from .doorbell import Doorbell
from .engine.instance import Engine
from .engine_events import EngineEvents
from .http_access import TokenFileError, read_token
from .lifecycle import RUNNING, STOPPING, Lifecycle, StartupError
from .logsetup import get_logger
from .notify import Notifier
from .repository import location as repository_location
from .schedule.checks import CheckScheduler
from .schedule.scheduler import Scheduler
from .settings import to_seconds
from .signals import SignalWatcher
from .watchdog import Watchdog
from .wire import WireListener, tls_policy

log = get_logger("rustydb.server")


async def run(settings, notifier: Notifier) -> int:
    """Run one server until shutdown; return the process exit code."""
    lifecycle = Lifecycle()
    repository_location.configure(settings)  # s3:// locations opened with the server's repository_s3_* settings
    _check_archive_dest(settings)
    tls_policy(settings)  # a TLS setting that cannot work stops the start at once
    ddir = _datadir.DataDir(settings["data_dir"])
    ddir.lock("server")
    engine = None
    guard = None
    # Net changes since the latest backups, compacted as they commit.
    tracking = ChangeTracking()
    try:
        async with trio.open_nursery() as root:
            http = None
            if settings["http_port"] and _recovery_may_take_long(ddir):
                # Up before recovery, so health says "starting" (503) while a
                # long recovery runs instead of refusing connections.
                http = _http_api().HttpApi(settings, lifecycle)
                await root.start(http.run)
            elif settings["http_port"]:
                _check_http_token_file(settings)  # a bad token file stops the start before anything listens
            notifier.status("recovering")
            log.info("starting", version=__version__, data_dir=ddir.path, pid=os.getpid())
            checkpoint_due, archive_work = Doorbell(), Doorbell()
            events = EngineEvents(trio.lowlevel.current_trio_token(), lifecycle, checkpoint_due, archive_work)
            engine = await trio.to_thread.run_sync(
                functools.partial(
                    Engine.open,
                    ddir,
                    settings,
                    observer=events,
                    change_tracking=tracking,
                    archived_timelines=lambda: segment_file.archived_timelines(
                        destination.location(settings["archive_dest"])
                    ),
                )
            )

            checkpointer = Checkpointer(engine, settings, checkpoint_due)
            archiver = Archiver(engine, settings, archive_work)

            def settings_changed() -> None:
                _prepare_changed_archive_dest(settings)
                archiver.settings_changed()
                checkpointer.settings_changed()
                scheduler.settings_changed()
                checks.settings_changed()

            backups = BackupService(
                engine, settings, Catalog(ddir.path), wal_switched=archiver.retry_now, archive_failing=archiver.failing
            )
            scheduler = Scheduler(
                backups,
                settings,
                Doorbell(),
                has_full=lambda: engine.control.last_full_backup is not None,
                state_dir=ddir.path,
                fileops=engine.fileops,
            )
            backups.scheduler = scheduler
            # Retention in the running server, also after each scheduled backup;
            # alerts hear of every backup that ends.
            backups.expirer = Expirer(backups, settings)
            scheduler.after_backup.append(functools.partial(_expire_after_schedule, backups.expirer, settings))
            backups.catalog.listeners.append(alerts.backup_ended)
            alerter = Alerter(settings)
            await root.start(alerter.run)
            checks = CheckScheduler(settings, Doorbell(), data_dir=ddir.path, entries=backups.catalog.list)
            scheduler.checks = checks
            listener = WireListener(
                engine,
                settings,
                lifecycle,
                backups=backups,
                checkpointer=checkpointer,
                settings_changed=settings_changed,
            )
            await root.start(backups.run)
            await root.start(listener.run)
            if settings["http_port"] and http is None:
                # Nothing to recover: the SQL listener answers first, while the
                # HTTP stack (hypercorn, Starlette) is imported on a thread.
                http = (await trio.to_thread.run_sync(_http_api)).HttpApi(settings, lifecycle)
                await root.start(http.run)
            if http is not None:
                http.serve_running(engine, archiver, backups, listener.sessions)
            await root.start(SignalWatcher(settings, notifier, lifecycle, settings_changed).run)
            await root.start(checkpointer.run)
            await root.start(archiver.run)
            await root.start(ArchiveWatch(settings, archiver).run)
            await root.start(scheduler.run)
            await root.start(checks.run)
            await root.start(Watchdog(notifier, engine.stall).run)

            ddir.write_pid("server", port=settings["port"], http_port=settings["http_port"])
            lifecycle.phase = RUNNING
            notifier.ready()
            notifier.status(f"ready: accepting connections on port {settings['port']}")
            log.info("ready", port=settings["port"], http_port=settings["http_port"], listen=settings["listen_address"])

            await lifecycle.wait_for_shutdown()
            lifecycle.phase = STOPPING
            graceful = lifecycle.shutdown_mode == "graceful"
            guard = StopGuard(
                engine, (to_seconds("shutdown_timeout", settings["shutdown_timeout"]) if graceful else 0) + STOP_GRACE
            )
            guard.start()
            notifier.stopping()
            notifier.status(f"stopping ({lifecycle.shutdown_mode})")
            log.info("stopping", mode=lifecycle.shutdown_mode)
            if lifecycle.shutdown_mode == "graceful":
                await listener.drain(to_seconds("shutdown_timeout", settings["shutdown_timeout"]))
            else:
                await listener.abort()
            root.cancel_scope.cancel()
    finally:
        try:
            if engine is not None:
                await _close_engine(engine, lifecycle)
        finally:
            if guard is not None:
                guard.done()
            tracking.close()
            ddir.unlock()
    return lifecycle.exit_code


def _http_api():
    """The HTTP API's module, imported when the API starts (hypercorn and Starlette behind it)."""
    from . import http_api

    return http_api


def _recovery_may_take_long(ddir: _datadir.DataDir) -> bool:
    """Whether opening the engine may replay WAL: not after a clean stop or a restore.

    A clean stop's shutdown checkpoint and every restore (full, incremental,
    PITR) leave the redo point at the WAL's end, so the start replays
    nothing; a crash leaves everything since the last checkpoint. A control
    file that cannot be read is the engine's to report: the API starts first.
    """
    if not ddir.is_initialized():
        return False
    try:
        return ddir.read_control().state not in ("shutdown", "restored")
    except Exception:  # noqa: BLE001 - Engine.open says what is wrong with it
        return True


def _check_http_token_file(settings) -> None:
    """What the HTTP API checks as it starts, checked before the SQL listener opens."""
    try:
        read_token(settings["http_api_token_file"])
    except TokenFileError as e:
        raise StartupError(str(e)) from None


async def _expire_after_schedule(expirer: Expirer, settings, record: dict) -> None:
    """Retention after a scheduled backup completed: logged, audited, alerted on
    failure; never a failure of the backup."""
    if not settings["backup_retention_after_schedule"]:
        return
    try:
        doc = await expirer.run(dry_run=False)
    except ExpireFailed as e:
        log.error("retention after the scheduled backup failed", backup_id=record["backup_id"], error=str(e))
        audit("expire", "failed", user="scheduler", trigger="schedule", error=str(e))
        alerts.failure("expire", error=str(e), after_backup=record["backup_id"])
        return
    removed = [b["backup_id"] for b in doc["backups"] if b["removed"]]
    audit(
        "expire",
        "ok" if doc["ok"] else "failed",
        user="scheduler",
        trigger="schedule",
        backups=removed,
        segments=len(doc["segments"]),
        refused=doc["refused"] or None,
    )
    if doc["ok"]:
        alerts.success("expire", after_backup=record["backup_id"])
    else:
        alerts.failure("expire", error="; ".join(r["reason"] for r in doc["refused"]), after_backup=record["backup_id"])


def _prepare_changed_archive_dest(settings) -> None:
    """After ALTER SYSTEM or a reload: a newly named archive_dest is made as at start.
    ALTER SYSTEM has already made or refused it; a reload from the config file
    cannot be refused, so a destination that cannot be made is logged, and the
    archiver's failures (health "degraded") say so until it is fixed."""
    if not (settings["archive_mode"] and settings["archive_dest"]):
        return
    for dest in [settings["archive_dest"], *(settings["archive_extra_dests"] or [])]:
        try:
            made = destination.prepare(dest, settings=settings)
        except destination.ArchiveDestError as e:
            log.error("an archive destination cannot be used; archiving fails until it is fixed", error=str(e))
            continue
        if made:
            log.info("archive_dest created", path=dest, mode="0700")


def _check_archive_dest(settings) -> None:
    """With archiving on, archive_dest (from any source) is made or refused before anything starts."""
    if not (settings["archive_mode"] and settings["archive_dest"]):
        return
    try:
        made = destination.prepare(settings["archive_dest"], settings=settings)
    except destination.ArchiveDestError as e:
        source = settings.source("archive_dest")
        where = {
            "config file": f"the config file {settings.config_file}",
            "auto file": "rustydb.auto.toml (ALTER SYSTEM)",
        }.get(source, f"the {source}")
        raise StartupError(
            f"cannot start: {e} (archive_dest is set in {where}); fix it there, or turn archive_mode off"
        ) from None
    if made:
        log.info("archive_dest created", path=settings["archive_dest"], mode="0700")
    for dest in settings["archive_extra_dests"] or []:
        try:
            made = destination.prepare(dest, settings=settings)
        except destination.ArchiveDestError as e:
            raise StartupError(
                f"cannot start: {e} (in archive_extra_dests, from the {settings.source('archive_extra_dests')}); "
                "fix it there, or turn archive_mode off"
            ) from None
        if made:
            log.info("archive_dest created", path=dest, mode="0700")


#: How long a stop may take beyond shutdown_timeout: the listener gives
#: interrupted statements 5 s to end (WireListener.abort), then the components
#: stop and the engine closes.
STOP_GRACE = 6.0
#: The exit code of a stop that had to abandon work stuck in the engine.
EXIT_ABANDONED = 1


class StopGuard:
    """Ends the process when a stop cannot finish.

    Work stuck in a worker thread while holding one of the engine's locks (a
    commit whose SQLite step never returns) cannot be cancelled: trio waits
    for the thread and the engine's close for the lock, for ever, and SIGTERM
    would never stop the server. Once the stop has had ``after`` seconds
    (shutdown_timeout and the listener's grace), a lock held or waited for
    since before the stop began belongs to work that will not end: the guard
    logs which and why, and exits the process with EXIT_ABANDONED without a
    clean stop. Every acknowledged commit is durable in the WAL, so the next
    start recovers as after a crash. A stop still making progress (a shutdown
    checkpoint, which took its locks after the stop began) is left to finish.
    """

    def __init__(self, engine, after: float, exit: Callable[[int], None] = os._exit, poll: float = 1.0):
        self._engine = engine
        self._after = after
        self._exit = exit
        self._poll = poll
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-guard", daemon=True)

    def start(self) -> None:
        if self._engine is not None:
            self._began = self._engine.clock()
            self._thread.start()

    def done(self) -> None:
        self._finished.set()

    def _watch(self) -> None:
        clock, began = self._engine.clock, self._began
        if self._finished.wait(self._after):
            return
        while True:
            reason = self._engine.stall(bound=clock() - began)
            if reason is not None:
                log.error(
                    "the stop cannot finish: work in the engine did not end; exiting without a clean stop "
                    "(the next start recovers every committed transaction from the WAL)",
                    reason=reason,
                    seconds=round(clock() - began, 1),
                    exit_code=EXIT_ABANDONED,
                )
                self._exit(EXIT_ABANDONED)
                return
            if self._finished.wait(self._poll):
                return


async def _close_engine(engine: Engine, lifecycle: Lifecycle) -> None:
    # "immediate" is like PostgreSQL's: no checkpoint, recovery on the next start.
    clean = lifecycle.shutdown_mode == "graceful" and engine.fatal_error is None
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(engine.close, clean)
    log.info("stopped", mode=lifecycle.shutdown_mode, clean=clean, exit_code=lifecycle.exit_code)
