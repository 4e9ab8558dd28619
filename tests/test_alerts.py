"""alerts.py in-process: the queue is bounded and never blocks, a recovery is sent only after a
failure, events from worker threads arrive, the archive watch waits for its threshold, and the
health reasons and metrics of the backups read what they should."""

from __future__ import annotations

import collections
import json
import types

import trio

from rustydb_server import alerts
from rustydb_server.archive.archiver import ArchiveProgress
from rustydb_server.health import attention_reasons
from rustydb_server.metrics import BackupStats


def settings(**overrides) -> dict:
    s = {
        "data_dir": "/var/lib/rusty-db",
        "alert_command": "",
        "alert_webhook_url": "",
        "alert_timeout": 5,
        "alert_webhook_retries": 0,
        "alert_archive_failure_after": 300,
        "health_full_backup_max_age": 0,
        "health_archive_lag_max_segments": 0,
        "health_archive_lag_max_seconds": 0,
        "health_min_free_percent": 0,
        "archive_mode": False,
        "archive_dest": "",
    }
    s.update(overrides)
    return s


async def test_command_gets_failure_then_recovery_once_and_thread_events_arrive(tmp_path):
    out = tmp_path / "events"
    alerter = alerts.Alerter(settings(alert_command=f"cat >> {out}; echo >> {out}"))
    async with trio.open_nursery() as nursery:
        await nursery.start(alerter.run)
        assert not alerts.success("backup", "full")  # nothing failed: nothing to say
        alerts.failure("backup", "full", backup_type="full", error="disk full")
        await trio.to_thread.run_sync(lambda: alerts.success("backup", "full", backup_type="full"))
        alerts.success("backup", "full", backup_type="full")  # already recovered
        while alerter.sent < 2:
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in events] == ["backup_failed", "backup_recovered"]
    assert events[0]["message"].endswith("backup failed (full): disk full")
    assert alerts._current is None  # stopped: emit says so instead of queueing


async def test_a_full_queue_drops_instead_of_blocking(tmp_path, monkeypatch):
    monkeypatch.setattr(alerts, "QUEUE_SIZE", 2)
    alerter = alerts.Alerter(settings(alert_command="exit 0"))
    for i in range(5):  # no task delivers yet: the queue fills
        alerter.emit("drill_failed", n=i)
    assert alerter.dropped == 3


async def test_without_a_target_events_are_only_logged():
    alerter = alerts.Alerter(settings())
    alerter.emit("drill_failed")
    assert alerter.dropped == 0 and alerter._receive.statistics().current_buffer_used == 0


async def test_archive_watch_alerts_after_the_threshold_and_on_recovery(tmp_path):
    out = tmp_path / "events"
    alerter = alerts.Alerter(settings(alert_command=f"cat >> {out}; echo >> {out}", alert_archive_failure_after=60))
    progress = ArchiveProgress()
    now = [1000.0]
    watch = alerts.ArchiveWatch(alerter._settings, types.SimpleNamespace(progress=progress), clock=lambda: now[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(alerter.run)
        progress.failing_since, progress.failures_in_a_row = 1000.0, 3
        progress.last_failure_reason = "archive_dest /a does not exist"
        now[0] = 1059.0
        assert watch.check() == 1.0  # look again when the threshold is reached
        assert alerter.sent == 0 and not alerter.failing
        now[0] = 1061.0
        assert watch.check() is None
        assert watch.check() is None  # once per failure
        progress.failing_since = None
        assert watch.check() is None
        while alerter.sent < 2:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in events] == ["archive_failed", "archive_recovered"]
    assert events[0]["failing_for_seconds"] == 61.0 and events[0]["error"] == "archive_dest /a does not exist"


class _Catalog:
    def __init__(self, entries):
        self.entries = entries

    def list(self):
        return self.entries


def _backups(entries, history=()):
    scheduler = types.SimpleNamespace(history=collections.deque(history))
    return types.SimpleNamespace(catalog=_Catalog(entries), scheduler=scheduler, backup_dir=lambda: "/nonexistent")


def test_health_reasons_each_off_at_zero_and_each_named():
    failed = {
        "backup_type": "full",
        "started_at": "2026-03-08T02:00:00+00:00",
        "outcome": "failed",
        "error": "disk full",
        "retry_at": None,
    }
    old_full = {"backup_type": "full", "status": "completed", "completed_at": 1000}
    lagging = types.SimpleNamespace(lag=lambda: (7, 900.0))
    assert attention_reasons(settings(), _backups([old_full], [failed]), lagging, now=100000) == [
        "the last scheduled backup (full, started 2026-03-08T02:00:00+00:00) failed: disk full; no retries left; "
        "see SHOW BACKUP SCHEDULE"
    ]
    later = dict(failed, outcome="completed")
    strict = settings(
        health_full_backup_max_age=3600, health_archive_lag_max_segments=5, health_archive_lag_max_seconds=3600
    )
    (age, lag) = attention_reasons(strict, _backups([old_full], [failed, later]), lagging, now=100000)
    assert age.startswith("no full backup completed within health_full_backup_max_age (3600 s)")
    assert lag.startswith("the WAL archive is behind: 7 segment(s) waiting, the oldest for 900 s")
    fresh = dict(old_full, completed_at=99000)
    assert (
        attention_reasons(strict, _backups([fresh], [later]), types.SimpleNamespace(lag=lambda: (5, 0.0)), now=100000)
        == []
    )


def test_backup_stats_keep_the_last_success_and_count_failures():
    stats = BackupStats([{"backup_type": "full", "status": "completed", "completed_at": 5, "size_bytes": 10}])
    stats.backup_ended({"backup_type": "full", "status": "failed"})
    stats.backup_ended(
        {"backup_type": "full", "status": "completed", "completed_at": 9, "size_bytes": 20, "location": "/b/x.backup"}
    )
    stats.backup_ended({"backup_type": "incremental", "status": "completed", "completed_at": 9, "size_bytes": 3})
    last, failures, written = stats.snapshot()
    assert last["full"]["size_bytes"] == 20 and failures["full"] == 1 and failures["incremental"] == 0
    assert written == {"/b": 20, "client": 3}
