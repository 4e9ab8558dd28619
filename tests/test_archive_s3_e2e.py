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

    # --dry-run plans it from the bucket: every segment read and verified, nothing written
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--repo",
        f"s3://{s3_bucket}/rustydb",
        "--data-dir",
        str(tmp_path / "never"),
        "--recovery-target-txid",
        str(history[k2]["txid"]),
        "--dry-run",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "never").exists()

    # --list-wal reads the bucket too
    proc = run_tool("rusty-db-restore", "--list-wal", "--repo", f"s3://{s3_bucket}/rustydb", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = {t["txid"] for t in json.loads(proc.stdout)["transactions"] if "txid" in t}
    assert {h["txid"] for h in history} <= listed


def test_restored_server_continues_on_a_new_timeline_in_the_bucket(server_factory, tmp_path, seaweed, s3_bucket):
    """The restored server archives timeline 2 (segments and history file) into
    the same bucket, never over timeline 1's; a second PITR follows the history
    from the bucket into timeline 2."""
    conf = server_config(tmp_path, seaweed)
    srv = server_factory(name="primary", extra_args=["--config", conf]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/rustydb';")
    srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);")
    base = tmp_path / "base.backup"
    assert (
        run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port)).returncode
        == 0
    )
    conn = rc.connect(port=srv.port)
    history = []
    run_workload(conn, random.Random(3), 30, history, [])
    srv.wait_archived()
    conn.close()
    srv.stop()
    tl1 = set(wal_objects(seaweed, s3_bucket, "rustydb/wal/"))
    env = seaweed.env()
    k = len(history) // 2
    out = tmp_path / "tl2"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--repo",
        f"s3://{s3_bucket}/rustydb",
        "--data-dir",
        str(out),
        "--recovery-target-txid",
        str(history[k]["txid"]),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    srv2 = server_factory(name="tl2", extra_args=["--config", conf])
    srv2.data_dir = str(out)
    srv2.start()
    assert srv2.health()["wal"]["timeline"] == 2
    srv2.sql("ALTER SYSTEM SET archive_mode = on;")
    srv2.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/rustydb';")
    c2 = rc.connect(port=srv2.port)
    history2 = list(history[: k + 1])
    run_workload(c2, random.Random(4), 10, history2, [], prefix="tl2-")
    srv2.wait_archived()
    c2.close()
    srv2.stop()
    names = {key.rsplit("/", 1)[1] for key in wal_objects(seaweed, s3_bucket, "rustydb/wal/")}
    assert "00000002.history" in names and any(n.startswith("00000002") and n.endswith(".walz") for n in names)
    assert tl1 <= {f"rustydb/wal/{n}" for n in names}
    target = history2[-2]
    out3 = tmp_path / "tl3"
    proc = run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--repo",
        f"s3://{s3_bucket}/rustydb",
        "--data-dir",
        str(out3),
        "--recovery-target-txid",
        str(target["txid"]),
        "--recovery-target-timeline",
        "latest",
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out3)) == target["digest"]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["timeline"] >= 3


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


def test_expire_removes_old_wal_from_the_bucket(server_factory, tmp_path, seaweed, s3_bucket, monkeypatch):
    from tests.test_backup_expire_e2e import take

    conf = server_config(tmp_path, seaweed)
    monkeypatch.setenv("RUSTYDB_CONFIG", conf)  # the tool reaches the store with the server's settings
    srv = server_factory(name="data", extra_args=["--config", conf]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/rustydb';")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, body TEXT);")
    backups = tmp_path / "backups"
    backups.mkdir()
    for name in ("F1", "F2"):
        srv.sql(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 40) "
            "INSERT INTO items(body) SELECT hex(randomblob(2000)) FROM n;"
        )
        srv.wait_archived()
        take(srv, backups / f"{name}.backup", "full")
    srv.sql("INSERT INTO items(body) VALUES ('after');")
    srv.wait_archived()
    srv.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    srv.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")
    assert srv.stop() == 0
    before = wal_objects(seaweed, s3_bucket, "rustydb/wal/")
    proc = run_tool("rusty-db-backup", "--expire", "--data-dir", srv.data_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    gone = {s["path"].rsplit("/", 1)[1] for s in doc["segments"]}
    assert gone and all(s["removed"] for s in doc["segments"])
    after = wal_objects(seaweed, s3_bucket, "rustydb/wal/")
    assert {k.rsplit("/", 1)[1] for k in set(before) - set(after)} == gone
    assert doc["archive_dir"] == f"s3://{s3_bucket}/rustydb/wal"


def test_repo_and_archive_dir_are_one_or_the_other(tmp_path):
    proc = run_tool("rusty-db-restore", "--list-wal", "--repo", "s3://b/p", "--archive-dir", str(tmp_path))
    assert proc.returncode == 2 and "give --repo or --archive-dir, not both" in proc.stderr


def test_incremental_reads_wal_from_the_bucket(server_factory, tmp_path, seaweed, s3_bucket):
    """After a restart and a checkpoint that removed archived segments, an
    incremental backup reads the WAL since its parent from the bucket."""
    from tests.test_incremental_e2e import backup, dump, restore_in_order
    from tests.test_incremental_wal_seams_e2e import archive_and_trim, incremental_sources, write_spanning

    srv = server_factory(name="incr", extra_args=["--config", server_config(tmp_path, seaweed)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = 's3://{s3_bucket}/rustydb';")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    srv.stop()
    srv.start()  # the change tracker knows nothing now: the incremental reads WAL
    c = rc.connect(port=srv.port)
    write_spanning(c, 30, 6000, "a")
    first_local = archive_and_trim(srv)
    archived = [k.rsplit("/", 1)[1].removesuffix(".walz") for k in wal_objects(seaweed, s3_bucket, "rustydb/wal/")]
    assert archived and archived[0] < first_local  # the WAL since the full starts in the bucket only
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    assert incremental_sources(srv)[-1] == "wal"
    expected = dump(c)
    c.close()
    restore_in_order(tmp_path / "restored", full, incr)
    assert dump(str(tmp_path / "restored")) == expected


def test_restore_reaches_the_store_with_the_config_files_settings(tmp_path, seaweed, s3_bucket):
    """No AWS environment: endpoint, path style and credentials come from $RUSTYDB_CONFIG's repository_s3_* lines."""
    bare = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    bare["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    bare["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    conf = server_config(tmp_path, seaweed)
    proc = run_tool(
        "rusty-db-restore", "--list-wal", "--repo", f"s3://{s3_bucket}/rustydb", env=dict(bare, RUSTYDB_CONFIG=conf)
    )
    assert proc.returncode == 0, proc.stderr
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(
        open(conf).read().replace(seaweed.credentials_path, seaweed.credentials_file(str(tmp_path), secret="nope"))
    )
    proc = run_tool(
        "rusty-db-restore",
        "--list-wal",
        "--repo",
        f"s3://{s3_bucket}/rustydb",
        env=dict(bare, RUSTYDB_CONFIG=str(wrong)),
    )
    assert proc.returncode == 1 and "access denied" in proc.stderr, proc.stderr
