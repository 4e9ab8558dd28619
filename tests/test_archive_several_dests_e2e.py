"""archive_extra_dests with a real server: WAL archived to a local directory and to
an S3 bucket (a SeaweedFS this test kills and brings back); the bucket down delays
only its own copies, the WAL is kept until it catches up, PITR from the bucket;
rusty-db-waldump reads the bucket's archive (--archive-dir s3://..., --repo)."""

from __future__ import annotations

import json
import random
import time

from rustydb_client import client as rc
from tests.support.servers import run_tool
from tests.test_archive_s3_e2e import server_config, wal_objects
from tests.test_pitr_e2e import restored_digest, run_workload


def archived_names(directory) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(".walz")}


def test_a_local_archive_and_a_bucket_one_down_then_back_and_pitr_from_the_bucket(
    server_factory, tmp_path, seaweed_own
):
    store = seaweed_own
    bucket = store.new_bucket()
    remote = f"s3://{bucket}/rustydb"
    local = tmp_path / "archive"
    srv = server_factory(name="primary", extra_args=["--config", server_config(tmp_path, store)]).start()
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{local}';")
    # Turning archiving on probes every destination: a bucket that does not exist is refused.
    srv.sql(f"ALTER SYSTEM SET archive_extra_dests = 's3://no-such-{bucket}/x';")
    refused = srv.cli("--command", "ALTER SYSTEM SET archive_mode = on;")
    assert refused.returncode != 0 and "does not exist" in refused.stderr and "not changed" in refused.stderr
    srv.sql(f"ALTER SYSTEM SET archive_extra_dests = '{remote}';")
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);")
    base = tmp_path / "base.backup"
    run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True)
    conn = rc.connect(port=srv.port)
    history = []
    run_workload(conn, random.Random(5), 15, history, [])
    status = srv.wait_archived()
    assert [d["dest"] for d in status["destinations"]] == [str(local), remote]
    in_bucket = {k.rsplit("/", 1)[1] for k in wal_objects(store, bucket, "rustydb/wal/")}
    assert archived_names(local) == in_bucket and status["last_archived_segment"] + ".walz" in in_bucket

    store.kill()  # the bucket is down: the local archive goes on, the WAL waits for the bucket
    run_workload(conn, random.Random(6), 15, history, [], prefix="down")
    srv.sql("SWITCH WAL;")
    deadline = time.monotonic() + 30
    while True:
        status = srv.archive_status()
        here, there = status["destinations"]
        if here["segments_waiting"] == 0 and there["failures_in_a_row"] and status["segments_waiting"]:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert here["failures_in_a_row"] == 0 and here["last_archived_segment"] > status["last_archived_segment"]
    assert there["segments_waiting"] == status["segments_waiting"]
    assert "cannot be reached" in there["last_failure_reason"]
    health = srv.health()
    assert health["status"] == "degraded", health
    waiting = status["oldest_waiting_segment"]
    assert (tmp_path / "primary" / "wal" / waiting).exists()  # kept until the bucket has it

    store.start()  # back: the bucket catches up, nothing is sent twice to the local archive
    status = srv.wait_archived(timeout=90)
    assert status["failures_in_a_row"] == 0 and all(d["segments_waiting"] == 0 for d in status["destinations"])
    in_bucket = {k.rsplit("/", 1)[1] for k in wal_objects(store, bucket, "rustydb/wal/")}
    assert archived_names(local) == in_bucket
    conn.close()
    srv.stop()

    # The bucket alone (with the base backup) recovers the last transaction.
    out = tmp_path / "restored"
    run_tool(
        "rusty-db-restore",
        "--input",
        str(base),
        "--archive-dir",
        remote,
        "--data-dir",
        str(out),
        "--recovery-target-txid",
        str(history[-1]["txid"]),
        env=store.env(),
        check=True,
    )
    assert restored_digest(str(out)) == history[-1]["digest"]

    # rusty-db-waldump reads the bucket's archive as it reads the directory: the same transactions.
    dumps = {}
    for option, where in [("--archive-dir", str(local)), ("--archive-dir", remote), ("--repo", remote)]:
        proc = run_tool("rusty-db-waldump", option, where, "--json", env=store.env(), check=True)
        doc = json.loads(proc.stdout)
        assert doc["ok"] is True
        dumps[(option, where)] = [(t["txid"], t["lsn"]) for t in doc["transactions"]]
    first = dumps[("--archive-dir", str(local))]
    assert {h["txid"] for h in history} <= {txid for txid, _ in first}
    assert dumps[("--archive-dir", remote)] == first == dumps[("--repo", remote)]
    missing = run_tool("rusty-db-waldump", "--repo", f"s3://no-such-{bucket}/x", "--json", env=store.env())
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
