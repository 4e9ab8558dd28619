"""rusty-db-cli: run SQL against a RustyDB server from a command, a script or a shell.

    rusty-db-cli --command "SELECT 1;"          one command (several statements allowed)
    rusty-db-cli < dump.sql                      a script, streamed statement by statement
    rusty-db-cli --file dump.sql                 the same, from a file
    rusty-db-cli                                 interactive shell (on a terminal)

Exit status: 0 success, 1 a statement or the connection failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from rustydb_client.client import (
    ClientError,
    Connection,
    ConnectionFailed,
    ServerError,
    connect,
    read_password_file,
)
from rustydb_client.protocol.events import Columns, Complete, Notice, Rows
from rustydb_client.sqlsplit import Statement, StatementSplitter
from rustydb_client.tls import add_arguments as add_tls_arguments

PROG = "rusty-db-cli"
READ_CHUNK = 64 * 1024
HISTORY_FILE = "~/.rustydb_history"
HELP_TEXT = """\
  \\q          quit
  \\c DBNAME   switch to database DBNAME (sends USE DBNAME)
  \\?          this help
End each SQL statement with a semicolon; it may span several lines.
"""


# ---------------------------------------------------------------- values


def format_value(value: object) -> str:
    """A value as text for tables and CSV: NULL empty, blobs as \\x<hex>."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_json_value(value: object) -> object:
    """Blobs as hex; infinite REALs as the strings "Infinity" and "-Infinity"
    (JSON has no such numbers, and strict parsers such as jq refuse them)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return "Infinity" if value > 0 else "-Infinity" if value < 0 else None
    return value


def display_width(text: str) -> int:
    """Terminal columns taken by text (wide East Asian characters count twice)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _table_cell(value: object) -> str:
    # One cell must stay on one line or the table's alignment breaks.
    return format_value(value).replace("\r", "\\r").replace("\n", "\\n")


def format_table(columns: list[str], rows: list[list]) -> str:
    """An aligned table with a header and a "(N rows)" footer, like psql's."""
    cells = [[_table_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows) for i in range(len(columns))
    ]
    widths = [display_width(c) for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], display_width(text))

    def pad(text: str, width: int, how: str) -> str:
        gap = width - display_width(text)
        if how == "right":
            return " " * gap + text
        if how == "center":
            return " " * (gap // 2) + text + " " * (gap - gap // 2)
        return text + " " * gap

    lines = [" " + " | ".join(pad(c, widths[i], "center") for i, c in enumerate(columns))]
    lines.append("-+-".join("-" * w for w in widths).join("--"))
    for row in cells:
        lines.append(" " + " | ".join(pad(t, widths[i], "right" if numeric[i] else "left") for i, t in enumerate(row)))
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(line.rstrip() for line in lines) + "\n"


# ---------------------------------------------------------------- printers
# Each printer receives one statement's events: columns (if it returns rows),
# batches of rows, then complete.


class TablePrinter:
    """Buffers a result to align it (as psql does); statuses for other statements."""

    def __init__(self, out: TextIO):
        self.out = out
        self._columns: list[str] | None = None
        self._rows: list[list] = []

    def columns(self, names: list[str]) -> None:
        self._columns, self._rows = list(names), []

    def rows(self, rows: list[list]) -> None:
        self._rows.extend(rows)

    def complete(self, status: str) -> None:
        if self._columns is None:
            self.out.write(status + "\n")
        else:
            self.out.write(format_table(self._columns, self._rows) + "\n")
        self._columns, self._rows = None, []


class JsonPrinter:
    """One JSON object per statement on one line, rows written as they arrive."""

    def __init__(self, out: TextIO):
        self.out = out
        self._open = False
        self._first_row = True

    def columns(self, names: list[str]) -> None:
        self.out.write('{"columns": ' + json.dumps(list(names), allow_nan=False) + ', "rows": [')
        self._open, self._first_row = True, True

    def rows(self, rows: list[list]) -> None:
        for row in rows:
            self.out.write(
                ("" if self._first_row else ", ") + json.dumps([to_json_value(v) for v in row], allow_nan=False)
            )
            self._first_row = False

    def complete(self, status: str) -> None:
        if not self._open:
            self.out.write('{"columns": [], "rows": [')
        self.out.write('], "status": ' + json.dumps(status, allow_nan=False) + "}\n")
        self._open = False

    def error(self, message: str, code: str | None = None, line: int | None = None) -> None:
        """The failure's document: ends a result cut short, then says what failed."""
        if self._open:
            self.out.write('], "status": null}\n')
            self._open = False
        doc = {"ok": False, "error": message, "code": code, "line": line}
        self.out.write(json.dumps(doc, allow_nan=False) + "\n")
        self.out.flush()


class CsvPrinter:
    """CSV with a header per result; statements without rows print nothing."""

    def __init__(self, out: TextIO):
        self.out = out
        self._writer = csv.writer(out, lineterminator="\n")

    def columns(self, names: list[str]) -> None:
        self._writer.writerow(names)

    def rows(self, rows: list[list]) -> None:
        self._writer.writerows([format_value(v) for v in row] for row in rows)

    def complete(self, status: str) -> None:
        pass


PRINTERS = {"table": TablePrinter, "json": JsonPrinter, "csv": CsvPrinter}


# ---------------------------------------------------------------- running


def read_statements(source: TextIO, chunk_size: int = READ_CHUNK) -> Iterator[Statement]:
    """Statements of a script, read chunk by chunk (never the whole file at once)."""
    splitter = StatementSplitter()
    while chunk := source.read(chunk_size):
        yield from splitter.feed(chunk)
    yield from splitter.finish()


def run_statement(conn: Connection, statement: Statement, printer, err: TextIO) -> None:
    """Run one statement, printing its output as it arrives. Raises ClientError."""
    for event in conn.stream_statement(statement.sql, first_line=statement.line):
        if isinstance(event, Columns):
            printer.columns(event.names)
        elif isinstance(event, Rows):
            printer.rows(event.rows)
        elif isinstance(event, Notice):
            err.write(f"NOTICE: {event.message}\n")
        elif isinstance(event, Complete):
            printer.complete(event.status)
    printer.out.flush()


def run_script(
    conn: Connection, statements: Iterable[Statement], printer, err: TextIO, *, name_lines: bool = True
) -> int:
    """Run statements in order; stop at the first error. Returns the exit status."""
    for statement in statements:
        try:
            run_statement(conn, statement, printer, err)
        except ServerError as e:
            line = e.statement_line or statement.line
            where = f" at line {line}" if name_lines else ""
            err.write(f"ERROR{where}: {e.message}\n")
            _report(printer, e.message, e.code, line)
            return 1
        except ClientError as e:
            err.write(f"ERROR at line {statement.line}: {e}\n" if name_lines else f"ERROR: {e}\n")
            _report(printer, str(e), getattr(e, "code", None), statement.line)
            return 1
    return 0


def _report(printer, message: str, code: str | None = None, line: int | None = None) -> None:
    """With --json, a failure is a document on stdout too."""
    if isinstance(printer, JsonPrinter):
        printer.error(message, code, line)


def run_interactive(conn: Connection, read_line: Callable[[str], str], printer, out: TextIO, err: TextIO) -> int:
    """The shell: multi-line statements, backslash commands, errors keep it going."""
    out.write(f"{PROG} connected to {conn.database or 'rustydb'}; type \\? for help, \\q to quit\n")
    tls = getattr(conn, "tls_description", None)
    if tls:
        out.write(f"TLS connection ({tls})\n")  # as psql's "SSL connection (protocol: ...)"
    splitter = StatementSplitter()
    while True:
        name = conn.database or "rustydb"
        prompt = f"{name}-> " if splitter.pending else f"{name}=> "
        try:
            line = read_line(prompt)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            splitter = StatementSplitter()  # ^C drops the statement being typed
            continue
        if not splitter.pending and line.lstrip().startswith("\\"):
            if run_meta_command(conn, line.strip(), printer, out, err) == "quit":
                return 0
        else:
            for statement in splitter.feed(line + "\n"):
                try:
                    run_statement(conn, statement, printer, err)
                except ServerError as e:
                    err.write(f"ERROR: {e.message}\n")
                except ClientError as e:
                    err.write(f"ERROR: {e}\n")
        if conn.closed:
            err.write(f"{PROG}: the connection to the server is closed; exiting\n")
            return 1


def run_meta_command(conn: Connection, line: str, printer, out: TextIO, err: TextIO) -> str | None:
    """A backslash command; returns "quit" for \\q."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    if command == "\\q":
        return "quit"
    if command == "\\?":
        out.write(HELP_TEXT)
    elif command == "\\c":
        if not arg:
            err.write("\\c needs a database name, e.g. \\c sales\n")
            return None
        try:
            run_statement(conn, Statement(f"USE {arg}", 1), printer, err)
        except ServerError as e:
            err.write(f"ERROR: {e.message}\n")
        except ClientError as e:
            err.write(f"ERROR: {e}\n")
    else:
        err.write(f"unknown command {command}; type \\? for help\n")
    return None


# ---------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse; with --json, a usage error (exit 2) is a document on stdout too."""

    json_out: TextIO | None = None

    def error(self, message: str):
        if self.json_out is not None:
            self.json_out.write(json.dumps({"ok": False, "error": message, "usage_error": True}) + "\n")
            self.json_out.flush()
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = _Parser(
        prog=PROG,
        description="Run SQL against a RustyDB server. On the Unix socket your OS user decides your role; "
        "over TCP the password is read from $RUSTYDB_PASSWORD, --password-file or ~/.rustydbpass (mode 0600), "
        "never from the command line.",
    )
    p.add_argument(
        "--host",
        default=env.get("RUSTYDB_HOST"),
        help="server address, or a directory holding its Unix socket (default $RUSTYDB_HOST, else the "
        "socket in /run/rustydb, then 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=None, help="server port (default $RUSTYDB_PORT or 5432)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="with no --host: look for the server's Unix socket in its data directory DIR too, after "
        "/run/rustydb (where the server puts it when /run/rustydb is not writable; default $RUSTYDB_DATA_DIR)",
    )
    p.add_argument(
        "--database",
        "-d",
        default=env.get("RUSTYDB_DATABASE"),
        help="database to use (default $RUSTYDB_DATABASE or the server's default)",
    )
    p.add_argument(
        "--user", "-U", default=env.get("RUSTYDB_USER"), help="user name (default $RUSTYDB_USER or your login name)"
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE (instead of $RUSTYDB_PASSWORD)",
    )
    add_tls_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--command", "-c", metavar="SQL", help="run SQL (one or more statements) and exit")
    source.add_argument("--file", "-f", metavar="FILE", help="run the script in FILE and exit")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per statement, one line each; a failure ends with {"ok": false, "error": ...}',
    )
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    return p


def resolve_port(parser: argparse.ArgumentParser, port: int | None) -> int:
    if port is None:
        raw = os.environ.get("RUSTYDB_PORT", "5432")
        try:
            port = int(raw)
        except ValueError:
            parser.error(f"RUSTYDB_PORT={raw!r} is not a port number")
    if not 0 < port < 65536:
        parser.error(f"port {port} is out of range (1-65535)")
    return port


def main(
    argv: list[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    if "--json" in (sys.argv[1:] if argv is None else argv):
        parser.json_out = out
    args = parser.parse_args(argv)
    port = resolve_port(parser, args.port)
    printer = PRINTERS["json" if args.json else "csv" if args.csv else "table"](out)

    script: TextIO | None = None
    if args.file is not None:
        try:
            script = open(
                args.file,
                encoding=SCRIPT_ENCODING,  # noqa: SIM115 -- closed in finally
                newline="\n",
            )
        except OSError as e:
            message = f"cannot read {args.file}: {e.strerror}; check the path"
            err.write(f"{PROG}: {message}\n")
            _report(printer, message, "file")
            return 1
    try:
        try:
            password = read_password_file(args.password_file)
            conn = connect(
                args.host,
                port,
                database=args.database,
                user=args.user,
                password=password,
                tls=args.tls,
                tls_ca_file=args.tls_ca_file,
                tls_cert_file=args.tls_cert_file,
                tls_key_file=args.tls_key_file,
                data_dir=args.data_dir,
            )
        except ConnectionFailed as e:
            err.write(f"{PROG}: {e}\n")
            _report(printer, str(e), e.code)
            return 1
        with conn:
            if args.command is not None:
                return run_script(
                    conn,
                    read_statements(io.StringIO(args.command)),
                    printer,
                    err,
                    name_lines="\n" in args.command.strip(),
                )
            if script is not None:
                return run_script(conn, read_statements(script), printer, err)
            if not stdin.isatty():
                return run_script(conn, read_statements(_script_stream(stdin)), printer, err)
            return run_interactive(conn, _terminal_reader(), printer, out, err)
    except KeyboardInterrupt:
        err.write(f"\n{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`)
        return _stdout_closed(out)
    except UnicodeDecodeError as e:
        err.write(
            f"{PROG}: the script is not valid UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8 and try again\n"
        )
        return 1
    finally:
        if script is not None:
            script.close()


def _stdout_closed(out: TextIO) -> int:
    """Exit 1 quietly: stdout now points at /dev/null, so the interpreter's last
    flush at exit does not fail a second time with a message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # a stream without a descriptor
        pass
    return 1


#: Scripts are UTF-8; a byte-order mark (editors on Windows write one) is skipped.
SCRIPT_ENCODING = "utf-8-sig"


def _script_stream(stdin: TextIO) -> TextIO:
    """Standard input read as a script: strict UTF-8 whatever the locale (which
    may have Python smuggle bad bytes through as surrogates, later unsendable),
    without a byte-order mark, and with line ends left as they are."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream handed in (tests): already decoded
        return stdin
    return io.TextIOWrapper(buffer, encoding=SCRIPT_ENCODING, errors="strict", newline="\n")


def _terminal_reader() -> Callable[[str], str]:
    """input() with readline editing and a history file kept across sessions."""
    try:
        import atexit
        import readline
    except ImportError:  # no readline on this platform: plain input still works
        return input
    path = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # first run, or unreadable: start with an empty history
    readline.set_history_length(1000)

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)
    return input


if __name__ == "__main__":
    sys.exit(main())
