"""backup_repositories against real servers and the real tools: every backup written
to the first repository and copied to the others in the background, each with its
own catalog; a repository that is down; restore from one repository alone."""

from __future__ import annotations

import json
import os
import time

import apsw

from rustydb_client import client as rc
from rustydb_server.backup.catalog import load_entries
from rustydb_server.schedule.checks import verify_copies
from tests.support.servers import ServerProcess, run_tool
from tests.test_backup_api_e2e import call
from tests.test_metrics_e2e import scrape


def backup(server, kind="full"):
    status, done = call(server, "POST", "/api/v1/admin/backup", {"backup_type": kind, "wait": True})
    assert status == 200, done
    return done


def wait_copied(server, backup_id, urls, timeout=60):
    """The backup's per-repository states once every one of ``urls`` is copied."""
    deadline = time.monotonic() + timeout
    while True:
        status, listing = call(server, "GET", "/api/v1/admin/backups")
        assert status == 200, listing
        entry = next(e for e in listing["backups"] if e["backup_id"] == backup_id)
        states = entry["repositories"] or {}
        if all(states.get(u, {}).get("state") == "copied" for u in urls):
            return states, listing
        assert time.monotonic() < deadline, f"not copied to {urls} after {timeout}s: {states}"
        time.sleep(0.1)


def index_ids(repo) -> list[str]:
    with open(os.path.join(repo, "catalog", "index.json")) as f:
        return [e["backup_id"] for e in json.load(f)["backups"]]


def count(port, table="t"):
    with rc.connect(port=port) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").rows[0][0]


def add_rows(server, start, stop):
    server.sql(
        f"WITH RECURSIVE c(i) AS (SELECT {start} UNION ALL SELECT i+1 FROM c WHERE i < {stop}) "
        "INSERT INTO t SELECT i, 'row ' || i FROM c;"
    )


def test_two_local_repositories_copy_and_restore_from_the_second_alone(server, tmp_path):
    repo1, repo2 = str(tmp_path / "repo1"), str(tmp_path / "repo2")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    add_rows(server, 1, 500)
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo1}, {repo2}';")
    full = backup(server)
    # Written into the first repository itself, then copied to the second.
    assert full["location"] == os.path.join(repo1, "backups", full["backup_id"], f"{full['backup_id']}.backup")
    states, listing = wait_copied(server, full["backup_id"], [repo1, repo2])
    assert states[repo2]["error"] is None
    assert listing["repositories"][repo2]["copied"] == 1 and listing["repositories"][repo2]["failing"] is None
    for repo in (repo1, repo2):
        assert index_ids(repo) == [full["backup_id"]]
        with open(os.path.join(repo, "catalog", f"{full['backup_id']}.json")) as f:
            assert json.load(f)["key"] == f"backups/{full['backup_id']}/{full['backup_id']}.backup"

    # An incremental taken by the CLI into the first repository: recorded there, copied to the second.
    add_rows(server, 501, 800)
    took = run_tool(
        "rusty-db-backup", "--type", "incremental", "--repo", repo1, "--port", str(server.port), "--json", check=True
    )
    incr = json.loads(took.stdout)
    assert incr["output"] == os.path.join(repo1, "backups", incr["backup_id"], f"{incr['backup_id']}.backup")
    assert incr["recorded_by_server"] is True
    wait_copied(server, incr["backup_id"], [repo1, repo2])
    assert index_ids(repo2) == [full["backup_id"], incr["backup_id"]]

    listed = run_tool("rusty-db-backup", "--repo", repo2, "--list", "--json", check=True)
    assert [b["backup_id"] for b in json.loads(listed.stdout)["backups"]] == [full["backup_id"], incr["backup_id"]]
    text = run_tool("rusty-db-backup", "--repo", repo2, "--list", check=True).stdout
    assert f"{incr['backup_id']}  incremental" in text and f"on {full['backup_id']}" in text

    # --info and --verify against the second repository, by id and as latest.
    info = json.loads(run_tool("rusty-db-backup", "--repo", repo2, "--info", "latest", "--json", check=True).stdout)
    assert info["backup_id"] == incr["backup_id"] and info["parent_id"] == full["backup_id"]
    verified = run_tool("rusty-db-backup", "--repo", repo2, "--verify", full["backup_id"][:8], "--json", check=True)
    assert json.loads(verified.stdout)["valid"] is True

    # A new machine: nothing but the second repository.
    fresh = str(tmp_path / "fresh" / "data")
    restored = run_tool("rusty-db-restore", "--repo", repo2, "--data-dir", fresh, "--json", check=True)
    assert json.loads(restored.stdout)["chain"] == [full["backup_id"], incr["backup_id"]]
    assert not [n for n in os.listdir(os.path.dirname(fresh)) if n.startswith(".rustydb-repository-restore-")]
    with ServerProcess(fresh).start() as copy:
        assert count(copy.port) == 800
    # A recovery target needs archived WAL, which this repository does not hold.
    no_wal = run_tool(
        "rusty-db-restore", "--repo", repo2, "--data-dir", str(tmp_path / "x"), "--recovery-target-time", "2030-01-01"
    )
    assert no_wal.returncode == 1 and "holds no archived WAL" in no_wal.stderr
    assert not os.path.exists(tmp_path / "x")
    # An earlier backup, by a prefix of its id.
    older = str(tmp_path / "older")
    run_tool("rusty-db-restore", "--repo", repo2, "--backup", full["backup_id"][:13], "--data-dir", older, check=True)
    db = apsw.Connection(os.path.join(older, "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(500,)]
    finally:
        db.close()


def test_a_repository_that_is_down_delays_only_its_copy_and_catches_up_after_a_restart(server, tmp_path):
    repo1 = str(tmp_path / "repo1")
    blocker = tmp_path / "offsite"
    blocker.write_text("not a directory: the second repository cannot be written")
    repo2 = str(blocker / "repo")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    add_rows(server, 1, 300)
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo1}, {repo2}';")
    full = backup(server)  # succeeds whatever the second repository does
    assert full["status"] == "completed"
    states, _ = wait_copied(server, full["backup_id"], [repo1])
    deadline = time.monotonic() + 30
    while states[repo2]["state"] != "failing":
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
        states, _ = wait_copied(server, full["backup_id"], [repo1])
    assert repo2 in states[repo2]["error"] and states[repo2]["attempts"] >= 1
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert listing["repositories"][repo2]["pending"] == 1 and listing["repositories"][repo2]["failing"]
    m = scrape(server)
    assert m[("rustydb_repository_failing", (("repository", repo2),))] == 1
    assert m[("rustydb_repository_backups", (("repository", repo2), ("state", "pending")))] == 1

    # The server stops with the copy still due; the repository is back by its next start.
    server.stop()
    blocker.unlink()
    server.start()
    wait_copied(server, full["backup_id"], [repo1, repo2])
    assert index_ids(repo2) == [full["backup_id"]]
    m = scrape(server)
    assert m[("rustydb_repository_failing", (("repository", repo2),))] == 0
    assert m[("rustydb_repository_backups", (("repository", repo2), ("state", "copied")))] == 1
    assert m[("rustydb_repository_bytes_copied_total", (("repository", repo2),))] == os.path.getsize(full["location"])
    assert ("rustydb_filesystem_free_bytes", (("path", repo2), ("role", "backup_repository"))) in m
    leftovers = [n for _, _, files in os.walk(repo2) for n in files if ".part-" in n]
    assert leftovers == []

    fresh = str(tmp_path / "fresh")
    run_tool("rusty-db-restore", "--repo", repo2, "--data-dir", fresh, check=True)
    with ServerProcess(fresh).start() as copy:
        assert count(copy.port) == 300

    # The scheduled verify reads every copy: sound ones pass; a damaged copy is named.
    entry = next(e for e in load_entries(server.data_dir) if e["backup_id"] == full["backup_id"])
    assert verify_copies(entry, None, None) == []
    copy_path = os.path.join(repo2, "backups", full["backup_id"], f"{full['backup_id']}.backup")
    with open(copy_path, "r+b") as f:
        f.seek(os.path.getsize(copy_path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    (reason,) = verify_copies(entry, None, None)
    assert reason.startswith(f"the copy in {repo2} is damaged"), reason


def test_point_in_time_and_latest_point_from_a_repository_alone(server, tmp_path):
    import datetime as dt

    repo = str(tmp_path / "repo")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    server.sql("ALTER SYSTEM SET archive_mode = on;")
    server.sql(f"ALTER SYSTEM SET archive_dest = '{os.path.join(repo, 'wal')}';")
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo}';")
    add_rows(server, 1, 100)
    base = backup(server, "pitr-base")
    wait_copied(server, base["backup_id"], [repo])
    add_rows(server, 101, 200)
    time.sleep(0.2)
    target = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.2)
    add_rows(server, 201, 300)
    server.wait_archived()

    at_target = str(tmp_path / "at-target")
    out = run_tool(
        "rusty-db-restore", "--repo", repo, "--data-dir", at_target, "--recovery-target-time", target, "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backup_id"] == base["backup_id"]
    latest = str(tmp_path / "latest")
    run_tool("rusty-db-restore", "--repo", repo, "--data-dir", latest, check=True)
    with ServerProcess(at_target).start() as a, ServerProcess(latest).start() as b:
        assert count(a.port) == 200
        assert count(b.port) == 300

    # The same point queried without a restore: the backup and the WAL both from the repository alone.
    sql = "SELECT count(*), max(id) FROM t"
    q = run_tool(
        "rusty-db-backup", "--query", "latest", sql, "--repo", repo, "--recovery-target-time", target, "--json"
    )
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout)["rows"] == [[200, 200]]
    now = run_tool("rusty-db-backup", "--query", base["backup_id"][:10], sql, "--repo", repo, "--json", check=True)
    assert json.loads(now.stdout)["rows"] == [[100, 100]]  # the backup itself, as taken
    missing = run_tool("rusty-db-backup", "--query", "nosuchid", sql, "--repo", repo)
    assert missing.returncode == 1 and f"of repository {repo}" in missing.stderr


def test_encrypted_table_restore_from_a_repository(server, tmp_path):
    from rustydb_server.keys import create_key_file

    key = str(tmp_path / "backup.key")
    create_key_file(key)
    repo = str(tmp_path / "repo")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    server.sql("CREATE TABLE other(id INTEGER PRIMARY KEY);")
    add_rows(server, 1, 250)
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo}';")
    server.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")

    def encrypted(kind):
        status, done = call(
            server, "POST", "/api/v1/admin/backup", {"backup_type": kind, "encryption": True, "wait": True}
        )
        assert status == 200, done
        wait_copied(server, done["backup_id"], [repo])
        return done

    full = encrypted("full")
    add_rows(server, 251, 400)
    incr = encrypted("incremental")
    out = str(tmp_path / "table")
    no_key = run_tool("rusty-db-restore", "--repo", repo, "--table", "t", "--data-dir", out)
    assert no_key.returncode == 1 and "key" in no_key.stderr and not os.path.exists(out)
    no_key = run_tool("rusty-db-backup", "--repo", repo, "--verify", "latest")
    assert no_key.returncode == 1 and "key" in no_key.stderr
    run_tool("rusty-db-backup", "--repo", repo, "--verify", "latest", "--key-file", key, check=True)
    done = run_tool(
        "rusty-db-restore", "--repo", repo, "--table", "t", "--data-dir", out, "--key-file", key, "--json", check=True
    )
    summary = json.loads(done.stdout)
    assert summary["rows"] == 400 and summary["backup_id"] == full["backup_id"]
    # Read in place from the repository (by ranges), not from downloaded copies.
    assert summary["chain"] == [f"{repo}/backups/{b}/{b}.backup" for b in (full["backup_id"], incr["backup_id"])]


def test_deleting_a_backup_removes_it_from_every_repository(server, tmp_path):
    repo1, repo2 = str(tmp_path / "repo1"), str(tmp_path / "repo2")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    add_rows(server, 1, 10)
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo1}, {repo2}';")
    first, second = backup(server), backup(server)
    wait_copied(server, second["backup_id"], [repo1, repo2])
    wait_copied(server, first["backup_id"], [repo1, repo2])
    status, body = call(server, "DELETE", f"/api/v1/admin/backup/{first['backup_id']}")
    assert status == 200 and body == {"deleted": [first["backup_id"]]}, body
    for repo in (repo1, repo2):
        assert index_ids(repo) == [second["backup_id"]]
        assert not os.path.exists(os.path.join(repo, "backups", first["backup_id"], f"{first['backup_id']}.backup"))
        assert not os.path.exists(os.path.join(repo, "catalog", f"{first['backup_id']}.json"))

    # rusty-db-backup --repo N: the server's N-th repository, copied to the others.
    took = run_tool("rusty-db-backup", "--type", "full", "--repo", "repo2", "--port", str(server.port), "--json")
    assert took.returncode == 0, took.stderr
    third = json.loads(took.stdout)
    assert third["output"].startswith(os.path.join(repo2, "backups", third["backup_id"]))
    wait_copied(server, third["backup_id"], [repo1, repo2])
    assert sorted(index_ids(repo1)) == sorted([second["backup_id"], third["backup_id"]])
    three = run_tool("rusty-db-backup", "--type", "full", "--repo", "3", "--port", str(server.port))
    assert three.returncode == 1 and "no backup repository '3' in backup_repositories (on the server)" in three.stderr


def test_expire_removes_the_copies_from_every_repository(server, tmp_path):
    repo1, repo2 = str(tmp_path / "repo1"), str(tmp_path / "repo2")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo1}, {repo2}';")
    server.sql("ALTER SYSTEM SET backup_retention_full_count = 1;")
    server.sql("ALTER SYSTEM SET backup_retention_days = 0;")
    old, new = backup(server), backup(server)
    for b in (old, new):
        wait_copied(server, b["backup_id"], [repo1, repo2])
    server.stop()
    assert sorted(index_ids(repo1)) == sorted(index_ids(repo2)) == sorted([old["backup_id"], new["backup_id"]])
    out = run_tool("rusty-db-backup", "--expire", "--data-dir", server.data_dir, "--json", check=True)
    report = json.loads(out.stdout)
    assert report["repository_errors"] == []
    [gone] = [b["backup_id"] for b in report["backups"]]
    [kept] = {old["backup_id"], new["backup_id"]} - {gone}
    for repo in (repo1, repo2):
        assert index_ids(repo) == [kept]
        assert not os.path.exists(os.path.join(repo, "backups", gone, f"{gone}.backup"))
        assert not os.path.exists(os.path.join(repo, "catalog", f"{gone}.json"))


def test_a_first_repository_that_is_down_gets_the_backup_once_it_is_back(server, tmp_path):
    blocker = tmp_path / "mnt"
    blocker.write_text("an unmounted disk: the first repository cannot be written")
    repo1, repo2 = str(blocker / "repo"), str(tmp_path / "repo2")
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    add_rows(server, 1, 20)
    server.sql(f"ALTER SYSTEM SET backup_repositories = '{repo1}, {repo2}';")
    full = backup(server)  # written to backup_dir instead
    assert full["location"] == os.path.join(server.data_dir, "backups", f"{full['backup_id']}.backup")
    wait_copied(server, full["backup_id"], [repo2])
    blocker.unlink()
    backup(server)  # the next backup makes every repository try again at once
    wait_copied(server, full["backup_id"], [repo1, repo2])
    assert full["backup_id"] in index_ids(repo1)
