"""Where an export reads from: one database of a data directory, read-only,
inside one read transaction.

The read transaction gives every table of the export the same snapshot; on
an offline directory that costs nothing, and with ``snapshot=True`` it is
what makes reading safe while a server runs (SQLite's WAL mode lets a reader
keep its snapshot while the writer goes on).

Rows are read with every TEXT value fetched as its bytes (and a per-row mask
saying which columns were TEXT), so text that is not valid UTF-8 or holds NUL
characters reaches the writers exactly instead of failing to decode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import apsw

from ..datadir import CONTROL_FILE, DEFAULT_DATABASE, DataDir, DataDirError, check_usable
from ..engine.database import BUSY_TIMEOUT_MS, STATE_TABLE, quote_ident


class ExportError(Exception):
    """The export cannot be done; the message says what, why and what to do."""


@dataclass(frozen=True)
class InvalidText:
    """A TEXT value whose bytes are not valid UTF-8: kept as the bytes."""

    data: bytes


@dataclass(frozen=True)
class SchemaObject:
    type: str  # "table" | "index" | "trigger" | "view"
    name: str
    table: str  # tbl_name: the table an index or trigger belongs to
    sql: str


@dataclass(frozen=True)
class TableShape:
    """What is needed to copy a table's rows."""

    name: str
    columns: list[str]  # the columns an INSERT sets (generated columns left out)
    rowid_alias: str | None  # a rowid name to carry the rowid in, or None when it needs none
    # The declared primary key's columns in key order; empty without one (and for
    # a virtual table, which has no key an INSERT could be checked against).
    primary_key: list[str] = field(default_factory=list)

    @property
    def insert_columns(self) -> list[str]:
        return ([self.rowid_alias] if self.rowid_alias else []) + self.columns


def choose_database(ddir: DataDir, database: str | None) -> str:
    names = ddir.list_databases()
    if database is None:
        database = names[0] if len(names) == 1 else DEFAULT_DATABASE
    if database not in names:
        held = ", ".join(names) if names else "(none: is this a RustyDB data directory?)"
        raise ExportError(
            f"data directory {ddir.path} has no database {database!r}; it holds: {held}. "
            "Pass --database with one of those names"
        )
    return database


class ExportSource:
    """One database of a data directory, open read-only in a read transaction."""

    def __init__(self, input_dir: str, database: str | None = None, *, snapshot: bool = False) -> None:
        if not os.path.isdir(input_dir):
            raise ExportError(
                f"input directory {input_dir} does not exist or is not a directory; "
                "pass the --data-dir that rusty-db-restore wrote"
            )
        ddir = DataDir(input_dir)
        try:
            self.database = choose_database(ddir, database)
            path = ddir.database_path(self.database)
            if os.path.exists(ddir.join(CONTROL_FILE)):
                check_usable(ddir.read_control(), ddir.path)
        except DataDirError as exc:
            raise ExportError(str(exc)) from None
        if ddir.is_locked_by_other() and not snapshot:
            raise ExportError(
                f"data directory {ddir.path} is in use by a running RustyDB server; stop it, "
                "or pass --snapshot to export a consistent snapshot while it runs"
            )
        self.path = path
        self.datadir = ddir
        try:
            self.conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            self.conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            self.conn.execute("BEGIN")
            # The snapshot starts at the first read, not at BEGIN: take it now.
            self.conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except apsw.Error as exc:
            raise ExportError(f"cannot read database {self.database!r} at {path}: {exc}") from None

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except apsw.Error:
            pass
        self.conn.close()

    def __enter__(self) -> ExportSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- schema

    def schema(self) -> list[SchemaObject]:
        """Every user object in creation order; internal and SQLite's own objects left out
        (an index SQLite made for a constraint has no SQL and comes back with its table)."""
        rows = self.conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name != ? ORDER BY rowid",
            (STATE_TABLE,),
        ).fetchall()
        shadow = self._shadow_tables()
        return [SchemaObject(*r) for r in rows if r[1] not in shadow and r[2] not in shadow]

    def _shadow_tables(self) -> set[str]:
        # Tables a virtual table (FTS5, R*Tree) keeps its data in: recreated with it.
        rows = self.conn.execute("SELECT name FROM pragma_table_list WHERE schema='main' AND type='shadow'")
        return {r[0] for r in rows}

    def tables(self) -> list[str]:
        return [o.name for o in self.schema() if o.type == "table"]

    def objects_of(self, table: str) -> list[SchemaObject]:
        """The table, then its indexes and triggers."""
        objs = [o for o in self.schema() if o.table == table and o.type in ("table", "index", "trigger")]
        if not any(o.type == "table" for o in objs):
            self.missing_table(table)
        return sorted(objs, key=lambda o: ("table", "index", "trigger").index(o.type))

    def missing_table(self, table: str):
        if table == STATE_TABLE:
            raise ExportError(f"table {table!r} is RustyDB's internal state and is never exported")
        tables = self.tables()
        raise ExportError(
            f"database {self.database!r} in {self.datadir.path} has no table {table!r}; "
            f"it has: {', '.join(tables) if tables else '(no tables)'}"
        )

    def shape(self, table: str) -> TableShape:
        info = self.conn.execute("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)", (table,)).fetchall()
        if not info:
            self.missing_table(table)
        # hidden: 0 ordinary, 1 hidden column of a virtual table, 2/3 generated.
        columns = [name for name, _type, _pk, hidden in info if hidden == 0]
        alias = self._rowid_alias(table, info)
        virtual = self._create_sql(table).upper().startswith("CREATE VIRTUAL TABLE")
        key = [] if virtual else [name for name, _t, pk, _h in sorted(info, key=lambda r: r[2]) if pk]
        return TableShape(table, columns, alias, key)

    def _create_sql(self, table: str) -> str:
        rows = self.conn.execute("SELECT sql FROM sqlite_schema WHERE type='table' AND name=?", (table,)).fetchall()
        return rows[0][0] if rows else ""

    def _rowid_alias(self, table: str, info: list) -> str | None:
        """The name to carry the rowid under, when the rowid is not a column already."""
        sql = self._create_sql(table)
        if sql.upper().startswith("CREATE VIRTUAL TABLE"):
            return None
        try:
            self.conn.execute(f"SELECT rowid FROM {quote_ident(table)} LIMIT 0").fetchall()
        except apsw.SQLError:
            return None  # WITHOUT ROWID
        pks = [(name, type_) for name, type_, pk, _h in info if pk]
        if len(pks) == 1 and pks[0][1].upper() == "INTEGER":
            return None  # INTEGER PRIMARY KEY is the rowid: the column carries it
        names = {name.lower() for name, *_ in info}
        for alias in ("rowid", "_rowid_", "oid"):
            if alias not in names:
                return alias
        return None  # every alias is a real column: the rowid cannot be set

    # -- rows

    def rows(self, shape: TableShape) -> Iterator[tuple]:
        """The table's rows (rowid first when shape says so), streamed from the cursor.
        TEXT is ``str``, or InvalidText when its bytes are not UTF-8."""
        cols = shape.insert_columns
        if not cols:
            return
        picks = [
            f"CASE WHEN typeof({quote_ident(c)})='text' THEN CAST({quote_ident(c)} AS BLOB) ELSE {quote_ident(c)} END"
            for c in cols
        ]
        masks = [
            " | ".join(
                f"((typeof({quote_ident(c)})='text') << {i - start})"
                for i, c in enumerate(cols[start : start + 62], start)
            )
            for start in range(0, len(cols), 62)
        ]
        order = f" ORDER BY {shape.rowid_alias}" if shape.rowid_alias else ""
        sql = f"SELECT {', '.join(masks + picks)} FROM {quote_ident(shape.name)}{order}"
        nmask = len(masks)
        for row in self.conn.execute(sql):
            if not any(row[:nmask]):
                yield row[nmask:]
                continue
            values = list(row[nmask:])
            for m, mask in enumerate(row[:nmask]):
                while mask:
                    bit = mask & -mask
                    i = m * 62 + bit.bit_length() - 1
                    values[i] = decode_text(values[i])
                    mask ^= bit
            yield tuple(values)


def decode_text(data: bytes) -> str | InvalidText:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(data)
