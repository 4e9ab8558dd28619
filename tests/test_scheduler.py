"""The backup scheduler in-process on trio's mock clock, with a fake backup service: no sleeps."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import trio
import trio.testing

from rustydb_server.backup.request import BackupRequestError
from rustydb_server.doorbell import Doorbell
from rustydb_server.schedule.scheduler import STATE_FILE, Scheduler

UTC = dt.UTC
# Mock time 0 is Saturday 2026-03-07 12:00 UTC.
EPOCH = dt.datetime(2026, 3, 7, 12, tzinfo=UTC)
HOUR = 3600.0


def settings(**overrides) -> dict:
    s = {
        "backup_schedule": True,
        "backup_schedule_full": "0 2 * * 0",
        "backup_schedule_incremental": "0 2 * * 1-6",
        "backup_schedule_differential": "",
        "backup_schedule_timezone": "UTC",
        "backup_schedule_retries": 2,
        "backup_schedule_retry_delay": 300,
        "backup_compression": "lz4",
        "backup_threads": 2,
        "backup_schedule_encryption": False,
    }
    s.update(overrides)
    return s


class FakeService:
    """Takes each backup in ``duration`` seconds of trio time; ``outcomes`` say how each ends."""

    def __init__(self, duration: float = 60.0):
        self.duration = duration
        self.started: list[tuple[float, str]] = []  # (trio time, backup type)
        self.requests: list = []
        self.outcomes: list[str] = []  # "completed", "failed", "refused"; default completed
        self.has_full = False
        self._ends: dict[str, tuple[float, str]] = {}

    def start_backup(self, req) -> dict:
        outcome = self.outcomes.pop(0) if self.outcomes else "completed"
        if outcome == "refused":
            raise BackupRequestError("backup_dir is not writable")
        backup_id = f"b{len(self.started)}"
        self.requests.append(req)
        self.started.append((trio.current_time(), str(req.backup_type)))
        self._ends[backup_id] = (trio.current_time() + self.duration, outcome)
        return {"backup_id": backup_id, "status": "in_progress"}

    async def finished(self, backup_id: str) -> dict:
        end, outcome = self._ends[backup_id]
        await trio.sleep_until(end)
        if outcome == "completed":
            self.has_full = True
            return {"backup_id": backup_id, "status": "completed", "size_bytes": 1234}
        return {"backup_id": backup_id, "status": "failed", "error": "disk full"}


def make(tmp_path, service, s=None, epoch=EPOCH):
    return Scheduler(
        service,
        s if s is not None else settings(),
        Doorbell(),
        has_full=lambda: service.has_full,
        state_dir=str(tmp_path),
        now=lambda: epoch + dt.timedelta(seconds=trio.current_time()),
    )


async def run_for(scheduler, seconds: float) -> None:
    async with trio.open_nursery() as n:
        await n.start(scheduler.run)
        await trio.sleep(seconds)
        n.cancel_scope.cancel()


def at(service) -> list[tuple[str, str]]:
    """Each started backup as (UTC wall time, type)."""
    return [((EPOCH + dt.timedelta(seconds=t)).strftime("%a %d %H:%M"), kind) for t, kind in service.started]


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_runs_the_guides_week_and_first_incremental_becomes_full(tmp_path, clock):
    service = FakeService()
    sched = make(tmp_path, service)
    await run_for(sched, 8 * 24 * HOUR)
    assert at(service) == [
        ("Sun 08 02:00", "full"),  # Sunday's full
        ("Mon 09 02:00", "incremental"),
        ("Tue 10 02:00", "incremental"),
        ("Wed 11 02:00", "incremental"),
        ("Thu 12 02:00", "incremental"),
        ("Fri 13 02:00", "incremental"),
        ("Sat 14 02:00", "incremental"),
        ("Sun 15 02:00", "full"),
    ]
    last = sched.status()["schedules"][2]["last_run"]
    assert (last["outcome"], last["size_bytes"], last["duration_s"]) == ("completed", 1234, 60.0)


async def test_incremental_with_no_full_runs_as_full(tmp_path, clock):
    service = FakeService()
    sched = make(tmp_path, service, settings(backup_schedule_incremental="0 * * * *"))
    await run_for(sched, 2.5 * HOUR)
    assert [k for _, k in service.started] == ["full", "incremental"]
    assert sched.history[0]["reason"] == "no full backup"


async def test_missed_runs_run_once_at_startup(tmp_path, clock):
    service = FakeService()
    service.has_full = True
    # The server last ran ten days ago: a full and eight incrementals were missed.
    state = {
        "handled": {
            "full": {"expression": "0 2 * * 0", "until": (EPOCH - dt.timedelta(days=10)).isoformat()},
            "incremental": {"expression": "0 2 * * 1-6", "until": (EPOCH - dt.timedelta(days=10)).isoformat()},
        }
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    sched = make(tmp_path, service)
    await run_for(sched, 10 * HOUR)  # until Saturday 22:00: nothing else is due
    assert at(service) == [("Sat 07 12:00", "full")]
    assert sched.history[0]["reason"] == "missed"
    saved = json.loads((tmp_path / STATE_FILE).read_text())["handled"]
    assert saved["full"]["until"] == EPOCH.isoformat()


async def test_a_new_server_has_missed_nothing(tmp_path, clock):
    service = FakeService()
    sched = make(tmp_path, service)
    await run_for(sched, 10 * HOUR)
    assert service.started == []
    assert sched.status()["next_run"]["at"] == "2026-03-08T02:00:00+00:00"


async def test_overlapping_run_is_skipped_and_reported(tmp_path, clock):
    service = FakeService(duration=1.5 * HOUR)
    service.has_full = True
    sched = make(tmp_path, service, settings(backup_schedule_full="off", backup_schedule_incremental="0 * * * *"))
    await run_for(sched, 4.75 * HOUR)  # runs due at 13, 14, 15, 16:00; each takes 90 minutes
    assert at(service) == [("Sat 07 13:00", "incremental"), ("Sat 07 15:00", "incremental")]
    outcomes = [(r["started_at"][11:16], r["outcome"]) for r in sched.history]
    assert outcomes == [("13:00", "completed"), ("14:00", "skipped"), ("15:00", "completed"), ("16:00", "skipped")]
    assert "still running" in sched.history[1]["error"]


async def test_failed_run_retried_with_backoff_up_to_the_limit(tmp_path, clock):
    service = FakeService(duration=60)
    service.has_full = True
    service.outcomes = ["failed", "refused", "failed", "completed"]
    sched = make(tmp_path, service, settings(backup_schedule_full="off", backup_schedule_incremental="0 13 * * *"))
    await run_for(sched, 3 * HOUR)
    # 13:00 fails at 13:01; retry 5 min later (refused at once); retry 10 min later fails; no more.
    assert [t for t, _ in at(service)] == ["Sat 07 13:00", "Sat 07 13:16"]
    assert [(r["attempt"], r["outcome"]) for r in sched.history] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert sched.history[1]["error"] == "backup_dir is not writable"
    assert sched.history[-1]["retry_at"] is None
    assert sched.status()["next_run"]["at"] == "2026-03-08T13:00:00+00:00"


async def test_alter_system_changes_the_schedule_live(tmp_path, clock):
    service = FakeService()
    service.has_full = True
    s = settings(backup_schedule_full="off", backup_schedule_incremental="0 2 * * *")
    sched = make(tmp_path, service, s)
    async with trio.open_nursery() as n:
        await n.start(sched.run)
        await trio.sleep(HOUR)  # 13:00
        s["backup_schedule_incremental"] = "30 13 * * *"
        sched.settings_changed()
        await trio.sleep(HOUR)  # 14:00
        assert at(service) == [("Sat 07 13:30", "incremental")]
        s["backup_schedule"] = False
        sched.settings_changed()
        await trio.sleep(48 * HOUR)
        assert len(service.started) == 1
        assert sched.status()["enabled"] is False
        s["backup_schedule"] = True  # back on two days later: nothing was missed while off
        sched.settings_changed()
        await trio.sleep(HOUR)
        assert len(service.started) == 1
        assert sched.status()["next_run"]["at"] == "2026-03-10T13:30:00+00:00"  # Monday 13:30 passed while off
        n.cancel_scope.cancel()


async def test_dst_spring_forward_runs_once(tmp_path, clock):
    # Europe/Berlin springs forward on Sunday 2026-03-29: 02:30 local does not exist.
    service = FakeService()
    service.has_full = True
    epoch = dt.datetime(2026, 3, 28, 12, tzinfo=UTC)
    s = settings(
        backup_schedule_full="off", backup_schedule_incremental="30 2 * * *", backup_schedule_timezone="Europe/Berlin"
    )
    sched = make(tmp_path, service, s, epoch=epoch)
    await run_for(sched, 2 * 24 * HOUR)
    started = [(epoch + dt.timedelta(seconds=t)).isoformat() for t, _ in service.started]
    assert started == ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]  # 03:00 CEST, then 02:30 CEST


@pytest.mark.parametrize("encrypt", [False, True])
async def test_scheduled_backups_are_encrypted_when_the_setting_says_so(tmp_path, clock, encrypt):
    service = FakeService()
    sched = make(tmp_path, service, settings(backup_schedule_encryption=encrypt))
    await run_for(sched, 2 * 24 * HOUR)
    assert service.requests and all(r.encrypt is encrypt for r in service.requests)
    assert all(r.codec == "lz4" for r in service.requests)


async def test_steps_after_a_backup_run_after_each_completed_one_only(tmp_path, clock):
    """Retention's hook: awaited after every completed scheduled backup, never after a failed
    one, and a hook that fails leaves the schedule going."""
    service = FakeService()
    service.outcomes = ["completed", "failed", "completed", "completed"]
    sched = make(tmp_path, service, settings(backup_schedule_full="0 * * * *", backup_schedule_incremental=""))
    seen = []

    async def step(record):
        seen.append((record["backup_id"], record["outcome"]))
        if len(seen) == 1:
            raise OSError("expire failed")

    sched.after_backup.append(step)
    await run_for(sched, 3.5 * HOUR)
    assert [(r["backup_id"], r["outcome"]) for r in sched.history] == [
        ("b0", "completed"),
        ("b1", "failed"),
        ("b2", "completed"),  # the retry of b1
        ("b3", "completed"),
    ]
    assert seen == [("b0", "completed"), ("b2", "completed"), ("b3", "completed")]


async def test_last_runs_survive_a_restart_and_a_run_cut_short_shows_as_interrupted(tmp_path, clock):
    service = FakeService(duration=3600)
    first = make(tmp_path, service)
    # Sunday's full completes; Monday's incremental is still running when the server stops.
    await run_for(first, 38.5 * HOUR)  # EPOCH is Saturday noon: up to Monday 02:30
    before = {s["backup_type"]: s["last_run"] for s in first.status()["schedules"]}
    assert before["full"]["outcome"] == "completed" and before["incremental"]["outcome"] == "running"

    again = make(tmp_path, FakeService())  # the same clock goes on: a restart a moment later
    await run_for(again, 1)
    after = {s["backup_type"]: s["last_run"] for s in again.status()["schedules"]}
    assert after["full"] == before["full"]
    assert after["incremental"]["backup_id"] == before["incremental"]["backup_id"]
    assert after["incremental"]["outcome"] == "interrupted"
    assert "stopped" in after["incremental"]["error"]
    assert len(again.history) == len(first.history)


async def test_a_damaged_history_in_the_state_file_is_skipped(tmp_path, clock):
    import json

    from rustydb_server.schedule.scheduler import STATE_FILE

    (tmp_path / STATE_FILE).write_text(json.dumps({"handled": {}, "history": [1, {"x": 2}, "y"]}))
    sched = make(tmp_path, FakeService())
    await run_for(sched, 1)
    assert list(sched.history) == []
