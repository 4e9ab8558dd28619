"""The server's lifecycle: its phase and the one request that ends it.

Every component that may stop the server (SHUTDOWN, a signal, a WAL failure)
gets this object; the run module waits for the request and then cancels.
Also the error for a server that cannot start, raised by the components that
bind ports and reported by ``rusty-db-server``.
"""

from __future__ import annotations

import time

import trio

STARTING, RUNNING, STOPPING = "starting", "running", "stopping"


class StartupError(Exception):
    """The server cannot start for a reason the message names (a port in use, ...)."""


class Lifecycle:
    def __init__(self) -> None:
        self.phase = STARTING
        self.started = time.monotonic()
        self.shutdown_mode = "graceful"  # graceful | immediate | fatal
        self.exit_code = 0
        self._shutdown_requested = trio.Event()

    @property
    def stopping(self) -> bool:
        return self.phase == STOPPING

    def request_shutdown(self, mode: str = "graceful", exit_code: int = 0) -> None:
        """Ask for a stop; the first request decides how."""
        if not self._shutdown_requested.is_set():
            self.shutdown_mode = mode
            self.exit_code = exit_code
            self._shutdown_requested.set()

    async def wait_for_shutdown(self) -> None:
        await self._shutdown_requested.wait()
