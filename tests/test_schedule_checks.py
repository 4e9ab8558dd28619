"""The scheduled restore drill and verify (schedule/checks.py) on trio's mock clock: no sleeps."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.testing

from rustydb_server.backup import checks
from rustydb_server.container.errors import BackupCorruptError
from rustydb_server.doorbell import Doorbell
from rustydb_server.schedule import plan
from rustydb_server.schedule.checks import DRILL, VERIFY, CheckScheduler
from rustydb_server.schedule.scheduler import Scheduler

UTC = dt.UTC
# Mock time 0 is Saturday 2026-03-07 12:00 UTC.
EPOCH = dt.datetime(2026, 3, 7, 12, tzinfo=UTC)
HOUR = 3600.0
DAY = 24 * HOUR


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


def settings(**overrides) -> dict:
    s = {
        "restore_drill_schedule": "0 4 1-7 * 0",
        "verify_schedule": "off",
        "backup_schedule_timezone": "UTC",
        "backup_key_file": "",
    }
    s.update(overrides)
    return s


def wall(seconds: float) -> str:
    return (EPOCH + dt.timedelta(seconds=seconds)).strftime("%a %Y-%m-%d %H:%M")


class Drills:
    """A fake drill taking ``duration`` seconds of trio time; ``outcomes`` say how each ends."""

    def __init__(self, duration=120.0):
        self.duration = duration
        self.started: list[str] = []
        self.outcomes: list[dict] = []

    async def __call__(self) -> dict:
        self.started.append(wall(trio.current_time()))
        await trio.sleep(self.duration)
        if self.outcomes:
            return self.outcomes.pop(0)
        return {"ok": True, "backup_id": "b1", "reason": None}


def make(tmp_path, s, *, drills=None, entries=(), verify=None, alerts=None):
    """``alerts``, if given, receives ("failed" | "recovered", subject, scope, fields) for each alert."""
    sent = alerts if alerts is not None else []
    kw = {}
    if verify is not None:
        kw["verify"] = verify
    return CheckScheduler(
        s,
        Doorbell(),
        data_dir=str(tmp_path),
        entries=lambda: list(entries),
        run_drill=drills or Drills(),
        now=lambda: EPOCH + dt.timedelta(seconds=trio.current_time()),
        failure=lambda subject, scope="", **f: sent.append(("failed", subject, scope, f)),
        success=lambda subject, scope="", **f: sent.append(("recovered", subject, scope, f)),
        to_thread=inline,
        **kw,
    )


async def inline(fn, *args, limiter=None):
    """Verify in the trio thread: on the mock clock, waiting for a worker thread lets the clock jump."""
    return fn(*args)


async def run_for(component, seconds: float) -> None:
    async with trio.open_nursery() as n:
        await n.start(component.run)
        await trio.sleep(seconds)
        n.cancel_scope.cancel()


def test_croniter_ors_the_day_fields_unless_told_not_to():
    """The reason the drill's schedule is read with day_or=False: in cron, '0 4 1-7 * 0' is
    every one of days 1-7 and every Sunday; the drill means the first Sunday."""
    thursday = dt.datetime(2026, 12, 3, tzinfo=UTC)
    assert plan.next_fire("0 4 1-7 * 0", UTC, thursday) == dt.datetime(2026, 12, 3, 4, tzinfo=UTC)
    fires, t = [], thursday
    for _ in range(3):
        t = plan.next_fire("0 4 1-7 * 0", UTC, t, day_or=False)
        fires.append(t.strftime("%a %Y-%m-%d %H:%M"))
    assert fires == ["Sun 2026-12-06 04:00", "Sun 2027-01-03 04:00", "Sun 2027-02-07 04:00"]
    # With one day field unrestricted the two rules agree.
    assert plan.next_fire("0 5 * * 6", UTC, thursday, day_or=False) == plan.next_fire("0 5 * * 6", UTC, thursday)


async def test_the_drill_runs_on_the_first_sunday_of_each_month(tmp_path, clock):
    drills = Drills()
    sched = make(tmp_path, settings(), drills=drills)
    await run_for(sched, 62 * DAY)
    assert drills.started == ["Sun 2026-04-05 04:00", "Sun 2026-05-03 04:00"]
    (status,) = [s for s in sched.status() if s["kind"] == DRILL]
    assert status["last_run"]["outcome"] == "completed" and status["last_run"]["duration_s"] == 120.0
    assert status["next_run_at"] == "2026-06-07T04:00:00+00:00"


async def test_a_failed_drill_is_reported_with_its_reason_and_alerted(tmp_path, clock):
    drills = Drills()
    drills.outcomes.append({"ok": False, "backup_id": "b9", "reason": "restore: the backup is damaged: chunk 0"})
    alerts: list = []
    sched = make(tmp_path, settings(), drills=drills, alerts=alerts)
    backups = Scheduler(
        None,
        {
            "backup_schedule": False,
            "backup_schedule_full": "off",
            "backup_schedule_incremental": "off",
            "backup_schedule_differential": "off",
            "backup_schedule_timezone": "UTC",
        },
        Doorbell(),
        has_full=lambda: False,
        state_dir=str(tmp_path),
    )
    backups.checks = sched
    await run_for(sched, 30 * DAY)
    assert alerts == [("failed", "drill", "", {"backup_id": "b9", "reason": "restore: the backup is damaged: chunk 0"})]
    rows = {r[0]: r for r in backups.show_rows()}
    assert rows[DRILL][1] == "0 4 1-7 * 0"
    assert rows[DRILL][5] == "failed: restore: the backup is damaged: chunk 0"
    assert rows[VERIFY][1] == "off" and rows[VERIFY][6] is None
    assert backups.status()["checks"][0]["last_run"]["backup_id"] == "b9"


async def test_alter_system_changes_the_drill_schedule_live(tmp_path, clock):
    drills = Drills()
    s = settings()
    sched = make(tmp_path, s, drills=drills)
    async with trio.open_nursery() as n:
        await n.start(sched.run)
        await trio.sleep(HOUR)
        s["restore_drill_schedule"] = "30 13 * * *"  # daily 13:30 from now on
        sched.settings_changed()
        await trio.sleep(DAY + HOUR)  # until Sunday 14:00
        s["restore_drill_schedule"] = "off"
        sched.settings_changed()
        await trio.sleep(40 * DAY)
        n.cancel_scope.cancel()
    assert drills.started == ["Sat 2026-03-07 13:30", "Sun 2026-03-08 13:30"]
    assert sched.status()[0]["next_run_at"] is None


def entry(backup_id: str, location: str) -> dict:
    return {"backup_id": backup_id, "status": "completed", "location": location}


async def test_verify_rereads_each_backup_not_verified_in_the_period_and_records_each_outcome(tmp_path, clock):
    entries = [
        entry("good", "/b/good.backup"),
        entry("bad", "/b/bad.backup"),
        entry("new", "/b/new.backup"),
        {"backup_id": "client", "status": "completed", "location": "client 127.0.0.1"},  # no known file
        {"backup_id": "failed", "status": "failed", "location": "/b/failed.backup"},
    ]
    # "new" was verified (by hand, say) three days before the run of Sat 2026-03-14 05:00:
    # within the period (the last half of the week since the previous run); "good" five days before.
    checks.record(str(tmp_path), "new", checks.VERIFY, checks.OK, at=(EPOCH + dt.timedelta(days=4)).timestamp())
    checks.record(str(tmp_path), "good", checks.VERIFY, checks.OK, at=(EPOCH + dt.timedelta(days=2)).timestamp())
    read: list[tuple[str, str]] = []

    def verify(path, key_file):
        read.append((path, key_file))
        if path == "/b/bad.backup":
            raise BackupCorruptError("bad", "chunk checksum mismatch", entry="db/rustydb", chunk=3)

    alerts: list = []
    s = settings(restore_drill_schedule="off", verify_schedule="0 5 * * 6", backup_key_file="/etc/k")
    sched = make(tmp_path, s, entries=entries, verify=verify, alerts=alerts)
    await run_for(sched, 7 * DAY)  # the run of Saturday 2026-03-14 05:00
    assert read == [("/b/good.backup", "/etc/k"), ("/b/bad.backup", "/etc/k")]
    recorded = checks.load(str(tmp_path))
    assert recorded["good"]["verify_outcome"] == "ok"
    assert recorded["good"]["verified_at"] == int(dt.datetime(2026, 3, 14, 5, tzinfo=UTC).timestamp())
    assert recorded["bad"]["verify_outcome"] == "failed"
    assert "chunk checksum mismatch" in recorded["bad"]["verify_error"]
    assert recorded["new"]["verified_at"] < recorded["good"]["verified_at"]  # not read again
    last = sched.status()[1]["last_run"]
    assert (last["outcome"], last["verified"], last["failed"]) == ("failed", 2, 1)
    assert last["error"].startswith("1 of 2 backups failed: bad: /b/bad.backup is damaged")
    assert [a[:3] for a in alerts] == [("recovered", "verify", "good"), ("failed", "verify", "bad")]
    # A week later every backup is due again: those this run read, and "new".
    read.clear()
    await run_for(sched, 7 * DAY)
    assert [path for path, _ in read] == ["/b/good.backup", "/b/bad.backup", "/b/new.backup"]


async def test_a_missing_file_fails_its_verify(tmp_path, clock):
    s = settings(restore_drill_schedule="off", verify_schedule="0 * * * *")
    sched = make(tmp_path, s, entries=[entry("gone", str(tmp_path / "gone.backup"))])
    await run_for(sched, 1.5 * HOUR)
    got = checks.load(str(tmp_path))["gone"]
    assert got["verify_outcome"] == "failed" and "no longer exists" in got["verify_error"]


async def test_a_drill_that_cannot_even_start_is_a_failed_run_not_the_schedulers_end(tmp_path, clock):
    calls = []

    async def broken():
        calls.append(trio.current_time())
        raise FileNotFoundError(2, "No such file or directory")

    sched = make(tmp_path, settings(restore_drill_schedule="0 * * * *"), drills=broken)
    await run_for(sched, 2.5 * HOUR)
    assert len(calls) == 2  # it went on to the next run
    last = sched.status()[0]["last_run"]
    assert last["outcome"] == "failed"
    assert last["error"] == "the restore drill could not run: No such file or directory"


async def test_a_drill_passing_after_a_failure_is_a_recovery(tmp_path, clock):
    drills = Drills()
    drills.outcomes.append({"ok": False, "backup_id": "b1", "reason": "row counts: off by one"})
    alerts: list = []
    sched = make(tmp_path, settings(), drills=drills, alerts=alerts)
    await run_for(sched, 62 * DAY)  # April's drill fails, May's passes
    assert [a[:2] for a in alerts] == [("failed", "drill"), ("recovered", "drill")]
    # What GET /metrics shows: one failed run, and May's drill the last success (04:00 + its 120 s).
    assert sched.failures == {DRILL: 1, VERIFY: 0}
    assert sched.last_success[DRILL] == dt.datetime(2026, 5, 3, 4, 2, tzinfo=UTC).timestamp()
