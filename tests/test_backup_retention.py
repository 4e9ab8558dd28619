"""The retention core (backup/retention.py): table-driven cases and properties
over synthetic catalogs of chains."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server.backup import retention as r

DAY = r.DAY
NOW = 1_000 * DAY
SEG = 1024


def full(bid, day, *, lsn=0, tl=1, end=None, partial=False, kind="full"):
    return {
        "backup_id": bid,
        "backup_type": kind,
        "status": "completed",
        "started_at": day * DAY,
        "completed_at": day * DAY + 60,
        "start_lsn": lsn,
        "end_lsn": lsn if end is None else end,
        "timeline": tl,
        "parent_id": None,
        "base_full_id": None,
        "location": f"/b/{bid}.backup",
        "partial": partial,
    }


def incr(bid, day, parent, base, *, lsn=0, tl=1):
    return full(bid, day, lsn=lsn, tl=tl, kind="incremental") | {"parent_id": parent, "base_full_id": base}


def diff(bid, day, base, *, lsn=0, tl=1):
    return full(bid, day, lsn=lsn, tl=tl, kind="differential") | {"parent_id": base, "base_full_id": base}


def expired_ids(p):
    return [b.backup_id for b in p.backups]


# Weekly fulls with daily incrementals, days 900..999 relative to NOW=day 1000.
def weekly(start=930, weeks=10):
    entries = []
    for w in range(weeks):
        day = start + 7 * w
        f = f"F{w}"
        entries.append(full(f, day, lsn=day * 10 * SEG))
        prev = f
        for i in range(1, 7):
            b = f"F{w}i{i}"
            entries.append(incr(b, day + i, prev, f, lsn=(day + i) * 10 * SEG))
            prev = b
    return [e for e in entries if e["started_at"] < NOW]


CASES = [
    pytest.param(
        # A 30-day window: the chain that started before it stays whole.
        weekly(930, 10),
        r.Policy(backup_days=30),
        # The window opens on day 970: F5i5 (day 970) is in it, so F5's chain stays whole; F0..F4 go.
        {f"F{w}" for w in range(5)} | {f"F{w}i{i}" for w in range(5) for i in range(1, 7)},
        id="days-window-keeps-chain-into-window",
    ),
    pytest.param(
        weekly(930, 10),
        r.Policy(backup_days=None, full_count=2),
        {f"F{w}" for w in range(8)} | {f"F{w}i{i}" for w in range(8) for i in range(1, 7)},
        id="full-count-2",
    ),
    pytest.param(
        weekly(930, 10),
        r.Policy(backup_days=30, full_count=8),
        {f"F{w}" for w in range(2)} | {f"F{w}i{i}" for w in range(2) for i in range(1, 7)},
        id="both-rules-keep-the-union",
    ),
    pytest.param(
        # An old full that a recent incremental still depends on is never removed.
        [full("F", 100), incr("I1", 500, "F", "F"), incr("I2", 990, "I1", "F")],
        r.Policy(backup_days=30),
        set(),
        id="old-full-under-recent-incremental",
    ),
    pytest.param(
        # A differential needs only its full, not the incrementals before it.
        [full("F", 100), incr("I1", 101, "F", "F"), diff("D", 102, "F"), full("G", 990)],
        r.Policy(backup_days=30),
        {"I1"},
        id="differential-keeps-only-its-full",
    ),
    pytest.param(
        # Nothing in the window: the newest backup and its chain stay (never expire everything).
        [full("F", 100), incr("I", 101, "F", "F"), full("G", 200), incr("J", 201, "G", "G")],
        r.Policy(backup_days=30),
        {"F", "I"},
        id="nothing-recent-keeps-newest-chain",
    ),
    pytest.param(
        [
            full("F", 900),
            full("E", 960),
            full("G", 990) | {"status": "failed"},
            full("H", 950) | {"status": "in_progress"},
            full("X", 800) | {"status": "failed"},
            full("N", 995),
        ],
        r.Policy(backup_days=30),
        {"F", "X"},
        id="failed-older-than-oldest-kept-go-in-progress-stays",
    ),
    pytest.param(
        # A partial (single-database) full does not count towards full_count.
        [full("F", 900), full("G", 960), full("P", 970, partial=True)],
        r.Policy(backup_days=None, full_count=1),
        {"F"},
        id="partial-not-counted-as-full",
    ),
    pytest.param(
        # Catalog times are whole seconds: the catalog's order says which came first.
        [full("F", 900), incr("I", 900, "F", "F"), full("G", 900), incr("J", 900, "G", "G")],
        r.Policy(backup_days=None, full_count=1),
        {"F", "I"},
        id="same-second-ordered-by-catalog",
    ),
]


@pytest.mark.parametrize(("entries", "policy", "expected"), CASES)
def test_backup_plan(entries, policy, expected):
    p = r.plan(entries, policy, now=NOW)
    assert set(expired_ids(p)) == expected
    assert all(b.reason for b in p.backups)
    assert set(p.kept).isdisjoint(expected)


def test_reasons_name_the_rule():
    p = r.plan([full("F", 100), full("E", 200), full("G", 990)], r.Policy(backup_days=30), now=NOW)
    assert p.backups[0].reason == "older than the 30-day window; no kept backup depends on it"
    assert p.backups[0].location == "/b/F.backup"


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="at least 1"):
        r.Policy(backup_days=0)
    with pytest.raises(ValueError, match="and/or"):
        r.Policy(backup_days=None, full_count=None)


def segs(tl, lo, hi, archived_day=0):
    return [r.Segment(tl, n, f"/a/{tl}-{n}", archived_day * DAY) for n in range(lo, hi)]


def expired_segs(p):
    return {(s.timeline, s.segno) for s in p.segments}


def test_segments_before_oldest_kept_backup_expire():
    entries = [full("F", 100, lsn=3 * SEG, end=4 * SEG), full("G", 990, lsn=8 * SEG, end=9 * SEG)]
    p = r.plan(entries, r.Policy(backup_days=30), now=NOW, segments=segs(1, 0, 12), segment_size=SEG)
    # F is the newest backup before the window: kept; WAL from its start on is kept.
    assert expired_segs(p) == {(1, 0), (1, 1), (1, 2)}


def test_segments_follow_timeline_ancestry():
    # G is on timeline 2, which branched from 1 at 5*SEG: timeline 1 below G's start goes; timeline 3
    # (no kept backup descends from it... it is a sibling) is never touched.
    entries = [full("G", 990, lsn=7 * SEG, end=8 * SEG, tl=2)]
    histories = {2: [(1, 5 * SEG, "restore")], 3: [(1, 4 * SEG, "restore")]}
    segments = segs(1, 0, 6) + segs(2, 5, 10) + segs(3, 4, 6)
    p = r.plan(entries, r.Policy(backup_days=30), now=NOW, segments=segments, histories=histories, segment_size=SEG)
    assert expired_segs(p) == {(1, n) for n in range(6)} | {(2, 5), (2, 6)}


def test_archive_window_longer_keeps_recent_segments():
    entries = [full("G", 990, lsn=8 * SEG, end=9 * SEG)]
    segments = segs(1, 0, 4, archived_day=900) + segs(1, 4, 12, archived_day=980)
    p = r.plan(entries, r.Policy(backup_days=30, archive_days=60), now=NOW, segments=segments, segment_size=SEG)
    assert expired_segs(p) == {(1, n) for n in range(4)}
    assert p.segments[0].reason == "archived before the 60-day point-in-time window"


def test_archive_window_shorter_drops_wal_of_older_backups_but_not_their_own_range():
    entries = [
        full("F", 975, lsn=2 * SEG, end=3 * SEG),
        full("G", 985, lsn=6 * SEG, end=7 * SEG),
        full("H", 995, lsn=9 * SEG, end=10 * SEG),
    ]
    segments = segs(1, 0, 2, 974) + segs(1, 2, 6, 980) + segs(1, 6, 9, 990) + segs(1, 9, 12, 996)
    p = r.plan(entries, r.Policy(backup_days=30, archive_days=7), now=NOW, segments=segments, segment_size=SEG)
    # The window starts on day 993: G (day 985) is the newest backup before it, so WAL from G's start is
    # kept; F's own range (segment 2) stays so F remains restorable; segments 0, 1, 3, 4, 5 go.
    assert expired_segs(p) == {(1, 0), (1, 1), (1, 3), (1, 4), (1, 5)}
    assert set(p.kept) == {"F", "G", "H"}


def test_a_kept_backup_without_lsn_keeps_all_wal():
    entries = [full("F", 980, lsn=3 * SEG) | {"start_lsn": None}, full("G", 990, lsn=8 * SEG)]
    p = r.plan(entries, r.Policy(backup_days=30), now=NOW, segments=segs(1, 0, 12), segment_size=SEG)
    assert set(p.kept) == {"F", "G"} and not p.segments


def test_no_kept_backup_no_segment_expires():
    p = r.plan([], r.Policy(backup_days=30), now=NOW, segments=segs(1, 0, 5), segment_size=SEG)
    assert p.is_empty()


# -- properties over synthetic catalogs of chains --------------------------------------------


@st.composite
def catalogs(draw):
    entries = []
    day = 0
    n = draw(st.integers(1, 30))
    for i in range(n):
        day += draw(st.integers(0, 15))
        bid = f"B{i}"
        candidates = [e for e in entries if e["status"] == "completed"]
        kind = draw(st.sampled_from(["full", "incremental", "differential", "pitr-base"]))
        status = draw(st.sampled_from(["completed"] * 6 + ["failed", "in_progress"]))
        e = full(bid, day, lsn=day * SEG, kind=kind, partial=draw(st.booleans()) if kind == "full" else False)
        e["status"] = status
        if kind == "incremental" and candidates:
            parent = draw(st.sampled_from(candidates))
            e["parent_id"] = parent["backup_id"]
            e["base_full_id"] = r.chain_of(parent["backup_id"], {x["backup_id"]: x for x in entries})[-1]
        elif kind == "differential":
            fulls = [c for c in candidates if c["backup_type"] in ("full", "pitr-base")]
            if fulls:
                e["base_full_id"] = e["parent_id"] = draw(st.sampled_from(fulls))["backup_id"]
            else:
                e["backup_type"] = "full"
        elif kind == "incremental":
            e["backup_type"] = "full"
        entries.append(e)
    return entries


@st.composite
def valid_policies(draw):
    days = draw(st.one_of(st.none(), st.integers(1, 120)))
    count = draw(st.integers(1, 5)) if days is None else draw(st.one_of(st.none(), st.integers(1, 5)))
    return r.Policy(backup_days=days, full_count=count)


@settings(max_examples=300, deadline=None)
@given(entries=catalogs(), policy=valid_policies(), now_day=st.integers(0, 400))
def test_nothing_a_kept_backup_depends_on_is_removed(entries, policy, now_day):
    by_id = {e["backup_id"]: e for e in entries}
    p = r.plan(entries, policy, now=now_day * DAY)
    gone = set(expired_ids(p))
    kept = set(p.kept)
    assert not gone & kept
    for k in kept:
        assert not set(r.chain_of(k, by_id)) & gone, "a kept backup lost part of its chain"
    for b in gone:
        assert by_id[b]["status"] in ("completed", "failed")  # never a backup still running


@settings(max_examples=300, deadline=None)
@given(entries=catalogs(), policy=valid_policies(), now_day=st.integers(0, 400))
def test_everything_old_and_not_depended_upon_is_removed(entries, policy, now_day):
    now = now_day * DAY
    by_id = {e["backup_id"]: e for e in entries}
    p = r.plan(entries, policy, now=now)
    gone = set(expired_ids(p))
    kept = set(p.kept)
    completed = {b for b, e in by_id.items() if e["status"] == "completed"}
    if not completed:
        assert not gone
        return
    assert kept  # the newest backup always survives
    needed = set()
    for k in kept:
        needed |= set(r.chain_of(k, by_id))
    for b in completed - gone:
        e = by_id[b]
        recent = policy.backup_days is not None and e["completed_at"] >= now - policy.backup_days * DAY
        assert b in kept and (recent or b in needed or _kept_by_rule(b, entries, policy, now))
    # and every completed backup not kept is in the plan
    assert completed - kept == gone & completed


def _kept_by_rule(bid, entries, policy, now):
    seq = {e["backup_id"]: i for i, e in enumerate(entries)}
    completed = sorted(
        (e for e in entries if e["status"] == "completed"), key=lambda e: (e["completed_at"], seq[e["backup_id"]])
    )
    return bid in r._policy_kept(completed, policy, now, lambda e: (e["started_at"], seq[e["backup_id"]]))


@settings(max_examples=200, deadline=None)
@given(entries=catalogs(), policy=valid_policies(), now_day=st.integers(0, 400), data=st.data())
def test_no_segment_a_kept_backup_replays_is_removed(entries, policy, now_day, data):
    archive_days = data.draw(st.one_of(st.none(), st.integers(1, 120)))
    policy = r.Policy(policy.backup_days, policy.full_count, archive_days)
    segments = [r.Segment(1, n, f"/a/{n}", data.draw(st.integers(0, 400)) * DAY) for n in range(0, 420)]
    p = r.plan(entries, policy, now=now_day * DAY, segments=segments, segment_size=SEG)
    gone = {s.segno for s in p.segments}
    by_id = {e["backup_id"]: e for e in entries}
    kept = [by_id[b] for b in p.kept]
    if archive_days is None and kept:
        oldest = min(e["start_lsn"] for e in kept)
        assert gone == {n for n in range(420) if (n + 1) * SEG <= oldest}
    for e in kept:  # a kept backup's own range is never removed
        assert not {
            n for n in gone if n * SEG < max(e["end_lsn"], e["start_lsn"] + 1) and (n + 1) * SEG > e["start_lsn"]
        }
    if archive_days is not None:
        window = now_day * DAY - archive_days * DAY
        assert all(segments[n].archived_at < window for n in gone)
    newest = kept[-1] if kept else None  # plan.kept is oldest first
    if newest is not None:  # WAL after the newest kept backup is always there
        assert all((n + 1) * SEG <= newest["start_lsn"] for n in gone)
