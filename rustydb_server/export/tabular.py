"""Rows for tools that are not SQL: CSV and JSON Lines.

CSV (RFC 4180, CRLF line ends, UTF-8): a header of column names, then one
line per row. TEXT is always quoted ("" doubles a quote); INTEGER and REAL
are bare (REAL as Python's repr, infinity as inf/-inf); NULL is an empty
unquoted field, so it differs from the empty string (""); BLOB is bare hex
with a \\x prefix (as PostgreSQL writes bytea); TEXT that is not valid UTF-8
has its bad bytes replaced by U+FFFD. CSV is for spreadsheets and loaders;
for an exact copy use SQL or JSON Lines.

JSON Lines: one JSON object per row, keys in column order. Integers are
exact at any size; REAL is a JSON number (infinity as {"$real": "inf"} or
"-inf", since JSON has none); BLOB is {"$blob": "<hex>"}; TEXT that is not
valid UTF-8 is {"$text_hex": "<hex>"}; NULL is null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TextIO

from .source import InvalidText


def csv_field(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    if isinstance(value, InvalidText):
        return csv_field(value.data.decode("utf-8", "replace"))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"not an SQLite value: {type(value).__name__}")


def write_csv(out: TextIO, columns: list[str], rows: Iterable[tuple]) -> int:
    out.write(",".join(csv_field(c) for c in columns) + "\r\n")
    count = 0
    for row in rows:
        out.write(",".join(map(csv_field, row)) + "\r\n")
        count += 1
    return count


def json_value(value):
    if isinstance(value, bytes):
        return {"$blob": value.hex()}
    if isinstance(value, InvalidText):
        return {"$text_hex": value.data.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$real": "inf" if value > 0 else "-inf"}  # SQLite stores no NaN
    return value


def write_jsonl(out: TextIO, columns: list[str], rows: Iterable[tuple]) -> int:
    count = 0
    for row in rows:
        obj = {c: json_value(v) for c, v in zip(columns, row)}
        out.write(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
        count += 1
    return count
