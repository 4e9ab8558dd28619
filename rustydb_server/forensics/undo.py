"""Planning an undo: which row changes to reverse, and what stands in the way.

Pure code over committed transactions as the WAL holds them (``Tx``: the
record's changeset and DDL steps, in commit order). ``plan_undo`` takes the
history of one database from the first transaction to undo onwards, the
txids to undo and a mode, and returns an ``UndoPlan``, or raises
``UndoRefused`` with a reason a user can act on.

A row is named by its table and primary key (the rowid for a table without
one: the server captures those by rowid). A later transaction *conflicts*
when it changed a row that a transaction being undone changed before it:
reversing the earlier change would overwrite the later one. The modes:

- ``refuse`` (the default): any conflict refuses the undo, listing the
  conflicting txids and rows;
- ``cascade``: the conflicting transactions are undone too (and theirs in
  turn), so the rows go back to what they were before the first one;
- ``nonconflicting``: rows changed since are left as they are; only the
  others are restored.

The inverse is one changeset: the undone transactions' changesets merged in
commit order (a changegroup), inverted. Applying it reverses the newest
change first, which is what undoing them one by one from the newest would do.
DDL in a transaction to undo refuses the undo (a changeset cannot reverse a
schema change), and so does DDL after it that may change the rows or columns
of a table whose rows are undone (``reshapes``: the rows would no longer have
the shape the changeset records).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator

import apsw

REFUSE, CASCADE, NONCONFLICTING = "refuse", "cascade", "nonconflicting"
MODES = (REFUSE, CASCADE, NONCONFLICTING)

#: The step the server logs after a changeset to keep AUTOINCREMENT counters
#: (engine/session.py's SEQUENCE_STEP_PREFIX): bookkeeping, not DDL.
_SEQUENCE_STEP = "UPDATE sqlite_sequence SET seq"
#: How many conflicting rows a refusal lists (the count says how many more).
SHOWN_CONFLICTS = 20

Key = tuple[str, tuple]  # (table, primary key values)


class UndoRefused(Exception):
    """The undo cannot be done as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Tx:
    """One committed transaction of the database, as its WAL record holds it."""

    lsn: int
    txid: int
    commit_time_us: int
    steps: tuple


@dataclasses.dataclass(frozen=True)
class Conflict:
    txid: int  # the transaction being undone that changed the row
    later_txid: int  # the later transaction that changed it again
    table: str
    key: tuple


@dataclasses.dataclass
class UndoPlan:
    undone: list[int]  # txids whose changes are reversed, in commit order
    changeset: bytes  # the inverse of their changes (empty: nothing to reverse)
    skip: frozenset  # rows left alone (nonconflicting), as Keys
    table: str | None  # only this table's rows (None: every table)
    conflicts: list[Conflict]  # the conflicts found (skipped or cascaded)

    def wanted(self, change: apsw.TableChange) -> bool:
        """Whether ``change`` (of the inverse changeset) is to be applied."""
        if self.table is not None and change.name.lower() != self.table.lower():
            return False
        return not self.skip or row_key(change) not in self.skip

    def rows_by_table(self) -> dict[str, int]:
        """How many rows applying the plan restores, per table."""
        counts: dict[str, int] = {}
        if self.changeset:
            for change in apsw.Changeset.iter(self.changeset):
                if self.wanted(change):
                    counts[change.name] = counts.get(change.name, 0) + 1
        return counts


def _op(change: apsw.TableChange) -> str:
    op = change.op
    if isinstance(op, int):
        return {apsw.SQLITE_INSERT: "INSERT", apsw.SQLITE_UPDATE: "UPDATE", apsw.SQLITE_DELETE: "DELETE"}[op]
    return op


def row_key(change: apsw.TableChange) -> Key:
    """The row a change is to: its table (lower case, as SQLite compares) and primary key."""
    values = change.new if _op(change) == "INSERT" else change.old
    return change.name.lower(), tuple(values[i] for i in sorted(change.pk_columns))


def changes(steps) -> Iterator[apsw.TableChange]:
    for kind, payload in steps:
        if kind == "changeset":
            yield from apsw.Changeset.iter(payload)


def keys_of(tx: Tx, table: str | None = None) -> set[Key]:
    found = {row_key(c) for c in changes(tx.steps)}
    if table is not None:
        found = {k for k in found if k[0] == table.lower()}
    return found


def ddl_steps(tx: Tx) -> list[str]:
    """The schema-changing statements of ``tx`` (the AUTOINCREMENT bookkeeping step is not one)."""
    return [payload for kind, payload in tx.steps if kind == "ddl" and not payload.startswith(_SEQUENCE_STEP)]


_IDENT = r'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+)'
_DDL_TABLE = re.compile(
    rf"^\s*(?:CREATE\s+(?:TEMP\s+|TEMPORARY\s+|UNIQUE\s+|VIRTUAL\s+)?(?:TABLE|INDEX|TRIGGER|VIEW)|"
    rf"DROP\s+(?:TABLE|INDEX|TRIGGER|VIEW)|ALTER\s+TABLE)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
    rf"(?:{_IDENT}\s*\.\s*)?({_IDENT})(?:.*?\bON\s+(?:{_IDENT}\s*\.\s*)?({_IDENT}))?",
    re.I | re.S,
)


def _unquote(token: str) -> str:
    if token[:1] in ('"', "`") and token[-1:] == token[:1]:
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[:1] == "[" and token[-1:] == "]":
        return token[1:-1]
    return token


def ddl_may_touch(sql: str, tables: set[str]) -> bool:
    """Whether a logged DDL statement may concern one of ``tables`` (lower case).
    A statement we cannot read (VACUUM, REINDEX, a PRAGMA) is taken to touch
    them all: the undo refuses rather than guess."""
    m = _DDL_TABLE.match(sql)
    if not m:
        return bool(tables)
    names = {_unquote(g).lower() for g in m.groups() if g}
    return bool(names & tables)


# DDL that leaves a table's rows and their shape as they are: a changeset
# recorded before it still applies after it.
_SHAPE_KEEPING = re.compile(
    r"^\s*(?:ANALYZE|REINDEX|PRAGMA|CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(?:TRIGGER|VIEW)|"
    r"DROP\s+(?:INDEX|TRIGGER|VIEW))\b",
    re.I,
)


def reshapes(sql: str, tables: set[str]) -> bool:
    """Whether a logged DDL statement may change the rows or columns of one of
    ``tables`` (lower case): ALTER, DROP or CREATE TABLE of it, or a statement we
    cannot read (VACUUM renumbers the rowids of tables without a primary key).
    Indexes, triggers, views, ANALYZE and PRAGMAs do not."""
    return not _SHAPE_KEEPING.match(sql) and ddl_may_touch(sql, tables)


def _short(sql: str) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= 80 else sql[:77] + "..."


def _describe_key(table: str, key: tuple) -> str:
    values = ", ".join(repr(v) for v in key)
    return f"{table}({values})"


def plan_undo(history: Iterable[Tx], targets: set[int], mode: str = REFUSE, table: str | None = None) -> UndoPlan:
    """Plan undoing the transactions ``targets`` (txids) of ``history``.

    ``history`` is every committed transaction of the database in commit
    order, from the first target on (earlier ones are ignored). ``table``
    limits the undo to that table's rows.
    """
    if mode not in MODES:
        raise ValueError(f"unknown undo mode {mode!r}")
    txs = list(history)
    positions = [i for i, tx in enumerate(txs) if tx.txid in targets]
    if not positions:
        raise UndoRefused("no transaction to undo was found")
    txs = txs[positions[0] :]
    rows = [keys_of(tx) for tx in txs]
    keys = rows if table is None else [{k for k in found if k[0] == table.lower()} for found in rows]
    selected = {i for i, tx in enumerate(txs) if tx.txid in targets}
    for i in sorted(selected):
        _refuse_ddl_in(txs[i], table)
    conflicts = _conflicts(txs, rows, keys, selected)
    if conflicts and mode == REFUSE:
        raise UndoRefused(_refusal(conflicts))
    skip: frozenset = frozenset()
    if mode == CASCADE:
        found = conflicts
        while found:
            added = _positions(txs, found)
            for i in sorted(added):
                _refuse_ddl_in(txs[i], table)
            selected |= added
            found = _conflicts(txs, rows, keys, selected)
            conflicts = conflicts + found
    elif mode == NONCONFLICTING:
        skip = frozenset((c.table, c.key) for c in conflicts)
    tables = {k[0] for i in selected for k in keys[i] if k not in skip}
    _refuse_later_ddl(txs, selected, tables)
    group = apsw.ChangesetBuilder()
    try:
        for i in sorted(selected):
            for kind, payload in txs[i].steps:
                if kind == "changeset":
                    group.add(payload)
        merged = group.output()
    finally:
        group.close()
    inverse = apsw.Changeset.invert(merged) if merged else b""
    return UndoPlan([txs[i].txid for i in sorted(selected)], inverse, skip, table, conflicts)


def _positions(txs: list[Tx], conflicts: list[Conflict]) -> set[int]:
    later = {c.later_txid for c in conflicts}
    return {i for i, tx in enumerate(txs) if tx.txid in later}


def _refuse_ddl_in(tx: Tx, table: str | None) -> None:
    ddl = ddl_steps(tx)
    if table is not None:
        ddl = [sql for sql in ddl if ddl_may_touch(sql, {table.lower()})]
    if ddl:
        raise UndoRefused(
            f"transaction {tx.txid} changed the schema ({_short(ddl[0])}); an undo reverses row changes "
            "only. Restore the table as it was before it instead (rusty-db-restore --table with "
            f"--recovery-target-txid {tx.txid} --recovery-target-inclusive false)"
        )


def _refuse_later_ddl(txs: list[Tx], selected: set[int], tables: set[str]) -> None:
    for j in range(min(selected) + 1, len(txs)):
        tx = txs[j]
        if j in selected:
            continue
        for sql in ddl_steps(tx):
            if reshapes(sql, tables):
                raise UndoRefused(
                    f"transaction {tx.txid} changed the schema after the transaction to undo "
                    f"({_short(sql)}); the undo cannot reverse row changes across it"
                )


def _conflicts(txs: list[Tx], rows: list[set[Key]], keys: list[set[Key]], selected: set[int]) -> list[Conflict]:
    """Each later, unselected transaction's change to a row a selected one changed before it."""
    first_toucher: dict[Key, int] = {}
    for i in sorted(selected):
        for k in keys[i]:
            first_toucher.setdefault(k, i)
    found = []
    for j in range(min(selected) + 1, len(txs)):
        if j in selected:
            continue
        for k in sorted(rows[j] & first_toucher.keys(), key=repr):
            i = first_toucher[k]
            if i < j:
                found.append(Conflict(txs[i].txid, txs[j].txid, k[0], k[1]))
    return found


def _refusal(conflicts: list[Conflict]) -> str:
    later = sorted({c.later_txid for c in conflicts})
    txids = ", ".join(map(str, later[:SHOWN_CONFLICTS])) + (
        f" and {len(later) - SHOWN_CONFLICTS} more" if len(later) > SHOWN_CONFLICTS else ""
    )
    rows = [f"{_describe_key(c.table, c.key)} by txid {c.later_txid}" for c in conflicts[:SHOWN_CONFLICTS]]
    more = f" and {len(conflicts) - SHOWN_CONFLICTS} more" if len(conflicts) > SHOWN_CONFLICTS else ""
    return (
        f"later transactions changed rows this undo would restore: txid {txids} "
        f"({'; '.join(rows)}{more}). Add CASCADE to undo those too, or NONCONFLICTING to restore only "
        "the rows nobody changed since"
    )
