"""Row changes as SQL people read: what a transaction did, with before and after values.

An INSERT is shown as the INSERT that makes the row, a DELETE as the DELETE
that removes it (the deleted row's values in a comment), an UPDATE as the
UPDATE of its changed columns, by primary key, with ``old -> new`` of each
changed column in a comment. The statements are valid SQL.

A changeset names its table but not its columns, so ``Schemas`` keeps the
columns of each table, per database, in an in-memory SQLite: seeded with a
schema the caller read (the data directory's databases as they are now),
then changed by every DDL step of the WAL in the order it is read, so a
table created or altered inside the scanned range has its names as they
were when the row changed. Where no names with the change's column count
are known, the columns are shown by position (``"$1"``, ``"$2"``...) and the
statement says so in a comment.
"""

from __future__ import annotations

import re

import apsw

from .walscan import UNCHANGED, RowChange

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that must be quoted to be a column or table name (the common ones).
_KEYWORDS = frozenset(
    "add all alter and as asc between by case check collate column commit constraint create cross default "
    "delete desc distinct drop else end escape except exists foreign from full group having in index inner "
    "insert intersect into is join key left like limit natural not null of offset on or order outer primary "
    "references right rollback select set table then to transaction union unique update using values when "
    "where with".split()
)
UNKNOWN_NOTE = "columns by position: their names are unknown"


def quote_name(name: str) -> str:
    if _PLAIN_NAME.fullmatch(name) and name.lower() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal(value) -> str:
    """A value as an SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "NULL"  # SQLite stores NaN as NULL
        if value in (float("inf"), float("-inf")):
            return "9e999" if value > 0 else "-9e999"
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex().upper() + "'"
    return "'" + str(value).replace("'", "''") + "'"


class Schemas:
    """The columns of each table of each database, as the WAL's DDL leaves them."""

    def __init__(self) -> None:
        self._conns: dict[str, apsw.Connection] = {}

    def _conn(self, database: str) -> apsw.Connection:
        conn = self._conns.get(database)
        if conn is None:
            conn = self._conns[database] = apsw.Connection(":memory:")
        return conn

    def seed(self, database: str, create_statements: list[str]) -> None:
        """Tables as some schema holds them (``CREATE TABLE`` statements); WAL DDL read
        later overrides them."""
        conn = self._conn(database)
        for sql in create_statements:
            try:
                conn.execute(sql)
            except apsw.Error:
                pass  # e.g. a virtual table's module: its rows are shown by position

    def apply_ddl(self, database: str, sql: str) -> None:
        """A DDL step of the WAL: run on the database's schema copy. A CREATE of a table
        the seed already has replaces it (the WAL is older than the seed)."""
        conn = self._conn(database)
        try:
            conn.execute(sql)
        except apsw.SQLError as exc:
            match = re.search(r"table (\S+) already exists", str(exc))
            if match is None:
                return  # a statement the copy cannot run (a missing table, a module): names stay unknown
            try:
                conn.execute(f"DROP TABLE {quote_name(match.group(1).strip(chr(34)))}")
                conn.execute(sql)
            except apsw.Error:
                pass
        except apsw.Error:
            pass

    def columns(self, database: str, table: str, count: int) -> list[str] | None:
        """The table's column names, if known with ``count`` columns."""
        conn = self._conns.get(database)
        if conn is None:
            return None
        try:
            rows = conn.execute(f"PRAGMA table_info({quote_name(table)})").fetchall()
        except apsw.Error:
            return None
        names = [row[1] for row in rows]
        return names if len(names) == count else None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def render(change: RowChange, columns: list[str] | None) -> str:
    """One row change as an SQL statement with a comment of what it replaced."""
    known = columns is not None
    names = [quote_name(c) for c in columns] if known else [f'"${i + 1}"' for i in range(change.column_count)]
    table = quote_name(change.table)
    note = "" if known else f"  /* {UNKNOWN_NOTE} */"
    if change.op == "insert":
        cols = ", ".join(names)
        vals = ", ".join(literal(v) for v in change.new)
        return f"INSERT INTO {table} ({cols}) VALUES ({vals});{note}"
    where = " AND ".join(
        f"{names[i]} = {literal(change.old[i])}" if change.old[i] is not None else f"{names[i]} IS NULL"
        for i in sorted(change.pk_columns)
    )
    if change.op == "delete":
        was = ", ".join(f"{names[i]}={literal(v)}" for i, v in enumerate(change.old))
        return f"DELETE FROM {table} WHERE {where};  -- was ({was}){note}"
    changed = change.changed_columns()
    sets = ", ".join(f"{names[i]} = {literal(change.new[i])}" for i in changed)
    diffs = ", ".join(f"{names[i]}: {_old(change.old[i])} -> {literal(change.new[i])}" for i in changed)
    return f"UPDATE {table} SET {sets} WHERE {where};  -- {diffs}{note}"


def _old(value) -> str:
    return "?" if value is UNCHANGED else literal(value)


def change_as_dict(change: RowChange, columns: list[str] | None) -> dict:
    """A row change for JSON: values by column name (by position, "$1"..., when unknown)."""
    names = columns if columns is not None else [f"${i + 1}" for i in range(change.column_count)]

    def row(values):
        if values is None:
            return None
        return {names[i]: _json_value(v) for i, v in enumerate(values) if v is not UNCHANGED}

    return {
        "table": change.table,
        "op": change.op,
        "key": {
            names[i]: _json_value(change.old[i] if change.old else change.new[i]) for i in sorted(change.pk_columns)
        },
        "old": row(change.old),
        "new": row(change.new),
        "columns_known": columns is not None,
        "sql": render(change, columns),
    }


def _json_value(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    return value
