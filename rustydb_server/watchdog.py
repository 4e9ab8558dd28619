"""The systemd watchdog: a ping every interval systemd asked for (WatchdogSec).

A ping says the server works, not just that its event loop turns: while the
engine reports a stall (a commit or checkpoint lock held or waited for longer
than ``engine_stall_timeout``, see ``Engine.stall``) no ping is sent, so
systemd restarts a server that can no longer commit. Recovery then replays
the WAL.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .logsetup import get_logger
from .notify import Notifier

log = get_logger("rustydb.watchdog")


class Watchdog:
    def __init__(self, notifier: Notifier, stall: Callable[[], str | None] = lambda: None):
        self._notifier = notifier
        self._stall = stall

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self._notifier.watchdog_interval()
        if not interval:
            return
        stalled = None
        while True:
            reason = self._stall()
            if reason is None:
                if stalled is not None:
                    log.info("the engine goes on again; watchdog pings resume")
                    self._notifier.status("ready")
                self._notifier.watchdog()
            elif stalled is None:
                log.critical(
                    "the engine cannot commit; watchdog pings stop so systemd restarts the server",
                    reason=reason,
                )
                self._notifier.status(f"stalled: {reason}")
            stalled = reason
            await trio.sleep(interval)
