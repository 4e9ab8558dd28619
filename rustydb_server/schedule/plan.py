"""When the next scheduled backup is due, and of which type: pure, no clock, no I/O.

Each backup type (full, differential, incremental) has a cron expression,
evaluated in the server's time zone as wall-clock time. The rules:

* Wall-clock DST rule: every wall-clock time a schedule names runs once. A
  time that does not exist (the hour skipped when clocks spring forward, for
  example 02:30 in Europe/Berlin on the last Sunday of March) runs at the
  instant the gap ends (03:00 local); several times in the same gap run once
  there. A time that exists twice (the hour repeated when clocks fall back)
  runs at its first occurrence only.
* ``handled`` says, per type, up to which instant its runs are dealt with
  (run, skipped or given up), and for which expression. A run missed while
  the server was down is due at once, and only once however many were
  missed: after it runs, every earlier one is handled. A type whose
  expression changed since (``ALTER SYSTEM SET``) starts afresh from now:
  a new schedule has missed nothing.
* When several types are due at the same instant, one backup of the
  strongest type runs (full, then differential, then incremental) and
  handles them all.
* An incremental or differential due when no full backup exists runs as a
  full.
* A failed run is tried again after ``retry_delay``, doubling each time, at
  most ``retries`` times; a regular run due before the retry replaces it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

FULL, DIFFERENTIAL, INCREMENTAL = "full", "differential", "incremental"
#: Strongest first: the type run when several are due together.
KINDS = (FULL, DIFFERENTIAL, INCREMENTAL)
#: A run found due later than this after its time is reported as missed.
MISSED_AFTER = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Config:
    crons: Mapping[str, str]  # backup type -> cron expression; only the types that are scheduled
    tz: dt.tzinfo
    retries: int = 3
    retry_delay: dt.timedelta = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Handled:
    expression: str
    until: dt.datetime  # every run of ``expression`` at or before this instant is dealt with


@dataclass(frozen=True)
class Retry:
    kind: str  # the backup type that failed
    covers: tuple[str, ...]
    attempt: int  # 2 for the first retry
    at: dt.datetime


@dataclass(frozen=True)
class Run:
    kind: str  # the backup type to take
    covers: tuple[str, ...]  # the schedules this run handles
    at: dt.datetime  # when it is due
    reason: str  # "schedule", "missed", "retry", "no full backup"
    attempt: int = 1


def to_instant(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant a wall-clock time names in ``tz``, by the DST rule above (UTC, aware)."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists (an ambiguous time: its first occurrence)
    # In a gap: the transition lies between the two readings; find where it ends.
    lo = naive.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    lo, hi = min(lo, first), max(lo, first)
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def next_fire(expression: str, tz: dt.tzinfo, after: dt.datetime, *, day_or: bool = True) -> dt.datetime:
    """The first instant strictly after ``after`` at which ``expression`` runs in ``tz`` (UTC, aware).

    ``day_or``: cron's rule, a day matches when its day of month OR its day of
    week does (both restricted); False: only when both do ("0 4 1-7 * 0", the
    first Sunday of the month, for the restore drill's schedule)."""
    from croniter import croniter  # here, not at the server's start: only a schedule needs it

    wall = after.astimezone(tz).replace(tzinfo=None)
    it = croniter(expression, wall - dt.timedelta(seconds=1), day_or=day_or)
    while True:
        instant = to_instant(it.get_next(dt.datetime), tz)
        if instant > after:
            return instant


def previous_fire(expression: str, tz: dt.tzinfo, at: dt.datetime, *, day_or: bool = True) -> dt.datetime:
    """The last instant strictly before ``at`` at which ``expression`` ran in ``tz`` (UTC, aware)."""
    from croniter import croniter

    wall = at.astimezone(tz).replace(tzinfo=None)
    it = croniter(expression, wall, day_or=day_or)
    while True:
        instant = to_instant(it.get_prev(dt.datetime), tz)
        if instant < at:
            return instant


def plan(
    config: Config,
    now: dt.datetime,
    handled: Mapping[str, Handled],
    *,
    has_full: bool,
    retry: Retry | None = None,
) -> Run | None:
    """The next run: due now when ``run.at <= now``, otherwise the one to wait for.
    None when nothing is scheduled."""
    fires: dict[str, dt.datetime] = {}
    for kind, expression in config.crons.items():
        h = handled.get(kind)
        since = h.until if h is not None and h.expression == expression else now
        fires[kind] = next_fire(expression, config.tz, since)
    due = [k for k in KINDS if k in fires and fires[k] <= now]
    if due:
        covers, at = tuple(due), min(fires[k] for k in due)
        reason = "missed" if now - at > MISSED_AFTER else "schedule"
    elif retry is not None and (not fires or retry.at < min(fires.values())):
        return _typed(Run(retry.kind, retry.covers, retry.at, "retry", retry.attempt), has_full)
    elif fires:
        at = min(fires.values())
        covers, reason = tuple(k for k in KINDS if fires.get(k) == at), "schedule"
    else:
        return None
    return _typed(Run(covers[0], covers, at, reason), has_full)


def _typed(run: Run, has_full: bool) -> Run:
    if run.kind != FULL and not has_full:
        return Run(FULL, run.covers, run.at, "no full backup", run.attempt)
    return run


def handled_after(config: Config, handled: Mapping[str, Handled], run: Run, now: dt.datetime) -> dict[str, Handled]:
    """``handled`` once ``run`` started at ``now`` (run, skipped or failed):
    every earlier time of its schedules is done."""
    out = dict(handled)
    for kind in run.covers:
        if kind in config.crons:
            out[kind] = Handled(config.crons[kind], now)
    return out


def retry_after(config: Config, run: Run, now: dt.datetime) -> Retry | None:
    """The retry of a run that failed at ``now``, or None once ``config.retries`` are spent."""
    if run.attempt > config.retries:
        return None
    return Retry(run.kind, run.covers, run.attempt + 1, now + config.retry_delay * 2 ** (run.attempt - 1))
