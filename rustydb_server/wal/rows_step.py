"""The payload of a "rows" WAL step: its header and the image it carries.

Pure code (bytes in, bytes out); engine/rows_image.py builds and reads the
image itself, an SQLite database. Payload: a 4-byte big-endian header length,
the header (a msgpack map with exactly the keys ``table`` (str), ``sql`` (the
table's CREATE TABLE text as sqlite_schema holds it), ``columns`` (its column
names, in order), ``rowid`` (the name the rowid is reached by: "rowid",
"_rowid_" or "oid"), ``rows`` (how many, at least 1), ``codec`` (one of
codecs.py's) and ``size`` (the image's bytes before compression)), then the
compressed image: an SQLite database file holding one table ``r`` whose first
column is the rowid and the others the table's columns in order.
"""

from __future__ import annotations

import dataclasses
import struct

import msgpack

from .. import codecs

#: An image larger than this is refused when read (a damaged size field).
MAX_IMAGE_BYTES = 1 << 36
ROWID_NAMES = ("rowid", "_rowid_", "oid")
_HEADER_KEYS = frozenset(("table", "sql", "columns", "rowid", "rows", "codec", "size"))


class RowsStepError(ValueError):
    """A rows step that cannot be read."""


@dataclasses.dataclass(frozen=True)
class Header:
    table: str
    sql: str
    columns: tuple[str, ...]
    rowid: str
    rows: int
    codec: str
    size: int


def encode_payload(header: Header, image: bytes) -> bytes:
    """A rows step's payload: ``header`` and the compressed ``image``."""
    packed = msgpack.packb(
        {
            "table": header.table,
            "sql": header.sql,
            "columns": list(header.columns),
            "rowid": header.rowid,
            "rows": header.rows,
            "codec": header.codec,
            "size": header.size,
        },
        use_bin_type=True,
    )
    return b"".join((struct.pack(">I", len(packed)), packed, image))


def parse_header(payload: bytes) -> tuple[Header, int]:
    """The header of a rows step and the offset its image starts at; strict."""
    if type(payload) is not bytes or len(payload) < 4:
        raise RowsStepError("a rows step carries bytes: a header length, a header and an image")
    (n,) = struct.unpack_from(">I", payload)
    if n > len(payload) - 4:
        raise RowsStepError(f"a rows step's header of {n} bytes is longer than the step")
    try:
        h = msgpack.unpackb(
            payload[4 : 4 + n], raw=False, max_map_len=len(_HEADER_KEYS), strict_map_key=True, max_ext_len=0
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for bad input
        raise RowsStepError(f"a rows step's header is not valid msgpack: {exc}") from None
    if type(h) is not dict or h.keys() != _HEADER_KEYS:
        raise RowsStepError("a rows step's header must be a map of table, sql, columns, rowid, rows, codec and size")
    cols = h["columns"]
    if not (
        type(h["table"]) is str
        and type(h["sql"]) is str
        and type(cols) is list
        and cols
        and all(type(c) is str for c in cols)
        and h["rowid"] in ROWID_NAMES
        and type(h["rows"]) is int
        and h["rows"] > 0
        and h["codec"] in codecs.CODECS
        and type(h["size"]) is int
        and 0 < h["size"] <= MAX_IMAGE_BYTES
    ):
        raise RowsStepError(f"a rows step's header has a wrong field: {h!r:.200}")
    return Header(h["table"], h["sql"], tuple(cols), h["rowid"], h["rows"], h["codec"], h["size"]), 4 + n
