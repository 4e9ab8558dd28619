"""WAL archived to S3 (SeaweedFS) by a real server, and point-in-time recovery from the bucket alone.

The server archives to ``archive_dest = 's3://bucket/rustydb'`` (its WAL
under ``rustydb/wal/``); a pitr-base backup goes to a local file; the restore
tool, with nothing but the AWS environment, replays the bucket's WAL to a
target time and the rows are those the server had then.
"""

from __future__ import annotations

import json
import random
import time

from rustydb_client import client as rc
from tests.support.servers import run_tool
from tests.test_pitr_e2e import iso, restored_digest, run_workload


def server_config(tmp_path, seaweed) -> str:
    conf = tmp_path / "rustydb.toml"
    conf.write_text(
        "wal_segment_size = '64kB'\n"
        "archive_timeout = '1s'\n"
        f"repository_s3_endpoint_url = '{seaweed.endpoint_url}'\n"
        "repository_s3_region = 'us-east-1'\n"
        "repository_s3_force_path_style = true\n"
        f"repository_s3_credentials_file = '{seaweed.credentials_path}'\n"
    )
    return str(conf)


def wal_objects(seaweed, bucket, prefix) -> list[str]:
    r = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in r.get("Contents", []))


def test_archive_to_s3_and_pitr_from_the_bucket(server_factory, tmp_path, seaweed, s3_bucket):
    srv = server_factory(name="primary", extra_args=["--config", server_config(tmp_path, seaweed)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/rustydb';")
    srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);")
    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    conn = rc.connect(port=srv.port)
    history, points = [], []
    run_workload(conn, random.Random(7), 60, history, points)
    status = srv.wait_archived()
    assert status["archive_dest"] == f"s3://{s3_bucket}/rustydb" and status["failures_in_a_row"] == 0
    objects = wal_objects(seaweed, s3_bucket, "rustydb/")
    assert len(objects) >= 2 and all(k.startswith("rustydb/wal/") and k.endswith(".walz") for k in objects), objects
    assert status["last_archived_segment"] + ".walz" in {k.rsplit("/", 1)[1] for k in objects}
    conn.close()
    srv.stop()

    # A machine with nothing but the bucket's address and the AWS environment.
    env = seaweed.env()
    k = len(history) // 2
    out = tmp_path / "restored"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--repo",
        f"s3://{s3_bucket}/rustydb",
        "--data-dir",
        str(out),
        "--recovery-target-time",
        iso(history[k]["time"]),
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out)) == history[k]["digest"]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["last_replayed_txid"] == history[k]["txid"]

    # --archive-dir takes the archive_dest value as it is
    k2 = len(history) - 5
    out2 = tmp_path / "restored2"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--archive-dir",
        f"s3://{s3_bucket}/rustydb",
        "--data-dir",
        str(out2),
        "--recovery-target-txid",
        str(history[k2]["txid"]),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out2)) == history[k2]["digest"]

    # --list-wal reads the bucket too
    proc = run_tool("rusty-db-restore", "--list-wal", "--repo", f"s3://{s3_bucket}/rustydb", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = {t["txid"] for t in json.loads(proc.stdout)["transactions"] if "txid" in t}
    assert {h["txid"] for h in history} <= listed


def test_restore_with_wrong_credentials_is_a_clear_error(tmp_path, seaweed, s3_bucket):
    env = dict(seaweed.env(), AWS_SECRET_ACCESS_KEY="wrong-secret")
    proc = run_tool("rusty-db-restore", "--list-wal", "--repo", f"s3://{s3_bucket}/rustydb", env=env)
    assert proc.returncode == 1
    assert "access denied" in proc.stderr and f"s3://{s3_bucket}" in proc.stderr
    assert "Traceback" not in proc.stderr and "wrong-secret" not in proc.stderr


def test_alter_system_refuses_an_unusable_bucket(server_factory, tmp_path, seaweed):
    srv = server_factory(name="primary", extra_args=["--config", server_config(tmp_path, seaweed)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    proc = srv.cli("--command", "ALTER SYSTEM SET archive_dest = 's3://no-such-bucket-x/rustydb';")
    assert proc.returncode != 0
    assert "bucket no-such-bucket-x does not exist" in proc.stderr and "not changed" in proc.stderr
    assert srv.archive_status()["archive_dest"] is None


def test_store_down_keeps_the_wal_and_catches_up(server_factory, tmp_path, seaweed, s3_bucket):
    srv = server_factory(name="primary", extra_args=["--config", server_config(tmp_path, seaweed)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/db1';")
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
    srv.wait_archived()
    before = wal_objects(seaweed, s3_bucket, "db1/wal/")
    seaweed.stop()
    try:
        srv.sql("INSERT INTO t(v) VALUES (randomblob(1000));")
        srv.sql("SWITCH WAL;")
        deadline = time.monotonic() + 30
        while not (status := srv.archive_status())["failures_in_a_row"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["segments_waiting"] >= 1
        assert "cannot be reached" in status["last_failure_reason"]
        assert srv.health()["status"] == "degraded"
    finally:
        seaweed.start()
    srv.sql("SELECT 1;")
    # retried with backoff; ask for it at once rather than wait the backoff out
    status = srv.wait_archived(timeout=90)
    assert status["failures_in_a_row"] == 0
    after = wal_objects(seaweed, s3_bucket, "db1/wal/")
    assert set(before) < set(after)
    assert not seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
