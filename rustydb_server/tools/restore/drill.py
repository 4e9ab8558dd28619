"""rusty-db-restore --drill [--backup latest|ID] --data-dir D: the monthly test restore as one command.

Restores the backup's whole chain into a new temporary directory, starts a
real rusty-db-server on it (free ports, its own Unix socket directory inside
the temporary directory, archiving and every schedule off, no systemd
notification), checks that the server answering is that one, that it is
healthy, that every table holds the rows the backup recorded and that
``PRAGMA integrity_check`` is ``ok`` in every database, stops it, removes the
directory and records the outcome in the data directory's
``backup_checks.json`` (which GET /api/v1/admin/backups and SHOW BACKUPS
show) and in an audit event. The judgements are restore/drill.py's.

``--data-dir`` is the data directory of the server whose backups are
drilled (read only: its backup catalog says where each backup is); the drill
never writes into it except the outcome. ``--input FILE`` drills a backup
file instead (its chain found in ``--chain-dir`` or beside it).

Exit status 0: the drill passed; 1: it failed (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import tomli_w

from rustydb_client import client as rc

from ...archive.segment_file import ArchiveError
from ...audit import audit
from ...backup import checks
from ...backup.catalog import CatalogError, load_entries
from ...backup.manifest import Manifest, ManifestError
from ...container.errors import BackupError
from ...container.reader import BackupReader
from ...crypto import CryptoError
from ...datadir import PID_FILE, DataDirError
from ...engine.database import STATE_TABLE, quote_ident
from ...keys import KeyFileError, NoKeyError
from ...logsetup import configure_logging, get_logger
from ...restore import drill as core
from ...restore.chain import find_chain, restore_chain
from ...restore.errors import RestoreError
from ...restore.incremental import IncrementalRestoreError
from ...settings import AUTO_FILE_NAME
from ..interrupt import interruption, sigterm_interrupts
from ..output import fail, print_json
from .failure import PROG

log = get_logger("rustydb.drill")

#: How long the restored server may take to answer healthy (recovery of a large restore included).
START_TIMEOUT_S = 300.0
#: How long it may take to stop once asked (SIGTERM), before it is killed.
STOP_TIMEOUT_S = 60.0
#: Servers started before the drill gives up on ports others keep taking.
PORT_ATTEMPTS = 3
#: A Unix socket's path must be shorter than this (sun_path is 108 bytes on Linux).
SOCKET_PATH_MAX = 104
#: The settings the drill's server runs with, whatever the restored directory or a config file say:
#: it must not archive into production's archive, take backups, drill or verify, or trust a token file.
SERVER_SETTINGS = {
    "archive_mode": False,
    "archive_dest": "",
    "backup_schedule": False,
    "restore_drill_schedule": "off",
    "verify_schedule": "off",
    "http_api_token_file": "",
    "http_api_trust_loopback": "on",
    "listen_address": "127.0.0.1",
    "log_format": "json",
}
#: Environment a server started under systemd passes down; the drill's server must not notify systemd.
DROPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
#: What a restore of a damaged or unusable chain raises.
RESTORE_ERRORS = (
    RestoreError,
    DataDirError,
    IncrementalRestoreError,
    ArchiveError,
    BackupError,
    CryptoError,
    ManifestError,
    KeyFileError,
    NoKeyError,
    OSError,
)


def run(args: argparse.Namespace) -> int:
    configure_logging("json" if args.json else "auto", "info", stream=sys.stderr)
    drill = core.Drill(backup_id=None)
    started = time.monotonic()
    chain = None
    try:
        # SIGTERM (the server stopping during a scheduled drill) unwinds as Ctrl-C does:
        # the drill's server is stopped and its directory removed on the way out.
        with sigterm_interrupts():
            try:
                chain = _chain(args, drill)
            except (core.DrillError, CatalogError) as e:
                return fail(PROG, f"restore drill: {e}")
            except RESTORE_ERRORS as e:
                drill.failed("find backup", _describe(e))
            if chain is not None:
                _drill_chain(args, chain, drill)
    except KeyboardInterrupt as exc:
        how, _code = interruption(exc)
        drill.failed("interrupted", f"{how}; the drill's server was stopped and its directory removed")
    seconds = round(time.monotonic() - started, 3)
    _record(args, drill)
    summary = {**drill.as_dict(), "chain": chain or [], "seconds": seconds}
    error = None if drill.ok else f"restore drill of backup {drill.backup_id} failed: {drill.reason}"
    if args.json:
        print_json(summary if error is None else {**summary, "error": error})
    else:
        for s in drill.steps:
            print(f"{'✓' if s.ok else '✗'} {s.name}: {s.detail}")
        print(f"Restore drill of backup {drill.backup_id} {'passed' if drill.ok else 'FAILED'} in {seconds:.1f} s")
    return 0 if error is None else fail(PROG, error)


def _describe(e: BaseException) -> str:
    if isinstance(e, BackupError):
        return f"the backup is damaged: {e}"
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    return str(e)


def _chain(args: argparse.Namespace, drill: core.Drill) -> list[str]:
    """The chain's files, full first, and the backup id drilled."""
    if args.input:
        last = os.path.abspath(args.input)
        directories = args.chain_dir or [os.path.dirname(last)]
    else:
        entry = core.choose(load_entries(args.data_dir), args.backup or "latest")
        drill.backup_id = entry["backup_id"]  # a file gone from disk fails this backup's drill
        last = entry["location"]
        directories = [os.path.dirname(last)]
    with open(last, "rb") as f:
        drill.backup_id = BackupReader(f).header.backup_id
    chain = find_chain(last, directories, args.data_dir)
    drill.passed("find backup", f"chain of {len(chain)} backup(s) ending at {last}")
    return chain


def _drill_chain(args: argparse.Namespace, chain: list[str], drill: core.Drill) -> None:
    parent = args.drill_dir or None
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    top = tempfile.mkdtemp(prefix="rustydb-drill-", dir=parent)
    sockets = None
    try:
        target = os.path.join(top, "data")
        try:
            with open(chain[-1], "rb") as f:
                manifest = Manifest.from_header(BackupReader(f).header)
            restore_chain(
                chain[-1],
                sorted({os.path.dirname(p) for p in chain}),
                target,
                key_file=args.key_file,
                threads=args.threads,
                verify_encryption=True,
            )
        except RESTORE_ERRORS as e:
            drill.failed("restore", _describe(e))
            return
        drill.passed("restore", f"restored into {target}")
        sockets = _socket_dir(top)
        _write_server_settings(target, sockets)
        _serve_and_check(target, top, sockets, manifest, drill)
    finally:
        for directory in (top, sockets):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
                if os.path.exists(directory):
                    drill.failed("clean up", f"could not remove {directory}; remove it by hand")


def _socket_dir(top: str) -> str:
    """The drill server's own Unix socket directory: in the drill's directory, unless that
    path is too long for a socket (about 108 bytes on Linux), then a new one in $TMPDIR."""
    inside = os.path.join(top, "sock")
    if len(inside) + len("/.s.RUSTYDB.65535") < SOCKET_PATH_MAX:
        os.mkdir(inside, 0o700)
        return inside
    base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="rustydb-drill-", dir=base if len(base) < 60 else "/tmp")


def _write_server_settings(target: str, sockets: str) -> None:
    values = dict(SERVER_SETTINGS, unix_socket_directory=sockets)
    with open(os.path.join(target, AUTO_FILE_NAME), "wb") as f:
        tomli_w.dump(values, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(target: str, log_path: str, started: list) -> tuple[subprocess.Popen, int, int, dict | None]:
    """The restored server started on free ports: (process, port, HTTP port, its first health report).
    A port another program took between choosing it and binding it is chosen again. Each process
    is in ``started`` from the moment it exists, so whatever stops the drill stops it too."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    for _attempt in range(PORT_ATTEMPTS):
        port, http_port = _free_port(), _free_port()
        command = [
            sys.executable,
            "-m",
            "rustydb_server.tools.server_main",
            "--data-dir",
            target,
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--listen",
            "127.0.0.1",
        ]
        with open(log_path, "ab") as server_log:
            proc = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        health = _wait_healthy(proc, http_port)
        if health is not None or proc.poll() is None or "Address already in use" not in (_read(log_path) or ""):
            return proc, port, http_port, health
        with open(log_path, "ab") as server_log:
            server_log.write(b"(the drill chooses other ports)\n")
    return proc, port, http_port, health


def _serve_and_check(target: str, top: str, sockets: str, manifest: Manifest, drill: core.Drill) -> None:
    log_path = os.path.join(top, "server.log")
    started: list[subprocess.Popen] = []
    try:
        _check_server(target, sockets, log_path, manifest, drill, started)
    except BaseException:  # interrupted: stop what runs, judge nothing more
        for proc in started:
            _stop(proc)
        raise
    codes = [_stop(proc) for proc in started]
    if drill.ok and codes and codes[-1] != 0:
        drill.failed("stop", f"the restored server exited with status {codes[-1]}: {_tail(log_path)}")
    elif drill.ok:
        drill.passed("stop", "stopped cleanly")


def _check_server(
    target: str, sockets: str, log_path: str, manifest: Manifest, drill: core.Drill, started: list
) -> None:
    proc, port, http_port, health = _start(target, log_path, started)
    if health is None:
        drill.failed("start", f"the restored server did not come up: {_tail(log_path)}")
        return
    pid_file = _read(os.path.join(target, PID_FILE))
    problem = core.identity_problem(health, pid_file, data_dir=target, pid=proc.pid, port=port, http_port=http_port)
    if problem:
        drill.failed("identity", problem)
        return
    drill.passed("identity", f"pid {proc.pid} serves {target} on port {port}")
    problem = core.health_problem(health)
    if problem:
        drill.failed("health", problem)
        return
    drill.passed("health", "healthy")
    _check_data(sockets, port, health.get("databases") or [], manifest, drill)


def _wait_healthy(proc: subprocess.Popen, http_port: int) -> dict | None:
    """The health report once the server serves (healthy or not), or None if it exited or never answered."""
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"http://127.0.0.1:{http_port}/api/v1/admin/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                report = json.loads(r.read())
        except urllib.error.HTTPError as e:
            with contextlib.suppress(ValueError):
                report = json.loads(e.read())
                if report.get("status") not in ("starting", None):
                    return report
            report = None
        except (OSError, ValueError):
            report = None
        if report is not None and report.get("status") != "starting":
            return report
        time.sleep(0.05)
    return None


def _check_data(sockets: str, port: int, databases: list[str], manifest: Manifest, drill: core.Drill) -> None:
    """Row counts and integrity, asked of the drill's server through its own socket directory only."""
    expected = core.expected_counts(manifest)
    found: dict[str, dict[str, int]] = {}
    integrity: list[str] = []
    try:
        for name in sorted(databases):
            with rc.connect(sockets, port, database=name, timeout=30) as conn:
                tables = [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                    ).rows
                    if r[0] != STATE_TABLE
                ]
                found[name] = {t: conn.execute(f"SELECT count(*) FROM {quote_ident(t)}").rows[0][0] for t in tables}
                integrity += core.integrity_problems(name, [r[0] for r in conn.execute("PRAGMA integrity_check").rows])
    except rc.ClientError as e:
        drill.failed("query", f"the restored server did not answer: {e}")
        return
    tables = sum(len(t) for t in found.values())
    if expected is None:
        drill.passed(
            "row counts",
            f"{tables} tables in {len(found)} databases counted; the backup (an incremental taken before "
            "incrementals recorded row counts) recorded none to compare with",
        )
    else:
        problems = core.count_problems(expected, found)
        if problems:
            drill.failed("row counts", "; ".join(problems[:5]))
        else:
            drill.passed("row counts", f"{tables} tables in {len(found)} databases hold the rows the backup recorded")
    if integrity:
        drill.failed("integrity", "; ".join(integrity))
    else:
        drill.passed("integrity", f"PRAGMA integrity_check ok in {len(found)} databases")


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _tail(path: str) -> str:
    text = (_read(path) or "").strip().splitlines()
    return " | ".join(text[-3:]) or "no output"


def _recorded_file(args: argparse.Namespace, backup_id: str) -> bool:
    """Whether the file drilled is the one --data-dir's catalog records for ``backup_id``:
    a drill of a copy elsewhere (damaged or not) says nothing about the catalog's backup."""
    if not args.input:
        return True
    try:
        entries = load_entries(args.data_dir)
    except CatalogError:
        return False
    location = next((e.get("location") for e in entries if e.get("backup_id") == backup_id), None)
    return isinstance(location, str) and os.path.realpath(location) == os.path.realpath(args.input)


def _record(args: argparse.Namespace, drill: core.Drill) -> None:
    """The outcome in the data directory's backup_checks.json (for the catalog's own file of the
    backup), the audit trail and the log."""
    outcome = checks.OK if drill.ok else checks.FAILED
    if args.data_dir and drill.backup_id and _recorded_file(args, drill.backup_id):
        try:
            checks.record(args.data_dir, drill.backup_id, checks.DRILL, outcome, drill.reason)
        except OSError as e:
            drill.failed("record", f"cannot record the outcome in {args.data_dir}: {e.strerror or e}")
            outcome = checks.FAILED
    audit("drill", "ok" if drill.ok else "failed", peer="local", backup_id=drill.backup_id, reason=drill.reason)
    if drill.ok:
        log.info("restore drill passed", backup_id=drill.backup_id)
    else:
        log.error("restore drill failed", backup_id=drill.backup_id, reason=drill.reason)
