"""Retention expires archived WAL in every archive destination: archive_dest, a
second local directory and an S3 bucket (a SeaweedFS this test kills and brings
back) of archive_extra_dests. The bucket down is reported and does not stop the
others; the next expire removes what it kept."""

from __future__ import annotations

import json

from rustydb_client import client as rc
from tests.support.servers import run_tool
from tests.test_archive_s3_e2e import server_config, wal_objects
from tests.test_backup_expire_e2e import take


def archived(directory) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(".walz")}


def test_expire_removes_old_wal_in_every_destination_and_retries_one_that_is_down(
    server_factory, tmp_path, seaweed_own, monkeypatch
):
    store = seaweed_own
    bucket = store.new_bucket()
    remote = f"s3://{bucket}/rustydb"
    first, second = tmp_path / "archive", tmp_path / "archive-2"
    conf = server_config(tmp_path, store)
    monkeypatch.setenv("RUSTYDB_CONFIG", conf)  # the tool reaches the store with the server's settings
    srv = server_factory(name="data", extra_args=["--config", conf]).start()
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{first}';")
    srv.sql(f"ALTER SYSTEM SET archive_extra_dests = '{second}, {remote}';")
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, body TEXT);")
    conn = rc.connect(port=srv.port)
    backups = tmp_path / "backups"
    backups.mkdir()
    for name in ("F1", "F2"):
        for _ in range(30):
            conn.execute("INSERT INTO items(body) VALUES (hex(randomblob(2000)))")
        srv.wait_archived()
        take(srv, backups / f"{name}.backup", "full")
    conn.execute("INSERT INTO items(body) VALUES ('after')")
    conn.close()
    srv.wait_archived()
    in_bucket = {k.rsplit("/", 1)[1] for k in wal_objects(store, bucket, "rustydb/wal/")}
    assert archived(first) == archived(second) == in_bucket
    srv.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    srv.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")

    # The bucket is down: the running server expires (the tool asks it through its API);
    # both directories lose the WAL before F2, the bucket is reported and keeps it.
    store.kill()
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", srv.data_dir, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    gone = {s["segment"] for s in doc["segments"]}
    assert gone and all(s["removed"] for s in doc["segments"])
    assert archived(first) == in_bucket - gone
    local_extra, bucket_extra = doc["extra_archives"]
    assert local_extra["destination"] == str(second) and local_extra["error"] is None
    assert {s["segment"] for s in local_extra["segments"]} == gone and all(
        s["removed"] for s in local_extra["segments"]
    )
    assert archived(second) == in_bucket - gone
    assert bucket_extra["destination"] == remote and bucket_extra["segments"] == []
    assert "cannot read it" in bucket_extra["error"] and "next expire" in bucket_extra["error"]
    assert f"archived WAL in {remote} not expired" in proc.stderr

    # Back: the next expire (the tool alone, the server stopped) removes what the bucket kept.
    store.start()
    srv.wait_archived(timeout=90)
    assert srv.stop() == 0
    now_in_bucket = {k.rsplit("/", 1)[1] for k in wal_objects(store, bucket, "rustydb/wal/")}
    assert gone <= now_in_bucket
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", srv.data_dir, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["segments"] == [] and doc["backups"] == []
    local_extra, bucket_extra = doc["extra_archives"]
    assert local_extra["segments"] == [] and local_extra["error"] is None
    assert bucket_extra["error"] is None
    assert {s["segment"] for s in bucket_extra["segments"]} == gone
    assert all(s["removed"] for s in bucket_extra["segments"])
    left = {k.rsplit("/", 1)[1] for k in wal_objects(store, bucket, "rustydb/wal/")}
    assert left == now_in_bucket - gone and not (left & gone)
    assert archived(first) == archived(second) == left
