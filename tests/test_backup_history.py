"""The backup history's fields (backup/history.py) on synthetic catalogs: no server."""

from __future__ import annotations

from rustydb_server.backup import history, retention

DAY = 86400
NOW = 1_800_000_000


def entry(backup_id, backup_type="full", *, status="completed", parent=None, base=None, age_days=0.0, **more):
    t = int(NOW - age_days * DAY)
    return {
        "backup_id": backup_id,
        "backup_type": backup_type,
        "status": status,
        "started_at": t - 10,
        "completed_at": t if status == "completed" else None,
        "parent_id": parent,
        "base_full_id": base,
        "origin": "api",
        **more,
    }


def listing(entries, *, policy=retention.Policy(backup_days=7), checks=None, progress=None, mono=100.0):
    rows = history.listing(entries, checks or {}, policy, progress or {}, now=NOW, monotonic_now=mono)
    return {r["backup_id"]: r for r in rows}


def test_chain_base_trigger_and_duration():
    rows = listing(
        [
            entry("f1", trigger="schedule", duration_s=41.3),
            entry("i1", "incremental", parent="f1", base="f1", origin="client"),
            entry("d1", "differential", parent="i1", base="f1"),
        ]
    )
    assert rows["f1"]["chain"] == ["f1"] and rows["f1"]["chain_base"] == "f1"
    assert rows["i1"]["chain"] == ["f1", "i1"] and rows["i1"]["chain_base"] == "f1"
    assert rows["d1"]["chain"] == ["f1", "d1"]  # a differential needs its full only
    assert rows["f1"]["trigger"] == "schedule" and rows["f1"]["duration_s"] == 41.3
    # Entries from before the catalog recorded a trigger: told by their origin; duration from the times.
    assert rows["i1"]["trigger"] == "cli" and rows["i1"]["duration_s"] == 10.0
    assert rows["d1"]["trigger"] == "api"


def test_retention_state_follows_the_retention_plan_and_keeps_chains_whole():
    rows = listing(
        [
            entry("old_full", age_days=40),
            entry("old_incr", "incremental", parent="old_full", base="old_full", age_days=39),
            entry("base", age_days=20),
            entry("incr", "incremental", parent="base", base="base", age_days=1),
            entry("running", status="in_progress"),
        ]
    )
    assert rows["old_full"]["retention"] == "expirable"
    assert "7-day window" in rows["old_full"]["retention_reason"]
    assert rows["old_incr"]["retention"] == "expirable"
    # base is older than the window, but a kept incremental depends on it.
    assert rows["base"]["retention"] == "kept" and rows["incr"]["retention"] == "kept"
    assert rows["running"]["retention"] == "kept" and rows["running"]["retention_reason"] == "in progress"
    none = listing([entry("old_full", age_days=400)], policy=None)
    assert none["old_full"]["retention"] == "kept" and none["old_full"]["retention_reason"].startswith("no policy")


def test_checks_are_merged_per_backup():
    rows = listing(
        [entry("a"), entry("b")],
        checks={"a": {"verified_at": NOW, "verify_outcome": "ok", "drill_outcome": "failed", "drill_reason": "x"}},
    )
    assert rows["a"]["verify_outcome"] == "ok" and rows["a"]["drill_outcome"] == "failed"
    assert rows["a"]["drill_reason"] == "x"
    assert rows["b"]["verify_outcome"] is None and rows["b"]["drilled_at"] is None


def test_a_running_backup_shows_bytes_done_total_and_eta():
    p = history.Progress(started=90.0, total_estimate=1000, bytes_done=250)
    rows = listing([entry("r", status="in_progress"), entry("done")], progress={"r": p, "done": p}, mono=100.0)
    got = rows["r"]["progress"]
    # 250 bytes in 10 s: 25 B/s, 750 to go: 30 s.
    assert got == {"bytes_done": 250, "total_estimate": 1000, "elapsed_s": 10.0, "rate_bytes_per_s": 25, "eta_s": 30.0}
    assert rows["done"]["progress"] is None  # only running backups have progress
    fresh = history.Progress(started=100.0, total_estimate=None).as_dict(100.0)
    assert fresh["eta_s"] is None and fresh["rate_bytes_per_s"] is None


def test_show_rows_are_text_in_the_column_order():
    p = history.Progress(started=90.0, total_estimate=1000, bytes_done=250)
    rows = history.listing(
        [entry("r", status="in_progress", trigger="schedule"), entry("f", status="failed", error="disk full")],
        {"r": {"verified_at": 0, "verify_outcome": "ok"}},
        None,
        {"r": p},
        now=NOW,
        monotonic_now=100.0,
    )
    shown = history.show_rows(rows)
    assert len(shown[0]) == len(history.SHOW_COLUMNS)
    r = dict(zip(history.SHOW_COLUMNS, shown[0], strict=True))
    assert r["trigger"] == "schedule" and r["progress"] == "250 of ~1000 bytes, ETA 30.0 s"
    assert r["verified"] == "ok at 1970-01-01T00:00:00+00:00"
    f = dict(zip(history.SHOW_COLUMNS, shown[1], strict=True))
    assert f["status"] == "failed: disk full"
