"""The scheduler in a real server: a run missed while the server was down runs once at start-up."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest

from rustydb_server.schedule.scheduler import STATE_FILE

from .test_backup_api_e2e import call, fill


def wait_for_backups(server, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = call(server, "GET", "/api/v1/admin/backups")
        assert status == 200, body
        done = [b for b in body["backups"] if b["status"] != "in_progress"]
        if len(done) >= count or time.monotonic() > deadline:
            return body["backups"]
        time.sleep(0.2)


def test_missed_run_runs_once_at_startup_as_a_full(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text(
        f"backup_dir = '{tmp_path / 'b'}'\n"
        "backup_schedule_full = 'off'\n"
        "backup_schedule_incremental = '0 2 * * *'\n"
        "backup_schedule_timezone = 'UTC'\n"
    )
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    fill(srv, 100)
    assert wait_for_backups(srv, 0, timeout=0) == []  # a new schedule has missed nothing
    srv.stop()

    # The server was last up three days ago: three incrementals were missed.
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    state_path = os.path.join(srv.data_dir, STATE_FILE)
    state = json.load(open(state_path))
    assert state["handled"]["incremental"]["expression"] == "0 2 * * *"
    state["handled"]["incremental"]["until"] = three_days_ago.isoformat()
    open(state_path, "w").write(json.dumps(state))

    srv.start()
    backups = wait_for_backups(srv, 1)
    assert len(backups) == 1, backups
    (backup,) = backups
    # No full backup existed: the incremental was taken as a full.
    assert (backup["status"], backup["backup_type"]) == ("completed", "full"), backup
    assert os.path.exists(backup["location"]) and backup["location"].startswith(str(tmp_path / "b"))
    until = dt.datetime.fromisoformat(json.load(open(state_path))["handled"]["incremental"]["until"])
    assert until > three_days_ago + dt.timedelta(days=2)  # every missed run is dealt with
    assert "scheduled backup completed" in srv.log()

    status, report = call(srv, "GET", "/api/v1/admin/schedule")
    assert status == 200, report
    assert report["enabled"] is True and report["time_zone"] == "UTC"
    by_type = {s["backup_type"]: s for s in report["schedules"]}
    assert by_type["full"]["expression"] == "off" and by_type["full"]["last_run"] is None
    last = by_type["incremental"]["last_run"]
    assert (last["outcome"], last["backup_id"], last["size_bytes"]) == (
        "completed",
        backup["backup_id"],
        backup["size_bytes"],
    )
    assert (last["backup_type"], last["reason"]) == ("full", "no full backup")
    assert by_type["incremental"]["next_run_at"].endswith("T02:00:00+00:00")
    shown = srv.sql("SHOW BACKUP SCHEDULE;").stdout
    print(shown)
    assert "incremental" in shown and "0 2 * * *" in shown and backup["started_at"] and "completed" in shown
    srv.stop()

    srv.start()  # nothing missed since: no second backup
    srv.sql("SELECT 1;")
    assert len(wait_for_backups(srv, 2, timeout=0)) == 1
    srv.stop()


def test_alter_system_checks_and_sets_a_schedule(server):
    with pytest.raises(AssertionError, match="must be a cron expression of five fields"):
        server.sql("ALTER SYSTEM SET backup_schedule_full = '0 2 * *';")
    with pytest.raises(AssertionError, match="is not a known time zone"):
        server.sql("ALTER SYSTEM SET backup_schedule_timezone = 'Mars/Olympus';")
    assert server.sql("ALTER SYSTEM SET backup_schedule_full = '30 3 * * 0';").returncode == 0
    shown = server.sql("SHOW backup_schedule_full;")
    assert "30 3 * * 0" in shown.stdout


def test_scheduled_backup_is_encrypted_with_the_servers_key(server_factory, tmp_path):
    from rustydb_server.keys import create_key_file

    from .support.servers import run_tool

    key = tmp_path / "backup.key"
    create_key_file(str(key))
    conf = tmp_path / "rustydb.toml"
    conf.write_text(
        f"backup_dir = '{tmp_path / 'b'}'\n"
        f"backup_key_file = '{key}'\n"
        "backup_schedule_encryption = true\n"
        "backup_schedule_full = 'off'\n"
        "backup_schedule_incremental = '0 2 * * *'\n"
        "backup_schedule_timezone = 'UTC'\n"
    )
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    fill(srv, 50)
    srv.stop()
    state_path = os.path.join(srv.data_dir, STATE_FILE)
    state = json.load(open(state_path))
    state["handled"]["incremental"]["until"] = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    open(state_path, "w").write(json.dumps(state))

    srv.start()
    (backup,) = wait_for_backups(srv, 1)
    assert backup["status"] == "completed", backup
    srv.stop()
    info = run_tool("rusty-db-backup", "--info", backup["location"], "--json", check=True)
    assert json.loads(info.stdout)["encrypted"] is True
    # Only the server's key opens it: verify with the key passes, without it fails.
    assert run_tool("rusty-db-backup", "--verify", backup["location"], "--key-file", str(key)).returncode == 0
    assert run_tool("rusty-db-backup", "--verify", backup["location"]).returncode == 1
