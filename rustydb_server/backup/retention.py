"""Chain-aware retention: which backups and archived WAL segments expire, and why.

Pure: the caller gathers the facts (the catalog's entries, the archived
segments with the time each was archived, the timelines' histories) and
applies the plan this returns (backup/expire.py); nothing here touches a file.

The rules, in order:

* ``backup_retention_days`` (a recovery window): every backup completed in
  the last N days is kept, and so is the newest backup completed before the
  window, so that any moment of the window can be restored to.
* ``backup_retention_full_count``: the N newest whole-server full backups are
  kept, and every backup started after the oldest of them (all backups while
  there are fewer than N such fulls).
* With both set, a backup either rule keeps is kept.
* Chains: a kept backup keeps its whole chain (an incremental its parent and
  every backup between it and its full, a differential its full). So a full
  never goes while a kept backup depends on it, and an incremental never
  stays without its base.
* Completed backups nothing keeps expire. Failed backups expire once older
  than the oldest kept backup; backups still in progress are never touched.
  With no completed backup kept, nothing expires at all.
* Archived WAL: a segment expires when it ends at or before the start LSN of
  every kept backup that could replay it (a backup on that timeline or on a
  timeline descending from it), and no kept backup's own LSN range touches
  it. ``archive_retention_days`` sets the point-in-time window separately:
  the bound is then the start of the newest kept backup completed before the
  window (segments before it expire even if older backups are kept), and a
  segment archived inside the window is kept even below every kept backup.
  Segments on timelines no kept backup descends from are never expired, and
  no segment is while a kept backup's catalog entry lacks its start LSN or
  timeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from ..container.format import BackupType

DAY = 86400


@dataclasses.dataclass(frozen=True)
class Policy:
    backup_days: int | None = 30
    full_count: int | None = None
    archive_days: int | None = None

    def __post_init__(self):
        for name in ("backup_days", "full_count", "archive_days"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (got {value})")
        if self.backup_days is None and self.full_count is None:
            raise ValueError("set backup_retention_days and/or backup_retention_full_count")


@dataclasses.dataclass(frozen=True)
class Segment:
    """An archived WAL segment: its timeline, number, file and when it was archived (epoch seconds)."""

    timeline: int
    segno: int
    path: str
    archived_at: float


@dataclasses.dataclass(frozen=True)
class ExpireBackup:
    backup_id: str
    backup_type: str
    location: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class ExpireSegment:
    timeline: int
    segno: int
    path: str
    reason: str


@dataclasses.dataclass
class Plan:
    backups: list[ExpireBackup]
    segments: list[ExpireSegment]
    kept: list[str]  # backup ids kept, oldest first

    def is_empty(self) -> bool:
        return not self.backups and not self.segments


def parent_of(entry: Mapping) -> str | None:
    """The backup ``entry`` is applied on top of (None for a full)."""
    kind = _type(entry)
    if kind is None or not kind.needs_parent:
        return None
    return entry.get("base_full_id" if kind is BackupType.DIFFERENTIAL else "parent_id")


def chain_of(backup_id: str, entries: Mapping[str, Mapping]) -> list[str]:
    """``backup_id`` and every backup its restore needs, newest first (as far as the catalog knows)."""
    out: list[str] = []
    current: str | None = backup_id
    while current is not None and current not in out and current in entries:
        out.append(current)
        current = parent_of(entries[current])
    return out


def plan(
    entries: Iterable[Mapping],
    policy: Policy,
    *,
    now: float,
    segments: Iterable[Segment] = (),
    histories: Mapping[int, Sequence[tuple[int, int, str]]] | None = None,
    segment_size: int = 0,
) -> Plan:
    """What expires under ``policy`` at ``now``; ``histories`` maps a timeline to
    its ancestors (``wal.timeline.Switch`` lines, oldest first)."""
    by_id = {e["backup_id"]: e for e in entries}
    # Catalog times are whole seconds: backups taken in the same second are
    # ordered by their place in the catalog, which is the order they started.
    seq = {backup_id: i for i, backup_id in enumerate(by_id)}

    def order(e: Mapping):
        return (e.get("completed_at") or e.get("started_at") or 0, seq[e["backup_id"]])

    def started(e: Mapping):
        return (e.get("started_at") or 0, seq[e["backup_id"]])

    completed = sorted(
        (e for e in by_id.values() if e.get("status") == "completed" and _type(e) is not None),
        key=order,
    )
    keep_reason = _policy_kept(completed, policy, now, started)
    kept: set[str] = set()
    for backup_id in keep_reason:
        kept.update(chain_of(backup_id, by_id))
    kept = {b for b in kept if by_id[b].get("status") == "completed"}
    expired: list[ExpireBackup] = []
    if kept:
        for e in completed:
            if e["backup_id"] not in kept:
                expired.append(_expire(e, _why(e, policy)))
        oldest_kept = min(started(by_id[b]) for b in kept)
        for e in sorted(by_id.values(), key=order):
            if e.get("status") == "failed" and started(e) < oldest_kept:
                expired.append(_expire(e, "failed backup, older than the oldest kept backup"))
    kept_entries = sorted((by_id[b] for b in kept), key=order)
    segs = _expired_segments(kept_entries, policy, now, list(segments), histories or {}, segment_size)
    return Plan(backups=expired, segments=segs, kept=[e["backup_id"] for e in kept_entries])


def _type(entry: Mapping) -> BackupType | None:
    try:
        kind = BackupType(entry.get("backup_type"))
    except ValueError:
        return None
    return None if kind is BackupType.WAL_SEGMENT else kind


def _is_whole_full(entry: Mapping) -> bool:
    kind = _type(entry)
    return kind is not None and kind.is_full_base and entry.get("partial") is not True


def _policy_kept(completed: list[Mapping], policy: Policy, now: float, started) -> dict[str, str]:
    """The backups a rule keeps by itself (before chains), each with the rule."""
    kept: dict[str, str] = {}
    if policy.backup_days is not None:
        cutoff = now - policy.backup_days * DAY
        before = [e for e in completed if (e.get("completed_at") or 0) < cutoff]
        for e in completed:
            if (e.get("completed_at") or 0) >= cutoff:
                kept[e["backup_id"]] = f"completed within {policy.backup_days} days"
        if before:
            kept.setdefault(before[-1]["backup_id"], "newest backup before the retention window")
    if policy.full_count is not None:
        fulls = [e for e in completed if _is_whole_full(e)]
        # Fewer whole fulls than the count: the count is not reached, everything stays.
        since = started(fulls[-policy.full_count]) if len(fulls) >= policy.full_count else None
        for e in completed:
            if since is None or started(e) >= since:
                kept.setdefault(e["backup_id"], f"within the newest {policy.full_count} full backups")
    return kept


def _why(entry: Mapping, policy: Policy) -> str:
    rules = []
    if policy.backup_days is not None:
        rules.append(f"older than the {policy.backup_days}-day window")
    if policy.full_count is not None:
        rules.append(f"before the newest {policy.full_count} full backups")
    return f"{' and '.join(rules)}; no kept backup depends on it"


def _expire(entry: Mapping, reason: str) -> ExpireBackup:
    return ExpireBackup(entry["backup_id"], str(entry.get("backup_type")), entry.get("location"), reason)


def _ancestry(timeline: int, histories: Mapping[int, Sequence[tuple[int, int, str]]]) -> set[int]:
    return {timeline} | {int(s[0]) for s in histories.get(timeline, ())}


def _expired_segments(
    kept: list[Mapping],
    policy: Policy,
    now: float,
    segments: list[Segment],
    histories: Mapping[int, Sequence[tuple[int, int, str]]],
    segment_size: int,
) -> list[ExpireSegment]:
    usable = [e for e in kept if isinstance(e.get("start_lsn"), int) and isinstance(e.get("timeline"), int)]
    if not usable or len(usable) < len(kept) or not segments:
        return []  # a kept backup whose WAL needs are unknown: no segment can be shown unneeded
    anchors = usable
    window = None
    if policy.archive_days is not None:
        window = now - policy.archive_days * DAY
        before = [e for e in usable if (e.get("completed_at") or 0) < window]
        anchors = [e for e in usable if (e.get("completed_at") or 0) >= window]
        if before:
            anchors.append(before[-1])
    bound: dict[int, int] = {}
    for e in anchors:
        for tl in _ancestry(e["timeline"], histories):
            bound[tl] = min(bound.get(tl, e["start_lsn"]), e["start_lsn"])
    out = []
    for seg in sorted(segments, key=lambda s: (s.timeline, s.segno)):
        if seg.timeline not in bound:
            continue
        start, end = seg.segno * segment_size, (seg.segno + 1) * segment_size
        if end > bound[seg.timeline]:
            continue
        if window is not None and seg.archived_at >= window:
            continue
        if any(_overlaps(e, seg.timeline, start, end) for e in usable):
            continue
        if window is None:
            reason = "before the start of every kept backup that could replay it"
        else:
            reason = f"archived before the {policy.archive_days}-day point-in-time window"
        out.append(ExpireSegment(seg.timeline, seg.segno, seg.path, reason))
    return out


def _overlaps(entry: Mapping, timeline: int, start: int, end: int) -> bool:
    if entry.get("timeline") != timeline:
        return False
    lo = entry["start_lsn"]
    hi = entry.get("end_lsn") if isinstance(entry.get("end_lsn"), int) else lo
    return start < max(hi, lo + 1) and end > lo  # [lo, hi) against [start, end)
