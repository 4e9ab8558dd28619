"""The systemd watchdog component on trio's mock clock."""

from __future__ import annotations

import trio

from rustydb_server.watchdog import Watchdog


class Notifier:
    def __init__(self, interval):
        self.interval = interval
        self.pings: list[float] = []

    def watchdog_interval(self):
        return self.interval

    def watchdog(self):
        self.pings.append(trio.current_time())


async def test_pings_every_interval(nursery, autojump_clock):
    notifier = Notifier(10.0)
    await nursery.start(Watchdog(notifier).run)
    await trio.sleep(35)
    assert notifier.pings == [0.0, 10.0, 20.0, 30.0]


async def test_without_a_watchdog_it_ends_at_once(autojump_clock):
    notifier = Notifier(None)
    async with trio.open_nursery() as nursery:
        await nursery.start(Watchdog(notifier).run)
    assert notifier.pings == []
