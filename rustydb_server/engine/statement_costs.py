"""Which statements are short enough to run on the event loop: learned, never guessed.

Pure bookkeeping, no SQLite and no trio: the dispatcher asks ``may_inline``
before a statement and reports every run with ``record`` (or ``ran_over`` when
an inline run was stopped at its deadline). A statement is known by its
database and its text with the literals taken out (``shape``), so
``... WHERE aid = 17`` and ``... WHERE aid = 18`` are one statement, as a
prepared statement with a parameter would be.

The rule (issue 20): a statement runs inline only after it ran in a worker
thread and stayed under the budget, and only if the session said it is of a
kind that may (a read it can stop and run again, a plain BEGIN, or a
write of one row inside a transaction: ``point_write``); it drops
back to the worker on its first run over the budget, and after each drop it
needs twice as many runs under the budget in a row before it is trusted again
(at most ``MAX_REQUALIFY``), so a statement near the budget does not flap.
Anything never measured, and anything the session did not call inlinable
(autocommit writes, other writes, commits, DDL, VACUUM, results larger than
one batch), stays in the worker.
"""

from __future__ import annotations

import re
from collections import deque

#: Kinds the session reports that may run inline.
INLINABLE = frozenset({"read", "begin", "point_write"})
#: How many statements are remembered (least recently used ones are forgotten).
CAPACITY = 4096
#: Runs under the budget in a row needed again after the most drops.
MAX_REQUALIFY = 64
#: How many recent execution times each statement keeps.
RECENT = 8

# String and blob literals, and numbers standing alone (not the digits of an
# identifier such as t1).
_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d*)?(?:[eE][+-]?\d+)?\b|(?<![\w$])\.\d+\b")
# The same, with quoted identifiers matched first so that they stay whole.
_QUOTED_OR_LITERAL = re.compile(r'("(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])|' + _LITERAL.pattern)


def _keep_quoted(m: re.Match) -> str:
    return m.group(1) or "?"


def shape(sql: str) -> str:
    """``sql`` with its literals replaced by ``?``: the key statements are learned by."""
    if '"' in sql or "`" in sql or "[" in sql:
        return _QUOTED_OR_LITERAL.sub(_keep_quoted, sql)
    return _LITERAL.sub("?", sql)


class _Entry:
    __slots__ = ("inline", "kind", "recent", "requalify", "streak")

    def __init__(self) -> None:
        self.inline = False  # trusted to run on the loop
        self.kind: str | None = None
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.streak = 0  # runs under the budget in a row
        self.requalify = 1  # how long that streak must be to be trusted


class StatementCosts:
    """Recent execution times per (database, statement shape), and the inline rule.

    Durations come in as arguments (seconds): the caller's clock, not ours.
    """

    def __init__(self, *, capacity: int = CAPACITY):
        self.capacity = capacity
        self._entries: dict[tuple[str, str], _Entry] = {}
        # Counters for the bench and the tests: how statements ran.
        self.inline_runs = 0
        self.worker_runs = 0
        self.reruns = 0  # inline runs stopped at the deadline and run again in a worker

    @staticmethod
    def key(database: str, sql: str) -> tuple[str, str]:
        return database, shape(sql)

    def may_inline(self, key: tuple[str, str]) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.inline

    def recent(self, key: tuple[str, str]) -> list[float]:
        """The statement's recent execution times, oldest first (seconds)."""
        entry = self._entries.get(key)
        return list(entry.recent) if entry is not None else []

    def record(self, key: tuple[str, str], seconds: float, kind: str | None, budget: float, *, inline: bool) -> None:
        """A run of the statement finished in ``seconds``; ``kind`` is what the
        session says it was (None: not a kind that may run inline)."""
        if inline:
            self.inline_runs += 1
        else:
            self.worker_runs += 1
        entry = self._entry(key)
        entry.recent.append(seconds)
        if kind not in INLINABLE or (entry.kind is not None and kind != entry.kind):
            # Not inlinable, or the same shape behaved as another kind: never inline.
            entry.inline = False
            entry.kind = kind
            entry.streak = 0
            entry.requalify = MAX_REQUALIFY
            return
        entry.kind = kind
        if seconds > budget:
            self._drop(entry)
            return
        entry.streak += 1
        if not inline and entry.streak >= entry.requalify:
            entry.inline = True

    def ran_over(self, key: tuple[str, str], seconds: float) -> None:
        """An inline run was stopped at its deadline (it runs again in a worker)."""
        self.reruns += 1
        entry = self._entry(key)
        entry.recent.append(seconds)
        self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if entry.inline:
            entry.requalify = min(entry.requalify * 2, MAX_REQUALIFY)
        entry.inline = False
        entry.streak = 0

    def _entry(self, key: tuple[str, str]) -> _Entry:
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is None:
            entry = _Entry()
            if len(entries) >= self.capacity:
                del entries[next(iter(entries))]  # the least recently used
        entries[key] = entry  # most recently used last
        return entry
