"""rusty-db-restore --drill end to end: a real server's backups drilled by the real tool."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from rustydb_server.backup import checks
from rustydb_server.container.errors import BackupCorruptError
from rustydb_server.schedule.checks import drill_subprocess, verify_file
from rustydb_server.schedule.scheduler import system_zone
from tests.support.backups import flip_byte_in_chunk
from tests.support.servers import ServerProcess, run_tool, tool


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """A server with a full backup and an incremental on top of it, both taken by rusty-db-backup."""
    top = tmp_path_factory.mktemp("drill")
    server = ServerProcess(str(top / "data"))
    with server:
        server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
        server.sql("INSERT INTO customers(name) VALUES ('Ada'), ('Grace'), ('Linus');")
        server.sql("CREATE DATABASE sales;")
        server.sql("CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL);", "--database", "sales")
        server.sql("INSERT INTO orders(total) VALUES (1.5), (2.5);", "--database", "sales")
        paths = {}
        for kind in ("full", "incremental"):
            paths[kind] = str(top / f"{kind}.backup")
            run_tool("rusty-db-backup", "--port", str(server.port), "--type", kind, "--output", paths[kind], check=True)
            server.sql("INSERT INTO customers(name) VALUES ('Barbara');")
        yield server, paths, top


def drill(*args: str):
    return run_tool("rusty-db-restore", "--drill", "--json", *args, timeout=120)


def test_a_drill_of_the_latest_backup_restores_its_chain_and_checks_the_server_it_started(production):
    server, paths, top = production
    drills = top / "drills"
    proc = drill("--data-dir", server.data_dir, "--drill-dir", str(drills))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["reason"] is None
    assert doc["chain"] == [paths["full"], paths["incremental"]]  # latest is the incremental: its chain
    steps = {s["step"]: s for s in doc["steps"]}
    assert list(steps) == ["find backup", "restore", "identity", "health", "row counts", "integrity", "stop"]
    assert all(s["ok"] for s in steps.values())
    # The incremental recorded its own row counts (4 customers, 2 orders), and the drill compared them.
    assert "2 tables in 2 databases hold the rows the backup recorded" in steps["row counts"]["detail"]
    assert os.listdir(drills) == []  # the temporary directory is gone
    recorded = checks.load(server.data_dir)[doc["backup_id"]]
    assert recorded["drill_outcome"] == "ok" and recorded["drilled_at"] is not None
    # The listing shows it.
    listing = {b["backup_id"]: b for b in server_backups(server)}
    drilled = listing[doc["backup_id"]]
    assert drilled["drill_outcome"] == "ok" and drilled["drill_reason"] is None
    assert drilled["trigger"] == "cli" and drilled["backup_type"] == "incremental"
    full_id = drilled["chain_base"]
    assert drilled["chain"] == [full_id, doc["backup_id"]]
    assert listing[full_id]["chain"] == [full_id] and listing[full_id]["drill_outcome"] is None
    assert drilled["retention"] == "kept" and drilled["duration_s"] is not None and drilled["progress"] is None
    shown = server.sql("SHOW BACKUPS;").stdout
    row = next(line for line in shown.splitlines() if doc["backup_id"] in line)
    cells = [c.strip() for c in row.split("|")]
    assert cells[1:4] == ["incremental", "completed", "cli"]
    assert cells[7] == full_id and cells[8] == "kept"
    assert cells[10].startswith("ok at ")


def test_a_drill_of_a_backup_with_a_flipped_byte_fails_and_says_why(tmp_path):
    server = ServerProcess(str(tmp_path / "data"))
    backup = str(tmp_path / "full.backup")
    with server:
        server.sql("CREATE TABLE t(x);")
        server.sql("INSERT INTO t VALUES (1);")
        run_tool("rusty-db-backup", "--port", str(server.port), "--type", "full", "--output", backup, check=True)
        entry, chunk = flip_byte_in_chunk(backup)
        proc = drill("--data-dir", server.data_dir, "--drill-dir", str(tmp_path / "drills"))
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["ok"] is False
        assert doc["reason"].startswith("restore: the backup is damaged")
        assert doc["error"] == f"restore drill of backup {doc['backup_id']} failed: {doc['reason']}"
        assert f"rusty-db-restore: error: {doc['error']}" in proc.stderr
        assert f"entry '{entry}', chunk {chunk}" in doc["reason"]
        assert [s["step"] for s in doc["steps"]] == ["find backup", "restore"]
        assert os.listdir(tmp_path / "drills") == []
        recorded = checks.load(server.data_dir)[doc["backup_id"]]
        assert recorded["drill_outcome"] == "failed" and recorded["drill_reason"] == doc["reason"]
        (listed,) = server_backups(server)
        assert listed["drill_outcome"] == "failed"


def test_a_drill_of_a_copy_is_not_recorded_against_the_catalogs_backup(production, tmp_path):
    server, paths, _top = production
    copy = str(tmp_path / "copy.backup")
    with open(paths["full"], "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    flip_byte_in_chunk(copy)
    before = checks.load(server.data_dir)
    proc = drill("--input", copy, "--data-dir", server.data_dir)
    assert proc.returncode == 1 and json.loads(proc.stdout)["reason"].startswith("restore: the backup is damaged")
    assert checks.load(server.data_dir) == before


def test_a_drill_of_an_unknown_backup_is_a_clear_error(production):
    server, _paths, _top = production
    proc = run_tool("rusty-db-restore", "--drill", "--data-dir", server.data_dir, "--backup", "nope")
    assert proc.returncode == 1
    assert "the backup catalog has no backup nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def server_backups(server) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/api/v1/admin/backups", timeout=5) as r:
        return json.loads(r.read())["backups"]


async def test_the_scheduled_drill_runs_the_real_tool_without_blocking_the_event_loop(production, tmp_path):
    """What the server's check scheduler runs: the drill tool as a subprocess, its JSON document back."""
    server, paths, _top = production
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as n:
        n.start_soon(tick)
        doc = await drill_subprocess(server.data_dir, None, str(tmp_path / "drills"))  # restore_drill_dir
        n.cancel_scope.cancel()
    assert doc["ok"] is True, doc
    assert doc["chain"] == [paths["full"], paths["incremental"]]
    restore = next(s for s in doc["steps"] if s["step"] == "restore")
    assert restore["detail"].startswith(f"restored into {tmp_path / 'drills'}/rustydb-drill-")
    assert os.listdir(tmp_path / "drills") == []
    assert ticks > 10  # the loop ran on while the drill did


def test_the_scheduled_verify_reads_a_real_backup_and_names_the_damaged_chunk(production, tmp_path):
    _server, paths, _top = production
    verify_file(paths["full"], None)  # intact: no error
    damaged = str(tmp_path / "damaged.backup")
    with open(paths["full"], "rb") as f, open(damaged, "wb") as g:
        g.write(f.read())
    entry, chunk = flip_byte_in_chunk(damaged)
    with pytest.raises(BackupCorruptError) as e:
        verify_file(damaged, None)
    assert e.value.entry == entry and e.value.chunk == chunk


def test_sigterm_during_a_drill_stops_its_server_and_removes_its_directory(production, tmp_path):
    """What a server stopping during its scheduled drill does to the drill tool (trio sends SIGTERM)."""
    server, _paths, _top = production
    drills = tmp_path / "drills"
    proc = subprocess.Popen(
        [tool("rusty-db-restore"), "--drill", "--json", "--data-dir", server.data_dir, "--drill-dir", str(drills)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid_files = []
    deadline = time.monotonic() + 60
    while not pid_files:  # the drill's server is running once its pid file names it
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        pid_files = [p for p in drills.glob("rustydb-drill-*/data/rustydb.pid") if "server" in p.read_text()]
        time.sleep(0.02)
    drill_server = int(pid_files[0].read_text().split()[0])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, (out, err)
    doc = json.loads(out)
    assert doc["ok"] is False and doc["reason"].startswith("interrupted: stopped by SIGTERM")
    assert os.listdir(drills) == []
    with pytest.raises(ProcessLookupError):
        os.kill(drill_server, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--drill"], "--drill needs --data-dir"),
        (["--drill", "--input", "f", "--backup", "x", "--data-dir", "d"], "not both"),
        (["--drill", "--data-dir", "d", "--table", "t"], "--drill cannot be combined with --table"),
        (["--input", "f", "--data-dir", "d", "--backup", "latest"], "--backup and --drill-dir are for --drill"),
    ],
)
def test_drill_usage_errors_exit_2(args, message):
    proc = run_tool("rusty-db-restore", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr


def test_the_server_shows_its_drill_and_verify_schedules_and_alter_system_changes_them(production):
    server, _paths, _top = production

    def checks_of() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/api/v1/admin/schedule", timeout=5) as r:
            return {c["kind"]: c for c in json.loads(r.read())["checks"]}

    shown = checks_of()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    next_runs = {s.labels["check"]: s.value for s in families["rustydb_check_next_run_timestamp_seconds"].samples}
    failures = {
        s.labels["check"]: s.value for s in families["rustydb_check_failures"].samples if s.name.endswith("_total")
    }
    assert failures == {"restore drill": 0.0, "verify": 0.0}
    assert next_runs["restore drill"] == dt.datetime.fromisoformat(shown["restore drill"]["next_run_at"]).timestamp()
    assert shown["restore drill"]["expression"] == "0 4 1-7 * 0"
    # In the server's time zone (the test's: the server inherits $TZ and /etc/localtime).
    first_sunday = dt.datetime.fromisoformat(shown["restore drill"]["next_run_at"]).astimezone(system_zone())
    assert first_sunday.day <= 7 and first_sunday.weekday() == 6 and first_sunday.hour == 4
    assert shown["verify"]["expression"] == "0 5 * * 6" and shown["verify"]["next_run_at"] is not None
    server.sql("ALTER SYSTEM SET restore_drill_schedule = 'off';")
    try:
        deadline = time.monotonic() + 10
        while checks_of()["restore drill"]["next_run_at"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rows = server.sql("SHOW BACKUP SCHEDULE;").stdout
        drill_row = next(line for line in rows.splitlines() if "restore drill" in line)
        assert [c.strip() for c in drill_row.split("|")][1] == "off"
    finally:
        server.sql("ALTER SYSTEM RESET restore_drill_schedule;")


def test_a_drill_of_a_backup_whose_file_is_gone_fails_and_is_recorded(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gone = str(tmp_path / "gone.backup")
    (data / "backup_catalog.json").write_text(
        json.dumps(
            {
                "format": 1,
                "backups": [
                    {"backup_id": "b-gone", "status": "completed", "location": gone, "origin": "client"},
                ],
            }
        )
    )
    proc = drill("--data-dir", str(data))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["backup_id"] == "b-gone"
    assert doc["reason"] == f"find backup: No such file or directory ({gone})"
    assert checks.load(str(data))["b-gone"]["drill_outcome"] == "failed"
