"""rusty-db-restore --list-wal over an archive that holds two timelines, end to end.

A server archives timeline 1; a point-in-time restore of its pitr-base backup
starts timeline 2 part-way through a segment; the restored server archives
timeline 2 into the same archive. The guide's line
``rusty-db-restore --list-wal --archive-dir A`` must then list every
timeline's transactions, each with its timeline, and so must
``--recovery-target-timeline 2`` (timeline 2's history: timeline 1 up to the
switch, then timeline 2).
"""

from __future__ import annotations

import json
import re

import pytest

from rustydb_client import client as rc
from tests.support.servers import restore_to_target, run_tool

TX_LINE = re.compile(r"^ *\d+/[0-9A-F]+  timeline (\d+)  txid (\d+) ", re.M)


@pytest.fixture
def two_timelines(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\narchive_timeout = '1s'\n")
    srv = server_factory(name="primary", extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);")
    base = tmp_path / "pitr_base.backup"
    run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True)
    conn = rc.connect(port=srv.port)
    txids1 = []
    for i in range(12):
        conn.execute("BEGIN")
        txids1.append(conn.execute("SELECT txid_current()").rows[0][0])
        conn.execute(f"INSERT INTO notes(body) VALUES ('tl1 {i}')")
        conn.execute("COMMIT")
        if i == 8:  # on timeline 1 after the point timeline 2 branches off at
            conn.execute("CREATE RESTORE POINT 'late_on_tl1'")
    conn.close()
    srv.wait_archived()
    srv.stop()
    # the guide's PITR, to the middle of timeline 1: the new timeline starts mid-segment
    restored = tmp_path / "restored"
    proc = restore_to_target(base, archive, restored, "--recovery-target-txid", str(txids1[5]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["timeline"] == 2
    srv2 = server_factory(name="restored", extra_args=["--config", str(conf)])
    srv2.data_dir = str(restored)
    srv2.start()
    srv2.sql("ALTER SYSTEM SET archive_mode = on;")
    srv2.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    conn = rc.connect(port=srv2.port)
    txids2 = []
    for i in range(4):
        conn.execute("BEGIN")
        txids2.append(conn.execute("SELECT txid_current()").rows[0][0])
        conn.execute(f"INSERT INTO notes(body) VALUES ('tl2 {i}')")
        conn.execute("COMMIT")
    conn.close()
    srv2.wait_archived()
    srv2.stop()
    return archive, txids1, txids2, base


def _listing(*args: str) -> dict:
    proc = run_tool("rusty-db-restore", "--list-wal", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)  # exactly one JSON document


def test_list_wal_lists_every_timeline_and_names_each_ones(two_timelines):
    archive, txids1, txids2, _ = two_timelines
    # the guide's command line, as printed
    proc = run_tool("rusty-db-restore", "--list-wal", "--archive-dir", str(archive))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    # timeline 2 reuses the txids after the recovery target: a txid alone names no transaction
    listed = [(int(m[1]), int(m[2])) for m in TX_LINE.finditer(proc.stdout)]
    assert [x for x in listed if x[0] == 1 and x[1] in txids1] == [(1, t) for t in txids1]
    assert [x for x in listed if x[0] == 2] == [(2, t) for t in txids2]
    assert "timeline 2, branched from timeline 1 at LSN " in proc.stdout

    doc = _listing("--archive-dir", str(archive))
    assert doc["ok"] is True
    assert [t["timeline"] for t in doc["timelines"]] == [1, 2]
    assert doc["timelines"][1]["parent"] == 1 and doc["timelines"][1]["switch_lsn"]
    txs = [t for t in doc["transactions"] if "txid" in t]
    assert [(1, t["txid"]) for t in txs if t["timeline"] == 1 and t["txid"] in txids1] == [(1, t) for t in txids1]
    assert [(t["timeline"], t["txid"]) for t in txs if t["timeline"] == 2] == [(2, t) for t in txids2]
    # timeline 2's transactions follow timeline 1's switch point, and its own
    # end-of-recovery record is not a transaction
    assert all(t["timeline"] in (1, 2) for t in doc["transactions"])


def test_list_wal_along_timeline_2_gives_its_history(two_timelines):
    archive, txids1, txids2, _ = two_timelines
    doc = _listing("--archive-dir", str(archive), "--recovery-target-timeline", "2")
    txs = [(t["timeline"], t["txid"]) for t in doc["transactions"] if "txid" in t]
    # timeline 1 up to the switch (txids1[5] was the last replayed), then timeline 2
    assert [x for x in txs if x[0] == 1 and x[1] in txids1] == [(1, t) for t in txids1[:6]]
    assert [x for x in txs if x[0] == 2] == [(2, t) for t in txids2]
    assert txs.index((2, txids2[0])) > txs.index((1, txids1[5]))
    # timeline 1 alone: its whole archived history, past the switch too
    doc = _listing("--archive-dir", str(archive), "--recovery-target-timeline", "1")
    assert {t["timeline"] for t in doc["transactions"]} == {1}
    assert [t["txid"] for t in doc["transactions"] if t.get("txid") in txids1] == txids1


def test_a_timeline_the_archive_does_not_hold_is_one_error_line(two_timelines):
    archive, _, _, _ = two_timelines
    proc = run_tool("rusty-db-restore", "--list-wal", "--archive-dir", str(archive), "--recovery-target-timeline", "7")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "timeline 7" in proc.stderr, proc.stderr
    proc = run_tool(
        "rusty-db-restore", "--list-wal", "--archive-dir", str(archive), "--recovery-target-timeline", "7", "--json"
    )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["ok"] is False and "timeline 7" in doc["error"]


def test_a_pitr_target_on_another_timeline_says_which_and_how(two_timelines, tmp_path):
    """The guide's PITR line to a transaction that timeline 1 committed after
    timeline 2 branched off: the latest timeline never had it."""
    archive, txids1, txids2, base = two_timelines
    assert txids1[-1] not in txids2
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--archive-dir",
        str(archive),
        "--recovery-target-txid",
        str(txids1[-1]),
        "--data-dir",
        str(tmp_path / "d1"),
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"transaction {txids1[-1]} is on timeline 1 " in proc.stderr
    assert "another timeline's history" in proc.stderr
    assert "restore with --recovery-target-timeline 1" in proc.stderr
    proc = restore_to_target(base, archive, tmp_path / "d2", "--recovery-target-name", "late_on_tl1")
    assert proc.returncode == 1
    assert "restore point 'late_on_tl1' is on timeline 1 " in proc.stderr
    assert "no restore point was created" not in proc.stderr
    # what the message says to do works
    proc = restore_to_target(
        base, archive, tmp_path / "d3", "--recovery-target-name", "late_on_tl1", "--recovery-target-timeline", "1"
    )
    assert proc.returncode == 0, proc.stderr
