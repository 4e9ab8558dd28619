"""Backup history and progress: what GET /api/v1/admin/backups and SHOW BACKUPS list. Pure.

Per backup, from the catalog's entry and what is known beside it:

* ``trigger``: who started it: ``cli`` (streamed to rusty-db-backup), ``api``
  (POST /api/v1/admin/backup) or ``schedule`` (the server's scheduler).
  Entries written before the catalog recorded it are told by their origin.
* ``duration_s``: how long it ran (recorded at its end; else from the
  catalog's whole-second times).
* ``chain``: the backups its restore needs, full first, ending with itself;
  ``chain_base`` the full one at its start.
* ``retention``: ``kept`` or ``expirable`` under the server's retention
  settings as backup/retention.py decides them now, with ``retention_reason``
  (``in progress``, or ``no policy`` when both retention settings are 0).
* the drill's and the scheduled verify's last outcomes (backup/checks.py).
* ``progress`` of a running backup: ``bytes_done``, ``total_estimate`` (the
  databases' size as the snapshot found it, or the incremental's changes),
  ``rate_bytes_per_s`` and ``eta_s`` (from the rate so far; None until a
  first byte is done).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import checks as _checks
from . import retention

TRIGGERS = ("cli", "api", "schedule")
_BY_ORIGIN = {"client": "cli", "api": "api"}


@dataclass
class Progress:
    """A running backup's progress: set by the thread writing it, read by the listing."""

    started: float  # monotonic seconds
    total_estimate: int | None = None
    bytes_done: int = 0

    def as_dict(self, now: float) -> dict:
        elapsed = max(now - self.started, 0.0)
        rate = self.bytes_done / elapsed if elapsed > 0 and self.bytes_done else None
        eta = None
        if rate and self.total_estimate is not None:
            eta = round(max(self.total_estimate - self.bytes_done, 0) / rate, 1)
        return {
            "bytes_done": self.bytes_done,
            "total_estimate": self.total_estimate,
            "elapsed_s": round(elapsed, 1),
            "rate_bytes_per_s": None if rate is None else round(rate),
            "eta_s": eta,
        }


def policy_of(settings) -> retention.Policy | None:
    """The retention policy the settings name, or None when both counts are 0."""
    days, count = settings["backup_retention_days"], settings["backup_retention_full_count"]
    if not days and not count:
        return None
    archive_days = settings["archive_retention_days"]
    return retention.Policy(backup_days=days or None, full_count=count or None, archive_days=archive_days or None)


def listing(
    entries: Iterable[Mapping],
    checks: Mapping[str, Mapping],
    policy: retention.Policy | None,
    progress: Mapping[str, Progress],
    *,
    now: float,
    monotonic_now: float,
) -> list[dict]:
    """Every backup with its history fields, in the catalog's order."""
    entries = [dict(e) for e in entries]
    by_id = {e["backup_id"]: e for e in entries}
    plan = retention.plan(entries, policy, now=now) if policy is not None else None
    expiring = {b.backup_id: b.reason for b in plan.backups} if plan is not None else {}
    out = []
    for e in entries:
        bid = e["backup_id"]
        chain = list(reversed(retention.chain_of(bid, by_id)))
        row = dict(e)
        row["trigger"] = e.get("trigger") or _BY_ORIGIN.get(e.get("origin"))
        row["duration_s"] = _duration(e)
        row["chain"] = chain
        row["chain_base"] = chain[0] if chain and retention.parent_of(by_id[chain[0]]) is None else None
        row["retention"], row["retention_reason"] = _retention(e, plan, expiring)
        row.update({f: (checks.get(bid) or {}).get(f) for f in _checks.FIELDS})
        running = progress.get(bid) if e.get("status") == "in_progress" else None
        row["progress"] = running.as_dict(monotonic_now) if running is not None else None
        out.append(row)
    return out


def _duration(e: Mapping) -> float | None:
    if isinstance(e.get("duration_s"), (int, float)):
        return e["duration_s"]
    start, end = e.get("started_at"), e.get("completed_at")
    if isinstance(start, int) and isinstance(end, int):
        return float(end - start)
    return None


def _retention(e: Mapping, plan: retention.Plan | None, expiring: Mapping[str, str]) -> tuple[str, str | None]:
    if e.get("status") == "in_progress":
        return "kept", "in progress"
    if plan is None:
        return "kept", "no policy (backup_retention_days and backup_retention_full_count are 0)"
    if e["backup_id"] in expiring:
        return "expirable", expiring[e["backup_id"]]
    if e["backup_id"] in plan.kept:
        return "kept", "retention policy"
    return "kept", "nothing expires it yet"


SHOW_COLUMNS = (
    "backup_id",
    "backup_type",
    "status",
    "trigger",
    "started_at",
    "duration_s",
    "size_bytes",
    "chain_base",
    "retention",
    "verified",
    "drill",
    "progress",
)


def show_rows(rows: Iterable[Mapping]) -> list[list[str | None]]:
    """SHOW BACKUPS' rows, in SHOW_COLUMNS order, as text."""
    out = []
    for r in rows:
        out.append(
            [
                r["backup_id"],
                _text(r.get("backup_type")),
                _text(r.get("status")) + (f": {r['error']}" if r.get("status") == "failed" and r.get("error") else ""),
                _text(r.get("trigger")),
                _when(r.get("started_at")),
                _text(r.get("duration_s")),
                _text(r.get("size_bytes")),
                _text(r.get("chain_base")),
                r["retention"] + (f" ({r['retention_reason']})" if r["retention"] == "expirable" else ""),
                _check(r.get("verify_outcome"), r.get("verified_at"), r.get("verify_error")),
                _check(r.get("drill_outcome"), r.get("drilled_at"), r.get("drill_reason")),
                _progress(r.get("progress")),
            ]
        )
    return out


def _text(value) -> str | None:
    return None if value is None else str(value)


def _when(epoch) -> str | None:
    if not isinstance(epoch, (int, float)):
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _check(outcome, at, reason) -> str | None:
    if outcome is None:
        return None
    return f"{outcome} at {_when(at)}" + (f": {reason}" if reason else "")


def _progress(p: Mapping | None) -> str | None:
    if p is None:
        return None
    total = "?" if p["total_estimate"] is None else str(p["total_estimate"])
    eta = "?" if p["eta_s"] is None else f"{p['eta_s']} s"
    return f"{p['bytes_done']} of ~{total} bytes, ETA {eta}"
