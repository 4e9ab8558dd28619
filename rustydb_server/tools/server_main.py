"""rusty-db-server: start the server (or print a users-file entry)."""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import socket
import sys

import trio

from .. import __version__, auth, run
from ..datadir import DataDirError
from ..engine.database import ReplayError
from ..engine.instance import EngineError, is_disk_full
from ..lifecycle import StartupError
from ..logsetup import configure_logging, get_logger
from ..notify import Notifier
from ..settings import SOURCE_DEFAULT, SettingError, Settings
from ..wal.record import WalRecordError
from ..wal.segment import WalCorruptError
from . import systemd_unit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rusty-db-server",
        description="Run the RustyDB server. With no options it serves ./rustydb-data on "
        "127.0.0.1:5432 (wire protocol) and 127.0.0.1:8080 (HTTP API).",
    )
    p.add_argument("--data-dir", help="data directory (created and initialized if empty)")
    p.add_argument("--port", type=int, help="wire protocol port (default 5432)")
    p.add_argument("--http-port", type=int, help="HTTP API port (default 8080, 0 disables it)")
    p.add_argument("--listen", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--config", help="TOML config file (see etc/rustydb/rustydb.toml)")
    p.add_argument(
        "--make-user", metavar="NAME", help="read a password from stdin and print a users-file entry for NAME"
    )
    p.add_argument(
        "--print-systemd-unit",
        action="store_true",
        help="print a systemd unit that runs this installed rusty-db-server with --config "
        f"(default {systemd_unit.DEFAULT_CONFIG}), and exit",
    )
    p.add_argument("--version", action="version", version=f"rusty-db-server {__version__}")
    return p


def _make_user(name: str) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("rusty-db-server: an empty password is not allowed", file=sys.stderr)
        return 1
    print(f'[users.{name}]\nscram = "{auth.format_verifier(password)}"')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.make_user:
            return _make_user(args.make_user)
        if args.print_systemd_unit:
            return _print_systemd_unit(parser, args)
        return _serve(args)
    except BrokenPipeError:  # --make-user's or the unit's output into a reader that went away
        return 1
    except Exception as e:  # anything _serve does not name: one line, never a traceback
        print(f"rusty-db-server: cannot start: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _print_systemd_unit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if _setting_overrides(args) or args.data_dir:
        # The unit's StateDirectory and ReadWritePaths are the guide's
        # /var/lib/rusty-db; other values belong in the config file.
        parser.error("--print-systemd-unit takes only --config; put data_dir, port, http_port and listen_address in it")
    config = os.path.abspath(args.config) if args.config else systemd_unit.DEFAULT_CONFIG
    try:
        text = systemd_unit.unit_text(systemd_unit.installed_server(), config)
    except systemd_unit.UnitError as e:
        print(f"rusty-db-server: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def _setting_overrides(args: argparse.Namespace) -> dict:
    """The flags that stand for settings, by the setting's name; unset flags leave the config's value."""
    flags = {"port": args.port, "http_port": args.http_port, "listen_address": args.listen}
    return {name: value for name, value in flags.items() if value is not None}


def _cannot_start_disk_full(e: BaseException, settings, log) -> int:
    # A data directory that exists starts read-only on a full disk; this is
    # one that could not even be created, or whose recovery could not write.
    log.error("cannot start: the disk is full", error=str(e))
    print(
        f"rusty-db-server: cannot start: the disk is full ({e}); free space on the "
        f"filesystem of {settings['data_dir']} and start the server again",
        file=sys.stderr,
    )
    return 1


def _say_cannot_start(e: BaseException, settings) -> None:
    print(f"rusty-db-server: {e}", file=sys.stderr)
    hint = _http_port_clash(settings) if isinstance(e, StartupError) else None
    if hint:
        print(f"rusty-db-server: {hint}", file=sys.stderr)


def _http_port_clash(settings) -> str | None:
    """Why a second server on this machine did not start, when it took the default HTTP port.

    The guide's test restore starts one with only ``--port 5433``: its HTTP API
    wants 8080, where production listens, and the script's health check of
    port 8080 then gets production's answer. Say so where the script's
    operator sees it, naming the server that holds the port.
    """
    host, port = settings["listen_address"], settings["http_port"]
    if not port or settings.source("http_port") != SOURCE_DEFAULT:
        return None
    ipv6 = ":" in host
    try:
        with socket.create_server((host, port), family=socket.AF_INET6 if ipv6 else socket.AF_INET):
            return None  # free now: the failure was something else
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            return None
    holder = "another program"
    import urllib.request  # only on this failure: not for every start

    try:
        # What listens on every address also answers on loopback.
        address = f"[{host}]" if ipv6 and host != "::" else "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{address}:{port}/api/v1/admin/health"
        with urllib.request.urlopen(url, timeout=2) as answer:
            path = json.loads(answer.read())["data_directory"]["path"]
        holder = f"the RustyDB server of {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return (
        f"this server was not given an HTTP port, so it took the default {port}, where {holder} "
        f"listens: a health check of port {port} gets that server's answer, not this one's. "
        f"Start this server with its own --http-port PORT as well as --port, and check that port"
    )


def _serve(args: argparse.Namespace) -> int:
    """Run the server until it is stopped; the exit status says how it ended."""
    overrides = _setting_overrides(args)
    try:
        settings = Settings.load(args.config, args.data_dir, overrides)
    except SettingError as e:
        print(f"rusty-db-server: {e}", file=sys.stderr)
        return 1
    configure_logging(settings["log_format"], settings["log_level"])
    log = get_logger("rustydb.server")
    notifier = Notifier()
    try:
        return trio.run(run.run, settings, notifier)
    except (DataDirError, EngineError, StartupError) as e:
        log.error("cannot start", error=str(e))
        _say_cannot_start(e, settings)
        return 1
    except OSError as e:
        if is_disk_full(e):
            return _cannot_start_disk_full(e, settings, log)
        log.error("cannot start", error=str(e))
        print(f"rusty-db-server: cannot start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # WAL corruption and the like: say what, never a traceback
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]
        if is_disk_full(e):
            return _cannot_start_disk_full(e, settings, log)
        expected = isinstance(
            e, (WalCorruptError, ReplayError, WalRecordError, StartupError, DataDirError, EngineError)
        )
        (log.error if expected else log.exception)("server stopped on an error", error=str(e), kind=type(e).__name__)
        _say_cannot_start(e, settings)
        return 1


if __name__ == "__main__":
    sys.exit(main())
