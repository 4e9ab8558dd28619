"""systemd service notification (sd_notify) for Type=notify units.

A thin wrapper over sdnotify, which already handles abstract sockets
(NOTIFY_SOCKET starting with "@"). Outside systemd (NOTIFY_SOCKET unset)
every call is a no-op, so the server calls these unconditionally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            # sdnotify swallows send errors: a lost notification must never
            # take the database down.
            self._notifier = sdnotify.SystemdNotifier()

    @property
    def enabled(self) -> bool:
        return self._notifier is not None and self._notifier.socket is not None

    def send(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str | None = None) -> None:
        """Startup finished: recovery done and listeners up."""
        self.send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload;
        # older versions ignore it.
        usec = int(os_monotonic_usec())
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self) -> None:
        """Reload finished: systemd expects READY=1 again after RELOADING=1."""
        self.send("READY=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before systemd gives up on a long start or stop."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None without a watchdog."""
        return watchdog_interval(os.environ)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; a child that
    # inherited the environment must not ping on its parent's behalf.
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


def os_monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram, and sdnotify
    # encodes as latin-1, so anything beyond ASCII would arrive garbled.
    flat = " ".join(str(text).splitlines())
    return flat.encode("ascii", "replace").decode("ascii")
