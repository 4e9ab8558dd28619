"""rusty-db-export's work: tables of an offline data directory (or a running
server's, with a snapshot) as SQL, CSV or JSON Lines.

    source.py   the database, read-only in one read transaction; schema and rows
    schema.py   CREATE statements guarded (IF NOT EXISTS) and renamed
    sqldump.py  the SQL script: exact literals, batched INSERTs, one transaction
    tabular.py  CSV and JSON Lines
    output.py   temporary name + rename, or stdout

``export_tables`` is the whole export; the CLI (tools/export_main.py) only
parses arguments and prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .output import OutputFile
from .source import ExportError, ExportSource
from .sqldump import DEFAULT_BATCH_ROWS, TableCount, write_dump
from .tabular import write_csv, write_jsonl

FORMATS = ("sql", "csv", "jsonl")

__all__ = ["FORMATS", "ExportError", "ExportResult", "ExportSource", "export_tables"]


@dataclass
class ExportResult:
    database: str
    output: str
    format: str
    tables: list[TableCount] = field(default_factory=list)
    bytes: int = 0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def as_json(self) -> dict:
        return {
            "database": self.database,
            "output": self.output,
            "format": self.format,
            "tables": [{"name": t.name, "rows": t.rows} for t in self.tables],
            "rows": self.rows,
            "bytes": self.bytes,
        }


def export_tables(
    input_dir: str,
    output: str,
    *,
    tables: list[str] | None = None,
    database: str | None = None,
    fmt: str = "sql",
    guard: str = "plain",
    rename_to: str | None = None,
    snapshot: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ExportResult:
    """Export ``tables`` (None: every table, views and triggers too) to ``output``.

    Raises ExportError for a missing directory, database or table and for a
    directory a running server holds without ``snapshot``; the output file
    appears only when the export is complete.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    with ExportSource(input_dir, database, snapshot=snapshot) as source:
        every = tables is None
        names = source.tables() if every else list(dict.fromkeys(tables))
        for name in names:
            source.objects_of(name)  # a missing table fails before any output exists
        if fmt != "sql" and len(names) != 1:
            raise ExportError(f"--format {fmt} writes one table per file; pass exactly one --table")
        result = ExportResult(source.database, output, fmt)
        with OutputFile(output) as out:
            if fmt == "sql":
                result.tables = write_dump(
                    out, source, names, guard=guard, rename_to=rename_to, views=every, batch_rows=batch_rows
                )
            else:
                shape = source.shape(names[0])
                write = write_csv if fmt == "csv" else write_jsonl
                result.tables = [TableCount(names[0], write(out, shape.columns, _without_rowid(source, shape)))]
            result.bytes = out.bytes
        return result


def _without_rowid(source: ExportSource, shape):
    # CSV and JSON Lines carry the table's columns only, not a hidden rowid.
    skip = 1 if shape.rowid_alias else 0
    for row in source.rows(shape):
        yield row[skip:]
