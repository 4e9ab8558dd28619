"""argparse ``type=`` converters for the tools' numeric flags and the shared
``--as-of`` point in time; each refuses a bad value with a message argparse
turns into a usage error (exit status 2)."""

from __future__ import annotations

import argparse

from ..restore.pitr import PitrError, Target, parse_time
from ..wal.lsn import parse_lsn

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


def as_of(text: str):
    """--as-of: a point in the WAL's history, the shorthand of the --recovery-target-*
    options: 'YYYY-MM-DD HH:MM:SS' (local time) or ISO 8601 with a zone = a time,
    txid:N = a transaction id, lsn:X/Y = an LSN. Returns a recovery Target
    (inclusive: the state just after that point)."""
    kind, sep, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if sep and kind == "txid":
        try:
            value = int(rest.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: txid:N takes a whole number, e.g. txid:1042") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: a txid is at least 1")
        return Target("txid", value)
    if sep and kind == "lsn":
        try:
            return Target("lsn", parse_lsn(rest.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: lsn:X takes an LSN like lsn:0/1A2B3C4D") from None
    try:
        return Target("time", parse_time(text))
    except PitrError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a point in time: give 'YYYY-MM-DD HH:MM:SS' (local time), ISO 8601 "
            "with a zone, txid:N or lsn:X/Y"
        ) from None
