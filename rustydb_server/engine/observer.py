"""What the engine tells the rest of the server, through an observer given to ``Engine.open``.

The engine calls these from whichever thread did the work, sometimes with its
locks held: an observer must be quick and must not call back into the engine.
This base class ignores everything, for the tools and tests that open an
engine on its own.
"""

from __future__ import annotations


class EngineObserver:
    def wal_failed(self, reason: str) -> None:
        """The WAL could not be made durable; nothing more will be acknowledged."""

    def checkpoint_due(self) -> None:
        """The WAL since the redo point crossed checkpoint_wal_size."""

    def segment_ready(self, segment: str) -> None:
        """A completed segment was marked ``.ready`` for the archiver."""

    def segment_started(self) -> None:
        """The current segment got its first record (archive_timeout counts from here)."""
