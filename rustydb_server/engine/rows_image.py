"""The "rows" step: rows a transaction inserted into one table, logged as an image.

A bulk insert (INSERT ... SELECT of a million rows) captured by the session
extension costs more CPU than the insert itself: the preupdate hook records
every row and the changeset is built from those records. When a transaction
only *appends* rows to a table (engine/session.py decides when that holds and
checks it), the rows are logged instead as one "rows" step: SQLite copies them
(``INSERT INTO image.r SELECT rowid, ... FROM main.t WHERE rowid > floor``)
into an in-memory database attached to the session's connection, whose file
image (``serialize``) is compressed. Replay attaches the image and inserts the
rows back with one statement: no Python object per row on either side.

Every consumer of steps that needs row changes (forensics, incremental
backups, waldump, table restore) turns a rows step into the very changeset the
session extension would have recorded for those inserts (``to_changeset``,
or ``expand`` for a record's steps); only replay takes the fast path.

The payload's format is wal/rows_step.py's.
"""

from __future__ import annotations

import apsw

from .. import codecs
from ..wal.rows_step import ROWID_NAMES, Header, RowsStepError, encode_payload, parse_header

RowsImageError = RowsStepError
__all__ = ["Header", "RowsImageError", "parse_header"]

#: The in-memory database a client connection builds images in.
SCHEMA = "rustydb_rows"
#: The codec of new images (cheap to compress; halves the WAL bytes).
CODEC = "lz4"
IMAGE_PAGE_SIZE = 65536


def quote(name: str) -> str:
    """``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def image_bytes(payload: bytes) -> tuple[Header, bytes]:
    """The header and the uncompressed SQLite image of a rows step."""
    header, at = parse_header(payload)
    try:
        raw = codecs.decompress(header.codec, memoryview(payload)[at:], header.size)
    except codecs.CodecError as e:
        raise RowsImageError(f"rows step image of table {header.table!r} does not decompress: {e}") from None
    if len(raw) != header.size:
        raise RowsImageError(f"rows step image of table {header.table!r} is {len(raw)} bytes, not {header.size}")
    return header, raw


# ----------------------------------------------------------- the live side
def attach(conn: apsw.Connection) -> None:
    """Attach the empty in-memory database images are built in (outside a transaction)."""
    conn.execute(f"ATTACH ':memory:' AS {SCHEMA}")
    # Large pages: copying a million rows in costs 10-15% less CPU than with
    # 4 KiB ones (bench/bench_load.py's floor).
    conn.execute(f"PRAGMA {SCHEMA}.page_size={IMAGE_PAGE_SIZE}")
    # Dropping the image's table then gives its pages back: the next image
    # holds only its own rows.
    conn.execute(f"PRAGMA {SCHEMA}.auto_vacuum=FULL")


def table_columns(conn: apsw.Connection, table: str) -> list[tuple[str, int]]:
    """(name, hidden) of each column of main.``table``."""
    return [(r[1], r[6]) for r in conn.execute("SELECT * FROM main.pragma_table_xinfo(?)", (table,))]


def rowid_name(columns) -> str | None:
    """A name that reaches the rowid (not shadowed by a column); None if all are."""
    names = {c.lower() for c in columns}
    return next((n for n in ROWID_NAMES if n not in names), None)


def build(conn: apsw.Connection, table: str, floor: int | None) -> bytes | None:
    """A rows step of the rows of main.``table`` with a rowid above ``floor``
    (all rows when None), read in the connection's open transaction; None when
    there are none. The caller has checked that the table can be logged so."""
    sql = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchall()[0][
        0
    ]
    columns = [name for name, _ in table_columns(conn, table)]
    rowid = rowid_name(columns)
    names = ", ".join(f"c{i}" for i in range(len(columns) + 1))
    conn.execute(f"CREATE TABLE {SCHEMA}.r({names})")
    try:
        select = f"SELECT {rowid}, {', '.join(quote(c) for c in columns)} FROM main.{quote(table)}"
        if floor is None:
            conn.execute(f"INSERT INTO {SCHEMA}.r {select}")
        else:
            conn.execute(f"INSERT INTO {SCHEMA}.r {select} WHERE {rowid} > ?", (floor,))
        rows = conn.changes()
        raw = conn.serialize(SCHEMA) if rows else b""
    finally:
        conn.execute(f"DROP TABLE {SCHEMA}.r")
    if not rows:
        return None
    header = Header(table, sql, tuple(columns), rowid, rows, CODEC, len(raw))
    return encode_payload(header, codecs.compress(CODEC, raw))


# ------------------------------------------------------------ the readers
def insert_sql(header: Header, schema: str) -> str:
    """The statement that inserts an attached image's rows into main.<table>."""
    cols = ", ".join(quote(c) for c in header.columns)
    return f"INSERT INTO main.{quote(header.table)}({header.rowid}, {cols}) SELECT * FROM {quote(schema)}.r"


def load(conn: apsw.Connection, schema: str, payload: bytes) -> Header:
    """Attach the image of ``payload`` to ``conn`` as ``schema`` (outside a transaction)."""
    header, raw = image_bytes(payload)
    conn.execute(f"ATTACH ':memory:' AS {quote(schema)}")
    try:
        conn.deserialize(schema, raw)
        found = conn.execute(f"SELECT count(*) FROM {quote(schema)}.r").fetchall()[0][0]
    except apsw.Error as e:
        conn.execute(f"DETACH {quote(schema)}")
        raise RowsImageError(f"rows step image of table {header.table!r} is not a readable database: {e}") from None
    if found != header.rows:
        conn.execute(f"DETACH {quote(schema)}")
        raise RowsImageError(f"rows step image of table {header.table!r} holds {found} rows, its header {header.rows}")
    return header


def to_changeset(payload: bytes) -> bytes:
    """The changeset the session extension records for inserting these rows:
    what every consumer of steps other than replay reads a rows step as."""
    header, raw = image_bytes(payload)
    mem = apsw.Connection(":memory:")
    try:
        mem.execute("PRAGMA ignore_check_constraints=ON")  # the rows passed them when inserted
        try:
            mem.execute(header.sql)
        except apsw.Error as e:
            raise RowsImageError(f"rows step of table {header.table!r}: cannot create the table: {e}") from None
        mem.execute("ATTACH ':memory:' AS image")
        try:
            mem.deserialize("image", raw)
        except apsw.Error as e:
            raise RowsImageError(f"rows step image of table {header.table!r} is not a database: {e}") from None
        session = apsw.Session(mem, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.attach()
        try:
            mem.execute(insert_sql(header, "image"))
            return session.changeset()
        except apsw.Error as e:
            raise RowsImageError(f"rows step image of table {header.table!r} cannot be read: {e}") from None
        finally:
            session.close()
    finally:
        mem.close()


def expand(steps) -> tuple:
    """``steps`` with each rows step turned into its changeset step."""
    if not any(kind == "rows" for kind, _ in steps):
        return tuple(steps)
    return tuple(("changeset", to_changeset(p)) if kind == "rows" else (kind, p) for kind, p in steps)
