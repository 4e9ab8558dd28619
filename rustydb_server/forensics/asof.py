"""AS OF: a table as it was at a past point, rebuilt from its state now and the WAL since.

Pure code over the database's committed transactions (forensics/undo.py's
``Tx``). ``after_target`` picks the transactions whose changes are to be
taken back (committed after the target point and already in the copy of the
table), refusing when the WAL does not reach back far enough or the table's
schema changed since; ``inverse_for_table`` merges their changesets in
commit order and inverts the result; ``run_read_only`` runs the query on
the rebuilt copy, allowing nothing but reads.

Why from the current state backwards rather than from a backup forwards:
the server already has the current state and the WAL since the last
checkpoint; going backwards needs neither a backup nor the archive, and
costs the rows changed since the target rather than a restore.
"""

from __future__ import annotations

import dataclasses
import re

import apsw

from . import undo as undo_mod


class AsOfRefused(Exception):
    """The past state cannot be rebuilt from what the server holds; the message says why."""


@dataclasses.dataclass(frozen=True)
class AsOfQuery:
    sql: str  # the query without its AS OF clause
    table: str
    txid: int | None = None  # the state right after this transaction committed, or
    time_us: int | None = None  # the state at this time (transactions committed at or before it)

    def first_to_keep(self, tx: undo_mod.Tx) -> bool:
        """Whether ``tx`` is the first transaction of the history AS OF needs (the target, or after it)."""
        return tx.txid == self.txid if self.txid is not None else tx.commit_time_us > self.time_us

    def after(self, tx: undo_mod.Tx, target_lsn: int | None) -> bool:
        if self.txid is not None:
            return target_lsn is not None and tx.lsn > target_lsn
        return tx.commit_time_us > self.time_us


_CREATE_TABLE = re.compile(r"\s*CREATE\s+TABLE\b", re.I)


def reaches(txs: list[undo_mod.Tx], query: AsOfQuery, reach_time_us: int | None) -> bool:
    """Whether a history that begins at ``reach_time_us`` holds every change after the target."""
    if query.txid is not None:
        return any(tx.txid == query.txid for tx in txs)
    return reach_time_us is not None and reach_time_us <= query.time_us


def after_target(
    txs: list[undo_mod.Tx], query: AsOfQuery, applied_lsn: int, *, reach_time_us: int | None
) -> list[undo_mod.Tx]:
    """The transactions to take back: after the target point, at most ``applied_lsn``
    (what the copy of the table holds). ``txs`` is the database's history as far
    back as the WAL reaches; ``reach_time_us`` is the time of the first record read."""
    target_lsn = None
    if query.txid is not None:
        found = [tx.lsn for tx in txs if tx.txid == query.txid]
        if not found:
            raise AsOfRefused(
                f"transaction {query.txid} is not in this database's WAL on the server: it changed nothing "
                "here, or its WAL is gone; rusty-db-restore --table with --recovery-target-txid gives the "
                "table as of then from a backup"
            )
        target_lsn = found[0]
    elif reach_time_us is None or reach_time_us > query.time_us:
        raise AsOfRefused(
            "the server's WAL no longer reaches back to that time; rusty-db-restore --table with "
            "--recovery-target-time gives the table as of then from a backup"
        )
    later = [tx for tx in txs if tx.lsn <= applied_lsn and query.after(tx, target_lsn)]
    table = query.table.lower()
    for tx in later:
        for sql in undo_mod.ddl_steps(tx):
            if undo_mod.reshapes(sql, {table}):
                if _CREATE_TABLE.match(sql):
                    raise AsOfRefused(f"table {query.table} did not exist then: transaction {tx.txid} created it later")
                raise AsOfRefused(
                    f"transaction {tx.txid} changed the schema of table {query.table} after that point "
                    f"({' '.join(sql.split())[:80]}); AS OF reads across row changes only"
                )
    return later


def inverse_for_table(txs: list[undo_mod.Tx], table: str) -> bytes:
    """The inverse of every change ``txs`` made (newest undone first); b"" if none."""
    group = apsw.ChangesetBuilder()
    try:
        for tx in txs:
            for kind, payload in tx.steps:
                if kind == "changeset" and any(c.name.lower() == table.lower() for c in apsw.Changeset.iter(payload)):
                    group.add(payload)
        merged = group.output()
    finally:
        group.close()
    return apsw.Changeset.invert(merged) if merged else b""


_READS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})
_BLOCKED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


def _authorize(op, p1, p2, dbname, trigger):
    if op not in _READS:
        return apsw.SQLITE_DENY
    if op == apsw.SQLITE_FUNCTION and (p2 or "").lower() in _BLOCKED_FUNCTIONS:
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def run_read_only(conn: apsw.Connection, sql: str, max_bytes: int) -> tuple[list[str], list[list]]:
    """Run one read-only query; (columns, rows). A result larger than ``max_bytes``
    (about, as the rows would be sent) is refused."""
    conn.authorizer = _authorize
    cursor = conn.cursor()
    described: list[list[str]] = []

    def trace(cur, statement, bindings) -> bool:
        described.append([d[0] for d in cur.description])
        return True

    cursor.exec_trace = trace
    rows: list[list] = []
    size = 0
    try:
        for row in cursor.execute(sql):
            size += _row_bytes(row)
            if size > max_bytes:
                raise AsOfRefused(
                    f"the result is larger than {max_bytes // 1_000_000} MB, more than one answer to AS OF "
                    "can carry; narrow the query (WHERE, LIMIT)"
                )
            rows.append(list(row))
    except apsw.AuthError as e:
        raise AsOfRefused(f"AS OF runs one read-only query on one table: {e}") from None
    except apsw.SQLError as e:
        raise AsOfRefused(
            f"{e} (AS OF rebuilds only the table named before AS OF: the query may read it alone)"
        ) from None
    return (described[-1] if described else []), rows


def _row_bytes(row) -> int:
    total = 5
    for v in row:
        total += 5 + len(v) if isinstance(v, (str, bytes)) else 9
    return total
