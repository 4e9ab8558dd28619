"""The guide's monthly test-restore script, run as printed (paths and ports aside).

The script starts the test server with ``--port 5433`` only and checks the
health of ``localhost:8080``. Where no other server holds 8080, the test
server takes it (the default HTTP port) and the check asks the test server.
Where production holds 8080, the test server cannot start and says so on the
script's output, naming the production server whose health the check then
reports. The corrected script in docs/backup-and-recovery.md gives the test
server its own HTTP port and checks that one.

The guide's script uses the HTTP port 8080 literally (the test server's port
is the default, which no substitution in the script can change), so these
tests need 8080 free on this machine and are skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.servers import BIN, ServerProcess, free_port, run_tool

ROOT = Path(__file__).resolve().parent.parent
GUIDE_SCRIPT = ROOT / "tests" / "guide_test_restore.sh"
DOCS = ROOT / "docs" / "backup-and-recovery.md"
GUIDE_HTTP_PORT = 8080

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")


def port_8080_free() -> bool:
    try:
        with socket.create_server(("127.0.0.1", GUIDE_HTTP_PORT)):
            return True
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        raise


needs_8080 = pytest.mark.skipif(not port_8080_free(), reason="port 8080, which the guide's script uses, is in use")


@pytest.fixture
def production(tmp_path):
    """A server holding a customers table, and a full backup of it at tmp/full_latest.backup."""
    server = ServerProcess(str(tmp_path / "production"), http_port=GUIDE_HTTP_PORT)
    with server:
        server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
        server.sql("INSERT INTO customers(name) VALUES ('Ada'), ('Grace'), ('Linus');")
        run_tool(
            "rusty-db-backup",
            "--port",
            str(server.port),
            "--type",
            "full",
            "--output",
            str(tmp_path / "full_latest.backup"),
            check=True,
        )
        yield server


TEST_DIRS = ("restore-test", "rt2")


def running_test_servers(tmp_path: Path) -> list[int]:
    """The pids of the test servers the script started (it sends SIGTERM and does not wait)."""
    wanted = {str(tmp_path / name).encode() for name in TEST_DIRS}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(argv) and any(a.endswith(b"rusty-db-server") for a in argv):
            pids.append(int(pid))
    return pids


def run_script(text: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    try:
        proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env=env, timeout=120)
    finally:
        deadline = time.monotonic() + 30
        while (pids := running_test_servers(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:  # still running after 30 s: not stopping by itself
            os.kill(pid, signal.SIGKILL)
    logs = list(tmp_path.glob("backup-test-*.log"))
    assert len(logs) == 1, proc.stdout + proc.stderr
    return proc, logs[0].read_text()


def guide_script(tmp_path: Path, test_port: int) -> str:
    """The guide's script with only its paths and the test server's wire port substituted."""
    text = GUIDE_SCRIPT.read_text()
    for old, new in (
        ('TEST_DIR="/var/lib/rusty-db/restore-test"', f'TEST_DIR="{tmp_path}/restore-test"'),
        ('BACKUP_FILE="/backups/full_latest.backup"', f'BACKUP_FILE="{tmp_path}/full_latest.backup"'),
        ('LOG_FILE="/var/log/', f'LOG_FILE="{tmp_path}/'),
        ("--port 5433", f"--port {test_port}"),
    ):
        assert text.count(old) >= 1, old
        text = text.replace(old, new)
    return text


def test_the_script_run_is_the_guides_word_for_word():
    # The guide sits beside the main checkout (../shared/spec); a worktree is one level deeper.
    candidates = [ROOT.parent / "shared" / "spec", ROOT.parent.parent / "shared" / "spec"]
    guide = next((d / "backup-and-recovery-guide.md" for d in candidates if d.is_dir()), None)
    if guide is None:
        pytest.skip("the operations guide is not beside this checkout")
    assert GUIDE_SCRIPT.read_text().strip() in guide.read_text()


@needs_8080
def test_guide_script_with_no_other_server_on_8080_checks_the_test_server(production, tmp_path):
    # A test restore on a machine of its own: the test server takes the
    # default HTTP port, so the script's check of 8080 is the test server's.
    assert production.stop() == 0
    proc, log = run_script(guide_script(tmp_path, free_port()), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "✓ Restore successful" in proc.stdout
    assert "✓ Database health check passed" in proc.stdout, proc.stdout + proc.stderr + log
    # the validation query reached the restored server on the script's port
    assert re.search(r"^\s*3\s*$", log, re.M), log
    # (The script's "kill; rm -rf" does not wait for the server's shutdown,
    # which may still write into the directory: docs/backup-and-recovery.md.)


@needs_8080
def test_guide_script_next_to_production_says_the_check_asks_production(production, tmp_path):
    proc, log = run_script(guide_script(tmp_path, free_port()), tmp_path)
    assert "✓ Restore successful" in proc.stdout
    # The test server does not start on production's HTTP port, and says, on
    # the script's own output, that the check of 8080 is production's answer.
    assert f"cannot listen for the HTTP API on 127.0.0.1 port {GUIDE_HTTP_PORT}" in proc.stderr
    assert (
        f"took the default {GUIDE_HTTP_PORT}, where the RustyDB server of {production.data_dir} listens: "
        f"a health check of port {GUIDE_HTTP_PORT} gets that server's answer, not this one's"
    ) in proc.stderr
    assert "--http-port PORT" in proc.stderr
    # and the validation query finds no test server on the script's port
    assert "could not connect to 127.0.0.1" in log and "connection refused" in log, log
    assert production.health()["status"] == "healthy"


def docs_script() -> str:
    section = DOCS.read_text().split("### Test restore (monthly)", 1)[1]
    return re.search(r"```bash\n(#!/bin/bash\n.*?)```", section, re.S).group(1)


def test_corrected_script_in_the_docs_checks_the_test_server_next_to_production(server_factory, tmp_path):
    production = server_factory(name="production")
    production.start()
    production.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
    production.sql("INSERT INTO customers(name) VALUES ('Ada'), ('Grace'), ('Linus');")
    backup = tmp_path / "full_latest.backup"
    run_tool("rusty-db-backup", "--port", str(production.port), "--type", "full", "--output", str(backup), check=True)
    # The docs' script, with its paths and its two port variables substituted;
    # production runs next to it, as it would on the machine.
    text = docs_script()
    for old, new in (
        ('TEST_DIR="/var/lib/rusty-db-restore-test"', f'TEST_DIR="{tmp_path}/restore-test"'),
        ('BACKUP_FILE="/backups/full_latest.backup"', f'BACKUP_FILE="{backup}"'),
        ('LOG_FILE="/var/log/', f'LOG_FILE="{tmp_path}/'),
        ("TEST_PORT=5433", f"TEST_PORT={free_port()}"),
        ("TEST_HTTP_PORT=8081", f"TEST_HTTP_PORT={free_port()}"),
        ("export RUSTYDB_BACKUP_KEY_FILE=/etc/rustydb/backup.key", "unset RUSTYDB_BACKUP_KEY_FILE"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    proc, log = run_script(text, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "✓ Restore successful" in proc.stdout and "✓ Database health check passed" in proc.stdout
    assert re.search(r"^\s*3\s*$", log, re.M), log
    assert not (tmp_path / "restore-test").exists()

    # A test server that does not come up fails the corrected script.
    production.sql("DROP TABLE customers;")
    backup.unlink()
    run_tool("rusty-db-backup", "--port", str(production.port), "--type", "full", "--output", str(backup), check=True)
    proc, log = run_script(text.replace(f'TEST_DIR="{tmp_path}/restore-test"', f'TEST_DIR="{tmp_path}/rt2"'), tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr + log
    assert "✗ Validation query failed" in proc.stdout
