"""What the command-line tools print: sizes and rates as people read them,
one JSON document for scripts, and error lines.

The ``--json`` contract, the same for rusty-db-backup, rusty-db-restore and
rusty-db-export: every run prints exactly one JSON document on stdout, one
line, whatever the outcome, so ``tool --json | jq`` always has something to
read. It is an object whose ``"ok"`` says whether the tool succeeded (exit
0); a failure's document has ``"error"``, the same message as the stderr
line, and a usage error's also ``"usage_error": true`` (exit 2). A listing
(``rusty-db-restore --list-wal``) is still one document, its items written
into one array as they are found; a failure part-way closes the array and
ends the document with ``"ok": false`` and the error. The only document not
on stdout is rusty-db-export's with ``--output -``, where stdout carries the
data: its summary goes to stderr.

Errors go to stderr, one line: what failed, why and what to do. ``run_main``
is every tool's outer frame: it turns an error nobody expected into such a
line too, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TextIO

MIB = 1024 * 1024


def human_size(size: int) -> str:
    """Bytes as people read them: "512 B", "3.4 MB", "1.2 GB"."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def mb_per_second(size: int, seconds: float) -> float:
    # A restore of a tiny database can finish within the clock's resolution.
    return round(size / MIB / seconds, 1) if seconds > 0 else 0.0


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


class JsonOutput:
    """The one JSON document of a ``--json`` run (see the module's docstring)."""

    def __init__(self) -> None:
        self.written = False
        # Where the document goes: stdout, unless stdout carries the tool's data.
        self.out: TextIO | None = None
        self._stream: JsonStream | None = None

    def document(self, doc: dict, out: TextIO | None = None) -> None:
        if "ok" not in doc:
            doc = {"ok": True, **doc}
        self.written = True
        _write_line(out or self.out or sys.stdout, _dumps(doc))

    def stream(self, fields: dict, key: str) -> JsonStream:
        """Start the document: ``fields``, then ``key``'s array, its items added one by one."""
        self._stream = JsonStream(self, fields, key)
        return self._stream

    def failure(self, message: str, **fields) -> None:
        """The failure's document, or the end of the one being streamed; nothing if one was printed."""
        outcome = {"ok": False, "error": message, **fields}
        if self._stream is not None and not self._stream.closed:
            self._stream.close(outcome)
        elif not self.written:
            self.document(outcome)


class JsonStream:
    """One JSON document written as its items are found: never held whole in memory."""

    def __init__(self, owner: JsonOutput, fields: dict, key: str) -> None:
        self._owner = owner
        self.closed = False
        self._first = True
        head = _dumps(fields)[:-1]
        sys.stdout.write(head + ("," if fields else "") + _dumps(key) + ":[")

    def item(self, value: dict) -> None:
        sys.stdout.write(("" if self._first else ",") + _dumps(value))
        self._first = False

    def close(self, outcome: dict) -> None:
        self.closed = True
        self._owner.written = True
        _write_line(sys.stdout, "]," + _dumps(outcome)[1:])


_JSON: contextvars.ContextVar[JsonOutput | None] = contextvars.ContextVar("rustydb_tool_json", default=None)


def json_output() -> JsonOutput | None:
    """The document of the running ``--json`` command, None without --json."""
    return _JSON.get()


@contextlib.contextmanager
def json_run(enabled: bool) -> Iterator[JsonOutput | None]:
    """While inside, print_json and fail write the run's one JSON document."""
    token = _JSON.set(JsonOutput() if enabled else None)
    try:
        yield _JSON.get()
    finally:
        _JSON.reset(token)


def _write_line(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def print_json(summary: dict, out: TextIO | None = None) -> None:
    """One line of JSON on stdout (or ``out``), flushed, for scripts.

    Inside a ``--json`` run this is the run's document: ``"ok": true`` is
    added unless the summary says otherwise.
    """
    current = _JSON.get()
    if current is not None:
        current.document(summary, out)
        return
    _write_line(out or sys.stdout, _dumps(summary))


def fail(prog: str, message: str) -> int:
    """Print a user-facing error (what failed, why, what to do) and return exit code 1.

    Inside a ``--json`` run the document says so too, unless one was printed.
    """
    print(f"{prog}: error: {message}", file=sys.stderr)
    current = _JSON.get()
    if current is not None:
        try:
            current.failure(message)
        except BrokenPipeError:
            return stdout_closed()
    return 1


def describe_os_error(exc: OSError) -> str:
    """An OSError as people read it: its reason and the file, never its repr."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, getattr(exc, "filename2", None)) if n]
    return f"{what} ({', '.join(str(n) for n in names)})" if names else what


class ToolParser(argparse.ArgumentParser):
    """argparse, whose usage errors (exit 2) also end a --json run's document."""

    def error(self, message: str) -> NoReturn:
        current = _JSON.get()
        if current is not None:
            try:
                current.failure(message, usage_error=True)
            except BrokenPipeError:
                stdout_closed()
        super().error(message)


def run_main(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None, body: Callable) -> int:
    """A tool's outer frame: its arguments parsed and ``body(args)`` run, with the
    --json document promised, a closed stdout ending quietly, and any error
    that escaped the tool's own handling made one line (exit 1), never a traceback."""
    words = sys.argv[1:] if argv is None else argv
    with json_run("--json" in words):
        try:
            return body(parser.parse_args(argv))
        except BrokenPipeError:
            return stdout_closed()
        except OSError as exc:
            return fail(prog, describe_os_error(exc))
        except RecursionError as exc:
            return fail(prog, f"the input is nested too deeply to read ({exc})")
        except MemoryError:
            return fail(prog, "out of memory")
        except Exception as exc:  # a bug: still one line, naming it, so it can be reported
            return fail(
                prog,
                f"unexpected {type(exc).__name__}: {exc}; this is a bug in {prog}, please report it "
                "with the command line that caused it",
            )


def stdout_closed() -> int:
    """The reader of our output went away (``| head``): stop quietly with 1.

    stdout is pointed at /dev/null, so the interpreter's last flush at exit
    does not fail a second time with a traceback.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor (tests)
        pass
    return 1
