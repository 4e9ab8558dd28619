"""What the backup and restore tools show while they work and when they finish.

A progress bar goes to stderr only when stderr is a terminal, so logs, pipes
and cron mails never fill with carriage returns; ``--json`` summaries are one
line on stdout so scripts can parse them with ``jq``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Self, TextIO

MIB = 1024 * 1024
BAR_WIDTH = 30
REDRAW_INTERVAL = 0.1  # seconds; redrawing on every chunk would cost more than the work


def human_size(size: int) -> str:
    """Bytes as people read them: "512 B", "3.4 MB", "1.2 GB"."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def mb_per_second(size: int, seconds: float) -> float:
    # A restore of a tiny database can finish within the clock's resolution.
    return round(size / MIB / seconds, 1) if seconds > 0 else 0.0


def print_json(summary: dict, out: TextIO | None = None) -> None:
    """One line of JSON on stdout, flushed, for scripts."""
    out = out or sys.stdout
    out.write(json.dumps(summary, separators=(",", ":"), sort_keys=False) + "\n")
    out.flush()


def fail(prog: str, message: str) -> int:
    """Print a user-facing error (what failed, why, what to do) and return exit code 1."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


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

    def advance(self, amount: int) -> None:
        self.update(self.done + amount)

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stopping, a cron job's timeout), raised in the main
    thread as Ctrl-C is, so the same clean-up runs: no ``.partial`` backup, no
    staging directory, no lock-only data directory left behind."""


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped a tool, in words, and the exit status that says so."""
    if isinstance(exc, Terminated):
        return "stopped by SIGTERM", 143
    return "interrupted", 130


@contextlib.contextmanager
def sigterm_interrupts():
    """While inside, SIGTERM raises Terminated; the old handler comes back after."""

    def raise_terminated(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread (a caller embedding the tool): leave it be
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


#: More threads than this only use memory (each keeps chunks in flight).
MAX_THREADS = 64


def thread_count(text: str) -> int:
    """argparse type for --threads: 1 to MAX_THREADS, like the API's "threads"."""
    import argparse

    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts such as --threads."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
