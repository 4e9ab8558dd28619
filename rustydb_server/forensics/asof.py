"""AS OF: a table as it was at a past point, rebuilt from its state now and the WAL since.

Pure code over the database's committed transactions (forensics/undo.py's
``Tx``). ``after_target`` picks the transactions whose changes are to be
taken back (committed after the target point and already in the copy of the
table), refusing when the WAL does not reach back far enough or the table's
schema changed since; ``inverse_for_table`` merges their changesets in
commit order and inverts the result; ``present`` shows the table as it was
then under its own name, and ``run_read_only`` runs the query on it,
allowing nothing but reads of that table.

Why from the current state backwards rather than from a backup forwards:
the server already has the current state and the WAL since the last
checkpoint; going backwards needs neither a backup nor the archive, and
costs the rows changed since the target rather than a restore.

Why a view rather than a copy: only the rows changed since the target
differ from the table now. ``present`` copies those rows alone (their keys
are the inverse changeset's), applies the inverse to them, and names a TEMP
VIEW after the table: the live rows whose key was not changed, UNION ALL
the before-images. SQLite pushes the query's WHERE into both arms, so a
point lookup or a range uses the live table's own indexes and the cost is
the rows changed, not the table's size. A view has no rowid: a query that
names rowid gets the whole table copied instead (the same answer, the old
cost).
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


@dataclasses.dataclass(frozen=True)
class Presented:
    """Where the table as of then is: what the query may read (schema, name)."""

    schema: str
    name: str
    copied_rows: int  # rows copied out of the live table


KEYS_TABLE = "rustydb_asof_keys"
_NAMES_ROWID = re.compile(r"\b(rowid|oid|_rowid_)\b", re.I)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def names_rowid(sql: str) -> bool:
    """Whether a query may read the rowid (which a view does not have)."""
    return bool(_NAMES_ROWID.search(sql))


def present(
    conn: apsw.Connection,
    source: str,
    name: str,
    create_sql: str,
    inverse: bytes,
    *,
    copy_all: bool = False,
    keys_table: str = KEYS_TABLE,
) -> Presented:
    """Show table ``name`` of database ``source`` (attached to ``conn``, read inside an
    open transaction: the state ``inverse`` was made against) as it was before the changes
    ``inverse`` takes back, under its own name: a TEMP VIEW over the live rows and the
    before-images of the changed ones (in ``main``), or (``copy_all``) a copy of the whole
    table in ``main`` with the inverse applied. ``conn``'s ``main`` is scratch (``:memory:``).
    ``inverse`` may be any changeset made against that state: forward changes too
    (rusty-db-backup --query shows a base backup's table with the changes since)."""
    q = _q(name)
    src = f"{_q(source)}.{q}"
    xinfo = conn.execute(f"PRAGMA {_q(source)}.table_xinfo({q})").fetchall()
    stored = [r[1] for r in xinfo if r[6] == 0]
    shown = ", ".join(_q(r[1]) for r in xinfo if r[6] in (0, 2, 3))
    pk = [r[1] for r in sorted((r for r in xinfo if r[5]), key=lambda r: r[0])]
    has_rowid = "WITHOUT ROWID" not in " ".join(create_sql.upper().split())
    key_is_rowid = not pk
    cols = (["rowid"] if has_rowid and (copy_all or key_is_rowid) else []) + [_q(c) for c in stored]
    listed = ", ".join(cols)
    conn.execute(create_sql)  # in main: where the changeset applies
    if copy_all:
        conn.execute(f"INSERT INTO main.{q}({listed}) SELECT {listed} FROM {src}")
        copied = conn.changes()
        _apply(conn, inverse, name)
        return Presented("main", name, copied)
    keys = list({_key(change) for change in _changes(inverse, name)})
    if not keys:
        conn.execute(f"CREATE TEMP VIEW {q} AS SELECT {shown} FROM {src}")
        return Presented("temp", name, 0)
    key_cols = ["rowid"] if key_is_rowid else [_q(c) for c in pk]
    decl = ["k0 INTEGER"] if key_is_rowid else [_key_decl(conn, source, name, c, i) for i, c in enumerate(pk)]
    kq = f"temp.{_q(keys_table)}"
    ks = [f"k{i}" for i in range(len(key_cols))]
    conn.execute(f"CREATE TEMP TABLE {_q(keys_table)}({', '.join(decl)}, PRIMARY KEY({', '.join(ks)})) WITHOUT ROWID")
    conn.executemany(f"INSERT OR IGNORE INTO {kq} VALUES ({', '.join('?' * len(ks))})", keys)
    match = " AND ".join(f"k.{k} = t.{c}" for k, c in zip(ks, key_cols))
    # From the keys to the live rows (CROSS JOIN keeps that order): the cost is the keys'.
    conn.execute(
        f"INSERT INTO main.{q}({listed}) SELECT {', '.join('t.' + c for c in cols)} "
        f"FROM {kq} AS k CROSS JOIN {src} AS t ON {match}"
    )
    copied = conn.changes()
    _apply(conn, inverse, name)
    conn.execute(
        f"CREATE TEMP VIEW {q} AS SELECT {shown} FROM {src} AS t "
        f"WHERE NOT EXISTS (SELECT 1 FROM {kq} AS k WHERE {match}) "
        f"UNION ALL SELECT {shown} FROM main.{q}"
    )
    return Presented("temp", name, copied)


def _changes(inverse: bytes, name: str):
    if inverse:
        for change in apsw.Changeset.iter(inverse):
            if change.name.lower() == name.lower():
                yield change


def _key(change: apsw.TableChange) -> tuple:
    values = change.new if change.op == "INSERT" else change.old
    return tuple(values[i] for i in sorted(change.pk_columns))


def _key_decl(conn: apsw.Connection, source: str, table: str, column: str, i: int) -> str:
    """A key column declared as the table's (type and collation), so that its index serves the match."""
    decl_type, collation, *_ = conn.column_metadata(source, table, column)
    words = [f"k{i}"]
    if decl_type and re.fullmatch(r"[\w\s(),]+", decl_type):
        words.append(decl_type)
    if collation:
        words.append(f"COLLATE {_q(collation)}")
    return " ".join(words)


def _apply(conn: apsw.Connection, inverse: bytes, name: str) -> None:
    def refuse(reason: int, change: apsw.TableChange) -> int:
        return apsw.SQLITE_CHANGESET_ABORT

    if inverse:
        apsw.Changeset.apply(
            inverse,
            conn,
            filter=lambda t: t.lower() == name.lower(),
            conflict=refuse,
            flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION,
        )


_READS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})
_BLOCKED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


def authorizer(presented: list[Presented] | None):
    """An authorizer allowing reads alone, and with ``presented``, reads of those tables alone."""
    names = {p.name.lower(): p.schema for p in presented or ()}

    def authorize(op, p1, p2, dbname, trigger):
        if op not in _READS:
            return apsw.SQLITE_DENY
        if op == apsw.SQLITE_FUNCTION and (p2 or "").lower() in _BLOCKED_FUNCTIONS:
            return apsw.SQLITE_DENY
        if op == apsw.SQLITE_READ and presented is not None and p1:
            # The tables as of then, and what their views read; nothing else of the database.
            schema = names.get(p1.lower())
            if (trigger or "").lower() not in names and (schema is None or (dbname or schema).lower() != schema):
                return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    return authorize


def run_read_only(
    conn: apsw.Connection, sql: str, max_bytes: int, presented: Presented | None = None
) -> tuple[list[str], list[list]]:
    """Run one read-only query; (columns, rows). With ``presented``, it may read that table
    alone. A result larger than ``max_bytes`` (about, as the rows would be sent) is refused."""
    conn.authorizer = authorizer(None if presented is None else [presented])
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
