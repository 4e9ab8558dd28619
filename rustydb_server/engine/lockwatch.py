"""Locks that know how long they have been held and waited for.

A commit that cannot finish (a lock taken twice, a disk that stopped
answering an fsync) leaves the event loop running and health answering while
no write can commit. The engine's locks record who holds them since when and
who waits since when, so ``stall`` can say, without blocking, that one has
been held or waited for longer than a bound: the health check and the
systemd watchdog act on it.

A holder doing work known to take long (VACUUM, reading the WAL for an
incremental backup) says so with ``bounded=False``; neither its hold nor the
waits behind it count until it lets go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable


@dataclasses.dataclass(eq=False)
class _Use:
    purpose: str
    since: float
    bounded: bool = True


class WatchedLock:
    """A non-reentrant lock (``threading.Lock``) with its holder and waiters on record."""

    def __init__(self, what: str, default_purpose: str, clock: Callable[[], float] = time.monotonic):
        self.what = what
        self._default_purpose = default_purpose
        self._clock = clock
        self._lock = threading.Lock()
        self._state = threading.Lock()  # guards the fields below, never held while blocking
        self._holder: _Use | None = None
        self._waiters: set[_Use] = set()
        self._long_hold_ended = float("-inf")

    def acquire(self, purpose: str | None = None, bounded: bool = True) -> None:
        use = _Use(purpose or self._default_purpose, self._clock(), bounded)
        with self._state:
            self._waiters.add(use)
        try:
            self._lock.acquire()
        finally:
            with self._state:
                self._waiters.discard(use)
        with self._state:
            use.since = self._clock()
            self._holder = use

    def release(self) -> None:
        with self._state:
            if self._holder is not None and not self._holder.bounded:
                self._long_hold_ended = self._clock()
            self._holder = None
        self._lock.release()

    def __enter__(self) -> WatchedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextlib.contextmanager
    def held(self, purpose: str, bounded: bool = True):
        self.acquire(purpose, bounded)
        try:
            yield self
        finally:
            self.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def stall(self, bound: float, now: float | None = None) -> str | None:
        """Why this lock is stuck (held, or waited for, longer than ``bound``
        seconds), or None."""
        now = self._clock() if now is None else now
        with self._state:
            holder = self._holder
            if holder is not None and not holder.bounded:
                return None
            if holder is not None and now - holder.since > bound:
                return f"{self.what} has been held by {holder.purpose} for {now - holder.since:.0f} s"
            for waiter in self._waiters:
                waited = now - max(waiter.since, self._long_hold_ended)
                if waited > bound:
                    return f"{waiter.purpose} has waited {waited:.0f} s for {self.what}"
        return None
