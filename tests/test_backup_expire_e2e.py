"""rusty-db-backup --expire end to end: a real server's backups (a full, two
incrementals, a second full and an incremental on it) and archived WAL; the
retention settings set with ALTER SYSTEM, as an operator would."""

from __future__ import annotations

import json
import os

import pytest

from rustydb_client import client as rc
from rustydb_server.archive import segment_file
from rustydb_server.backup.catalog import load_entries
from tests.support.servers import run_tool


def take(srv, path, kind):
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", kind, "--output", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["backup_id"]


def expire(data, archive, *flags):
    return run_tool("rusty-db-backup", "--expire", "--data-dir", str(data), "--archive-dir", str(archive), *flags)


@pytest.fixture
def chains(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTYDB_CONFIG", str(tmp_path / "absent.toml"))  # never the machine's config
    archive = tmp_path / "archive"
    archive.mkdir()
    backups = tmp_path / "backups"
    backups.mkdir()
    conf = tmp_path / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\narchive_timeout = '1s'\n")
    srv = server_factory(name="data", extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, body TEXT);")
    conn = rc.connect(port=srv.port)
    ids = {}

    def work(n):
        for _ in range(n):
            conn.execute("INSERT INTO items(body) VALUES (hex(randomblob(2000)))")
        srv.wait_archived()

    for name, kind in (("F1", "full"), ("I1", "incremental"), ("I2", "incremental"), ("F2", "full")):
        work(40)
        ids[name] = take(srv, backups / f"{name}.backup", kind)
    work(40)
    ids["I3"] = take(srv, backups / "I3.backup", "incremental")
    rows = conn.execute("SELECT count(*) FROM items").rows[0][0]
    work(5)
    conn.close()
    # Keep one full and what followed it: F2 and I3; F1, I1, I2 and the WAL before F2 go.
    srv.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    srv.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")
    return srv, archive, backups, ids, rows


def test_expire_a_real_servers_backups_and_archive(chains, tmp_path):
    srv, archive, backups, ids, rows = chains
    data = srv.data_dir
    entries = {e["backup_id"]: e for e in load_entries(data)}
    f2_start = entries[ids["F2"]]["start_lsn"]
    segments_before = segment_file.list_archive(str(archive))[1]
    seg_size = 65536
    below_f2 = sorted(n for n in segments_before if (n + 1) * seg_size <= f2_start)
    assert below_f2, "the test needs archived WAL older than the second full"

    # While the server runs, the dry run reads the catalog file (without --dry-run
    # the server is asked: tests/test_metrics_e2e.py).
    dry = expire(data, archive, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["ok"] and doc["dry_run"]
    assert {b["backup_id"] for b in doc["backups"]} == {ids["F1"], ids["I1"], ids["I2"]}
    assert not any(b["removed"] for b in doc["backups"])
    assert sorted(s["segno"] for s in doc["segments"]) == below_f2
    assert set(doc["kept"]) >= {ids["F2"], ids["I3"]}
    assert doc["policy"] == {
        "backup_retention_days": 0,
        "backup_retention_full_count": 1,
        "archive_retention_days": 0,
    }
    assert srv.stop() == 0

    text = expire(data, archive, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"would expire full backup {ids['F1']} ({backups / 'F1.backup'}): before the newest 1 full backups" in (
        text.stdout
    )
    assert f"would expire incremental backup {ids['I2']}" in text.stdout
    assert "Dry run: 3 backup(s)" in text.stdout
    assert all((backups / f"{n}.backup").exists() for n in ids)  # a dry run removes nothing

    done = expire(data, archive, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and not doc["dry_run"] and all(b["removed"] for b in doc["backups"])
    assert sorted(os.listdir(backups)) == ["F2.backup", "I3.backup"]
    assert set(ids[n] for n in ("F2", "I3")) <= {e["backup_id"] for e in load_entries(data)}
    assert not {ids[n] for n in ("F1", "I1", "I2")} & {e["backup_id"] for e in load_entries(data)}
    left = segment_file.list_archive(str(archive))[1]
    assert sorted(left) == sorted(set(segments_before) - set(below_f2))

    again = expire(data, archive)
    assert again.returncode == 0, again.stderr
    assert "0 backup(s) and 0 WAL segment(s) expired" in again.stdout

    # What is kept still restores: the second full and its incremental.
    target = tmp_path / "restored"
    for args in (
        ["--input", str(backups / "F2.backup"), "--data-dir", str(target)],
        ["--input", str(backups / "I3.backup"), "--data-dir", str(target), "--incremental"],
    ):
        proc = run_tool("rusty-db-restore", *args)
        assert proc.returncode == 0, proc.stderr
    import apsw

    db = apsw.Connection(str(target / "databases" / "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    assert db.execute("SELECT count(*) FROM items").fetchall()[0][0] == rows


def test_expire_usage_and_settings_errors(tmp_path):
    proc = run_tool("rusty-db-backup", "--expire")
    assert proc.returncode == 2 and "--expire needs --data-dir" in proc.stderr
    proc = run_tool("rusty-db-backup", "--info", "x", "--dry-run")
    assert proc.returncode == 2 and "--dry-run is only used with --expire" in proc.stderr
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", str(tmp_path / "nowhere"), "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False and "does not exist" in proc.stderr
