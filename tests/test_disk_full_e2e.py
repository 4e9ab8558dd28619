"""A real full disk (a small tmpfs) under the WAL and under a backup.

Mounting needs root and a kernel that allows it; elsewhere these tests skip
(the same faults are covered through the FileOps seam in test_engine_faults).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest

from rustydb_client import client as rc


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path, leave_bytes):
    """Fill the filesystem of ``path`` until about ``leave_bytes`` are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "ballast"), "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def test_full_wal_disk_fails_commits_clearly_and_recovers(server_factory, small_disk, tmp_path):
    conf = tmp_path / "conf.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="x", extra_args=["--config", str(conf)])
    srv.data_dir = str(small_disk / "data")
    srv.start()
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT);")
    c = rc.connect(port=srv.port)
    c.execute("INSERT INTO t VALUES (1, 'before')")
    fill(small_disk, 16 * 1024)
    failures = []
    for i in range(2, 80):
        try:
            c.execute(f"INSERT INTO t VALUES ({i}, printf('%.3000c', 'x'))")
        except rc.ServerError as e:
            failures.append(e)
            break
    assert failures, "the disk never filled up"
    err = failures[0]
    # Either the WAL could not take the record (nothing committed), or SQLite's
    # file filled up after the record was durable: then the transaction IS
    # committed, and the answer says so (it used to say "failed").
    assert err.code in ("disk_full", "committed_not_applied"), err
    committed = err.code == "committed_not_applied"
    if committed:
        assert "IS committed" in str(err) and "the disk is full" in str(err)
    failed_id = i
    acked = c.execute("SELECT max(id) FROM t").rows[0][0]  # reads keep working
    assert acked == failed_id - 1  # nothing is visible before it is applied
    # Still serving, and the full file system (backup_dir lies on it) is the reason it is not healthy.
    health = srv.health()
    assert health["status"] == "degraded", health
    assert any("nearly full" in r for r in health["reasons"]), health
    os.unlink(small_disk / "ballast")  # space is back
    c.execute(f"INSERT INTO t VALUES ({failed_id + 1}, 'after')")
    assert srv.health()["status"] == "healthy"
    # present exactly when it was reported committed, and wholly so
    ids = [r[0] for r in c.execute("SELECT id FROM t ORDER BY id").rows]
    assert ids == (list(range(1, failed_id + 2)) if committed else list(range(1, failed_id)) + [failed_id + 1])
    c.close()
    srv.kill()
    srv.start()
    with rc.connect(port=srv.port) as c2:
        assert [r[0] for r in c2.execute("SELECT id FROM t ORDER BY id").rows] == ids
    srv.stop()


def test_full_backup_disk_marks_backup_failed_and_leaves_no_file(server_factory, small_disk):
    srv = server_factory(name="y").start()
    srv.sql("CREATE TABLE big(id INTEGER PRIMARY KEY, pad BLOB);")
    srv.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 5000) "
        "INSERT INTO big SELECT i, randomblob(2000) FROM c;"
    )  # ~10 MB, incompressible
    srv.sql(f"ALTER SYSTEM SET backup_dir = '{small_disk}';")
    url = f"http://127.0.0.1:{srv.http_port}/api/v1/admin/backup"
    req = urllib.request.Request(
        url,
        data=json.dumps({"backup_type": "full"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        backup_id = json.loads(r.read())["backup_id"]
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{url}/{backup_id}") as r:
            entry = json.loads(r.read())
        if entry["status"] != "in_progress":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert entry["status"] == "failed" and "space" in entry["error"].lower()
    assert os.listdir(small_disk) == []  # no complete-looking file, no partial one
    assert srv.health()["status"] == "healthy"
    srv.sql("INSERT INTO big VALUES (99999, x'00');")  # the server keeps serving
    proc = srv.cli("--command", "SELECT count(*) FROM big", "--csv")
    assert proc.stdout.strip().endswith("5001")
    srv.stop()
