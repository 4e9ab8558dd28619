"""A doorbell: a trio.Event that rearms itself for whoever waits on it.

Rung any number of times while no one listens, it wakes the next wait once;
that is all a component needs to hear "there is work" without polling.
"""

from __future__ import annotations

import trio


class Doorbell:
    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Return once rung since the last wait returned."""
        await self._event.wait()
        self._event = trio.Event()
