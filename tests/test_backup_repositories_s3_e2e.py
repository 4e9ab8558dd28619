"""backup_repositories with a local directory and an S3 bucket (a real SeaweedFS,
started by tests/support/seaweed.py): copies both ways, the S3 repository missing
then back, restore on a new machine from the bucket alone, wrong credentials."""

from __future__ import annotations

import json
import os
import uuid

import apsw

from tests.support.seaweed import wait_for_upload
from tests.support.servers import ServerProcess, run_tool
from tests.test_backup_repositories_e2e import add_rows, backup, count, wait_copied


def keys(seaweed, bucket, prefix=""):
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def s3_server(server_factory, seaweed):
    srv = server_factory(env=seaweed.env()).start()
    srv.sql("ALTER SYSTEM SET repository_s3_force_path_style = on;")
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    return srv


def test_local_and_s3_repositories_and_restore_from_the_bucket_alone(server_factory, seaweed, s3_bucket, tmp_path):
    srv = s3_server(server_factory, seaweed)
    local, remote = str(tmp_path / "repo"), f"s3://{s3_bucket}/rustydb"
    add_rows(srv, 1, 400)
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{local}, {remote}';")
    full = backup(srv)
    wait_copied(srv, full["backup_id"], [local, remote])

    # An incremental the CLI writes into the bucket: the server copies it to the local repository.
    add_rows(srv, 401, 700)
    took = run_tool(
        "rusty-db-backup",
        "--type",
        "incremental",
        "--repo",
        remote,
        "--port",
        str(srv.port),
        "--json",
        env=seaweed.env(),
        check=True,
    )
    incr = json.loads(took.stdout)
    assert incr["output"] == f"{remote}/backups/{incr['backup_id']}/{incr['backup_id']}.backup"
    wait_copied(srv, incr["backup_id"], [local, remote])
    assert os.path.isfile(os.path.join(local, "backups", incr["backup_id"], f"{incr['backup_id']}.backup"))
    assert keys(seaweed, s3_bucket) == sorted(
        [f"rustydb/backups/{b}/{b}.backup" for b in (full["backup_id"], incr["backup_id"])]
        + [f"rustydb/catalog/{b}.json" for b in (full["backup_id"], incr["backup_id"])]
        + ["rustydb/catalog/index.json"]
    )

    listed = run_tool("rusty-db-backup", "--repo", remote, "--list", "--json", env=seaweed.env(), check=True)
    assert [b["backup_id"] for b in json.loads(listed.stdout)["backups"]] == [full["backup_id"], incr["backup_id"]]
    info = run_tool("rusty-db-backup", "--repo", remote, "--info", "latest", "--json", env=seaweed.env(), check=True)
    assert json.loads(info.stdout)["backup_id"] == incr["backup_id"]
    verified = run_tool(
        "rusty-db-backup", "--repo", remote, "--verify", full["backup_id"], "--json", env=seaweed.env(), check=True
    )
    assert json.loads(verified.stdout)["valid"] is True

    # The disaster: a new machine with the bucket's address and credentials only.
    srv.stop()
    fresh = str(tmp_path / "new-machine" / "data")
    restored = run_tool("rusty-db-restore", "--repo", remote, "--data-dir", fresh, "--json", env=seaweed.env())
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["chain"] == [full["backup_id"], incr["backup_id"]]
    with ServerProcess(fresh).start() as copy:
        assert count(copy.port) == 700
    # The full backup alone: restored straight from the bucket by parallel ranges, no temporary copy.
    older = str(tmp_path / "older" / "data")
    run_tool(
        "rusty-db-restore",
        "--repo",
        remote,
        "--backup",
        full["backup_id"],
        "--data-dir",
        older,
        env=seaweed.env(),
        check=True,
    )
    assert not [n for n in os.listdir(os.path.dirname(older)) if n.startswith(".rustydb-repository-restore-")]
    with ServerProcess(older).start() as copy:
        assert count(copy.port) == 400
    table = run_tool(
        "rusty-db-restore",
        "--repo",
        remote,
        "--table",
        "t",
        "--data-dir",
        str(tmp_path / "t"),
        "--json",
        env=seaweed.env(),
        check=True,
    )
    assert json.loads(table.stdout)["rows"] == 700


def test_a_missing_bucket_is_failing_then_catches_up(server_factory, seaweed, tmp_path):
    srv = s3_server(server_factory, seaweed)
    bucket = f"later-{uuid.uuid4().hex[:10]}"
    local, remote = str(tmp_path / "repo"), f"s3://{bucket}/db"
    add_rows(srv, 1, 50)
    # The bucket first: the server writes the backup into backup_dir and uploads it from there.
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{remote}, {local}';")
    full = backup(srv)
    assert full["status"] == "completed"  # the backup does not wait for the copies
    assert full["location"] == os.path.join(srv.data_dir, "backups", f"{full['backup_id']}.backup")
    import time

    deadline = time.monotonic() + 30
    while True:
        states, listing = wait_copied(srv, full["backup_id"], [local])
        if states[remote]["state"] == "failing":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert bucket in states[remote]["error"]
    assert listing["repositories"][remote] == {
        "copied": 0,
        "pending": 1,
        "failing": states[remote]["error"],
        "name": None,
    }

    seaweed.new_bucket(bucket)  # the repository is there now
    wait_copied(srv, full["backup_id"], [local, remote])
    assert keys(seaweed, bucket) == [
        f"db/backups/{full['backup_id']}/{full['backup_id']}.backup",
        f"db/catalog/{full['backup_id']}.json",
        "db/catalog/index.json",
    ]


def test_wrong_credentials_and_a_missing_bucket_are_clear_errors(server_factory, seaweed, s3_bucket, tmp_path):
    srv = s3_server(server_factory, seaweed)
    add_rows(srv, 1, 10)
    remote = f"s3://{s3_bucket}/rustydb"
    wrong = {**seaweed.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    took = run_tool("rusty-db-backup", "--type", "full", "--repo", remote, "--port", str(srv.port), env=wrong)
    assert took.returncode == 1
    assert remote in took.stderr and "Traceback" not in took.stderr
    assert "not-the-secret" not in took.stderr
    assert "cannot look at catalog/index.json" in took.stderr  # checked before the server takes a backup
    assert keys(seaweed, s3_bucket) == []  # nothing written

    fresh = tmp_path / "fresh"
    restored = run_tool("rusty-db-restore", "--repo", remote, "--data-dir", str(fresh), env=wrong)
    assert restored.returncode == 1 and "Traceback" not in restored.stderr
    assert restored.stderr.startswith(f"rusty-db-restore: error: restore of {remote} into {fresh} failed: ")
    assert not fresh.exists()

    missing = run_tool(
        "rusty-db-restore", "--repo", "s3://no-such-bucket-here/x", "--data-dir", str(fresh), env=seaweed.env()
    )
    assert missing.returncode == 1 and "no-such-bucket-here" in missing.stderr, missing.stderr
    assert not fresh.exists()


def test_new_machine_recovers_to_a_time_and_to_the_latest_point_from_the_bucket(
    server_factory, seaweed, s3_bucket, tmp_path
):
    import datetime as dt
    import time

    srv = s3_server(server_factory, seaweed)
    remote = f"s3://{s3_bucket}/rustydb"
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{remote}';")
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{str(tmp_path / 'local')}, {remote}';")
    add_rows(srv, 1, 100)
    base = backup(srv, "pitr-base")
    wait_copied(srv, base["backup_id"], [remote])
    add_rows(srv, 101, 200)
    time.sleep(0.2)
    target = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.2)
    add_rows(srv, 201, 300)
    srv.wait_archived()
    srv.stop()

    at_target, latest = str(tmp_path / "at-target"), str(tmp_path / "latest")
    run_tool(
        "rusty-db-restore",
        "--repo",
        remote,
        "--data-dir",
        at_target,
        "--recovery-target-time",
        target,
        env=seaweed.env(),
        check=True,
    )
    done = run_tool("rusty-db-restore", "--repo", remote, "--data-dir", latest, "--json", env=seaweed.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backup_id"] == base["backup_id"]
    db = apsw.Connection(os.path.join(at_target, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(200,)]
    finally:
        db.close()
    with ServerProcess(latest).start() as b:  # the restored directory starts as a server
        assert count(b.port) == 300


def test_the_store_killed_during_a_copy_the_backup_stands_nothing_partial_is_listed_and_the_copy_catches_up(
    server_factory, seaweed_own, tmp_path
):
    import hashlib
    import time

    from rustydb_client import client as rc
    from tests.test_backup_api_e2e import call

    store = seaweed_own
    bucket = store.new_bucket()
    srv = s3_server(server_factory, store)
    with rc.connect(port=srv.port) as conn:
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, body BLOB)")
        for n in range(24):  # 24 MB of random bytes: a backup of five 5 MB parts, sent one at a time
            conn.execute("INSERT INTO big VALUES " + ",".join(f"({n * 16 + k}, randomblob(65536))" for k in range(16)))
    srv.sql("ALTER SYSTEM SET repository_s3_part_size = '5MB';")
    srv.sql("ALTER SYSTEM SET repository_s3_concurrency = 1;")
    local, remote = str(tmp_path / "repo"), f"s3://{bucket}/db"
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{local}, {remote}';")

    status, started = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
    assert status == 202, started
    backup_id = started["backup_id"]
    key = f"db/backups/{backup_id}/{backup_id}.backup"
    client = store.client()
    wait_for_upload(client, bucket, key, what="the copy to the bucket")
    store.kill()  # mid-copy: some parts sent, the upload not completed

    # The backup itself stands: completed in the first (local) repository; the bucket's copy fails.
    deadline = time.monotonic() + 60
    while True:
        status, entry = call(srv, "GET", f"/api/v1/admin/backup/{backup_id}")
        state = (entry.get("repositories") or {}).get(remote, {})
        if entry["status"] == "completed" and state.get("state") == "failing":
            break
        assert entry["status"] != "failed" and state.get("state") != "copied", entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.1)
    assert entry["repositories"][local]["state"] == "copied"
    path = os.path.join(local, "backups", backup_id, f"{backup_id}.backup")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert "cannot be reached" in state["error"], state

    store.start()  # the same data directory and ports
    listed = keys(store, bucket)
    # Nothing partial: the backup's object is there whole or not at all, and listed in the catalog only after it.
    if key in listed:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == os.path.getsize(path)
    else:
        assert f"db/catalog/{backup_id}.json" not in listed
        assert "db/catalog/index.json" not in listed

    wait_copied(srv, backup_id, [local, remote], timeout=90)
    assert keys(store, bucket) == [key, f"db/catalog/{backup_id}.json", "db/catalog/index.json"]
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    index = json.loads(client.get_object(Bucket=bucket, Key="db/catalog/index.json")["Body"].read())
    assert [e["backup_id"] for e in index["backups"]] == [backup_id]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # the cut-off upload is gone
