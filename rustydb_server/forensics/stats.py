"""Summaries of scanned transactions: per table and per minute of commit time.

``WalStats`` takes transactions one by one and keeps only counters: its
memory grows with the number of tables and of minutes, never with the
number of transactions.
"""

from __future__ import annotations

import dataclasses

from .walscan import Filter, Transaction

MINUTE_US = 60_000_000


@dataclasses.dataclass
class Counter:
    transactions: int = 0
    insert: int = 0
    update: int = 0
    delete: int = 0
    wal_bytes: int = 0

    @property
    def rows(self) -> int:
        return self.insert + self.update + self.delete

    def as_dict(self) -> dict:
        return {
            "transactions": self.transactions,
            "insert": self.insert,
            "update": self.update,
            "delete": self.delete,
            "rows": self.rows,
            "wal_bytes": self.wal_bytes,
        }


class WalStats:
    """Counters of the transactions added; with a row filter (tables, operations),
    only the rows it keeps are counted."""

    def __init__(self, flt: Filter | None = None) -> None:
        self._filter = flt or Filter()
        self.total = Counter()
        self.tables: dict[tuple[str, str], Counter] = {}  # (database, table)
        self.minutes: dict[int, Counter] = {}  # minute start (UTC microseconds)
        self.first_time_us: int | None = None
        self.last_time_us: int | None = None

    def add(self, tx: Transaction) -> None:
        minute = self.minutes.setdefault(tx.commit_time_us - tx.commit_time_us % MINUTE_US, Counter())
        for counter in (self.total, minute):
            counter.transactions += 1
            counter.wal_bytes += tx.size
        touched: set[tuple[str, str]] = set()
        for change in tx.row_changes():
            if not self._filter.row_matches(change):
                continue
            key = (tx.database, change.table)
            table = self.tables.setdefault(key, Counter())
            if key not in touched:
                touched.add(key)
                table.transactions += 1
                table.wal_bytes += tx.size
            for counter in (self.total, minute, table):
                setattr(counter, change.op, getattr(counter, change.op) + 1)
        if self.first_time_us is None or tx.commit_time_us < self.first_time_us:
            self.first_time_us = tx.commit_time_us
        if self.last_time_us is None or tx.commit_time_us > self.last_time_us:
            self.last_time_us = tx.commit_time_us
