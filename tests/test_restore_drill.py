"""The restore drill's judgements (restore/drill.py), pure: no server."""

from __future__ import annotations

import pytest

from rustydb_server.restore import drill

DATA = "/tmp/rustydb-drill-abc/data"


def test_latest_is_the_newest_completed_backup_with_a_known_file():
    entries = [
        {"backup_id": "a", "status": "completed", "completed_at": 5, "end_lsn": 10, "location": "/b/a.backup"},
        {"backup_id": "b", "status": "completed", "completed_at": 5, "end_lsn": 20, "location": "/b/b.backup"},
        {"backup_id": "c", "status": "failed", "completed_at": 9, "location": "/b/c.backup"},
        {"backup_id": "d", "status": "completed", "completed_at": 9, "location": "client 127.0.0.1"},
    ]
    assert drill.choose(entries, "latest")["backup_id"] == "b"  # same second: the later end LSN
    assert drill.choose(entries, "a")["backup_id"] == "a"
    with pytest.raises(drill.DrillError, match="is failed, not completed"):
        drill.choose(entries, "c")
    with pytest.raises(drill.DrillError, match="does not know where backup d was written"):
        drill.choose(entries, "d")
    with pytest.raises(drill.DrillError, match="has no backup zz"):
        drill.choose(entries, "zz")
    with pytest.raises(drill.DrillError, match="no completed backup"):
        drill.choose(entries[2:3], "latest")


def pid_file(pid=42, port=5433, http_port=8081):
    return f"{pid}\nserver\nport={port}\nhttp_port={http_port}\n"


def test_only_the_drills_own_server_passes_the_identity_check():
    health = {"status": "healthy", "data_directory": {"path": DATA}}
    ok = dict(data_dir=DATA, pid=42, port=5433, http_port=8081)
    assert drill.identity_problem(health, pid_file(), **ok) is None
    # Production answering on the port the drill chose: another directory.
    other = {"status": "healthy", "data_directory": {"path": "/var/lib/rusty-db"}}
    assert "not the drill's restored directory" in drill.identity_problem(other, pid_file(), **ok)
    # The directory's pid file names another process or other ports.
    assert "does not name the drill's server" in drill.identity_problem(health, pid_file(pid=7), **ok)
    assert "does not name the drill's server" in drill.identity_problem(health, pid_file(http_port=1), **ok)
    assert "does not name the drill's server" in drill.identity_problem(health, None, **ok)


def test_health_must_be_healthy():
    assert drill.health_problem({"status": "healthy"}) is None
    assert drill.health_problem({"status": "degraded", "reasons": ["disk full"]}) == (
        "the restored server is degraded: disk full"
    )


def test_every_difference_in_row_counts_is_reported():
    expected = {"rustydb": {"customers": 3, "orders": 2}, "sales": {"x": 1}}
    assert drill.count_problems(expected, {"rustydb": {"customers": 3, "orders": 2}, "sales": {"x": 1}}) == []
    problems = drill.count_problems(expected, {"rustydb": {"customers": 2, "extra": 0}, "other": {}})
    assert problems == [
        "database 'other' on the restored server is not recorded in the backup",
        "database 'rustydb', table 'customers': the server counts 2 rows, the backup recorded 3",
        "database 'rustydb': table 'extra' is not recorded in the backup",
        "database 'rustydb': table 'orders' recorded in the backup is missing",
        "database 'sales' recorded in the backup is missing from the restored server",
    ]


def test_integrity_check_must_answer_ok():
    assert drill.integrity_problems("db", ["ok"]) == []
    assert drill.integrity_problems("db", ["row 3 missing from index i"]) == [
        "database 'db' failed PRAGMA integrity_check: row 3 missing from index i"
    ]


def test_the_first_failed_step_is_the_reason():
    d = drill.Drill("b1")
    d.passed("restore", "fine")
    assert d.ok and d.reason is None
    d.failed("health", "unhealthy")
    d.failed("stop", "later")
    assert not d.ok and d.reason == "health: unhealthy"
    assert d.as_dict()["steps"][1] == {"step": "health", "ok": False, "detail": "unhealthy"}
