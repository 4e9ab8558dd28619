"""How a tool stops when asked to: SIGTERM turned into the same exception as
Ctrl-C, and the words and exit status each of them ends with."""

from __future__ import annotations

import contextlib
import signal


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
