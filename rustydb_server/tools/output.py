"""What the command-line tools print: sizes and rates as people read them,
one-line JSON summaries for scripts, and error lines.

``--json`` summaries are one line on stdout so scripts can parse them with
``jq``; errors go to stderr and say what failed, why and what to do.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

MIB = 1024 * 1024


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


def stdout_closed() -> int:
    """The reader of our output went away (``| head``): stop quietly with 1.

    stdout is pointed at /dev/null, so the interpreter's last flush at exit
    does not fail a second time with a traceback.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor (tests)
        pass
    return 1
