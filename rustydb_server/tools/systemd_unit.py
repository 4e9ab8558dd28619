"""The systemd unit for an installed server: ``rusty-db-server --print-systemd-unit``.

The unit is written once, here; ``systemd/rustydb.service`` is this text for
an install whose server is ``/usr/bin/rusty-db-server`` (a test keeps the two
equal). Any other install (a virtual environment in /opt, pip's
/usr/local/bin) prints its own unit, whose ``ExecStart`` is the
``rusty-db-server`` that printed it.
"""

from __future__ import annotations

import os
import shutil
import sys

DEFAULT_CONFIG = "/etc/rustydb/rustydb.toml"
SERVER = "rusty-db-server"

# ProtectHome=yes hides these from the service; a server installed under one
# of them can only start with ProtectHome=read-only.
HOME_DIRECTORIES = ("/home", "/root", "/run/user")

_HEADER = """\
# systemd unit for the RustyDB server, as printed by
# "rusty-db-server --print-systemd-unit" for the server at {executable}.
#
# Install (as root; the README's "Running it as a service"):
#   rusty-db-server --print-systemd-unit > /etc/systemd/system/rustydb.service
#   cp systemd/rustydb.sysusers /usr/lib/sysusers.d/rustydb.conf
#   cp systemd/rustydb.tmpfiles /usr/lib/tmpfiles.d/rustydb.conf
#   install -D -m 0644 etc/rustydb/rustydb.toml {config}
#   systemd-sysusers; systemd-tmpfiles --create
#   systemctl daemon-reload; systemctl enable --now rustydb
"""

_BODY = """\
[Unit]
Description=RustyDB SQL database server
Documentation=file://{config}
After=network.target
Wants=network.target

[Service]
# The server sends READY=1 only after crash recovery and once its listeners
# are up, so "systemctl start" returns when clients can connect.
Type=notify
NotifyAccess=main
User=rustydb
Group=rustydb
ExecStart={executable} --config {config}
# SIGHUP re-reads the config file; live settings apply at once, restart-only
# ones are logged as pending.
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM is the graceful stop: stop accepting, let statements finish for up
# to shutdown_timeout (30s by default), checkpoint, exit 0. TimeoutStopSec
# must stay longer than shutdown_timeout plus a checkpoint, or systemd would
# SIGKILL a server that is still shutting down cleanly (still safe - the WAL
# replays - but slower to start next time).
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=90
# Crash recovery replays the WAL before READY=1. Its length is bounded by
# checkpoint_timeout/checkpoint_wal_size; a longer replay extends this limit
# as it goes (EXTEND_TIMEOUT_USEC), so only a hung start hits it.
TimeoutStartSec=5min
WatchdogSec=30
Restart=on-failure
RestartSec=2s

# /var/lib/rusty-db, the data directory the operations guide uses. 0700: the
# server refuses nothing here, but the data and key material are private.
StateDirectory=rusty-db
StateDirectoryMode=0700
# /run/rustydb: the Unix socket .s.RUSTYDB.5432 (the default
# unix_socket_directory), where the server's OS user and root log in by peer
# authentication, as rusty-db-cli does with no --host. 0755 so other local
# users reach the socket; unix_socket_permissions and roles decide the rest.
RuntimeDirectory=rustydb
RuntimeDirectoryMode=0755
UMask=0077
LimitNOFILE=65536

# Hardening. ProtectSystem=strict makes the whole file system read-only for
# the service except the paths below: the state directory (data, and
# /var/lib/rusty-db/archive, the guide's archive_dest, lives inside it) and
# /backups, where the guide writes backups. -/backups: the leading "-" lets
# the service start on hosts without that directory. An archive_dest or
# backup_dir elsewhere must be added here (systemctl edit rustydb).
ReadWritePaths=/var/lib/rusty-db -/backups
NoNewPrivileges=yes
ProtectSystem=strict
{protect_home}PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
# No capabilities: ports below 1024 are therefore refused; use the defaults.
CapabilityBoundingSet=
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

_PROTECT_HOME = "ProtectHome=yes\n"
_PROTECT_HOME_READ_ONLY = """\
# The server (or its config) is installed under a home directory, which
# ProtectHome=yes would hide: read-only instead. The rustydb user must be able
# to read that directory; an install in /opt or /usr needs neither.
ProtectHome=read-only
"""


class UnitError(Exception):
    """The unit cannot be written for this install; the message says what to do."""


def under_home(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in HOME_DIRECTORIES)


def unit_text(executable: str, config: str = DEFAULT_CONFIG) -> str:
    """The unit whose service runs ``executable --config config`` (both absolute paths)."""
    for what, path in (("the server", executable), ("the config file", config)):
        if not os.path.isabs(path):
            raise UnitError(f"{what} must be named by an absolute path for systemd, not {path!r}")
        if any(c.isspace() for c in path) or "%" in path or "\\" in path:
            raise UnitError(
                f"{what} {path!r} has a space, '%' or '\\' in its path, which systemd would read "
                "differently; install it under a plain path (such as /opt/rustydb)"
            )
    home = under_home(executable) or under_home(config)
    fields = {
        "executable": executable,
        "config": config,
        "protect_home": _PROTECT_HOME_READ_ONLY if home else _PROTECT_HOME,
    }
    return _HEADER.format(**fields) + _BODY.format(**fields)


def installed_server() -> str:
    """The absolute path of the rusty-db-server this process runs as.

    The console script itself when it is what runs; otherwise the one next to
    this Python (a virtual environment's bin/), then the one on PATH.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == SERVER and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), SERVER)
    if os.path.isfile(beside):
        return beside
    found = shutil.which(SERVER)
    if found:
        return os.path.abspath(found)
    raise UnitError(
        f"cannot find the installed {SERVER} (not beside {sys.executable}, not on PATH); "
        "run --print-systemd-unit with the installed rusty-db-server itself"
    )
