"""PostgreSQL 15's pgbench on this machine, for figures beside bench_core's (bench only).

Runs when PostgreSQL 15's binaries are installed (``apt-get install
postgresql-15``): a throwaway cluster in a temp directory, owned by the
``postgres`` user when run as root (initdb refuses root), default durability
settings (fsync and synchronous_commit on), ``pgbench -i -s 10``, then
``-S`` (point SELECT), ``-N`` (single-row updates, no branch/teller updates)
and the default TPC-B, 2 clients each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

BIN = "/usr/lib/postgresql/15/bin"


def available() -> bool:
    return all(os.access(os.path.join(BIN, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "pgbench"))


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def run(port: int, seconds: float, scale: int = 10, clients: int = 2) -> dict[str, float]:
    """tps of pgbench -S, -N and the default TPC-B; empty if PostgreSQL 15 is missing."""
    if not available():
        return {}
    tmp = tempfile.mkdtemp(prefix="rustydb-pgbench-")
    data = os.path.join(tmp, "pg")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    try:
        _as_postgres([f"{BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres"])
        _as_postgres(
            [f"{BIN}/pg_ctl", "-D", data, "-w", "-l", os.path.join(tmp, "pg.log"), "-o", f"-p {port} -k {tmp}", "start"]
        )
        try:
            common = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
            _as_postgres([f"{BIN}/pgbench", *common, "-i", "-q", "-s", str(scale), "postgres"])
            out = {}
            for name, flags in (("select", ["-S"]), ("simple_update", ["-N"]), ("tpcb", [])):
                done = _as_postgres(
                    [
                        f"{BIN}/pgbench",
                        *common,
                        *flags,
                        "-c",
                        str(clients),
                        "-j",
                        str(clients),
                        "-T",
                        str(max(int(seconds), 1)),
                        "postgres",
                    ]
                )
                m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
                out[name] = float(m.group(1)) if m else float("nan")
            return out
        finally:
            _as_postgres([f"{BIN}/pg_ctl", "-D", data, "-m", "fast", "stop"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
