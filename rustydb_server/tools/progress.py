"""The progress bar the backup and restore tools show while they work.

It goes to stderr only when stderr is a terminal, so logs, pipes and cron
mails never fill with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Self, TextIO

from .output import human_size, mb_per_second

BAR_WIDTH = 30
REDRAW_INTERVAL = 0.1  # seconds; redrawing on every chunk would cost more than the work


class Progress:
    """A one-line bar on a terminal; silent anywhere else."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = _is_terminal(self.stream)
        self.enabled = enabled
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._shown = False

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn_at >= REDRAW_INTERVAL or (self.total and done >= self.total):
            self._drawn_at = now
            self._draw(now)

    def finish(self) -> None:
        """End the bar's line so the next output starts on a fresh one."""
        if self.enabled and self._shown:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0) if self.total else 0.0
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        rate = mb_per_second(self.done, now - self.started)
        line = (
            f"\r{self.label} [{bar}] {fraction * 100:5.1f}% "
            f"{human_size(self.done)}/{human_size(self.total)} {rate:.1f} MB/s"
        )
        self.stream.write(line.ljust(79))
        self.stream.flush()
        self._shown = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
