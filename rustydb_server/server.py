"""The server's root nursery: recovery, listeners, HTTP API, checkpointer, signals.

Everything the server runs is a task in one nursery opened here; shutting down
is cancelling it, after the wire listener has let running statements finish.
"""

from __future__ import annotations

import os
import signal
import time

import trio

from . import __version__, http_api, wire
from . import datadir as _datadir
from .archive.archiver import Archiver
from .backup.service import BackupService
from .engine.instance import Engine, FatalWalError
from .logsetup import get_logger
from .settings import to_seconds
from .wal.lsn import format_lsn

log = get_logger("rustydb.server")


class ServerState:
    """What the tasks of one running server share."""

    def __init__(self, settings, config_path, notifier):
        self.settings = settings
        self.config_path = config_path
        self.notifier = notifier
        self.engine: Engine | None = None
        self.phase = "starting"  # starting | running | stopping
        self.started = time.monotonic()
        self.shutdown_requested = trio.Event()
        self.on_settings_changed = None
        self.shutdown_mode = "graceful"
        self.exit_code = 0
        self.sessions: dict[int, wire.ClientConnection] = {}
        self.next_session_id = 1
        self.db_limiter = trio.CapacityLimiter(settings["max_connections"] + 4)
        self.checkpoint_wanted = trio.Event()
        self.backup_service = None
        self.archiver = None
        self.backup_handler = None
        self.root_nursery: trio.Nursery | None = None
        self.wire_address = None

    def request_shutdown(self, mode: str = "graceful", exit_code: int = 0) -> None:
        if not self.shutdown_requested.is_set():
            self.shutdown_mode = mode
            self.exit_code = exit_code
            self.shutdown_requested.set()

    def health(self) -> dict:
        engine = self.engine
        status = {"starting": "starting", "stopping": "unhealthy"}.get(self.phase, "healthy")
        if engine is not None and engine.fatal_error:
            status = "unhealthy"
        report = {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "phase": self.phase,
            "data_directory": {
                "path": self.settings["data_dir"],
                "state": engine.control.state if engine else "recovering",
            },
            "connections": len(self.sessions),
        }
        if engine is not None:
            report["wal"] = {
                "lsn": format_lsn(engine.wal.end_lsn),
                "flushed_lsn": format_lsn(engine.wal.flushed_lsn),
                "timeline": engine.control.timeline,
                "bytes_since_checkpoint": engine.wal_bytes_since_checkpoint(),
            }
            report["databases"] = sorted(engine.databases)
            if self.archiver is not None:
                report["archive"] = self.archiver.report()
            report["recovery"] = engine.recovery_stats
            if engine.fatal_error:
                report["error"] = engine.fatal_error
        return report


async def _watch_signals(state: ServerState) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await _reload(state)
            else:
                log.info("shutdown requested", signal=signal.Signals(signum).name)
                state.request_shutdown("graceful")


async def _reload(state: ServerState) -> None:
    state.notifier.reloading()
    try:
        changes = state.settings.reload()
        log.info(
            "configuration reloaded", applied=sorted(changes.applied), pending_restart=sorted(changes.pending_restart)
        )
    except Exception as e:  # a broken config file must not take the server down
        log.error("configuration reload failed; keeping the current settings", error=str(e))
    state.notifier.ready()


async def _checkpointer(state: ServerState) -> None:
    """Checkpoint every checkpoint_timeout, or sooner after checkpoint_wal_size of WAL."""
    engine = state.engine
    last = time.monotonic()
    while True:
        timeout_s = to_seconds("checkpoint_timeout", state.settings["checkpoint_timeout"])
        with trio.move_on_after(1.0):
            await state.checkpoint_wanted.wait()
        state.checkpoint_wanted = trio.Event()
        due_time = time.monotonic() - last >= timeout_s
        due_size = engine.wal_bytes_since_checkpoint() >= state.settings["checkpoint_wal_size"]
        if not (due_time or due_size):
            continue
        reason = "time" if due_time else "wal size"
        try:
            await trio.to_thread.run_sync(engine.checkpoint, reason)
        except FatalWalError:
            state.request_shutdown("fatal", exit_code=70)
            return
        except Exception as e:
            log.error("checkpoint failed", error=str(e))
        last = time.monotonic()


async def _watchdog(state: ServerState) -> None:
    interval = state.notifier.watchdog_interval()
    if not interval:
        return
    while True:
        state.notifier.watchdog()
        await trio.sleep(interval)


async def run(settings, config_path, notifier) -> int:
    """Run one server until shutdown; return the process exit code."""
    state = ServerState(settings, config_path, notifier)
    ddir = _datadir.DataDir(settings["data_dir"])
    ddir.lock("server")
    try:
        async with trio.open_nursery() as root:
            # The HTTP API comes up first, so health says "starting" (503) while
            # a long recovery runs instead of refusing connections.
            http_port = settings["http_port"]
            if http_port:
                await root.start(http_api.serve_http, state, settings["listen_address"], http_port)
            notifier.status("recovering")
            log.info("starting", version=__version__, data_dir=ddir.path, pid=os.getpid())
            state.engine = await trio.to_thread.run_sync(Engine.open, ddir, settings)
            token = trio.lowlevel.current_trio_token()
            # A failed WAL fsync is noticed in a worker thread; it stops the whole server.
            state.engine.on_fatal = lambda: trio.from_thread.run_sync(
                state.request_shutdown, "fatal", 70, trio_token=token
            )
            state.root_nursery = root
            state.backup_service = BackupService(state)
            state.backup_handler = state.backup_service.stream_to_client
            state.archiver = Archiver(state)
            state.on_settings_changed = state.archiver.poke
            try:
                await _serve(state, ddir, root)
            finally:
                state.backup_service.cancel_all()
                root.cancel_scope.cancel()
                await _close_engine(state)
                state.backup_service.close()
    finally:
        ddir.unlock()
    return state.exit_code


class StartupError(Exception):
    """The server cannot start for a reason the message names (a port in use, ...)."""


async def _serve(state: ServerState, ddir, root: trio.Nursery) -> None:
    settings = state.settings
    try:
        listeners = await trio.open_tcp_listeners(settings["port"], host=settings["listen_address"])
    except OSError as e:
        raise StartupError(
            f"cannot listen on {settings['listen_address']} port {settings['port']}: "
            f"{e.strerror or e}; check listen_address (--listen) and port (--port), and that "
            "no other program uses that port"
        ) from None
    state.wire_address = listeners[0].socket.getsockname()
    wire_scope = await root.start(wire.serve_wire, state, listeners)
    root.start_soon(_watch_signals, state)
    root.start_soon(_checkpointer, state)
    root.start_soon(state.archiver.run)
    root.start_soon(_watchdog, state)
    ddir.write_pid("server", port=settings["port"], http_port=settings["http_port"])
    state.phase = "running"
    state.notifier.ready()
    state.notifier.status(f"ready: accepting connections on port {settings['port']}")
    log.info("ready", port=settings["port"], http_port=settings["http_port"], listen=settings["listen_address"])
    await state.shutdown_requested.wait()
    state.phase = "stopping"
    state.notifier.stopping()
    state.notifier.status(f"stopping ({state.shutdown_mode})")
    log.info("stopping", mode=state.shutdown_mode)
    if state.shutdown_mode == "graceful":
        timeout = to_seconds("shutdown_timeout", settings["shutdown_timeout"])
        await wire.drain(state, wire_scope, timeout)
    else:
        await wire.abort_all(state, wire_scope)


async def _close_engine(state: ServerState) -> None:
    engine = state.engine
    # "immediate" is like PostgreSQL's: no checkpoint, recovery on the next start.
    clean = state.shutdown_mode == "graceful" and engine.fatal_error is None
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(engine.close, clean)
    log.info("stopped", mode=state.shutdown_mode, clean=clean, exit_code=state.exit_code)
