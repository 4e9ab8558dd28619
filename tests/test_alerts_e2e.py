"""Alerts against real servers: alert_command gets the event on its stdin, the webhook gets it POSTed
(retried after a failure), and a command that hangs is killed at alert_timeout while the server serves on."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time

import pytest

from tests.support.servers import ServerProcess
from tests.test_metrics_e2e import backup, call


def configured(server_factory, tmp_path, **settings) -> ServerProcess:
    conf = tmp_path / "rustydb.toml"
    conf.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in settings.items()))
    return server_factory(extra_args=["--config", str(conf)])


def wait_for(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def events_in(path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_alert_command_gets_a_backup_failure_and_the_recovery(server_factory, tmp_path):
    out = tmp_path / "alerts.jsonl"
    # each event on one line: the command reads its stdin to the end
    command = f"cat >> {out}; echo >> {out}"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with configured(server_factory, tmp_path, alert_command=command, backup_dir=str(blocker / "backups")) as server:
        status, body = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
        assert status == 422 and "cannot use backup_dir" in body["message"], body
        (failed,) = wait_for(lambda: events_in(out), "the failure's alert")
        assert failed["event"] == "backup_failed" and failed["severity"] == "error", failed
        assert failed["backup_type"] == "full" and failed["trigger"] == "api"
        assert "cannot use backup_dir" in failed["error"] and failed["data_dir"] == server.data_dir
        assert failed["message"].startswith("RustyDB on ")

        server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'backups'}';")
        entry = backup(server)
        _, recovered = wait_for(lambda: len(events_in(out)) == 2 and events_in(out), "the recovery's alert")
        assert recovered["event"] == "backup_recovered" and recovered["severity"] == "info", recovered
        assert recovered["backup_id"] == entry["backup_id"] and recovered["size_bytes"] == entry["size_bytes"]
        backup(server)  # a success after a success tells nothing
        time.sleep(0.5)
        assert len(events_in(out)) == 2


def test_a_hanging_alert_command_is_killed_and_the_server_serves_on(server_factory, tmp_path):
    pid_file = tmp_path / "pid"
    command = f"echo $$ > {pid_file}; exec sleep 600"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with configured(
        server_factory, tmp_path, alert_command=command, alert_timeout="1s", backup_dir=str(blocker / "x")
    ) as server:
        started = time.monotonic()
        status, _ = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
        assert status == 422
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the command to start"))
        # while it hangs the server answers
        assert server.health()["status"] == "healthy"
        assert "1" in server.sql("SELECT 1;").stdout
        wait_for(lambda: "did not finish within alert_timeout" in server.log(), "the kill", timeout=15)
        assert time.monotonic() - started < 15
        with pytest.raises(ProcessLookupError):
            wait_for(lambda: os.kill(pid, 0), "the command to be gone", timeout=5)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []
    fail_first = 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        status = 500 if len(type(self).received) <= type(self).fail_first else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_gets_the_event_and_a_failed_post_is_retried(server_factory, tmp_path):
    _Hook.received = []
    hook = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with configured(server_factory, tmp_path, alert_webhook_url=url, backup_dir=str(blocker / "x")) as server:
            status, _ = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
            assert status == 422
            wait_for(lambda: len(_Hook.received) == 2, "the retried POST")
            assert "alert_webhook_url failed; retrying" in server.log()
    finally:
        hook.shutdown()
        hook.server_close()
    (ctype1, first), (ctype2, second) = _Hook.received
    assert ctype1 == ctype2 == "application/json"
    assert first == second and first["event"] == "backup_failed" and "cannot use backup_dir" in first["error"]


def test_archive_failure_and_recovery_are_alerted(server_factory, tmp_path):
    out = tmp_path / "alerts.jsonl"
    archive = tmp_path / "archive"
    with configured(
        server_factory,
        tmp_path,
        alert_command=f"cat >> {out}; echo >> {out}",
        alert_archive_failure_after="0s",
        archive_mode=True,
        archive_dest=str(archive),
    ) as server:
        server.sql("CREATE TABLE t(v);")
        server.wait_archived()
        archive.rename(tmp_path / "unmounted")
        server.sql("INSERT INTO t VALUES (1);")
        server.sql("SWITCH WAL;")
        (failed,) = wait_for(lambda: events_in(out), "the archive failure's alert")
        assert failed["event"] == "archive_failed" and "does not exist" in failed["error"], failed
        (tmp_path / "unmounted").rename(archive)
        _, recovered = wait_for(lambda: len(events_in(out)) == 2 and events_in(out), "the recovery", timeout=40)
        assert recovered["event"] == "archive_recovered", recovered


def test_a_failed_scheduled_backup_alerts_and_turns_health_degraded(server_factory, tmp_path):
    out = tmp_path / "alerts.jsonl"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server = configured(
        server_factory,
        tmp_path,
        alert_command=f"cat >> {out}; echo >> {out}",
        backup_dir=str(blocker / "backups"),
        backup_schedule_incremental="off",
    )
    with server:  # made, then stopped
        pass
    # Sunday's full was missed while the server was down: it runs once at the start, and fails.
    with open(os.path.join(server.data_dir, "backup_schedule.json"), "w") as f:
        json.dump({"handled": {"full": {"expression": "0 2 * * 0", "until": "2020-01-05T03:00:00+00:00"}}}, f)
    with server.start():
        (failed,) = wait_for(lambda: events_in(out), "the scheduled failure's alert")
        assert failed["event"] == "backup_failed" and failed["trigger"] == "schedule", failed
        assert "cannot use backup_dir" in failed["error"] and failed["retry_at"]
        report = server.health()
        assert report["status"] == "degraded", report
        (reason,) = report["reasons"]
        assert reason.startswith("the last scheduled backup (full, started ") and "cannot use backup_dir" in reason
        assert f"retried at {failed['retry_at']}" in reason
