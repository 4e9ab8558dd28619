"""A backup the server writes while the first of backup_repositories is S3 (a real
SeaweedFS) goes into the bucket as it is written: one upload, no second one by
the background copy; a store that dies mid-stream costs the backup nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

from rustydb_client import client as rc
from rustydb_server.keys import create_key_file
from tests.support.seaweed import wait_for_upload
from tests.support.servers import ServerProcess, run_tool
from tests.test_backup_api_e2e import call
from tests.test_backup_repositories_e2e import add_rows, count, wait_copied
from tests.test_backup_repositories_s3_e2e import keys, s3_server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_blobs(srv, mb: int, start: int = 0) -> None:
    with rc.connect(port=srv.port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, body BLOB)")
        for n in range(start, start + mb):  # 1 MB of random bytes a statement: does not compress
            conn.execute("INSERT INTO big VALUES " + ",".join(f"({n * 16 + k}, randomblob(65536))" for k in range(16)))


def take(srv, kind: str, **more) -> dict:
    status, done = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": kind, "wait": True, **more})
    assert status == 200, done
    assert done["status"] == "completed", done
    return done


def test_backups_stream_into_an_s3_first_repository_once_and_restore_from_the_bucket_alone(
    server_factory, seaweed, s3_bucket, tmp_path
):
    srv = s3_server(server_factory, seaweed)
    key = str(tmp_path / "backup.key")
    create_key_file(key)
    remote, local = f"s3://{s3_bucket}/rustydb", str(tmp_path / "repo")
    add_rows(srv, 1, 300)
    add_blobs(srv, 12)  # a backup of three 5 MB parts
    srv.sql("ALTER SYSTEM SET repository_s3_part_size = '5MB';")
    srv.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{remote}, {local}';")

    full = take(srv, "full", compression="zstd", encryption=True)
    add_rows(srv, 301, 500)
    incr = take(srv, "incremental", compression="lz4", encryption=True)
    client = seaweed.client()
    for done in (full, incr):
        states, _ = wait_copied(srv, done["backup_id"], [remote, local])
        # Streamed while it was written: the background copy did not upload it again.
        assert states[remote]["via"] == "stream", states
        assert states[local]["via"] == "copy", states
        # The bucket holds the very bytes of the server's file.
        with open(done["location"], "rb") as f:
            assert done["location"].startswith(os.path.join(srv.data_dir, "backups"))
            on_disk = f.read()
        b = done["backup_id"]
        body = client.get_object(Bucket=s3_bucket, Key=f"rustydb/backups/{b}/{b}.backup")["Body"].read()
        assert sha256(body) == sha256(on_disk)
    head = client.head_object(Bucket=s3_bucket, Key=f"rustydb/backups/{full['backup_id']}/{full['backup_id']}.backup")
    assert head["ETag"].strip('"').endswith("-3")  # three parts, sent as the backup was written
    ids = [full["backup_id"], incr["backup_id"]]
    assert keys(seaweed, s3_bucket) == sorted(
        [f"rustydb/backups/{b}/{b}.backup" for b in ids]
        + [f"rustydb/catalog/{b}.json" for b in ids]
        + ["rustydb/catalog/index.json"]
    )
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    listed = run_tool("rusty-db-backup", "--repo", remote, "--list", "--json", env=seaweed.env(), check=True)
    entries = json.loads(listed.stdout)["backups"]
    assert [e["backup_id"] for e in entries] == ids
    assert [(e["compression"], e["encryption"]) for e in entries] == [("zstd", True), ("lz4", True)]
    # Where each upload's time went, in the server's log.
    with open(srv.log_path, encoding="utf-8", errors="replace") as f:
        lines = [json.loads(line) for line in f if '"backup streamed into a repository"' in line]
    assert sorted(line["backup_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert line["first_part_s"] >= 0 and line["catalog_s"] >= 0
        assert line["tail_s"] >= line["complete_s"] >= 0
        assert 0 <= line["behind_bytes"] <= os.path.getsize(full["location"])
        assert 0 <= line["read_back_bytes"] <= line["behind_bytes"]

    # A new machine with the bucket and the key only.
    srv.stop()
    fresh = str(tmp_path / "new-machine" / "data")
    restored = run_tool(
        "rusty-db-restore", "--repo", remote, "--data-dir", fresh, "--key-file", key, "--json", env=seaweed.env()
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["chain"] == ids
    with ServerProcess(fresh).start() as copy:
        assert count(copy.port) == 500
        assert count(copy.port, "big") == 12 * 16


def test_the_store_dying_during_a_streamed_backup_costs_the_backup_nothing_and_the_copy_catches_up(
    server_factory, seaweed_own, tmp_path
):
    store = seaweed_own
    bucket = store.new_bucket()
    srv = s3_server(server_factory, store)
    add_blobs(srv, 24)  # five 5 MB parts, sent one at a time
    srv.sql("ALTER SYSTEM SET repository_s3_part_size = '5MB';")
    srv.sql("ALTER SYSTEM SET repository_s3_concurrency = 1;")
    srv.sql("ALTER SYSTEM SET repository_s3_stream_wait = '5min';")  # given up by the failure, not the wait
    remote = f"s3://{bucket}/db"
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{remote}';")

    status, started = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
    assert status == 202, started
    backup_id = started["backup_id"]
    key = f"db/backups/{backup_id}/{backup_id}.backup"
    client = store.client()
    wait_for_upload(client, bucket, key, what="the streamed upload")
    os.killpg(store.proc.pid, signal.SIGSTOP)  # hangs at once: the upload cannot complete before the kill
    store.kill()

    # The backup stands, in backup_dir; the bucket's copy waits for the store.
    deadline = time.monotonic() + 60
    while True:
        status, entry = call(srv, "GET", f"/api/v1/admin/backup/{backup_id}")
        state = (entry.get("repositories") or {}).get(remote, {})
        if entry["status"] == "completed" and state.get("state") == "failing":
            break
        assert entry["status"] != "failed" and state.get("state") != "copied", entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.1)
    assert "cannot be reached" in state["error"], state
    with open(entry["location"], "rb") as f:
        digest = sha256(f.read())

    store.start()  # the same data directory and ports
    listed = keys(store, bucket)
    if key in listed:  # the background copy already got there: whole
        assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == os.path.getsize(entry["location"])
    else:
        assert f"db/catalog/{backup_id}.json" not in listed and "db/catalog/index.json" not in listed
    states, _ = wait_copied(srv, backup_id, [remote], timeout=90)
    assert states[remote]["via"] == "copy"
    assert keys(store, bucket) == [key, f"db/catalog/{backup_id}.json", "db/catalog/index.json"]
    assert sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()) == digest
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_rusty_db_backup_repo_s3_gives_a_hung_store_up_then_uploads_the_file(server_factory, seaweed_own, tmp_path):
    import subprocess

    from tests.support.servers import tool

    store = seaweed_own
    bucket = store.new_bucket()
    srv = s3_server(server_factory, store)
    add_blobs(srv, 32)  # 5 MB parts: one sent, one queued, the next waits longer than the 1 s it may
    remote = f"s3://{bucket}/cli"
    config = tmp_path / "rustydb.toml"
    config.write_text(
        'repository_s3_part_size = "5MB"\nrepository_s3_concurrency = 1\nrepository_s3_stream_wait = "1s"\n'
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, **store.env(), "RUSTYDB_CONFIG": str(config), "TMPDIR": str(tmp)}
    cli = subprocess.Popen(
        [tool("rusty-db-backup"), "--type", "full", "--repo", remote, "--port", str(srv.port), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = store.client()
        wait_for_upload(client, bucket, what="the streamed upload", alive=lambda: cli.poll() is None)
        deadline = time.monotonic() + 60
        os.killpg(store.proc.pid, signal.SIGSTOP)  # the store hangs: the parts neither go up nor fail
        try:
            # The tool goes on without it: its backup file is written whole (renamed from .partial).
            while not [p for p in tmp.glob("rustydb-backup-*/*.backup")]:
                assert cli.poll() is None and time.monotonic() < deadline, "the backup file was never completed"
                time.sleep(0.05)
        finally:
            os.killpg(store.proc.pid, signal.SIGCONT)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert "repository_s3_stream_wait" in err and "uploading the backup file instead" in err, err
    took = json.loads(out)
    b = took["backup_id"]
    key = f"cli/backups/{b}/{b}.backup"
    assert keys(store, bucket) == [key, f"cli/catalog/{b}.json", "cli/catalog/index.json"]
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == took["size_bytes"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    run_tool("rusty-db-backup", "--repo", remote, "--verify", b, env=store.env(), check=True)


def test_the_upload_of_a_backup_cut_off_by_a_crash_is_aborted_at_the_next_start(server_factory, seaweed_own):
    store = seaweed_own
    bucket = store.new_bucket()
    srv = s3_server(server_factory, store)
    add_blobs(srv, 24)
    srv.sql("ALTER SYSTEM SET repository_s3_part_size = '5MB';")
    srv.sql("ALTER SYSTEM SET repository_s3_concurrency = 1;")
    srv.sql("ALTER SYSTEM SET repository_s3_stream_wait = '5min';")
    srv.sql(f"ALTER SYSTEM SET backup_repositories = 's3://{bucket}/db';")
    status, started = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
    assert status == 202, started
    client = store.client()
    wait_for_upload(client, bucket, what="the streamed upload")
    os.killpg(store.proc.pid, signal.SIGSTOP)  # the backup waits for the store...
    try:
        srv.kill()  # ... when the server dies (kill -9)
    finally:
        os.killpg(store.proc.pid, signal.SIGCONT)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # left behind, never listed
    assert keys(store, bucket) == []

    srv.start()
    status, entry = call(srv, "GET", f"/api/v1/admin/backup/{started['backup_id']}")
    assert entry["status"] == "failed", entry
    deadline = time.monotonic() + 60
    while client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert time.monotonic() < deadline, "the cut-off upload was never aborted"
        time.sleep(0.1)
    assert keys(store, bucket) == []
    assert "aborted the uploads of backups interrupted by the last shutdown" in srv.log()
