"""Timeline history files and the choice of a new timeline.

A restored server must never write WAL under segment names its old history
already used, so after a restore (or a point-in-time recovery) it continues
on a new timeline. ``wal/<TTTTTTTT>.history`` records where that timeline
branched off: one line per ancestor, oldest first, ``timeline<TAB>switch
LSN in hex<TAB>reason``. The archiver copies these files next to the archived
segments, and recovery follows them to go from one timeline to the next.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import NamedTuple

from .. import fileops as _fileops
from ..repository import location
from ..repository.base import RepositoryError

HISTORY_SUFFIX = ".history"
_HISTORY = re.compile(r"([0-9A-F]{8})\.history")


class HistoryError(Exception):
    """A history file is missing or unreadable."""


class HistoryMissing(HistoryError):
    """A timeline has no history file (as opposed to a damaged one)."""


class Switch(NamedTuple):
    """One line of a history file: ``timeline`` ended at ``lsn`` for ``reason``."""

    timeline: int
    lsn: int
    reason: str


def history_name(timeline: int) -> str:
    return f"{timeline:08X}{HISTORY_SUFFIX}"


def list_history_timelines(directory: str) -> list[int]:
    """The timelines that have a history file in ``directory`` (a path or an s3:// prefix), in order."""
    return sorted(int(m.group(1), 16) for n in location.listdir(directory) if (m := _HISTORY.fullmatch(n)))


def format_history(entries: Iterable[tuple[int, int, str]]) -> str:
    return "".join(f"{tl}\t{lsn:X}\t{reason}\n" for tl, lsn, reason in entries)


# One line: a timeline in decimal, an LSN in hex, the reason. ASCII digits
# only (int() would also take "+1", " 1", "1_0" or "١"), and a timeline a
# segment name can hold: these numbers become the names of segment files.
_LINE = re.compile(r"([0-9]{1,10})\t([0-9A-Fa-f]{1,16})(?:\t([^\x00]*))?")


def parse_history(text: str, path: str = "history") -> list[Switch]:
    """The lines of a history file; HistoryError for one that is not exactly
    ``timeline<TAB>lsn<TAB>reason`` with a timeline from 1 to 2**32-1."""
    entries = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is None or not 1 <= int(m.group(1)) < 2**32:
            raise HistoryError(f"{path} line {i} is not 'timeline<TAB>lsn<TAB>reason' (timeline 1 to {2**32 - 1})")
        entries.append(Switch(int(m.group(1)), int(m.group(2), 16), m.group(3) or ""))
    return entries


def read_history(directory: str, timeline: int) -> list[Switch]:
    """Ancestors of ``timeline`` (oldest first); empty for timeline 1, which has none."""
    if timeline == 1:
        return []
    path = location.join(directory, history_name(timeline))
    try:
        raw = location.read_bytes(path)
    except FileNotFoundError:
        raise HistoryMissing(f"history file {path} for timeline {timeline} is missing") from None
    except RepositoryError as e:
        raise HistoryError(f"cannot read history file {path}: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HistoryError(f"history file {path} is not text (damaged, or not a history file)") from None
    return parse_history(text, path)


def branch_point(history: list[Switch]) -> Switch | None:
    """Where a timeline with this history began: its parent and the parent's switch LSN.

    A timeline's first record is at that LSN, usually part-way through a
    segment whose bytes before it are zero (the parent's records up to there
    live in the parent's segment of the same number): a reader of the
    timeline starts at the switch LSN, never at its first segment's start.
    None for timeline 1, which branched from nothing.
    """
    return history[-1] if history else None


def path_to(history: list[Switch], timeline: int) -> list[tuple[int, int | None, int | None]]:
    """The stretches of WAL that make up ``timeline``'s history, oldest first:
    ``(timeline, from LSN or None for its beginning, to LSN or None for its end)``."""
    stretches: list[tuple[int, int | None, int | None]] = []
    start: int | None = None
    for switch in history:
        stretches.append((switch.timeline, start, switch.lsn))
        start = switch.lsn
    stretches.append((timeline, start, None))
    return stretches


def next_timeline(used: Iterable[int]) -> int:
    """A timeline above every one in ``used`` (segments or history files seen anywhere)."""
    return max(used, default=0) + 1


def branch(ancestors: list[Switch], timeline: int, lsn: int, reason: str) -> list[Switch]:
    """The history of a timeline that leaves ``timeline`` (whose own history is ``ancestors``) at ``lsn``."""
    return [*ancestors, Switch(timeline, lsn, reason)]


def write_history(
    directory: str, timeline: int, entries: list[Switch], fileops: _fileops.FileOps = _fileops.REAL
) -> str:
    """Write ``timeline``'s history file atomically (temp, fsync, rename, fsync dir); return its path."""
    path = os.path.join(directory, history_name(timeline))
    fileops.write_file_atomic(path, format_history(entries).encode())
    return path
