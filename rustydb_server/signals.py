"""Signals: SIGTERM and SIGINT stop the server gracefully, SIGHUP reloads its settings."""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

from .lifecycle import Lifecycle
from .logsetup import get_logger
from .notify import Notifier

log = get_logger("rustydb.server")


class SignalWatcher:
    def __init__(self, settings, notifier: Notifier, lifecycle: Lifecycle, settings_changed: Callable[[], None]):
        self._settings = settings
        self._notifier = notifier
        self._lifecycle = lifecycle
        self._settings_changed = settings_changed

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                else:
                    log.info("shutdown requested", signal=signal.Signals(signum).name)
                    self._lifecycle.request_shutdown("graceful")

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            changes = self._settings.reload()
            log.info(
                "configuration reloaded",
                applied=sorted(changes.applied),
                pending_restart=sorted(changes.pending_restart),
            )
        except Exception as e:  # a broken config file must not take the server down
            log.error("configuration reload failed; keeping the current settings", error=str(e))
        else:
            self._settings_changed()
        self._notifier.reloaded()
