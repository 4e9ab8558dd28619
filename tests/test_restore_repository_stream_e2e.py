"""rusty-db-restore --repo s3://... of a chain: the full backup streamed from the
bucket while the incremental is fetched in the background (a real SeaweedFS). An
incremental missing from the bucket fails the restore with the repository's
error, after the full backup was restored into staging: nothing is left in
--data-dir's place, nor a working directory beside it."""

from __future__ import annotations

import json
import os

from tests.support.servers import ServerProcess, run_tool
from tests.test_backup_repositories_e2e import add_rows, backup, count, wait_copied
from tests.test_backup_repositories_s3_e2e import s3_server


def test_a_chain_streams_from_the_bucket_and_a_missing_incremental_fails_cleanly(
    server_factory, seaweed, s3_bucket, tmp_path
):
    srv = s3_server(server_factory, seaweed)
    remote = f"s3://{s3_bucket}/rustydb"
    add_rows(srv, 1, 300)
    srv.sql(f"ALTER SYSTEM SET backup_repositories = '{remote}';")
    full = backup(srv)
    add_rows(srv, 301, 450)
    incr = backup(srv, "incremental")
    # Each member is streamed into the bucket, or copied there later if its stream
    # was given up: the incremental may be listed before the full.
    wait_copied(srv, full["backup_id"], [remote])
    wait_copied(srv, incr["backup_id"], [remote])
    srv.stop()

    target = tmp_path / "new-machine" / "data"
    done = run_tool(
        "rusty-db-restore",
        "--repo",
        remote,
        "--backup",
        incr["backup_id"],
        "--data-dir",
        str(target),
        "--json",
        env=seaweed.env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chain"] == [full["backup_id"], incr["backup_id"]]
    with ServerProcess(str(target)).start() as copy:
        assert count(copy.port) == 450

    key = f"rustydb/backups/{incr['backup_id']}/{incr['backup_id']}.backup"
    seaweed.client().delete_object(Bucket=s3_bucket, Key=key)
    other = tmp_path / "second" / "data"
    failed = run_tool(
        "rusty-db-restore",
        "--repo",
        remote,
        "--backup",
        incr["backup_id"],
        "--data-dir",
        str(other),
        env=seaweed.env(),
    )
    assert failed.returncode == 1
    chain = f"{full['backup_id']}, {incr['backup_id']}"
    assert failed.stderr.startswith(f"rusty-db-restore: error: restore of {remote} ({chain}) into {other} failed: ")
    assert f"no object backups/{incr['backup_id']}/{incr['backup_id']}.backup" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not other.exists()
    assert os.listdir(other.parent) == []  # no staging or working directory left beside it
