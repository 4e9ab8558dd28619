"""The engine's observer in the server: carries its reports to the trio thread.

The engine reports from worker threads (and, at startup, from the thread
running recovery); each report is handed to the trio run loop without
waiting, so an engine lock held meanwhile never waits on the event loop.
"""

from __future__ import annotations

import trio

from .doorbell import Doorbell
from .engine.observer import EngineObserver
from .lifecycle import Lifecycle

#: The exit code of a server stopped by a WAL failure (EX_SOFTWARE).
FATAL_EXIT_CODE = 70


class EngineEvents(EngineObserver):
    def __init__(self, token: trio.lowlevel.TrioToken, lifecycle: Lifecycle, checkpoint: Doorbell, archive: Doorbell):
        self._token = token
        self._lifecycle = lifecycle
        self._checkpoint = checkpoint
        self._archive = archive

    def _soon(self, fn, *args) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass  # the server has stopped; no one is left to tell

    def wal_failed(self, reason: str) -> None:
        self._soon(self._lifecycle.request_shutdown, "fatal", FATAL_EXIT_CODE)

    def checkpoint_due(self) -> None:
        self._soon(self._checkpoint.ring)

    def segment_ready(self, segment: str) -> None:
        self._soon(self._archive.ring)

    def segment_started(self) -> None:
        self._soon(self._archive.ring)
