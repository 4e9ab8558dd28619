"""The systemd watchdog: a ping every interval systemd asked for (WatchdogSec)."""

from __future__ import annotations

import trio

from .notify import Notifier


class Watchdog:
    def __init__(self, notifier: Notifier):
        self._notifier = notifier

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self._notifier.watchdog_interval()
        if not interval:
            return
        while True:
            self._notifier.watchdog()
            await trio.sleep(interval)
