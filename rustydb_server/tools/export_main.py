"""rusty-db-export: write tables of a data directory as SQL, CSV or JSON Lines.

    rusty-db-export --table T [--table T2 ...] | --all-tables
                    --input-dir DIR --output FILE|- [--database NAME]
                    [--format sql|csv|jsonl] [--replace | --if-not-exists | --rename-to NEW]
                    [--snapshot] [--batch-rows N] [--json]

DIR is an offline data directory, such as the one `rusty-db-restore ...
--no-start` leaves. A directory a running server holds is refused unless
--snapshot: then the export reads one consistent snapshot while the server
runs. The SQL output imports with `rusty-db-cli < FILE` in one transaction.
By default it restores lost rows into a table that exists: CREATE ... IF NOT
EXISTS, and only the rows the table lacks are inserted (a primary key already
there is skipped; a table without one has its rows compared whole); --replace
drops and recreates the table instead.
--database defaults to the only database, else "rustydb".

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

import apsw

from ..export import FORMATS, ExportError, export_tables
from .interrupt import interruption, sigterm_interrupts
from .output import ToolParser, fail, human_size, json_output, print_json, run_main, stdout_closed

PROG = "rusty-db-export"


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description="Export tables of a RustyDB data directory.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", action="append", metavar="NAME", help="a table to export (repeatable)")
    which.add_argument(
        "--all-tables", action="store_true", help="every table of the database, with its views and triggers"
    )
    p.add_argument("--input-dir", required=True, metavar="DIR", help="the data directory to read")
    p.add_argument("--output", required=True, metavar="FILE", help='the file to write ("-": stdout)')
    p.add_argument("--database", metavar="NAME", help='database to read (default: the only one, else "rustydb")')
    p.add_argument("--format", choices=FORMATS, default="sql", help="output format (default sql)")
    guard = p.add_mutually_exclusive_group()
    guard.add_argument(
        "--if-not-exists",
        action="store_true",
        help="CREATE ... IF NOT EXISTS and insert every row (a key already in the table fails the import)",
    )
    guard.add_argument(
        "--replace",
        action="store_true",
        help="DROP TABLE IF EXISTS and create it as exported (by default an existing table keeps its "
        "rows and only the rows it lacks are added)",
    )
    guard.add_argument("--rename-to", metavar="NEW", help="create the table (and its indexes) under a new name")
    p.add_argument(
        "--snapshot", action="store_true", help="read a consistent snapshot even while a server runs on the directory"
    )
    p.add_argument("--batch-rows", type=int, default=500, metavar="N", help="rows per INSERT (default 500)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout, whatever the outcome (on stderr with --output -)",
    )
    return p


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rename_to is not None and (args.all_tables or len(args.table) != 1):
        parser.error("--rename-to renames one table: pass exactly one --table")
    if args.format != "sql" and (args.if_not_exists or args.replace or args.rename_to):
        parser.error("--if-not-exists, --replace and --rename-to apply to --format sql only")
    if args.format != "sql" and (args.all_tables or len(args.table) != 1):
        parser.error(f"--format {args.format} writes one table: pass exactly one --table")
    if args.batch_rows < 1:
        parser.error("--batch-rows must be at least 1")
    if args.rename_to == "":
        parser.error("--rename-to needs a name")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main(PROG, parser, argv, lambda args: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    doc = json_output()
    if doc is not None and args.output == "-":
        doc.out = sys.stderr  # stdout carries the data
    check_usage(parser, args)
    # --rename-to creates a new table beside the old one: it must not exist yet.
    guard = (
        "if-not-exists"
        if args.if_not_exists
        else "replace"
        if args.replace
        else "plain"
        if args.rename_to is not None
        else "merge"
    )
    try:
        with sigterm_interrupts():
            result = export_tables(
                args.input_dir,
                args.output,
                tables=None if args.all_tables else args.table,
                database=args.database,
                fmt=args.format,
                guard=guard,
                rename_to=args.rename_to,
                snapshot=args.snapshot,
                batch_rows=args.batch_rows,
            )
    except BrokenPipeError:  # --output - into a reader that stopped reading
        return stdout_closed()
    except ExportError as exc:
        return fail(PROG, str(exc))
    except (FileExistsError, FileNotFoundError, PermissionError) as exc:
        return fail(PROG, f"cannot write the export: {exc}")
    except OSError as exc:
        return fail(
            PROG,
            f"cannot write {args.output}: {exc.strerror or exc}; "
            "check free space and permissions, then run the export again",
        )
    except apsw.Error as exc:
        return fail(PROG, f"reading the database failed: {exc}; the output was not written")
    except KeyboardInterrupt as exc:
        how, status = interruption(exc)
        fail(PROG, f"{how}; no output file was left")
        return status
    # With --output - the data owns stdout: the summary goes to stderr.
    stream = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print_json(result.as_json(), stream)
    else:
        tables = ", ".join(f"{t.name} ({t.rows} rows)" for t in result.tables) or "no tables"
        print(
            f"exported {len(result.tables)} table(s) from database {result.database!r}: {tables}; "
            f"{result.rows} rows, {human_size(result.bytes)} written to {args.output}",
            file=stream,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
