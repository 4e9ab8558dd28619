"""The typed settings registry, and where each effective value came from.

Every setting the server knows is declared once in ``REGISTRY`` with its type,
default, unit and whether it applies to a running server at once ("live") or
only after a restart ("restart"). Values arrive from four places, later ones
winning: the built-in default, the config file (TOML, top-level keys named as
the settings), ``rustydb.auto.toml`` in the data directory (written by ALTER
SYSTEM) and command-line flags.

Parsed values are plain Python objects in the setting's base unit: durations
are ints in the unit the setting declares (``ms`` or ``s``), sizes are ints in
bytes, booleans are ``bool``, paths are absolute ``str`` ("" when unset).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from rustydb_server.fileops import REAL, FileOps

AUTO_FILE_NAME = "rustydb.auto.toml"

LIVE = "live"
RESTART = "restart"

SOURCE_DEFAULT = "default"
SOURCE_CONFIG = "config file"
SOURCE_AUTO = "auto file"
SOURCE_CLI = "command line"

TYPES = ("bool", "int", "float", "str", "enum", "path", "duration", "size", "list")

# Sizes follow PostgreSQL: binary multiples, "kB" for kilobytes.
SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
SIZE_UNIT_NAMES = {1: "B", 1024: "kB", 1024**2: "MB", 1024**3: "GB", 1024**4: "TB"}
DURATION_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}

TRUE_WORDS = frozenset({"on", "true", "yes", "1"})
FALSE_WORDS = frozenset({"off", "false", "no", "0"})

_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z]*)\s*$")


class SettingError(ValueError):
    """A setting name or value was rejected; the message says what to do."""


@dataclass(frozen=True)
class Setting:
    name: str
    type: str
    default: Any
    unit: str = ""
    context: str = LIVE
    description: str = ""
    validator: Callable[[Any], str | None] | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


def _power_of_two(value: int) -> str | None:
    if value & (value - 1):
        return "must be a power of two (for example 16MB)"
    return None


def _peer_map_problem(value: str) -> str | None:
    for part in value.split(","):
        if part.strip() and not all(p.strip() for p in part.partition("=")[::2]) or (part.strip() and "=" not in part):
            return f"entry {part.strip()!r} is not os_user=role (for example 'backupsvc=backup_role')"
    return None


def _octal_mode_problem(value: str) -> str | None:
    try:
        mode = int(value, 8)
    except ValueError:
        return "must be an octal mode such as 0770 or 0777"
    if not 0 <= mode <= 0o777:
        return "must be an octal mode between 0000 and 0777"
    return None


def check_cron(expression: str) -> str | None:
    """Why ``expression`` is not a usable five-field cron expression ("" or "off": no schedule), or None."""
    if expression in ("", "off"):
        return None
    if len(expression.split()) != 5:
        return (
            "must be a cron expression of five fields (minute hour day month weekday), "
            "for example '0 2 * * 0', or 'off'"
        )
    from croniter import croniter  # only a schedule setting needs it: not every tool's start

    if not croniter.is_valid(expression):
        return "is not a valid cron expression; for example '0 2 * * 0' is Sunday at 02:00"
    return None


def _time_zone(name: str) -> str | None:
    if not name:
        return None
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "is not a known time zone; use an IANA name such as 'Europe/Berlin' or 'UTC', or '' for the system's"
    return None


class RepositoryURL(str):
    """An entry of backup_repositories: the repository's directory or s3:// URL (it
    compares, hashes and prints as that) and the name it may have been given
    (``name`` is None for a plain entry); see ``repository_entry``."""

    name: str | None

    def __new__(cls, url: str, name: str | None = None) -> RepositoryURL:
        self = super().__new__(cls, url)
        self.name = name
        return self

    def __reduce__(self):
        return (RepositoryURL, (str(self), self.name))

    def shown(self) -> str:
        """As SHOW prints it (and ALTER SYSTEM SET takes it): ``name=URL``, or the URL."""
        return f"{self.name}={self}" if self.name else str(self)


#: A repository's name: a letter, then letters, digits, "_" or "-".
REPOSITORY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
#: What follows "name=" in a named entry: an s3:// URL or a directory written with a slash
#: (so "s3://b/year=2026" and "/srv/a=b" stay plain entries).
_NAMED_TARGET = ("s3://", "/", "./", "../")


def repository_entry(item: Any) -> RepositoryURL | str:
    """One backup_repositories entry: "URL", "name=URL", or (TOML) {name = "...", url = "..."};
    a string saying what is wrong with it when it is none of them."""
    if isinstance(item, dict):
        if set(item) != {"name", "url"} or not all(isinstance(v, str) and v.strip() for v in item.values()):
            return 'an inline table must be { name = "offsite", url = "s3://bucket/prefix" }'
        name, url = item["name"].strip(), item["url"].strip()
    elif isinstance(item, str) and item.strip():
        name, sep, url = item.strip().partition("=")
        if not (sep and REPOSITORY_NAME.fullmatch(name) and url.startswith(_NAMED_TARGET)):
            return RepositoryURL(item.strip())
    else:
        return "each entry must be a directory, an s3:// URL, name=URL or { name = ..., url = ... }"
    if not REPOSITORY_NAME.fullmatch(name):
        return f"the repository name {name!r} must be a letter, then letters, digits, '_' or '-'"
    if re.fullmatch(r"(?:repo)?[0-9]+", name):
        return f"the repository name {name!r} would read as a position (--repo N or repoN); choose another"
    return RepositoryURL(url, name)


def repository_names(value) -> dict[str, str]:
    """name -> URL of the named entries of backup_repositories' value."""
    return {v.name: str(v) for v in value or [] if getattr(v, "name", None)}


def _repositories_problem(value: list[str]) -> str | None:
    for item in value:
        if item.startswith("s3://") and not item[len("s3://") :].split("/", 1)[0]:
            return f"has {item!r}, which names no bucket: write s3://bucket or s3://bucket/prefix"
        if "://" in item and not item.startswith("s3://"):
            return f"has {item!r}: a repository is a local directory or an s3://bucket/prefix URL"
    return None


def _archive_extra_dests_problem(value: list[str]) -> str | None:
    for item in value:
        if item.startswith("s3://"):
            if not item[len("s3://") :].split("/", 1)[0]:
                return f"has {item!r}, which names no bucket: write s3://bucket or s3://bucket/prefix"
        elif "://" in item:
            return f"has {item!r}: an archive destination is a directory or an s3://bucket/prefix URL"
        elif not os.path.isabs(item):
            return f"has {item!r}: write the directory as an absolute path"
    return None


def _webhook_url(value: str) -> str | None:
    if value == "" or value.startswith(("http://", "https://")):
        return None
    return "must be an http:// or https:// URL, or '' for none"


def _registry(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


REGISTRY: dict[str, Setting] = _registry(
    Setting(
        "listen_address",
        "str",
        "127.0.0.1",
        context=RESTART,
        description="Address the wire protocol and HTTP API listen on.",
    ),
    Setting("port", "int", 5432, context=RESTART, min=1, max=65535, description="TCP port of the wire protocol."),
    Setting(
        "http_port",
        "int",
        8080,
        context=RESTART,
        min=0,
        max=65535,
        description="TCP port of the admin HTTP API; 0 disables the API.",
    ),
    Setting(
        "data_dir",
        "path",
        "./rustydb-data",
        context=RESTART,
        description="Data directory; relative paths are taken from the working directory.",
    ),
    Setting(
        "max_connections",
        "int",
        100,
        context=RESTART,
        min=1,
        max=10000,
        description="Most client connections at once, counted from accept to close (handshakes included).",
    ),
    Setting(
        "superuser_reserved_connections",
        "int",
        3,
        context=RESTART,
        min=0,
        max=10000,
        description="Connections of max_connections kept for the superuser (the server's OS user or root "
        "on the Unix socket; a loopback client while auth_trust_loopback is on); other clients get the rest.",
    ),
    Setting(
        "max_handshakes",
        "int",
        64,
        min=1,
        max=10000,
        description="Most connections still authenticating at once; more are refused (the superuser's "
        "are not counted).",
    ),
    Setting(
        "authentication_timeout",
        "duration",
        10_000,
        unit="ms",
        min=1,
        description="Close a connection that has not finished authenticating within this long.",
    ),
    Setting(
        "client_send_timeout",
        "duration",
        60_000,
        unit="ms",
        description="Close a session whose client has not taken a piece of its answer within this long "
        "(a client that stopped reading), releasing its snapshot; 0 disables.",
    ),
    Setting(
        "auth_trust_loopback",
        "bool",
        False,
        description="Clients connecting over TCP loopback need no password and are the superuser (an opt-in; "
        "the server logs a warning while it is on).",
    ),
    Setting(
        "auth_users_file",
        "path",
        "",
        description="The users file of SCRAM-SHA-256 credentials from before roles: its users become LOGIN "
        "SUPERUSER roles at the next start.",
    ),
    Setting(
        "auth_peer_map",
        "str",
        "",
        description="On the Unix socket, OS users mapped to roles of other names: 'osuser=role, other=role2' "
        "(others map to the role of their own name).",
        validator=_peer_map_problem,
    ),
    Setting(
        "unix_socket_directory",
        "str",
        "/run/rustydb",
        context=RESTART,
        description="Directory of the Unix socket .s.RUSTYDB.<port> (peer authentication); the data "
        "directory when this one is not writable; empty: no Unix socket.",
    ),
    Setting(
        "unix_socket_permissions",
        "str",
        "0777",
        context=RESTART,
        description="Mode of the Unix socket, in octal (peer authentication decides who gets in).",
        validator=_octal_mode_problem,
    ),
    Setting(
        "unix_socket_group",
        "str",
        "",
        context=RESTART,
        description="Group owning the Unix socket; empty: the server's own group.",
    ),
    Setting(
        "http_api_token_file",
        "path",
        "",
        description="File holding the bearer token of the HTTP API; it must be mode 0600 (the server "
        "refuses to start if group or others may read it).",
    ),
    Setting(
        "http_api_trust_loopback",
        "enum",
        "auto",
        choices=("auto", "on", "off"),
        description="Loopback clients of the HTTP API need no token; auto: only while no http_api_token_file is set.",
    ),
    Setting(
        "http_api_allowed_hosts",
        "str",
        "",
        description="Host names (comma-separated) the HTTP API answers to besides IP addresses and "
        "localhost; * for any.",
    ),
    Setting(
        "tls_cert_file",
        "path",
        "",
        context=RESTART,
        description="PEM certificate (chain) of the server: with tls_key_file, TLS for TCP clients of the wire "
        "protocol and HTTPS for the HTTP API.",
    ),
    Setting(
        "tls_key_file",
        "path",
        "",
        context=RESTART,
        description="PEM private key of tls_cert_file, unencrypted; it must be mode 0600 or less (the server "
        "refuses to start if group or others may read it).",
    ),
    Setting(
        "tls_ca_file",
        "path",
        "",
        context=RESTART,
        description="PEM CA certificates: when set, TCP clients of the wire protocol must use TLS and present a "
        "client certificate signed by one of them.",
    ),
    Setting(
        "tls_mode",
        "enum",
        "allow",
        choices=("off", "allow", "require"),
        context=RESTART,
        description="TLS for TCP clients of the wire protocol: off (no TLS, no HTTPS either); allow (when the "
        "client asks and a certificate is set); require (plaintext TCP clients are refused). The Unix socket "
        "never uses TLS.",
    ),
    Setting(
        "statement_timeout",
        "duration",
        0,
        unit="ms",
        description="Cancel a statement running longer than this; 0 disables.",
    ),
    Setting(
        "inline_statement_budget",
        "duration",
        1,
        unit="ms",
        min=0,
        max=100,
        description="A read, a plain BEGIN or a one-row write inside a transaction that ran in a worker "
        "thread within this long runs on the event loop next time, with no thread hop (a read is stopped "
        "and rerun in a worker past it, a write goes back to the worker after it); 0 runs every statement "
        "in a worker thread.",
    ),
    Setting(
        "idle_session_timeout",
        "duration",
        0,
        unit="ms",
        description="Close a session idle (outside a transaction) this long; 0 disables.",
    ),
    Setting(
        "shutdown_timeout",
        "duration",
        30,
        unit="s",
        min=0,
        description="How long a graceful shutdown waits for running statements; then they are "
        "interrupted, and work stuck in the engine 6 s later is abandoned (exit 1; the next start "
        "recovers from the WAL).",
    ),
    Setting(
        "engine_stall_timeout",
        "duration",
        60,
        unit="s",
        min=0,
        description="A commit or checkpoint lock held, or waited for, longer than this makes health "
        "unhealthy and stops the systemd watchdog's pings (so WatchdogSec restarts the server); 0 disables.",
    ),
    Setting(
        "checkpoint_timeout",
        "duration",
        300,
        unit="s",
        min=1,
        description="Longest time between automatic checkpoints.",
    ),
    Setting(
        "checkpoint_wal_size",
        "size",
        64 * 1024**2,
        unit="B",
        min=1,
        description="Checkpoint after this much WAL has been written.",
    ),
    Setting(
        "wal_segment_size",
        "size",
        16 * 1024**2,
        unit="B",
        context=RESTART,
        min=64 * 1024,
        max=1024**3,
        validator=_power_of_two,
        description="Size of a WAL segment file; used only when the data "
        "directory is initialised. A power of two from 64kB to 1GB.",
    ),
    Setting(
        "wal_keep_size",
        "size",
        0,
        unit="B",
        description="Extra WAL kept beyond what checkpoints, archiving and backups need.",
    ),
    Setting("archive_mode", "bool", False, description="Copy every completed WAL segment to archive_dest."),
    Setting("archive_dest", "path", "", description="Directory, or s3://bucket/prefix, WAL segments are archived to."),
    Setting(
        "archive_timeout",
        "duration",
        60,
        unit="s",
        min=1,
        description="Switch to a new WAL segment at least this often so it gets archived.",
    ),
    Setting(
        "archive_check_timeout",
        "duration",
        60,
        unit="s",
        min=1,
        description="How long a pitr-base backup waits for the archive to hold the WAL segment of its "
        "start before it fails with the archiver's last error.",
    ),
    Setting(
        "archive_extra_dests",
        "list",
        [],
        validator=_archive_extra_dests_problem,
        description="More places every WAL segment is archived to besides archive_dest (absolute directories "
        "or s3://bucket/prefix URLs): a segment counts as archived once every one holds it; one that is down "
        "delays only its own copies, and the WAL is kept until it catches up.",
    ),
    Setting("archive_encryption", "bool", False, description="Encrypt archived WAL segments with backup_key_file."),
    Setting(
        "archive_compression",
        "enum",
        "lz4",
        choices=("lz4", "zstd", "snappy", "none"),
        description="Compression of archived WAL segments.",
    ),
    Setting(
        "backup_dir",
        "path",
        "",
        description="Directory of backups started through the API; empty means <data_dir>/backups.",
    ),
    Setting(
        "backup_repositories",
        "list",
        [],
        validator=_repositories_problem,
        description="Repositories every backup goes to: local directories or s3://bucket/prefix URLs. The "
        "server writes each backup to the first and copies it to the others in the background, with retries; "
        "empty means backup_dir.",
    ),
    Setting("backup_key_file", "path", "", description="Key file used to encrypt backups and archived WAL."),
    Setting(
        "backup_compression", "enum", "lz4", choices=("lz4", "zstd", "snappy"), description="Compression of backups."
    ),
    Setting("backup_threads", "int", 2, min=1, max=64, description="Threads compressing and encrypting a backup."),
    Setting(
        "backup_nice",
        "int",
        10,
        min=0,
        max=19,
        description="CPU niceness of the threads compressing and encrypting a backup "
        "the server writes, so queries keep the CPU when both are busy "
        "(Linux; 0 = normal priority).",
    ),
    Setting(
        "backup_schedule",
        "bool",
        True,
        description="Take the scheduled backups below into backup_dir (off: the server takes none by itself).",
    ),
    Setting(
        "backup_schedule_full",
        "str",
        "0 2 * * 0",
        validator=check_cron,
        description="Cron expression of scheduled full backups, in backup_schedule_timezone; 'off' for none.",
    ),
    Setting(
        "backup_schedule_incremental",
        "str",
        "0 2 * * 1-6",
        validator=check_cron,
        description="Cron expression of scheduled incremental backups; 'off' for none. "
        "One due while no full backup exists is taken as a full.",
    ),
    Setting(
        "backup_schedule_differential",
        "str",
        "off",
        validator=check_cron,
        description="Cron expression of scheduled differential backups; 'off' for none.",
    ),
    Setting(
        "backup_schedule_timezone",
        "str",
        "",
        validator=_time_zone,
        description="IANA time zone the backup schedules are read in; empty means the server's ($TZ, /etc/localtime).",
    ),
    Setting(
        "backup_schedule_retries",
        "int",
        3,
        min=0,
        max=100,
        description="How often a failed scheduled backup is tried again before it is given up.",
    ),
    Setting(
        "backup_schedule_retry_delay",
        "duration",
        300,
        unit="s",
        min=1,
        description="Wait before the first retry of a failed scheduled backup; it doubles for each further one.",
    ),
    Setting(
        "backup_schedule_encryption",
        "bool",
        False,
        description="Encrypt the scheduled backups with backup_key_file (AES-256-GCM), as --encrypt does.",
    ),
    Setting(
        "backup_retention_days",
        "int",
        30,
        min=0,
        max=36500,
        description="Keep every backup completed in the last N days, and the newest one before them, "
        "each with the whole chain it restores from (0 = no day window; then "
        "backup_retention_full_count must be set). Applied after each scheduled backup, by "
        "POST /api/v1/admin/expire and by rusty-db-backup --expire.",
    ),
    Setting(
        "backup_retention_full_count",
        "int",
        0,
        min=0,
        max=10000,
        description="Keep the N newest whole-server full backups and every backup taken since the "
        "oldest of them (0 = no count). With backup_retention_days too, a backup either keeps stays.",
    ),
    Setting(
        "archive_retention_days",
        "int",
        0,
        min=0,
        max=36500,
        description="Point-in-time window of archived WAL, in days, separate from the backups' own "
        "(0 = keep the WAL every kept backup can replay). Shorter: WAL before the newest kept backup "
        "older than the window goes; longer: WAL archived inside the window stays.",
    ),
    Setting(
        "restore_drill_schedule",
        "str",
        "0 4 1-7 * 0",
        validator=check_cron,
        description="Cron expression of the scheduled restore drill (rusty-db-restore --drill of the latest "
        "backup), in backup_schedule_timezone; day of month and day of week must both match (the default "
        "is the first Sunday of the month at 04:00); 'off' for none.",
    ),
    Setting(
        "restore_drill_dir",
        "path",
        "",
        description="Where the scheduled restore drill restores into (a temporary directory made and "
        "removed there; it needs room for a copy of the databases); empty means $TMPDIR.",
    ),
    Setting(
        "verify_schedule",
        "str",
        "0 5 * * 6",
        validator=check_cron,
        description="Cron expression of the scheduled verify: every backup not verified within the "
        "schedule's period is re-read chunk by chunk (default Saturdays 05:00); 'off' for none.",
    ),
    Setting(
        "backup_retention_after_schedule",
        "bool",
        True,
        description="Apply the retention settings (expire what they no longer keep) after every "
        "successful scheduled backup; a failure to expire is logged and alerted, never fails the backup.",
    ),
    Setting(
        "health_full_backup_max_age",
        "duration",
        0,
        unit="s",
        min=0,
        description="Health turns degraded when no full backup completed within this long (0 = off); "
        "for the guide's weekly full, 8d.",
    ),
    Setting(
        "health_archive_lag_max_segments",
        "int",
        0,
        min=0,
        description="Health turns degraded when more than this many completed WAL segments wait to be "
        "archived (0 = off).",
    ),
    Setting(
        "health_archive_lag_max_seconds",
        "duration",
        0,
        unit="s",
        min=0,
        description="Health turns degraded when the oldest WAL segment waiting to be archived has waited "
        "longer than this (0 = off).",
    ),
    Setting(
        "health_min_free_percent",
        "float",
        5.0,
        min=0,
        max=100,
        description="Health turns degraded when the file system of backup_dir or archive_dest has less "
        "than this percentage free (0 = off).",
    ),
    Setting(
        "alert_command",
        "str",
        "",
        description="Shell command run (/bin/sh -c) for each alert, with the event as one JSON object on "
        "its stdin; for example mail -s 'RustyDB alert' dba@example.com. Empty: none.",
    ),
    Setting(
        "alert_webhook_url",
        "str",
        "",
        validator=_webhook_url,
        description="URL each alert is POSTed to as JSON (retried on failure). Empty: none.",
    ),
    Setting(
        "alert_timeout",
        "duration",
        30,
        unit="s",
        min=1,
        description="How long alert_command may run (then it is killed), and each webhook attempt may take.",
    ),
    Setting(
        "alert_webhook_retries",
        "int",
        3,
        min=0,
        max=20,
        description="How often a failed webhook POST is tried again (waiting 1 s, then doubling).",
    ),
    Setting(
        "alert_archive_failure_after",
        "duration",
        300,
        unit="s",
        min=0,
        description="Alert once WAL archiving has been failing for this long (0 = at the first failure).",
    ),
    Setting(
        "log_format",
        "enum",
        "auto",
        choices=("auto", "json", "console"),
        description="Log format; auto is console on a terminal, JSON otherwise.",
    ),
    Setting(
        "log_level",
        "enum",
        "info",
        choices=("debug", "info", "warning", "error"),
        description="Least severe log level written.",
    ),
    Setting(
        "repository_s3_endpoint_url",
        "str",
        "",
        description="S3 endpoint of s3:// repositories and archive_dest (e.g. http://minio.internal:9000); "
        "empty: AWS_ENDPOINT_URL or AWS's own.",
    ),
    Setting(
        "repository_s3_region",
        "str",
        "",
        description="S3 region of s3:// repositories; empty: AWS_REGION, ~/.aws/config or the default.",
    ),
    Setting(
        "repository_s3_force_path_style",
        "bool",
        False,
        description="Address buckets as ENDPOINT/bucket instead of bucket.ENDPOINT (most self-hosted stores).",
    ),
    Setting(
        "repository_s3_credentials_file",
        "path",
        "",
        description="AWS-style credentials file ([default] aws_access_key_id, aws_secret_access_key) for s3:// "
        "repositories; empty: the standard AWS chain (environment, ~/.aws/credentials, instance role).",
    ),
    Setting(
        "repository_s3_part_size",
        "size",
        16 * 1024**2,
        unit="B",
        min=5 * 1024**2,
        max=5 * 1024**3,
        description="Part size of multipart uploads to S3; objects smaller than this go up in one request.",
    ),
    Setting(
        "repository_s3_concurrency",
        "int",
        4,
        min=1,
        max=64,
        description="Parts uploaded, or ranges downloaded, in parallel per S3 object (memory: this x part size).",
    ),
    Setting(
        "repository_s3_checksum",
        "enum",
        "crc32c",
        choices=("crc32c", "sha256", "md5"),
        description="Checksum sent with every part uploaded to S3, verified by the store before it takes the "
        "part; md5 (Content-MD5) for stores without S3's newer checksums.",
    ),
    Setting(
        "repository_s3_stream_wait",
        "duration",
        10,
        unit="s",
        min=0,
        description="A backup written into an s3:// repository (the first of backup_repositories, or "
        "rusty-db-backup --repo) streams into the bucket as it is written; it waits for a slow store at most "
        "this long in all, then leaves the upload until the backup file is complete (0: never waits).",
    ),
)


# ---------------------------------------------------------------- lookup


def lookup(name: str) -> Setting:
    """The setting called ``name`` (case-insensitive), or a SettingError with close matches."""
    key = str(name).strip().lower()
    setting = REGISTRY.get(key)
    if setting is None:
        close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "."
        raise SettingError(f"unknown setting {name!r}{hint} SHOW ALL lists every setting.")
    return setting


# ---------------------------------------------------------------- parsing


def parse_value(name: str, raw: str | int | float | bool) -> Any:
    """Validate ``raw`` for setting ``name`` and return it in the base unit."""
    setting = lookup(name)
    value = _PARSERS[setting.type](setting, raw)
    _check_range(setting, value)
    if setting.validator is not None:
        problem = setting.validator(value)
        if problem:
            raise SettingError(f"{setting.name}: {format_value(setting.name, value)} {problem}")
    return value


def _reject(setting: Setting, raw: Any, expected: str) -> SettingError:
    return SettingError(f"invalid value {raw!r} for setting {setting.name}: expected {expected}")


def _parse_bool(setting: Setting, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise _reject(setting, raw, "on or off (also true/false, yes/no, 1/0)")


def _parse_int(setting: Setting, raw: Any) -> int:
    # bool is an int subclass; "port = true" is a mistake, not port 1.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        return int(raw)
    raise _reject(setting, raw, f"a whole number{_range_text(setting)}")


def _parse_float(setting: Setting, raw: Any) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise _reject(setting, raw, f"a number{_range_text(setting)}") from None
    else:
        raise _reject(setting, raw, f"a number{_range_text(setting)}")
    if not math.isfinite(value):
        raise _reject(setting, raw, "a finite number")
    return value


def _parse_str(setting: Setting, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _reject(setting, raw, "a string (quote it)")
    return raw


def _parse_enum(setting: Setting, raw: Any) -> str:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word not in setting.choices:
        raise _reject(setting, raw, f"one of {', '.join(setting.choices)}")
    return word


def is_url(value: str) -> bool:
    """A path setting that names an object store (s3://bucket/prefix) rather than a directory."""
    return isinstance(value, str) and value.startswith("s3://")


def _parse_path(setting: Setting, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _reject(setting, raw, "a path in quotes, for example '/var/lib/rusty-db/archive'")
    if "\0" in raw:
        raise _reject(setting, raw, "a path without NUL characters")
    return raw.strip()


def _parse_list(setting: Setting, raw: Any) -> list[str]:
    """A list of strings: a TOML array, or one string with comma-separated items (ALTER SYSTEM SET)."""
    if isinstance(raw, str):
        raw = [part for part in (p.strip() for p in raw.split(",")) if part]
    if setting.name == "backup_repositories" and isinstance(raw, list):
        return _parse_repositories(setting, raw)
    if not isinstance(raw, list) or not all(isinstance(item, str) and item.strip() for item in raw):
        raise _reject(setting, raw, "a list of strings, for example ['/var/backups/rustydb', 's3://bucket/prefix']")
    if any("\0" in item for item in raw):
        raise _reject(setting, raw, "items without NUL characters")
    items = [item.strip() for item in raw]
    if len(set(items)) != len(items):
        raise _reject(setting, raw, "each item once")
    return items


def _parse_repositories(setting: Setting, raw: list) -> list[str]:
    """backup_repositories: plain entries, "name=URL" entries and { name = ..., url = ... } tables."""
    items = []
    for item in raw:
        entry = repository_entry(item)
        if not isinstance(entry, RepositoryURL):
            raise _reject(setting, raw, f"a list of strings (or {{ name = ..., url = ... }} tables): {entry}")
        if "\0" in entry:
            raise _reject(setting, raw, "items without NUL characters")
        items.append(entry)
    if len(set(items)) != len(items):
        raise _reject(setting, raw, "each item once")
    names = [i.name for i in items if i.name]
    if len(set(names)) != len(names):
        raise _reject(setting, raw, "each repository name once")
    return items


def _parse_quantity(setting: Setting, raw: Any, units: dict[str, int], base: int, example: str) -> int:
    """A number with an optional unit, converted to a whole number of base units."""
    unit_names = ", ".join(_unit_names(units))
    expected = f"a number with an optional unit ({unit_names}), for example {example}"
    if isinstance(raw, bool):
        raise _reject(setting, raw, expected)
    if isinstance(raw, int):
        return raw  # a bare number is already in the base unit
    if isinstance(raw, float):
        number, unit = raw, ""
    elif isinstance(raw, str):
        match = _QUANTITY.match(raw)
        if not match:
            raise _reject(setting, raw, expected)
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise _reject(setting, raw, expected)
    if not math.isfinite(number):
        raise _reject(setting, raw, expected)
    if unit and unit not in units:
        raise _reject(setting, raw, expected)
    scaled = number * (units[unit] if unit else base) / base
    if scaled != int(scaled):
        raise SettingError(
            f"invalid value {raw!r} for setting {setting.name}: it is not a whole number "
            f"of {setting.unit}; use a multiple of 1{setting.unit}"
        )
    return int(scaled)


def _unit_names(units: dict[str, int]) -> list[str]:
    if units is SIZE_UNITS:
        return [SIZE_UNIT_NAMES[v] for v in units.values()]
    return list(units)


def _parse_duration(setting: Setting, raw: Any) -> int:
    return _parse_quantity(setting, raw, DURATION_UNITS_MS, DURATION_UNITS_MS[setting.unit], "60s or 5min")


def _parse_size(setting: Setting, raw: Any) -> int:
    return _parse_quantity(setting, raw, SIZE_UNITS, 1, "64MB")


_PARSERS: dict[str, Callable[[Setting, Any], Any]] = {
    "bool": _parse_bool,
    "int": _parse_int,
    "float": _parse_float,
    "str": _parse_str,
    "enum": _parse_enum,
    "path": _parse_path,
    "duration": _parse_duration,
    "size": _parse_size,
    "list": _parse_list,
}


def _range_text(setting: Setting) -> str:
    low = "" if setting.min is None else format_value(setting.name, setting.min)
    high = "" if setting.max is None else format_value(setting.name, setting.max)
    if low and high:
        return f" from {low} to {high}"
    if low:
        return f" of at least {low}"
    if high:
        return f" of at most {high}"
    return ""


def _check_range(setting: Setting, value: Any) -> None:
    if setting.type not in ("int", "float", "duration", "size"):
        return
    too_low = setting.min is not None and value < setting.min
    # Negative durations and sizes never make sense, even without a declared min.
    too_low = too_low or (setting.type in ("duration", "size") and value < 0)
    too_high = setting.max is not None and value > setting.max
    if too_low or too_high:
        shown = format_value(setting.name, value)
        range_text = _range_text(setting) or " of at least 0"
        raise SettingError(f"value {shown} is out of range for setting {setting.name}: expected a value{range_text}")


# ---------------------------------------------------------------- formatting


def format_value(name: str, value: Any) -> str:
    """The value as SHOW prints it: "on"/"off", "60s", "16MB", or the plain value."""
    setting = lookup(name)
    if setting.type == "bool":
        return "on" if value else "off"
    if setting.type == "duration":
        # Durations stay in the setting's own unit so SHOW matches the docs ("60s").
        return "0" if value == 0 else f"{int(value)}{setting.unit}"
    if setting.type == "size":
        return _format_size(int(value))
    if setting.type == "float":
        return repr(float(value))
    if setting.type == "list":
        return ", ".join(v.shown() if isinstance(v, RepositoryURL) else v for v in value)
    return str(value)


def _format_size(value: int) -> str:
    if value == 0:
        return "0"
    for factor in sorted(SIZE_UNIT_NAMES, reverse=True):
        if value % factor == 0:
            return f"{value // factor}{SIZE_UNIT_NAMES[factor]}"
    return f"{value}B"


def to_seconds(name: str, value: int) -> float:
    """A duration setting's value in seconds, for trio timeouts."""
    setting = REGISTRY.get(name) or lookup(name)
    if setting.type != "duration":
        raise SettingError(f"setting {setting.name} is not a duration")
    return value * DURATION_UNITS_MS[setting.unit] / 1000


def _toml_value(setting: Setting, value: Any) -> Any:
    """How a value is written to the auto file: readable units, native TOML otherwise."""
    if setting.type in ("duration", "size"):
        return format_value(setting.name, value)
    if setting.type == "list":  # a named repository as "name=URL"
        return [v.shown() if isinstance(v, RepositoryURL) else v for v in value]
    return value


# ---------------------------------------------------------------- files


def _read_toml(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"cannot read {what} {path}: malformed TOML ({e}); fix or remove the file") from None
    except UnicodeDecodeError as e:
        raise SettingError(
            f"cannot read {what} {path}: it is not UTF-8 text (byte {e.start}); is it the right file?"
        ) from None
    except OSError as e:
        raise SettingError(f"cannot read {what} {path}: {e.strerror}") from None


def _parse_table(table: dict[str, Any], path: str, what: str) -> dict[str, Any]:
    """Validate every entry of a settings file, naming the file in any error."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if isinstance(raw, dict):
            raise SettingError(f"{what} {path}: [{key}] is a table; settings are top-level keys such as port = 5432")
        try:
            setting = lookup(key)
            values[setting.name] = parse_value(setting.name, raw)
        except SettingError as e:
            raise SettingError(f"{what} {path}: {e}") from None
    return values


def auto_file_path(data_dir: str) -> str:
    return os.path.join(data_dir, AUTO_FILE_NAME)


def read_config_file(path: str) -> dict[str, Any]:
    """Parsed values of a config file (only the settings it sets)."""
    return _parse_table(_read_toml(path, "config file"), path, "config file")


def read_auto_file(data_dir: str) -> dict[str, Any]:
    """Parsed values of rustydb.auto.toml; empty when the file does not exist."""
    path = auto_file_path(data_dir)
    if not os.path.exists(path):
        return {}
    values = _parse_table(_read_toml(path, "settings file"), path, "settings file")
    if "data_dir" in values:
        raise SettingError(
            f"settings file {path}: data_dir cannot be set here (this file lives in the "
            f"data directory); remove the line and use --data-dir or the config file"
        )
    return values


_AUTO_HEADER = (
    "# Written by ALTER SYSTEM; do not edit while the server runs.\n# ALTER SYSTEM RESET name removes an entry.\n"
)


def _write_auto_file(data_dir: str, values: dict[str, Any], fileops: FileOps) -> None:
    table = {name: _toml_value(REGISTRY[name], v) for name, v in sorted(values.items())}
    data = (_AUTO_HEADER + tomli_w.dumps(table)).encode()
    fileops.write_file_atomic(auto_file_path(data_dir), data, 0o600)


def set_auto(data_dir: str, name: str, value: Any, fileops: FileOps = REAL) -> Any:
    """Persist ``name = value`` in rustydb.auto.toml (ALTER SYSTEM SET); returns the parsed value.

    Nothing is written unless both the new value and the existing file are
    valid. Callers must not run two of these at once for the same data dir
    (in the trio server they run without awaiting, so they cannot interleave).
    """
    setting = lookup(name)
    if setting.name == "data_dir":
        raise SettingError(
            "data_dir cannot be set with ALTER SYSTEM: rustydb.auto.toml lives in the data "
            "directory; use --data-dir or data_dir in the config file"
        )
    parsed = parse_value(setting.name, value)
    values = read_auto_file(data_dir)
    values[setting.name] = parsed
    _write_auto_file(data_dir, values, fileops)
    return parsed


def reset_auto(data_dir: str, name: str | None, fileops: FileOps = REAL) -> None:
    """Remove ``name`` (or every entry, for None) from rustydb.auto.toml (ALTER SYSTEM RESET)."""
    setting_name = None if name is None else lookup(name).name
    values = read_auto_file(data_dir)
    if setting_name is None:
        if not values and not os.path.exists(auto_file_path(data_dir)):
            return
        values = {}
    elif setting_name not in values:
        return
    else:
        del values[setting_name]
    _write_auto_file(data_dir, values, fileops)


# ---------------------------------------------------------------- effective settings


@dataclass
class ReloadResult:
    """What a reload changed: applied live settings and restart-only ones left pending."""

    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    pending_restart: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class Settings:
    """The effective value of every setting and where it came from."""

    def __init__(
        self,
        values: dict[str, Any],
        sources: dict[str, str],
        config_file: str | None,
        data_dir_override: str | None,
        cli_overrides: dict[str, Any],
    ):
        self._values = values
        self._sources = sources
        self._pending: dict[str, tuple[Any, Any]] = {}
        self.config_file = config_file
        self._data_dir_override = data_dir_override
        self._cli_overrides = dict(cli_overrides)

    @classmethod
    def load(
        cls,
        config_file: str | None = None,
        data_dir_override: str | None = None,
        cli_overrides: dict[str, Any] | None = None,
    ) -> Settings:
        """Defaults < config file < rustydb.auto.toml < command line."""
        cli = dict(cli_overrides or {})
        values, sources = _resolve(config_file, data_dir_override, cli)
        return cls(values, sources, config_file, data_dir_override, cli)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]  # the exact name: every statement reads a few
        except KeyError:
            return self._values[lookup(name).name]

    def source(self, name: str) -> str:
        return self._sources[lookup(name).name]

    def pending_restart(self) -> dict[str, tuple[Any, Any]]:
        """Restart-only settings changed since start: name -> (running value, next value)."""
        return dict(self._pending)

    def reload(self) -> ReloadResult:
        """Re-read the config and auto files; apply live changes, hold restart-only ones.

        All or nothing: if any file is invalid, SettingError is raised and no
        value changes.
        """
        new_values, new_sources = _resolve(self.config_file, self._data_dir_override, self._cli_overrides)
        result = ReloadResult()
        pending: dict[str, tuple[Any, Any]] = {}
        for name, setting in REGISTRY.items():
            old, new = self._values[name], new_values[name]
            if setting.context == RESTART:
                if new != old:
                    pending[name] = (old, new)
                    if self._pending.get(name) != (old, new):
                        result.pending_restart[name] = (old, new)
                continue
            if new != old:
                result.applied[name] = (old, new)
            self._values[name] = new
            self._sources[name] = new_sources[name]
        self._pending = pending
        return result


def _resolve(
    config_file: str | None, data_dir_override: str | None, cli_overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    values = {name: s.default for name, s in REGISTRY.items()}
    sources = dict.fromkeys(REGISTRY, SOURCE_DEFAULT)

    def layer(new: dict[str, Any], source: str) -> None:
        values.update(new)
        sources.update(dict.fromkeys(new, source))

    if config_file is not None:
        layer(read_config_file(config_file), SOURCE_CONFIG)
    cli: dict[str, Any] = {}
    for key, raw in cli_overrides.items():
        if raw is None:
            continue
        setting = lookup(key)
        cli[setting.name] = parse_value(setting.name, raw)
    if data_dir_override is not None:
        cli["data_dir"] = parse_value("data_dir", data_dir_override)
    # The auto file lives in the data directory, so that must be known first.
    data_dir = os.path.abspath(cli.get("data_dir", values["data_dir"]))
    layer(read_auto_file(data_dir), SOURCE_AUTO)
    layer(cli, SOURCE_CLI)
    values["data_dir"] = data_dir
    for name, setting in REGISTRY.items():
        if setting.type == "path" and name != "data_dir" and values[name] and not is_url(values[name]):
            values[name] = os.path.normpath(os.path.join(data_dir, values[name]))
        if setting.type == "list" and name.endswith("_repositories"):
            # A local repository given relative is relative to the data directory, like a path.
            values[name] = [
                v
                if "://" in v
                else RepositoryURL(os.path.normpath(os.path.join(data_dir, v)), getattr(v, "name", None))
                for v in values[name]
            ]
    return values, sources


def show_all(settings: Settings) -> list[tuple[str, str, str, str, str, str]]:
    """Rows for SHOW ALL: (name, value, unit, context, source, description), by name."""
    rows = []
    for name in sorted(REGISTRY):
        setting = REGISTRY[name]
        rows.append(
            (
                name,
                format_value(name, settings[name]),
                setting.unit,
                setting.context,
                settings.source(name),
                setting.description,
            )
        )
    return rows
