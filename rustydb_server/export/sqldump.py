"""Tables as an SQL script that ``rusty-db-cli < FILE`` imports.

Layout: a comment header, ``BEGIN;``, then per table its guard (DROP TABLE
IF EXISTS with --replace), CREATE TABLE, the rows as multi-row INSERTs, its
indexes and triggers (after the rows: building an index once is cheaper than
maintaining it per row); views last; ``COMMIT;``. One transaction makes the
import all or nothing: the cli stops at the first error and the server rolls
the open transaction back.

The guard says what an import does to a table that exists where it is run:

- ``merge`` (rusty-db-export's default): it brings back the rows the table
  lost and touches none it still has. Every CREATE is IF NOT EXISTS; a table
  with a primary key gets ``INSERT ... ON CONFLICT(key) DO NOTHING``, so a
  row whose key is there (updated since, or never changed) is skipped; a
  table without one (rowids only) gets its rows compared whole: they go into
  a helper table (``__rustydb_import_rows``) and only those no equal row of
  the table matches are inserted, in one statement, with new rowids.
- ``replace``: DROP TABLE IF EXISTS, then the table as exported.
- ``if-not-exists``: CREATE ... IF NOT EXISTS and plain INSERTs (a row whose
  key exists fails the import).
- ``plain``: CREATE TABLE, which fails if the table exists (``--rename-to``).

Every statement fits one 16 MiB wire message: a row too large for that is
built up piece by piece in a helper table (``__rustydb_import_pieces``,
dropped again at once) and inserted from there.

Values are written so SQLite reads back exactly what was stored:

- INTEGER: decimal; every int64 including -9223372036854775808 (SQLite
  parses that literal as an integer).
- REAL: Python's repr, the shortest text that reads back as the same double,
  always with "." or "e" so it stays REAL; +-infinity as +-9e999. SQLite
  stores no NaN (it becomes NULL), so none is ever read.
- TEXT: '...' with quotes doubled; text holding NUL, a carriage return (the
  cli reads its input with universal newlines) or other control characters,
  or bytes that are not UTF-8, as CAST(X'..' AS TEXT), which is exact.
- BLOB: X'..'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from .schema import add_if_not_exists, rename_table
from .source import ExportSource, InvalidText, SchemaObject, quote_ident

GUARDS = ("plain", "merge", "if-not-exists", "replace")
DEFAULT_BATCH_ROWS = 500
# A statement stays well under the wire protocol's 16 MiB frame, whatever the rows.
BATCH_CHARS = 1 << 20
# A value whose literal is longer than this is written in pieces (see
# _write_row_in_pieces), each statement then at most about this long.
PIECE_CHARS = 4 << 20
PIECES_TABLE = '"__rustydb_import_pieces"'
# Where a merge stages the rows of a table without a primary key (see the module doc).
ROWS_TABLE = '"__rustydb_import_rows"'
# In such a row, values whose literal is longer than this go through pieces too.
SMALL_LITERAL = 64 * 1024
_NEEDS_HEX = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f", "\x85", "\u2028", "\u2029"}


def sql_literal(value) -> str:
    """``value`` (as read from SQLite) as an SQL literal that reads back identical."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # never from SQLite; refuse to guess
        raise TypeError("bool is not an SQLite value")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "9e999" if value > 0 else "-9e999"
        if math.isnan(value):
            return "NULL"  # what SQLite itself makes of NaN
        return repr(value)  # "1.0", "1e+16", "5e-324": never read as an integer
    if isinstance(value, str):
        if _NEEDS_HEX.isdisjoint(value):
            return "'" + value.replace("'", "''") + "'"
        return f"CAST(X'{value.encode('utf-8').hex()}' AS TEXT)"
    if isinstance(value, InvalidText):
        return f"CAST(X'{value.data.hex()}' AS TEXT)"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"X'{bytes(value).hex()}'"
    raise TypeError(f"not an SQLite value: {type(value).__name__}")


@dataclass
class TableCount:
    name: str
    rows: int = 0


def _guarded(obj: SchemaObject, guard: str) -> str:
    if guard in ("if-not-exists", "merge"):
        return add_if_not_exists(obj.sql)
    return obj.sql


def write_table(
    out: TextIO,
    source: ExportSource,
    table: str,
    *,
    guard: str = "plain",
    rename_to: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> TableCount:
    """The table's schema and rows (not BEGIN/COMMIT); returns the row count."""
    objects = source.objects_of(table)
    if rename_to is not None:
        objects = rename_table(source.schema(), table, rename_to)
    target = objects[0].name
    if guard == "replace":
        out.write(f"DROP TABLE IF EXISTS {quote_ident(target)};\n")
    out.write(_guarded(objects[0], guard) + ";\n")
    count = TableCount(target)
    shape = source.shape(table)
    if guard == "merge" and not shape.primary_key and shape.columns:
        count.rows = _merge_whole_rows(out, source, shape, target, batch_rows)
    elif shape.insert_columns:
        head = f"INSERT INTO {quote_ident(target)}({', '.join(map(quote_ident, shape.insert_columns))}) VALUES\n"
        skip = ""
        if guard == "merge":  # a row whose key is in the table is left as it is there
            skip = f"\nON CONFLICT({', '.join(map(quote_ident, shape.primary_key))}) DO NOTHING"
        count.rows = _write_rows(out, head, source.rows(shape), batch_rows, skip)
    out.writelines(_guarded(obj, guard) + ";\n" for obj in objects[1:])
    return count


def _merge_whole_rows(out: TextIO, source: ExportSource, shape, target: str, batch_rows: int) -> int:
    """A table without a primary key, merged: its rows (without their rowids) into
    the helper table, then those no row of the table equals in every column into it."""
    cols = list(map(quote_ident, shape.columns))
    out.write(f"CREATE TABLE {ROWS_TABLE}({', '.join(cols)});\n")
    skip = 1 if shape.rowid_alias else 0
    rows = (row[skip:] for row in source.rows(shape))
    count = _write_rows(out, f"INSERT INTO {ROWS_TABLE}({', '.join(cols)}) VALUES\n", rows, batch_rows)
    same = " AND ".join(f"o.{c} IS v.{c}" for c in cols)
    # One statement: SQLite reads the whole SELECT before inserting (it reads the
    # table it inserts into), so every row is compared with the table as it was.
    out.write(
        f"INSERT INTO {quote_ident(target)}({', '.join(cols)})\nSELECT {', '.join(f'v.{c}' for c in cols)} "
        f"FROM {ROWS_TABLE} AS v\nWHERE NOT EXISTS (SELECT 1 FROM {quote_ident(target)} AS o WHERE {same});\n"
    )
    out.write(f"DROP TABLE {ROWS_TABLE};\n")
    return count


def _write_rows(out: TextIO, head: str, rows: Iterable[tuple], batch_rows: int, skip: str = "") -> int:
    """Multi-row INSERTs of at most ``batch_rows`` rows and about BATCH_CHARS
    characters, each ending in ``skip`` (an ON CONFLICT clause, or nothing)."""
    total = in_batch = chars = 0
    for row in rows:
        literals = [sql_literal(v) for v in row]
        if sum(map(len, literals)) > PIECE_CHARS:
            if in_batch:
                out.write(skip + ";\n")
                in_batch = chars = 0
            _write_row_in_pieces(out, head, row, literals, skip)
            total += 1
            continue
        text = "(" + ",".join(literals) + ")"
        if in_batch and (in_batch >= batch_rows or chars + len(text) > BATCH_CHARS):
            out.write(skip + ";\n")
            in_batch = chars = 0
        out.write((head if not in_batch else ",\n") + text)
        in_batch += 1
        chars += len(text)
        total += 1
    if in_batch:
        out.write(skip + ";\n")
    return total


def _write_row_in_pieces(out: TextIO, head: str, row: tuple, literals: list[str], skip: str = "") -> None:
    """One row too large for one statement (a statement must fit one 16 MiB
    message): its large values are built up in a helper table, piece by piece,
    then the row is inserted from there and the helper dropped, all inside the
    import's transaction."""
    out.write(f"CREATE TABLE {PIECES_TABLE}(i INTEGER PRIMARY KEY, v);\n")
    exprs = []
    for i, (value, literal) in enumerate(zip(row, literals)):
        if len(literal) <= SMALL_LITERAL or not isinstance(value, str | bytes | InvalidText):
            exprs.append(literal)  # numbers are short whatever the limits
            continue
        pieces, kind = _value_pieces(value)
        out.write(f"INSERT INTO {PIECES_TABLE} VALUES ({i}, {next(pieces)});\n")
        for piece in pieces:
            out.write(f"UPDATE {PIECES_TABLE} SET v = v || {piece} WHERE i = {i};\n")
        # || makes text of anything; the cast gives back the exact bytes as a BLOB.
        exprs.append(f"(SELECT CAST(v AS {kind}) FROM {PIECES_TABLE} WHERE i = {i})")
    # "WHERE true": an ON CONFLICT after a bare SELECT would be read as a join's.
    out.write(head.removesuffix(" VALUES\n") + "\nSELECT " + ", ".join(exprs) + (skip and " WHERE true" + skip) + ";\n")
    out.write(f"DROP TABLE {PIECES_TABLE};\n")


def _value_pieces(value) -> tuple[Iterator[str], str]:
    """A large TEXT or BLOB value as literals of at most about PIECE_CHARS each,
    whose concatenation is the value; and the type to cast the result to."""
    step = PIECE_CHARS // 2  # hex doubles bytes; quote doubling at most doubles text
    if isinstance(value, str) and _NEEDS_HEX.isdisjoint(value):
        return (sql_literal(value[i : i + step]) for i in range(0, len(value), step)), "TEXT"
    if isinstance(value, str | InvalidText):
        data = value.encode("utf-8") if isinstance(value, str) else value.data
        # Cut anywhere, even inside a UTF-8 sequence: SQLite keeps text bytes as
        # they are, so the joined value is byte for byte the original.
        return (sql_literal(InvalidText(data[i : i + step])) for i in range(0, len(data), step)), "TEXT"
    data = bytes(value)
    return (sql_literal(data[i : i + step]) for i in range(0, len(data), step)), "BLOB"


def write_dump(
    out: TextIO,
    source: ExportSource,
    tables: list[str],
    *,
    guard: str = "plain",
    rename_to: str | None = None,
    views: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> list[TableCount]:
    """The whole script for ``tables`` (and the database's views when ``views``)."""
    if guard not in GUARDS:
        raise ValueError(f"guard must be one of {GUARDS}")
    if rename_to is not None and len(tables) != 1:
        raise ValueError("rename_to needs exactly one table")
    out.write(f"-- RustyDB export of database {source.database!r}: {len(tables)} table(s)\n")
    out.write("-- Import with: rusty-db-cli < FILE   (one transaction: all or nothing)\n")
    out.writelines(_header(source, tables, guard, rename_to))
    out.write("BEGIN;\n")
    counts = [write_table(out, source, t, guard=guard, rename_to=rename_to, batch_rows=batch_rows) for t in tables]
    if views:
        schema = source.schema()
        view_names = {o.name for o in schema if o.type == "view"}
        for obj in schema:
            if obj.type == "view":
                if guard == "replace":
                    out.write(f"DROP VIEW IF EXISTS {quote_ident(obj.name)};\n")
                out.write(_guarded(obj, guard) + ";\n")
        for obj in schema:  # INSTEAD OF triggers, after every view they may name
            if obj.type == "trigger" and obj.table in view_names:
                out.write(_guarded(obj, guard) + ";\n")
    out.write("COMMIT;\n")
    return counts


def _header(source: ExportSource, tables: list[str], guard: str, rename_to: str | None) -> Iterator[str]:
    """Comment lines saying what the import does to tables that exist already."""
    if guard == "replace":
        yield "-- Each table is dropped if it exists and created again as exported: rows the\n"
        yield "-- table has now and the export lacks are lost.\n"
        return
    if guard == "plain":
        yield "-- Each table is created: the import fails, changing nothing, if it exists already.\n"
        return
    if guard == "if-not-exists":
        yield "-- An existing table is kept (if not exists) and every row is added to it:\n"
        yield "-- a row whose key is already there fails the import, changing nothing.\n"
        return
    yield "-- Restoring lost rows: an existing table keeps every row it has; only the rows it lacks are\n"
    yield "-- added. Tables, indexes, triggers and views are created only where missing (if not exists).\n"
    for table in tables:
        shape = source.shape(table)
        name = _printable(rename_to or table)
        if shape.primary_key:
            key = _printable(", ".join(shape.primary_key))
            yield f"--   {name}: a row whose primary key ({key}) is in the table is skipped (on conflict do\n"
            yield "--     nothing), so rows changed there since the backup stay as they are.\n"
        else:
            yield f"--   {name}: no primary key, so rows are compared whole: a row is added unless the table\n"
            yield "--     has one equal in every column (a row changed there since comes back beside it);\n"
            yield "--     added rows get new rowids.\n"
    yield "-- The table's own triggers fire for the rows added. A row that breaks another constraint\n"
    yield "-- (a UNIQUE index, NOT NULL, CHECK) stops the import and nothing is changed. To drop the\n"
    yield "-- table and create it as exported instead, export with --replace.\n"


def _printable(name: str) -> str:
    # A name may hold a newline, which would end the comment it is shown in.
    return "".join(c if c.isprintable() else "?" for c in name)
