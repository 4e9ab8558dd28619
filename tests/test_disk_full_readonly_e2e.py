"""A full data disk, end to end, through the FileOps seam (issue 14, item 10).

The server runs under tests/support/disk_full_server.py: while a flag file
exists, every write to a file it creates fails with ENOSPC (a new WAL
segment, the control file, rustydb.auto.toml), as on a real full disk.

* It starts read-only when it cannot write its control file at the end of
  recovery: health says "degraded" and why, reads are served, every write
  (INSERT, CHECKPOINT, SWITCH WAL, CREATE DATABASE, ALTER SYSTEM) is a clean
  disk_full on a connection that stays usable; freed space makes it writable
  by itself, on the next write or through the checkpointer.
* On a running server, CHECKPOINT on a full disk is disk_full, not an
  internal error that drops the connection.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.request

import pytest

from rustydb_client import client as rc
from tests.support.disk_full_server import FLAG_ENV
from tests.support.servers import run_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def full_disk_server(server_factory, tmp_path):
    flag = tmp_path / "disk-is-full"
    env = {FLAG_ENV: str(flag), "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    srv = server_factory(name="data", env=env, command=[sys.executable, "-m", "tests.support.disk_full_server"])
    return srv, flag


def wait_for_health(srv, status, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            health = srv.health()
            if health.get("status") == status:
                return health
        except (OSError, ValueError, http.client.HTTPException):
            pass
        assert srv.proc.poll() is None, f"server exited:\n{srv.log()}"
        assert time.monotonic() < deadline, f"health never said {status}:\n{srv.log()}"
        time.sleep(0.05)


def refused(conn, sql) -> rc.ServerError:
    with pytest.raises(rc.ServerError) as e:
        conn.execute(sql)
    assert e.value.code == "disk_full", e.value
    assert "internal" not in str(e.value)
    return e.value


def start_read_only(srv, flag):
    srv.start()
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    srv.sql("INSERT INTO t VALUES (1, 'one'), (2, 'two');")
    srv.kill()  # recovery at the next start writes the control file
    flag.touch()
    srv.start(wait=False)
    return wait_for_health(srv, "degraded")


def test_starts_read_only_on_a_full_disk_and_writes_resume_on_the_next_write(full_disk_server):
    srv, flag = full_disk_server
    health = start_read_only(srv, flag)
    assert health["read_only"] is True
    assert "disk is full" in health["read_only_reason"] and "free disk space" in health["read_only_reason"]
    assert health["reasons"] == [health["read_only_reason"]]
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/api/v1/admin/health", timeout=5) as r:
        assert r.status == 200  # degraded: running, serving reads; 503 is for starting and unhealthy
    with rc.connect(port=srv.port) as c:
        assert c.execute("SELECT id, v FROM t ORDER BY id").rows == [[1, "one"], [2, "two"]]
        err = refused(c, "INSERT INTO t VALUES (3, 'three')")
        assert "read-only" in str(err) and "Free disk space" in str(err)
        c.execute("BEGIN")
        c.execute("INSERT INTO t VALUES (4, 'four')")
        refused(c, "COMMIT")
        refused(c, "CHECKPOINT")
        refused(c, "SWITCH WAL")
        refused(c, "CREATE DATABASE other")
        refused(c, "CREATE RESTORE POINT 'before_space'")
        refused(c, "ALTER SYSTEM SET checkpoint_timeout = '10min'")
        # the connection is still usable, and nothing refused is visible
        assert c.execute("SELECT count(*) FROM t").rows == [[2]]
        assert c.execute("SHOW checkpoint_timeout").rows != [["10min"]]
        flag.unlink()  # space is back: the next write makes the server writable
        c.execute("INSERT INTO t VALUES (3, 'three')")
        c.execute("CHECKPOINT")
        assert c.execute("SELECT id FROM t ORDER BY id").rows == [[1], [2], [3]]
    health = srv.health()
    assert health["status"] == "healthy" and health["read_only"] is False
    srv.stop()
    srv.start()  # the refused writes never happened; the accepted one is durable
    with rc.connect(port=srv.port) as c:
        assert c.execute("SELECT id FROM t ORDER BY id").rows == [[1], [2], [3]]
    srv.stop()


def test_the_checkpointer_makes_a_read_only_server_writable_once_space_is_back(full_disk_server):
    srv, flag = full_disk_server
    start_read_only(srv, flag)
    flag.unlink()
    wait_for_health(srv, "healthy")  # no client wrote anything
    with rc.connect(port=srv.port) as c:
        c.execute("INSERT INTO t VALUES (3, 'three')")
    srv.kill()
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert c.execute("SELECT count(*) FROM t").rows == [[3]]
    srv.stop()


def test_checkpoint_on_a_full_disk_is_disk_full_and_keeps_the_connection(full_disk_server):
    srv, flag = full_disk_server
    srv.start()
    with rc.connect(port=srv.port) as c:
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (1)")
        flag.touch()
        err = refused(c, "CHECKPOINT")
        assert "checkpoint failed" in str(err) and "Free disk space" in str(err)
        refused(c, "ALTER SYSTEM SET checkpoint_timeout = '10min'")
        c.execute("INSERT INTO t VALUES (2)")  # the current WAL segment has room
        assert c.execute("SELECT count(*) FROM t").rows == [[2]]
        flag.unlink()
        c.execute("CHECKPOINT")
    assert srv.health()["status"] == "healthy"
    srv.stop()
    srv.start()
    with rc.connect(port=srv.port) as c:
        assert c.execute("SELECT count(*) FROM t").rows == [[2]]
    srv.stop()


def test_a_new_data_directory_on_a_full_disk_is_refused_with_a_clear_message(full_disk_server):
    srv, flag = full_disk_server
    flag.touch()
    srv.start(wait=False)
    assert srv.wait_exit(30) == 1
    log = srv.log()
    assert "cannot start: the disk is full" in log and "free space on the filesystem of" in log
    assert "Traceback" not in log


def test_a_backup_requested_on_a_full_disk_is_disk_full_and_the_catalog_stays_clean(full_disk_server, tmp_path):
    srv, flag = full_disk_server
    start_read_only(srv, flag)
    out = tmp_path / "b.rdb"
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--output", str(out), "--type", "full")
    assert proc.returncode != 0
    assert "disk is full" in proc.stderr and "internal" not in proc.stderr and not out.exists()
    assert "Traceback" not in srv.log()
    flag.unlink()
    wait_for_health(srv, "healthy")
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--output", str(out), "--type", "full")
    assert proc.returncode == 0, proc.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/api/v1/admin/backups", timeout=10) as r:
        body = json.loads(r.read())
    listed = body["backups"] if isinstance(body, dict) else body
    assert [b["status"] for b in listed] == ["completed"]  # the refused one left nothing behind
    srv.stop()
