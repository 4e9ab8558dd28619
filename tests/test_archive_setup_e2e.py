"""Archiving set up the guide's way: archive_dest made by the server or refused
with the reason, a pitr-base that proves the archive works, health degraded
while archiving fails. Real servers, the guide's command lines through the real
rusty-db-cli and rusty-db-backup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import urllib.request

from tests.support.servers import run_tool

from .test_backup_api_e2e import call, wait_done


def health(srv) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/api/v1/admin/health", timeout=5) as r:
        return r.status, json.loads(r.read())  # urlopen raises on 503: only 2xx get here


def block_archive_dest(path) -> None:
    """Put a file where the archive directory is, so archiving fails."""
    shutil.rmtree(path)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.1)
    return value


def test_the_guides_pitr_setup_with_no_mkdir_works(server, tmp_path):
    # The guide's /var/lib/rusty-db is this server's data directory.
    archive = os.path.join(server.data_dir, "archive")
    assert not os.path.exists(archive)
    for line in ("ALTER SYSTEM SET archive_mode = on;", f"ALTER SYSTEM SET archive_dest = '{archive}';"):
        proc = server.cli("--command", line)
        assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o700
    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(server.port))
    assert proc.returncode == 0, proc.stderr
    # it reported success only once the archive held the segment of its start
    assert any(n.endswith(".walz") for n in os.listdir(archive))
    assert server.health()["status"] == "healthy"


def test_a_missing_parent_that_is_not_the_servers_own_is_refused_and_nothing_changes(server, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    os.chown(other, 54321, 54321)  # someone else's
    server.sql("ALTER SYSTEM SET archive_mode = on;")
    for parent, why in ((shared, "it is writable by other users"), (other, "it is owned by uid 54321")):
        dest = parent / "rustydb" / "archive"
        proc = server.cli("--command", f"ALTER SYSTEM SET archive_dest = '{dest}';")
        assert proc.returncode == 1
        message = proc.stderr.strip()
        assert f"cannot create archive_dest {dest}: its parent {parent / 'rustydb'} does not exist" in message
        assert why in message and "The setting was not changed" in message
        assert "Traceback" not in proc.stderr
        assert not (parent / "rustydb").exists()
        assert server.sql("SHOW archive_dest;").stdout.split()[-1] != str(dest)
    # its own directory: parents are made too
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    dest = own / "rustydb" / "archive"
    assert server.cli("--command", f"ALTER SYSTEM SET archive_dest = '{dest}';").returncode == 0
    assert dest.is_dir() and stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    # a path that is a file is refused as well
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = server.cli("--command", f"ALTER SYSTEM SET archive_dest = '{blocker}';")
    assert proc.returncode == 1 and f"archive_dest {blocker} exists and is not a directory" in proc.stderr
    assert str(dest) in server.sql("SHOW archive_dest;").stdout


def test_archive_dest_from_the_config_file_is_checked_at_startup(server_factory, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    conf = tmp_path / "rustydb.toml"
    conf.write_text(f"archive_mode = true\narchive_dest = '{shared}/rustydb/archive'\n")
    srv = server_factory(name="bad", extra_args=["--config", str(conf)])
    srv.start(wait=False)
    assert srv.wait_exit() == 1
    log = srv.log()
    assert f"cannot create archive_dest {shared}/rustydb/archive" in log
    assert f"archive_dest is set in the config file {conf}" in log and "Traceback" not in log
    # a missing archive_dest in a directory of the server's own is made at the start
    conf.write_text(f"archive_mode = true\narchive_dest = '{tmp_path}/archive'\n")
    good = server_factory(name="good", extra_args=["--config", str(conf)]).start()
    assert (tmp_path / "archive").is_dir()
    good.stop()


def test_a_pitr_base_fails_while_archiving_fails_and_health_is_degraded(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text("archive_check_timeout = '3s'\n")
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    archive = tmp_path / "archive"
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY);")
    srv.wait_archived()
    block_archive_dest(archive)  # archiving fails from now on

    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 1
    assert "the archive check failed" in proc.stderr and "within archive_check_timeout (3 s)" in proc.stderr
    assert f"archive_dest {archive} exists and is not a directory" in proc.stderr  # the archiver's error
    assert not base.exists() and not any(p.name.startswith("pitr_base") for p in tmp_path.iterdir())
    code, report = health(srv)
    assert code == 200 and report["status"] == "degraded"
    (reason,) = report["reasons"]
    assert reason.startswith("WAL archiving is failing: archive_dest") and "GET /api/v1/admin/archive" in reason

    # the same over HTTP: started, then failed with the reason, no file left
    srv.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    status, started = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": "pitr-base"})
    assert status == 202, started
    done = wait_done(srv, started["backup_id"])
    assert done["status"] == "failed" and "the archive check failed" in done["error"]
    assert os.listdir(tmp_path / "b") == []

    # fixed (ALTER SYSTEM makes the directory again): health is healthy, a pitr-base succeeds
    archive.unlink()
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    wait_for(lambda: health(srv)[1]["status"] == "healthy", "health back to healthy", timeout=90)
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    srv.stop()


def test_archiving_on_without_a_destination_is_degraded_and_a_reload_makes_a_new_one(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text("archive_mode = true\n")
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    # the guide's first line alone: archiving is on, with nowhere to archive to
    code, report = health(srv)
    assert code == 200 and report["status"] == "degraded"
    (reason,) = report["reasons"]
    assert "archive_dest is not set" in reason and "ALTER SYSTEM SET archive_dest" in reason
    # a reload naming a missing destination makes it, as at start, and archiving works
    archive = tmp_path / "archive"
    conf.write_text(f"archive_mode = true\narchive_dest = '{archive}'\n")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not archive.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert archive.is_dir() and stat.S_IMODE(archive.stat().st_mode) == 0o700
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY);")
    srv.wait_archived()
    code, report = health(srv)
    assert code == 200 and report["status"] == "healthy", report
    srv.stop()
