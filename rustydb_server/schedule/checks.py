"""The scheduled restore drill and backup verify: one task in the server's nursery.

Two schedules, cron expressions read in the backup schedules' time zone
(``backup_schedule_timezone``) with both day fields required to match
(``plan.next_fire(day_or=False)``: ``0 4 1-7 * 0`` is the first Sunday of
the month, not every one of the first seven days and every Sunday):

* ``restore_drill_schedule``: ``rusty-db-restore --drill --data-dir <this
  server's> --json`` of the latest backup, run as a subprocess (trio waits for
  it without blocking the event loop; the drill starts a server of its own,
  which must not share this process). The tool records the outcome in
  ``backup_checks.json``.
* ``verify_schedule``: every completed backup whose file the catalog knows
  and that was not verified within the schedule's period is re-read chunk by
  chunk (the container reader's verify, as
  ``rusty-db-backup --verify``), one at a time in a worker thread, with its
  copy in every repository of ``backup_repositories`` (range reads), and each
  outcome recorded in ``backup_checks.json``. "Within the period" is within
  the last half of the time since the schedule's previous run: the backups
  the previous run read (a whole period ago) are read again, one verified by
  hand a day ago is not (``fresh_since``).

Each schedule starts afresh at start-up and when its expression changes
(ALTER SYSTEM rings the doorbell): a run missed while the server was down is
not made up (the next one comes within a week, or a month). One run at a
time; a failure is logged at error level (``restore drill failed``,
``backup verify failed``), alerted (alerts.py: ``drill_failed``,
``verify_failed`` per backup, then ``drill_recovered`` / ``verify_recovered``
once it passes again) and shown in SHOW BACKUP SCHEDULE and
GET /api/v1/admin/schedule with its reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import zoneinfo
from collections.abc import Awaitable, Callable

import trio

from .. import alerts
from ..audit import FAILED, OK, audit
from ..backup import checks as _checks
from ..backup.catalog import known_path
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..crypto import CryptoError
from ..doorbell import Doorbell
from ..keys import resolve_read_key
from ..logsetup import get_logger
from . import plan as p
from .scheduler import _iso, _utc_now, system_zone

log = get_logger("rustydb.scheduler")

DRILL, VERIFY = "restore drill", "verify"
SETTING_OF = {DRILL: "restore_drill_schedule", VERIFY: "verify_schedule"}
#: The longest sleep: a wall-clock step (NTP, a suspended machine) is noticed within the hour,
#: enough for weekly and monthly checks.
MAX_SLEEP_S = 3600.0


def crons_of(settings) -> dict[str, str]:
    """The check schedules that are on, by kind."""
    return {kind: settings[name] for kind, name in SETTING_OF.items() if settings[name] not in ("", "off")}


def zone_of(settings, system: Callable[[], dt.tzinfo] = system_zone) -> dt.tzinfo:
    name = settings["backup_schedule_timezone"]
    return zoneinfo.ZoneInfo(name) if name else system()


def fresh_since(expression: str, tz: dt.tzinfo, now: dt.datetime) -> dt.datetime:
    """The instant after which a verify counts as within the period of a run at ``now``."""
    return now - (now - p.previous_fire(expression, tz, now, day_or=False)) / 2


def stale(entries, recorded: dict[str, dict], since: float) -> list[dict]:
    """The completed backups with a known file not verified at or after ``since`` (epoch seconds)."""
    out = []
    for e in entries:
        if e.get("status") != "completed" or not known_path(e.get("location")):
            continue
        at = (recorded.get(e["backup_id"]) or {}).get("verified_at")
        if not isinstance(at, (int, float)) or at < since:
            out.append(e)
    return out


def verify_file(path: str, key_file: str | None) -> None:
    """Read every chunk of the backup at ``path`` and check it; raises with the reason if damaged."""
    with open(path, "rb") as f:
        header = BackupReader(f).header
    with open(path, "rb") as f:
        BackupReader(f, key=resolve_read_key(header, key_file)).verify()


def verify_copies(entry: dict, settings, key_file: str | None) -> list[str]:
    """Verify the copies of a backup in backup_repositories, chunk by chunk with range reads;
    one reason per damaged or unreadable copy (none when every copy is sound).

    The copy the backup's own file lies in (a local first repository) is the
    file verify_file has read already, and is not read twice."""
    from ..backup.repo_catalog import backup_key
    from ..backup.repo_file import RepositoryFile
    from ..repository import open_repository

    states = entry.get("repositories")
    location = os.path.realpath(entry["location"]) if known_path(entry.get("location")) else None
    reasons = []
    for url, state in states.items() if isinstance(states, dict) else []:
        if not isinstance(state, dict) or state.get("state") != "copied":
            continue
        if location is not None and not url.startswith("s3://"):
            if location.startswith(os.path.realpath(url) + os.sep):
                continue
        key = backup_key(entry["backup_id"])
        try:
            repo = open_repository(url, settings)
            with RepositoryFile(repo, key) as f:
                header = BackupReader(f).header
                f.seek(0)
                BackupReader(f, key=resolve_read_key(header, key_file)).verify()
        except BackupError as e:
            reasons.append(f"the copy in {url} is damaged: {e}")
        except Exception as e:  # a repository error, a missing object, a wrong key: that copy cannot be trusted
            reasons.append(f"cannot verify the copy in {url}: {e}")
    return reasons


async def drill_subprocess(data_dir: str, key_file: str | None, drill_dir: str | None = None) -> dict:
    """Run ``rusty-db-restore --drill`` on this server's latest backup; its JSON document."""
    command = [sys.executable, "-m", "rustydb_server.tools.restore_main", "--drill", "--data-dir", data_dir, "--json"]
    if key_file:
        command += ["--key-file", key_file]
    if drill_dir:
        command += ["--drill-dir", drill_dir]
    proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    try:
        doc = json.loads(proc.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = None
    if not isinstance(doc, dict):
        tail = " | ".join(proc.stderr.decode(errors="replace").strip().splitlines()[-3:]) or "no output"
        return {
            "ok": False,
            "backup_id": None,
            "reason": f"the drill tool exited with status {proc.returncode}: {tail}",
        }
    if not doc.get("ok") and not doc.get("reason"):
        doc["reason"] = doc.get("error") or f"the drill tool exited with status {proc.returncode}"
    return doc


class CheckScheduler:
    def __init__(
        self,
        settings,
        doorbell: Doorbell,
        *,
        data_dir: str,
        entries: Callable[[], list[dict]],
        run_drill: Callable[[], Awaitable[dict]] | None = None,
        verify: Callable[[str, str | None], None] = verify_file,
        verify_copies: Callable[[dict, object, str | None], list[str]] = verify_copies,
        now: Callable[[], dt.datetime] = _utc_now,
        zone: Callable[[], dt.tzinfo] = system_zone,
        failure: Callable[..., object] = alerts.failure,
        success: Callable[..., object] = alerts.success,
        to_thread=trio.to_thread.run_sync,
    ):
        self._settings = settings
        self._doorbell = doorbell
        self._data_dir = data_dir
        self._entries = entries  # the backup catalog's entries
        self._run_drill = run_drill or (
            lambda: drill_subprocess(
                data_dir, settings["backup_key_file"] or None, settings["restore_drill_dir"] or None
            )
        )
        self._verify = verify
        self._verify_copies = verify_copies
        self._now = now
        self._zone = zone
        # Alerts (alerts.py): drill_failed / verify_failed, and _recovered after a failure.
        self._failure, self._success = failure, success
        # How a file is verified off the event loop (tests on the mock clock verify inline:
        # the clock would jump while a worker thread runs).
        self._to_thread = to_thread
        self._since: dict[str, p.Handled] = {}
        self.next_at: dict[str, dt.datetime] = {}
        self.last: dict[str, dict] = {}
        # For GET /metrics: each check's last success (Unix time) and failed runs since the start.
        self.last_success: dict[str, float] = {}
        self.failures: dict[str, int] = dict.fromkeys(SETTING_OF, 0)
        self.running: str | None = None
        self._limiter = trio.CapacityLimiter(1)

    def settings_changed(self) -> None:
        self._doorbell.ring()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            crons = crons_of(self._settings)
            tz = zone_of(self._settings, self._zone)
            now = self._now()
            for kind in list(self._since):
                if kind not in crons:
                    del self._since[kind]
            self.next_at = {}
            for kind, expression in crons.items():
                h = self._since.get(kind)
                if h is None or h.expression != expression:
                    h = self._since[kind] = p.Handled(expression, now)  # a new schedule has missed nothing
                self.next_at[kind] = p.next_fire(expression, tz, h.until, day_or=False)
            due = [k for k in SETTING_OF if k in self.next_at and self.next_at[k] <= now]
            if due:
                kind = due[0]
                self._since[kind] = p.Handled(crons[kind], now)
                await self._run(kind, crons[kind], tz, now)
                continue
            if not self.next_at:
                await self._doorbell.wait()
                continue
            wait = min(min(self.next_at.values()) - now, dt.timedelta(seconds=MAX_SLEEP_S)).total_seconds()
            with trio.move_on_after(max(wait, 0.0)):
                await self._doorbell.wait()

    async def _run(self, kind: str, expression: str, tz: dt.tzinfo, now: dt.datetime) -> None:
        record = {"kind": kind, "started_at": _iso(now), "finished_at": None, "duration_s": None, "outcome": "running"}
        self.last[kind] = record
        self.running = kind
        t0 = trio.current_time()
        try:
            if kind == DRILL:
                await self._drill(record)
            else:
                await self._verify_stale(record, fresh_since(expression, tz, now))
        except Exception as e:  # never the server's end: the run failed, and says why
            reason = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else f"{e.strerror or e}"
            record.update(outcome="failed", error=f"the {kind} could not run: {reason}")
            self._failed("drill" if kind == DRILL else "verify", "", {"reason": record["error"]})
        finally:
            self.running = None
            if record["outcome"] == "completed":
                self.last_success[kind] = self._now().timestamp()
            elif record["outcome"] == "failed":
                self.failures[kind] += 1
            record["finished_at"] = _iso(self._now())
            record["duration_s"] = round(trio.current_time() - t0, 3)

    async def _drill(self, record: dict) -> None:
        log.info("scheduled restore drill started")
        doc = await self._run_drill()
        record["backup_id"] = doc.get("backup_id")
        audit(
            "drill",
            OK if doc.get("ok") else FAILED,
            peer="local",
            via="schedule",
            backup_id=doc.get("backup_id"),
            reason=doc.get("reason"),
        )
        if doc.get("ok"):
            record["outcome"] = "completed"
            log.info("scheduled restore drill passed", backup_id=doc.get("backup_id"))
            self._success("drill", backup_id=doc.get("backup_id"))
            return
        record.update(outcome="failed", error=doc.get("reason") or "the drill failed")
        self._failed("drill", "", {"backup_id": doc.get("backup_id"), "reason": record["error"]})

    async def _verify_stale(self, record: dict, since: dt.datetime) -> None:
        recorded = await self._to_thread(_checks.load, self._data_dir, limiter=self._limiter)
        todo = stale(self._entries(), recorded, since.timestamp())
        key_file = self._settings["backup_key_file"] or None
        failed = []
        for entry in todo:
            at = self._now().timestamp()
            reason = await self._to_thread(self._verify_one, entry, key_file, at, limiter=self._limiter)
            if reason is None:
                self._success("verify", entry["backup_id"], backup_id=entry["backup_id"])
            else:
                failed.append(f"{entry['backup_id']}: {reason}")
                self._failed(
                    "verify",
                    entry["backup_id"],
                    {"backup_id": entry["backup_id"], "location": entry["location"], "reason": reason},
                )
        record.update(verified=len(todo), failed=len(failed))
        if failed:
            record.update(outcome="failed", error=f"{len(failed)} of {len(todo)} backups failed: " + "; ".join(failed))
        else:
            record["outcome"] = "completed"
            log.info("scheduled verify done", backups=len(todo))

    def _verify_one(self, entry: dict, key_file: str | None, at: float) -> str | None:
        """Verify one backup (in a worker thread) and record the outcome; the reason it failed, or None."""
        reason = None
        try:
            self._verify(entry["location"], key_file)
        except FileNotFoundError:
            reason = f"its file {entry['location']} no longer exists"
        except BackupError as e:
            reason = f"{entry['location']} is damaged: {e}"
        except CryptoError as e:  # no key, a wrong key
            reason = f"cannot verify {entry['location']}: {e}"
        except OSError as e:
            reason = f"cannot read {entry['location']}: {e.strerror or e}"
        copies = self._verify_copies(entry, self._settings, key_file)
        if copies:
            reason = "; ".join(([reason] if reason else []) + copies)
        try:
            _checks.record(
                self._data_dir,
                entry["backup_id"],
                _checks.VERIFY,
                _checks.OK if reason is None else _checks.FAILED,
                reason,
                at=at,
            )
        except OSError as e:
            log.error("cannot record a verify outcome", backup_id=entry["backup_id"], error=str(e))
        return reason

    def _failed(self, subject: str, scope: str, fields: dict) -> None:
        """Logged at error level (``restore drill failed``, ``backup verify failed``) and alerted
        (``drill_failed``, ``verify_failed``; per backup for a verify)."""
        log.error(
            "restore drill failed" if subject == "drill" else "backup verify failed",
            **{k: v for k, v in fields.items() if v is not None},
        )
        self._failure(subject, scope, **fields)

    def status(self) -> list[dict]:
        """Each check schedule's expression, last run and next run (SHOW BACKUP SCHEDULE, the schedule API)."""
        out = []
        for kind, name in SETTING_OF.items():
            expression = self._settings[name]
            on = expression not in ("", "off")
            out.append(
                {
                    "kind": kind,
                    "setting": name,
                    "expression": expression if on else "off",
                    "last_run": self.last.get(kind),
                    "next_run_at": _iso(self.next_at.get(kind)) if on else None,
                }
            )
        return out
