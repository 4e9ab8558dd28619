"""GET /metrics, health "degraded" for the backups, and retention in the running server, against real servers.

/metrics is scraped after real commits and a real backup and parsed with
prometheus-client's own parser: the commit count moves by exactly the
commits made, the backup's size and time are the catalog's, the open
sessions are counted. Health turns degraded (200, with reasons) when no
full backup is recent enough or a file system is nearly full, and healthy
again once fixed. POST /api/v1/admin/expire and EXPIRE BACKUPS list (dry
run) then remove what retention no longer keeps, from the running server's
own catalog; rusty-db-backup --expire asks a running server to; and a
scheduled backup is followed by retention.
"""

from __future__ import annotations

import functools
import json
import os
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from rustydb_client import client as rc
from rustydb_server import http_access
from tests.support.servers import ServerProcess, run_tool


def call(server: ServerProcess, method: str, path: str, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def scrape(server: ServerProcess) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def backup(server: ServerProcess, kind: str = "full") -> dict:
    status, entry = call(server, "POST", "/api/v1/admin/backup", {"backup_type": kind, "wait": True})
    assert status == 200, entry
    return entry


def test_metrics_count_commits_backups_and_sessions(server, tmp_path):
    backup_dir = tmp_path / "backups"
    server.sql(f"ALTER SYSTEM SET backup_dir = '{backup_dir}';")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    before = scrape(server)
    for i in range(5):
        server.sql(f"INSERT INTO t VALUES ({i}, 'row {i}');")
    after = scrape(server)
    assert after[("rustydb_commits_total", ())] - before[("rustydb_commits_total", ())] == 5
    assert after[("rustydb_wal_bytes_written_total", ())] > before[("rustydb_wal_bytes_written_total", ())]

    entry = backup(server)
    conn = rc.connect(port=server.port)
    try:
        m = scrape(server)
    finally:
        conn.close()
    full = (("backup_type", "full"),)
    assert m[("rustydb_backup_last_size_bytes", full)] == entry["size_bytes"] == os.path.getsize(entry["location"])
    assert m[("rustydb_backup_last_success_timestamp_seconds", full)] == entry["completed_at"]
    assert m[("rustydb_backup_last_duration_seconds", full)] == entry["completed_at"] - entry["started_at"]
    assert m[("rustydb_backup_failures_total", full)] == 0
    assert m[("rustydb_backup_bytes_written_total", (("destination", str(backup_dir)),))] == entry["size_bytes"]
    assert m[("rustydb_connections", ())] == 1
    st = os.statvfs(backup_dir)
    role = (("path", str(backup_dir)), ("role", "backup_dir"))
    assert m[("rustydb_filesystem_size_bytes", role)] == st.f_blocks * st.f_frsize
    assert 0 < m[("rustydb_filesystem_free_bytes", role)] <= st.f_blocks * st.f_frsize
    # the default schedule: Sunday's full, the other days' incrementals
    assert m[("rustydb_backup_schedule_next_run_timestamp_seconds", full)] > entry["completed_at"]
    assert (("rustydb_backup_schedule_next_run_timestamp_seconds", (("backup_type", "incremental"),))) in m
    assert m[("rustydb_archive_lag_segments", ())] == 0

    # a pitr-base whose WAL cannot reach the archive (moved away) fails its archive check
    server.sql(f"ALTER SYSTEM SET archive_dest = '{tmp_path / 'archive'}';")
    server.sql("ALTER SYSTEM SET archive_mode = on;")
    server.sql("ALTER SYSTEM SET archive_check_timeout = '1s';")
    (tmp_path / "archive").rename(tmp_path / "archive.moved")
    status, failed = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "pitr-base", "wait": True})
    assert status == 500 and failed["backup"]["status"] == "failed", failed
    m = scrape(server)
    assert m[("rustydb_backup_failures_total", (("backup_type", "pitr-base"),))] == 1
    assert m[("rustydb_archive_lag_segments", ())] >= 1 and m[("rustydb_archive_failures_in_a_row", ())] >= 1
    assert m[("rustydb_backup_last_size_bytes", full)] == entry["size_bytes"]


def test_health_degraded_until_a_full_backup_and_while_a_disk_is_nearly_full(server, tmp_path):
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'backups'}';")
    assert server.health()["status"] == "healthy"
    server.sql("ALTER SYSTEM SET health_full_backup_max_age = '1h';")
    report = server.health()
    assert report["status"] == "degraded", report
    assert any("no full backup was ever taken" in r for r in report["reasons"]), report
    backup(server)
    assert server.health()["status"] == "healthy"
    # No real file system is 100% free: every one is "nearly full" at 100.
    server.sql("ALTER SYSTEM SET health_min_free_percent = 100;")
    report = server.health()
    assert report["status"] == "degraded" and len(report["reasons"]) == 1, report
    assert report["reasons"][0].startswith(f"the file system of backup_dir {tmp_path / 'backups'} is nearly full")
    # A local backup repository is watched too (an s3:// one has no file system to watch).
    offsite = tmp_path / "offsite"
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{offsite}';")
    reasons = server.health()["reasons"]
    assert any(r.startswith(f"the file system of backup repository {offsite} is nearly full") for r in reasons)
    server.sql("ALTER SYSTEM SET health_min_free_percent = 0;")
    assert server.health()["status"] == "healthy"


def test_expire_through_the_running_server(server, tmp_path):
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'backups'}';")
    server.sql("CREATE TABLE t(v);")
    old = [backup(server), backup(server)]
    newest = backup(server)
    server.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    server.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")

    shown = server.sql("EXPIRE BACKUPS DRY RUN;")
    assert "Dry run: 2 backup(s) and 0 WAL segment(s) would expire; 1 backup(s) kept" in shown.stdout + shown.stderr
    assert all(f"would expire | backup | {b['backup_id']}" in shown.stdout for b in old), shown.stdout
    status, plan = call(server, "POST", "/api/v1/admin/expire", {"dry_run": True})
    assert status == 200 and plan["dry_run"] is True, plan
    assert sorted(b["backup_id"] for b in plan["backups"]) == sorted(b["backup_id"] for b in old)
    assert all(not b["removed"] and b["reason"] for b in plan["backups"])
    assert plan["kept"] == [newest["backup_id"]]
    assert all(os.path.exists(b["location"]) for b in old)

    status, done = call(server, "POST", "/api/v1/admin/expire", {"dry_run": False})
    assert status == 200 and done["ok"] and done["dry_run"] is False, done
    assert sorted(b["backup_id"] for b in done["backups"] if b["removed"]) == sorted(b["backup_id"] for b in old)
    assert not any(os.path.exists(b["location"]) for b in old) and os.path.exists(newest["location"])
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert [b["backup_id"] for b in listing["backups"]] == [newest["backup_id"]]
    again = server.sql("EXPIRE BACKUPS;")
    assert "0 backup(s) and 0 WAL segment(s) expired; 1 backup(s) kept" in again.stdout + again.stderr
    # the server's catalog is the one changed: an incremental still finds its base
    assert backup(server, "incremental")["parent_id"] == newest["backup_id"]

    status, body = call(server, "POST", "/api/v1/admin/expire", {"dry_run": "yes"})
    assert status == 400 and body["error"] == "bad_request"
    server.sql("ALTER SYSTEM SET backup_retention_full_count = 0;")
    status, body = call(server, "POST", "/api/v1/admin/expire", {})
    assert status == 409 and "backup_retention_days" in body["message"], body


def test_retention_runs_after_a_scheduled_backup(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text(
        f'backup_dir = "{tmp_path / "backups"}"\nbackup_schedule_incremental = "off"\n'
        "backup_retention_days = 0\nbackup_retention_full_count = 1\n"
    )
    server = server_factory(extra_args=["--config", str(conf)])
    with server:
        old = [backup(server), backup(server)]
    # Sunday's full was missed while the server was down: it runs once at the start.
    with open(os.path.join(server.data_dir, "backup_schedule.json"), "w") as f:
        json.dump({"handled": {"full": {"expression": "0 2 * * 0", "until": "2020-01-05T03:00:00+00:00"}}}, f)
    with server.start():
        deadline = 100
        while deadline:
            listing = call(server, "GET", "/api/v1/admin/backups")[1]["backups"]
            if len(listing) == 1 and listing[0]["status"] == "completed":
                break
            deadline -= 1
            time.sleep(0.1)
        (kept,) = listing
        assert kept["backup_id"] not in {b["backup_id"] for b in old}
        assert not any(os.path.exists(b["location"]) for b in old) and os.path.exists(kept["location"])
        log = server.log()
    assert '"action": "expire"' in log and '"trigger": "schedule"' in log


def test_the_cli_expire_asks_the_running_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTYDB_CONFIG", str(tmp_path / "absent.toml"))  # never the machine's config
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'backups'}';")
    old = [backup(server), backup(server)]
    newest = backup(server)
    server.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    server.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", server.data_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and not doc["dry_run"]
    assert sorted(b["backup_id"] for b in doc["backups"] if b["removed"]) == sorted(b["backup_id"] for b in old)
    # the running server's own catalog changed: it did the work
    _, listing = call(server, "GET", "/api/v1/admin/backups")
    assert [b["backup_id"] for b in listing["backups"]] == [newest["backup_id"]]
    assert not any(os.path.exists(b["location"]) for b in old)

    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", server.data_dir, "--archive-dir", str(tmp_path))
    assert proc.returncode == 1 and "expires its own archive_dest" in proc.stderr, proc.stderr
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", server.data_dir)
    assert proc.returncode == 0 and "0 backup(s) and 0 WAL segment(s) expired; 1 backup(s) kept" in proc.stdout


def test_metrics_follow_the_api_access_rules():
    decide = functools.partial(http_access.decide, trust_loopback_setting="auto", allowed_host_names=frozenset())
    assert decide("GET", "/metrics", {}, "127.0.0.1", None).status == 0  # loopback, no token set
    assert decide("GET", "/metrics", {}, "10.0.0.5", None).status == 401  # no token: loopback only
    assert decide("GET", "/metrics", {}, "127.0.0.1", "t0k").status == 401  # a token set: needed
    assert decide("GET", "/metrics", {"authorization": "Bearer t0k"}, "10.0.0.5", "t0k").status == 0
