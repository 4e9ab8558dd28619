"""The backup scheduler: one task that takes the backups the schedule settings name.

It follows plan.py: sleeps on trio's clock until the next run is due (or its
doorbell rings because ALTER SYSTEM changed a schedule setting), then starts
the backup through the BackupService into backup_dir, exactly as
``POST /api/v1/admin/backup`` does. One scheduled backup runs at a time: a
run due while the last is still going is skipped, and the skip is recorded
and logged. A failed run is retried with backoff (plan.py). Which runs are
dealt with is kept in ``backup_schedule.json`` in the data directory, so a
run missed while the server was down runs once at start-up.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import zoneinfo
from collections.abc import Awaitable, Callable

import trio

from .. import alerts
from ..backup.request import BackupRequest, BackupRequestError
from ..container.format import BackupType
from ..doorbell import Doorbell
from ..fileops import REAL, FileOps
from ..logsetup import get_logger
from . import plan as p

log = get_logger("rustydb.scheduler")

STATE_FILE = "backup_schedule.json"
#: The longest sleep: wall-clock changes (NTP steps, a suspended machine) are noticed this soon.
MAX_SLEEP_S = 300.0
#: How many past runs are kept for SHOW BACKUP SCHEDULE and the API.
HISTORY = 50
SETTING_OF = {
    p.FULL: "backup_schedule_full",
    p.DIFFERENTIAL: "backup_schedule_differential",
    p.INCREMENTAL: "backup_schedule_incremental",
}


def system_zone() -> dt.tzinfo:
    """The server's time zone: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            log.warning("TZ names no known time zone; schedules use /etc/localtime", tz=name)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return dt.UTC


def config_of(settings, system: Callable[[], dt.tzinfo] = system_zone) -> p.Config | None:
    """The schedule the settings name, or None when backup_schedule is off."""
    if not settings["backup_schedule"]:
        return None
    crons = {kind: settings[name] for kind, name in SETTING_OF.items() if settings[name] not in ("", "off")}
    zone = settings["backup_schedule_timezone"]
    return p.Config(
        crons,
        zoneinfo.ZoneInfo(zone) if zone else system(),
        retries=settings["backup_schedule_retries"],
        retry_delay=dt.timedelta(seconds=settings["backup_schedule_retry_delay"]),
    )


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat(timespec="seconds")


class Scheduler:
    def __init__(
        self,
        service,
        settings,
        doorbell: Doorbell,
        *,
        has_full: Callable[[], bool],
        state_dir: str,
        now: Callable[[], dt.datetime] = _utc_now,
        zone: Callable[[], dt.tzinfo] = system_zone,
        fileops: FileOps = REAL,
    ):
        self._service = service  # start_backup(BackupRequest) -> entry, finished(backup_id) -> entry
        self._settings = settings
        self._doorbell = doorbell
        self._has_full = has_full
        self._state_path = os.path.join(state_dir, STATE_FILE)
        self._now = now
        self._zone = zone
        self._fileops = fileops
        self._handled: dict[str, p.Handled] = {}
        self._retry: p.Retry | None = None
        self._running: dict | None = None  # the scheduled backup in progress
        self.next_run: p.Run | None = None
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY)
        self.last: dict[str, dict] = {}  # per backup type: its last run's record
        # The scheduled restore drill and verify (schedule/checks.py), shown with the backups' schedules.
        self.checks = None
        # Awaited, in order, after each scheduled backup that completed (with its
        # record): retention. A hook's failure is its own; it never fails the backup.
        self.after_backup: list[Callable[[dict], Awaitable[None]]] = []

    def settings_changed(self) -> None:
        """A schedule setting may have changed: plan again."""
        self._doorbell.ring()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._handled = self._load()
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                config = config_of(self._settings, self._zone)
                now = self._now()
                self._settle(config, now)
                run = None
                if config is not None:
                    run = p.plan(config, now, self._handled, has_full=self._has_full(), retry=self._retry)
                self.next_run = run
                if run is None:
                    await self._doorbell.wait()
                    continue
                if run.at > now:
                    wait = min((run.at - now).total_seconds(), MAX_SLEEP_S)
                    with trio.move_on_at(trio.current_time() + wait):
                        await self._doorbell.wait()
                    continue
                self._begin(config, run, now, nursery)

    def _settle(self, config: p.Config | None, now: dt.datetime) -> None:
        """A schedule never run here (or changed) starts from now: it has missed nothing.
        So does one turned back on: while backup_schedule was off nothing was missed."""
        if config is None:
            if self._handled:
                self._handled, self._retry = {}, None
                self._save()
            return
        changed = False
        for kind, expression in config.crons.items():
            h = self._handled.get(kind)
            if h is None or h.expression != expression:
                self._handled[kind] = p.Handled(expression, now)
                changed = True
        if changed:
            self._save()

    def _begin(self, config: p.Config, run: p.Run, now: dt.datetime, nursery: trio.Nursery) -> None:
        self._handled = p.handled_after(config, self._handled, run, now)
        self._retry = None  # a retry is this run, or a regular run replaces it
        self._save()
        record = {
            "backup_type": run.kind,
            "schedules": list(run.covers),
            "reason": run.reason,
            "attempt": run.attempt,
            "due_at": _iso(run.at),
            "started_at": _iso(now),
            "finished_at": None,
            "duration_s": None,
            "size_bytes": None,
            "backup_id": None,
            "outcome": "running",
            "error": None,
        }
        if self._running is not None:
            record.update(
                outcome="skipped",
                finished_at=_iso(now),
                error=f"backup {self._running['backup_id']} from the last scheduled run is still running",
            )
            log.warning("scheduled backup skipped: the last one is still running", **_log_fields(record))
            self._record(record)
            self._save()
            return
        try:
            entry = self._service.start_backup(
                BackupRequest(
                    backup_type=BackupType(run.kind),
                    codec=self._settings["backup_compression"],
                    encrypt=self._settings["backup_schedule_encryption"],
                    threads=self._settings["backup_threads"],
                    trigger="schedule",
                )
            )
        except BackupRequestError as e:
            self._failed(config, run, record, now, str(e))
            return
        record["backup_id"] = entry["backup_id"]
        self._running = record
        self._record(record)
        self._save()
        log.info("scheduled backup started", **_log_fields(record))
        nursery.start_soon(self._follow, config, run, record, now)

    async def _follow(self, config, run: p.Run, record: dict, started: dt.datetime) -> None:
        try:
            final = await self._service.finished(record["backup_id"])
        finally:
            self._running = None
        now = self._now()
        if final.get("status") == "completed":
            record.update(
                outcome="completed",
                finished_at=_iso(now),
                duration_s=round((now - started).total_seconds(), 3),
                size_bytes=final.get("size_bytes"),
            )
            log.info("scheduled backup completed", **_log_fields(record))
        else:
            record["duration_s"] = round((now - started).total_seconds(), 3)
            self._failed(config, run, record, now, final.get("error") or "the backup did not complete")
        self._save()
        self._doorbell.ring()
        if record["outcome"] == "completed":
            for hook in list(self.after_backup):
                try:
                    await hook(record)
                except Exception as e:
                    log.error("a step after the scheduled backup failed", step=repr(hook), error=repr(e))

    def _failed(self, config: p.Config, run: p.Run, record: dict, now: dt.datetime, error: str) -> None:
        self._retry = p.retry_after(config, run, now)
        record.update(outcome="failed", finished_at=_iso(now), error=error)
        record["retry_at"] = _iso(self._retry.at) if self._retry else None
        if record not in self.history:
            self._record(record)
        self._save()
        if record["backup_id"] is None:
            # Refused before it began: no catalog entry tells the alerts (the catalog's end does otherwise).
            alerts.failure(
                "backup", run.kind, backup_type=run.kind, trigger="schedule", error=error, retry_at=record["retry_at"]
            )
        if self._retry is None:
            log.error("scheduled backup failed; no retries left", **_log_fields(record))
        else:
            log.warning("scheduled backup failed; will retry", **_log_fields(record))

    def _record(self, record: dict) -> None:
        self.history.append(record)
        self.last[record["backup_type"]] = record

    def status(self) -> dict:
        """Each schedule's expression, last run and next run: what SHOW BACKUP SCHEDULE and the API answer."""
        config = config_of(self._settings, self._zone)
        nxt = self.next_run
        schedules = []
        for kind, name in SETTING_OF.items():
            expression = self._settings[name]
            scheduled = config is not None and kind in config.crons
            last = next((r for r in reversed(self.history) if kind in r["schedules"]), None)
            schedules.append(
                {
                    "backup_type": kind,
                    "setting": name,
                    "expression": expression if scheduled else "off",
                    "last_run": last,
                    "next_run_at": _iso(nxt.at) if scheduled and nxt is not None and kind in nxt.covers else None,
                }
            )
        return {
            "enabled": config is not None,
            "time_zone": str(config.tz) if config is not None else None,
            "running": self._running,
            "next_run": None
            if nxt is None
            else {"at": _iso(nxt.at), "backup_type": nxt.kind, "reason": nxt.reason, "attempt": nxt.attempt},
            "schedules": schedules,
            "checks": self.checks.status() if self.checks is not None else [],
        }

    SHOW_COLUMNS = (
        "backup_type",
        "schedule",
        "last_started_at",
        "last_duration_s",
        "last_size_bytes",
        "last_outcome",
        "next_run_at",
    )

    def show_rows(self) -> list[list[str | None]]:
        """SHOW BACKUP SCHEDULE's rows, one per backup type, in SHOW_COLUMNS order."""
        rows = []
        for s in self.status()["schedules"]:
            last = s["last_run"] or {}
            outcome = last.get("outcome")
            if outcome in ("failed", "skipped") and last.get("error"):
                outcome = f"{outcome}: {last['error']}"
            rows.append(
                [
                    s["backup_type"],
                    s["expression"],
                    last.get("started_at"),
                    None if last.get("duration_s") is None else str(last["duration_s"]),
                    None if last.get("size_bytes") is None else str(last["size_bytes"]),
                    outcome,
                    s["next_run_at"],
                ]
            )
        for c in self.checks.status() if self.checks is not None else []:
            last = c["last_run"] or {}
            outcome = last.get("outcome")
            if outcome == "failed" and last.get("error"):
                outcome = f"failed: {last['error']}"
            duration = last.get("duration_s")
            rows.append(
                [
                    c["kind"],
                    c["expression"],
                    last.get("started_at"),
                    None if duration is None else str(duration),
                    None,
                    outcome,
                    c["next_run_at"],
                ]
            )
        return rows

    # ---------------------------------------------------------------- state
    def _load(self) -> dict[str, p.Handled]:
        try:
            with open(self._state_path, "rb") as f:
                raw = json.load(f)
            handled = {
                kind: p.Handled(v["expression"], dt.datetime.fromisoformat(v["until"]))
                for kind, v in raw.get("handled", {}).items()
                if kind in SETTING_OF
            }
            self._load_history(raw.get("history", []))
            return handled
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning(
                "cannot read the backup schedule's state; schedules start afresh (a run missed while "
                "the server was down is not run)",
                path=self._state_path,
                error=str(e),
            )
            return {}

    def _load_history(self, records) -> None:
        """The runs of before the restart, so SHOW BACKUP SCHEDULE keeps each schedule's last run.
        A run the server stopped during is shown as interrupted (its backup, if any, is in the catalog)."""
        for r in records if isinstance(records, list) else []:
            if not (
                isinstance(r, dict) and isinstance(r.get("backup_type"), str) and isinstance(r.get("schedules"), list)
            ):
                continue
            if r.get("outcome") == "running":
                r = {**r, "outcome": "interrupted", "error": "the server stopped while this run was going"}
            self._record(r)

    def _save(self) -> None:
        data = {
            "handled": {k: {"expression": h.expression, "until": _iso(h.until)} for k, h in self._handled.items()},
            "history": list(self.history),
        }
        try:
            self._fileops.write_file_atomic(self._state_path, json.dumps(data, indent=1).encode())
        except OSError as e:
            log.error("cannot write the backup schedule's state", path=self._state_path, error=str(e))


def _log_fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if v is not None}
