"""argparse ``type=`` converters for the tools' numeric flags; each refuses a
bad value with a message argparse turns into a usage error (exit status 2)."""

from __future__ import annotations

import argparse

#: More threads than this only use memory (each keeps chunks in flight).
MAX_THREADS = 64


def thread_count(text: str) -> int:
    """--threads: 1 to MAX_THREADS, like the API's "threads"."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}")
    return value


def niceness(text: str) -> int:
    """--nice: a CPU niceness from 0 to 19."""
    value = _whole_number(text)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{value} is not a niceness from 0 to 19")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
