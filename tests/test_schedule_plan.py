"""The pure backup schedule: cron in the server's time zone, DST, missed runs, types, retries."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server.schedule.plan import (
    DIFFERENTIAL,
    FULL,
    INCREMENTAL,
    Config,
    Handled,
    handled_after,
    next_fire,
    plan,
    retry_after,
)
from rustydb_server.settings import check_cron

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC
GUIDE = {FULL: "0 2 * * 0", INCREMENTAL: "0 2 * * 1-6"}


def berlin(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BERLIN)


def fires(expression, tz, start, end):
    out, t = [], start
    while (t := next_fire(expression, tz, t)) < end:
        out.append(t)
    return out


@pytest.mark.parametrize(
    "expression, start, end, expected_local",
    [
        # Spring forward (2026-03-29, 02:00 -> 03:00): 02:30 does not exist, runs once at 03:00.
        ("30 2 * * *", berlin(2026, 3, 28, 12), berlin(2026, 3, 30, 12), ["2026-03-29 03:00", "2026-03-30 02:30"]),
        # Every time of the gap runs once, at its end; 03:00 itself is the same instant.
        ("0,30 2,3 * * 0", berlin(2026, 3, 28), berlin(2026, 3, 30), ["2026-03-29 03:00", "2026-03-29 03:30"]),
        # Fall back (2026-10-25, 03:00 -> 02:00): 02:30 exists twice, runs at the first only.
        ("30 2 * * *", berlin(2026, 10, 24, 12), berlin(2026, 10, 26, 12), ["2026-10-25 02:30", "2026-10-26 02:30"]),
        # Hourly across the repeated hour: each wall-clock hour once.
        (
            "0 1-3 25 10 *",
            berlin(2026, 10, 25),
            berlin(2026, 10, 26),
            ["2026-10-25 01:00", "2026-10-25 02:00", "2026-10-25 03:00"],
        ),
        # The guide's full backup: Sundays at 02:00.
        ("0 2 * * 0", berlin(2026, 3, 1, 3), berlin(2026, 3, 16), ["2026-03-08 02:00", "2026-03-15 02:00"]),
    ],
)
def test_wall_clock_fires_across_dst(expression, start, end, expected_local):
    got = [t.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M") for t in fires(expression, BERLIN, start, end)]
    assert got == expected_local


def test_spring_forward_gap_instant_is_real():
    (t,) = fires("30 2 29 3 *", BERLIN, berlin(2026, 3, 28), berlin(2026, 3, 30))
    assert t == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "expression, problem",
    [("0 2 * *", "five fields"), ("61 2 * * *", "not a valid"), ("0 2 * * 0", None), ("0 2 * * 1-6", None)],
)
def test_check_cron(expression, problem):
    why = check_cron(expression)
    assert (why is None) if problem is None else (problem in why)


def config(**crons) -> Config:
    return Config(crons or GUIDE, BERLIN, retries=2, retry_delay=dt.timedelta(minutes=5))


def test_first_run_waits_for_its_time():
    now = berlin(2026, 3, 4, 12)  # a Wednesday
    run = plan(config(), now, {}, has_full=True)
    assert (run.kind, run.covers, run.at.astimezone(BERLIN)) == (INCREMENTAL, (INCREMENTAL,), berlin(2026, 3, 5, 2))
    assert run.at > now


def test_incremental_without_a_full_becomes_a_full():
    run = plan(config(), berlin(2026, 3, 5, 2), {}, has_full=False)
    assert (run.kind, run.reason, run.covers) == (FULL, "no full backup", (INCREMENTAL,))


def test_missed_runs_while_down_run_once():
    cfg = config()
    down = berlin(2026, 3, 1, 12)
    handled = {k: Handled(e, down) for k, e in GUIDE.items()}
    now = berlin(2026, 3, 20, 9)  # three weeks down: 3 fulls and 16 incrementals missed
    run = plan(cfg, now, handled, has_full=True)
    assert run.at <= now and run.reason == "missed"
    assert run.kind == FULL and set(run.covers) == {FULL, INCREMENTAL}
    handled = handled_after(cfg, handled, run, now)
    after = plan(cfg, now, handled, has_full=True)
    assert after.at > now  # nothing more is due: the missed ones ran once
    assert after.at.astimezone(BERLIN) == berlin(2026, 3, 21, 2)


def test_changed_expression_has_missed_nothing():
    handled = {FULL: Handled("0 3 * * *", berlin(2026, 3, 1))}
    now = berlin(2026, 3, 20, 9)
    run = plan(config(full="0 2 * * *"), now, handled, has_full=True)
    assert run.at.astimezone(BERLIN) == berlin(2026, 3, 21, 2)


def test_strongest_type_wins_when_due_together():
    cfg = config(full="0 2 * * 0", differential="0 2 * * *", incremental="0 * * * *")
    run = plan(cfg, berlin(2026, 3, 8, 1, 30), {}, has_full=True)  # Sunday
    assert (run.kind, run.covers) == (FULL, (FULL, DIFFERENTIAL, INCREMENTAL))


def test_failed_run_is_retried_with_backoff_then_given_up():
    cfg = config(full="0 2 * * 0")
    now = berlin(2026, 3, 8, 2)
    run = plan(cfg, now, {}, has_full=True)
    handled = handled_after(cfg, {}, run, now)
    delays = []
    while (retry := retry_after(cfg, run, now)) is not None:
        delays.append(retry.at - now)
        now = retry.at
        run = plan(cfg, now, handled, has_full=True, retry=retry)
        assert run.reason == "retry" and run.at <= now
    assert delays == [dt.timedelta(minutes=5), dt.timedelta(minutes=10)]
    assert run.attempt == 3  # the first try and two retries


def test_regular_run_replaces_a_later_retry():
    cfg = Config({INCREMENTAL: "*/10 * * * *"}, UTC, retries=3, retry_delay=dt.timedelta(hours=1))
    now = dt.datetime(2026, 3, 8, 2, tzinfo=UTC)
    run = plan(cfg, now, {}, has_full=True)
    retry = retry_after(cfg, run, now)
    nxt = plan(cfg, now, handled_after(cfg, {}, run, now), has_full=True, retry=retry)
    assert (nxt.reason, nxt.at) == ("schedule", now + dt.timedelta(minutes=10))


def test_nothing_scheduled():
    assert plan(Config({}, UTC), dt.datetime(2026, 1, 1, tzinfo=UTC), {}, has_full=True) is None


ZONES = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"])
EXPRESSIONS = st.sampled_from(["30 2 * * *", "0 * * * *", "*/15 1-3 * * *", "0 2 * * 0", "45 0,2 * * 1-6"])
INSTANTS = st.datetimes(min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2030, 12, 31), timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(zone=ZONES, expression=EXPRESSIONS, start=INSTANTS)
def test_fires_strictly_increase_and_each_wall_time_runs_once(zone, expression, start):
    tz = ZoneInfo(zone)
    got = fires(expression, tz, start, start + dt.timedelta(days=15))
    assert got == sorted(set(got))
    walls = [t.astimezone(tz).replace(tzinfo=None) for t in got]
    assert len(walls) == len(set(walls))  # no wall-clock time twice, even in a repeated hour
    assert len(got) >= 2  # every expression here runs at least weekly


@settings(max_examples=100, deadline=None)
@given(zone=ZONES, start=INSTANTS, days_down=st.integers(0, 60))
def test_one_run_at_startup_whatever_the_downtime(zone, start, days_down):
    cfg = Config(GUIDE, ZoneInfo(zone))
    handled = {k: Handled(e, start) for k, e in GUIDE.items()}
    now = start + dt.timedelta(days=days_down, hours=1)
    ran = 0
    while (run := plan(cfg, now, handled, has_full=True)).at <= now:
        ran += 1
        handled = handled_after(cfg, handled, run, now)
    assert ran <= 1
    if days_down >= 1:
        assert ran == 1  # a day holds a 02:00: the full or an incremental was missed
