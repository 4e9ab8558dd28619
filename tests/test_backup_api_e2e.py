"""The backup HTTP API against a real server: the guide's calls, its cron script, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from rustydb_server.backup.manifest import Manifest
from rustydb_server.container.reader import BackupReader
from rustydb_server.keys import KeyFileSource


def call(server, method, path, body=None, token=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_done(server, backup_id, timeout=60, token=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, entry = call(server, "GET", f"/api/v1/admin/backup/{backup_id}", token=token)
        assert status == 200, entry
        if entry["status"] != "in_progress":
            return entry
        time.sleep(0.1)
    raise AssertionError(f"backup {backup_id} still running after {timeout}s")


def fill(server, rows=2000):
    server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, balance REAL);")
    server.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < "
        f"{rows}) INSERT INTO customers SELECT i, 'customer ' || i, i * 1.5 FROM c;"
    )


def test_api_full_backup_happy_path(server, tmp_path):
    fill(server)
    key = tmp_path / "backup.key"
    from rustydb_server.keys import create_key_file

    create_key_file(str(key))
    backup_dir = tmp_path / "backups"
    server.sql(f"ALTER SYSTEM SET backup_dir = '{backup_dir}';")
    server.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    status, started = call(
        server, "POST", "/api/v1/admin/backup", {"backup_type": "full", "compression": True, "encryption": True}
    )
    assert status == 202, started
    assert list(started)[:6] == ["backup_id", "status", "started_at", "completed_at", "size_bytes", "location"]
    assert started["status"] == "in_progress" and started["completed_at"] is None
    assert started["size_bytes"] is None and isinstance(started["started_at"], int)
    done = wait_done(server, started["backup_id"])
    assert done["status"] == "completed", done
    assert done["completed_at"] >= done["started_at"] and done["size_bytes"] > 0
    path = done["location"]
    assert path.startswith(str(backup_dir)) and os.path.getsize(path) == done["size_bytes"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        reader = BackupReader(f, key=KeyFileSource.from_file(str(key)))
        assert reader.header.encrypted and reader.header.compression == "lz4"
        report = reader.verify()
        assert report.encryption_ok and report.checksum_ok
        manifest = Manifest.from_header(reader.header)
    counts = {t.name: t.rows for d in manifest.databases for t in d.tables}
    assert counts["customers"] == 2000
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert status == 200 and [b["backup_id"] for b in listing["backups"]] == [done["backup_id"]]


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"backup_type": "weekly"}).encode(), 422),
        (json.dumps({"backup_type": "full", "colour": "blue"}).encode(), 422),
        (json.dumps({"backup_type": 7}).encode(), 422),
        (json.dumps({"backup_type": "full", "compression": "gzip"}).encode(), 422),
        (json.dumps({"backup_type": "full", "encryption": "yes"}).encode(), 422),
        (json.dumps({"backup_type": "full", "encryption": True}).encode(), 422),  # no key set
        (json.dumps({"backup_type": "full", "databases": ["nope"]}).encode(), 422),
        (json.dumps({"backup_type": "full", "threads": 0}).encode(), 422),
        (b"[" * 50_000, 400),  # nested past the JSON parser's recursion limit
        (b'{"backup_type": "full", "x": "' + b"a" * 200_000 + b'"}', 413),
    ],
)
def test_api_bad_requests_get_4xx_with_a_message(server, raw, code):
    status, body = call(server, "POST", "/api/v1/admin/backup", raw=raw)
    assert status == code, body
    assert body["message"]
    status, body = call(server, "GET", "/api/v1/admin/backup/does-not-exist")
    assert status == 404 and "does-not-exist" in body["message"]
    assert server.health()["status"] == "healthy"


def test_api_token_required_when_configured(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t0ps3cret\n")
    token_file.chmod(0o644)
    server.sql(f"ALTER SYSTEM SET http_api_token_file = '{token_file}';")
    # a token others can read protects nothing: refused until it is 0600
    status, body = call(server, "GET", "/api/v1/admin/backups", token="t0ps3cret")
    assert status == 503 and body["error"] == "config_error" and f"chmod 600 {token_file}" in body["message"]
    token_file.chmod(0o600)
    status, body = call(server, "GET", "/api/v1/admin/backups")
    assert status == 401
    status, body = call(server, "GET", "/api/v1/admin/backups", token="wrong")
    assert status == 401
    status, body = call(server, "GET", "/api/v1/admin/backups", token="t0ps3cret")
    assert status == 200


def test_shutdown_during_backup_marks_it_failed_and_leaves_no_file(server, tmp_path):
    server.sql("CREATE TABLE big(id INTEGER PRIMARY KEY, pad BLOB);")
    server.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 60000) "
        "INSERT INTO big SELECT i, randomblob(3000) FROM c;"
    )
    backup_dir = tmp_path / "backups"
    server.sql(f"ALTER SYSTEM SET backup_dir = '{backup_dir}';")
    status, started = call(
        server, "POST", "/api/v1/admin/backup", {"backup_type": "full", "compression": "zstd", "threads": 1}
    )
    assert status == 202
    time.sleep(0.3)
    assert server.stop() == 0
    server.start()
    status, entry = call(server, "GET", f"/api/v1/admin/backup/{started['backup_id']}")
    if entry["status"] == "completed":
        pytest.skip("the backup finished before the shutdown reached it")
    assert entry["status"] == "failed" and "shut" in entry["error"]
    assert not os.path.exists(entry["location"])
    assert not any(n.endswith(".backup") for n in os.listdir(backup_dir))


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_guides_automated_backup_script_runs_as_written(server, tmp_path):
    fill(server, 100)
    script = open(os.path.join(os.path.dirname(__file__), "guide_backup_script.sh")).read()
    # paths and ports aside, the script is the guide's
    script = (
        script.replace("http://localhost:8080", f"http://127.0.0.1:{server.http_port}")
        .replace('BACKUP_DIR="/backups/rustydb"', f'BACKUP_DIR="{tmp_path}/b"')
        .replace('LOG_FILE="/var/log/rustydb-backup.log"', f'LOG_FILE="{tmp_path}/log"')
        .replace('S3_BUCKET="s3://company-rustydb-backups"', 'S3_BUCKET=""')
        .replace("/tmp/backup_response.json", f"{tmp_path}/resp.json")
        # take Sunday's branch (a full backup) whatever today is
        .replace("DAY_OF_WEEK=$(date +%u)", "DAY_OF_WEEK=7")
    )
    key = tmp_path / "k"
    from rustydb_server.keys import create_key_file

    create_key_file(str(key))
    server.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path}/server-backups';")
    env = dict(os.environ)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    log = (tmp_path / "log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "Backup started:" in log and "Backup process completed" in log
    backup_id = json.loads((tmp_path / "resp.json").read_text())["backup_id"]
    entry = wait_done(server, backup_id)
    assert entry["status"] == "completed" and entry["backup_type"] == "full"


def test_api_chains_incrementals_and_refuses_to_break_them(server, tmp_path):
    fill(server, 100)
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    ids = []
    for kind in ("full", "incremental", "incremental", "differential"):
        server.sql(f"INSERT INTO customers(name, balance) VALUES ('{kind}', 1);")
        status, started = call(server, "POST", "/api/v1/admin/backup", {"backup_type": kind, "compression": True})
        assert status == 202, started
        done = wait_done(server, started["backup_id"])
        assert done["status"] == "completed", done
        ids.append(done["backup_id"])
    full, i1, i2, diff = ids
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    by_id = {b["backup_id"]: b for b in listing["backups"]}
    assert by_id[i1]["parent_id"] == full and by_id[i2]["parent_id"] == i1
    assert by_id[diff]["base_full_id"] == full
    assert set(by_id[full]["dependents"]) == {i1, i2, diff}
    # deleting a backup others depend on is refused, naming them
    status, body = call(server, "DELETE", f"/api/v1/admin/backup/{i1}")
    assert status == 409 and i2 in body["message"]
    status, body = call(server, "DELETE", f"/api/v1/admin/backup/{i2}")
    assert status == 200 and body["deleted"] == [i2]
    assert not os.path.exists(by_id[i2]["location"])
    status, body = call(server, "DELETE", f"/api/v1/admin/backup/{full}?cascade=true")
    assert status == 200 and set(body["deleted"]) == {full, i1, diff}
    assert not any(n.endswith(".backup") for n in os.listdir(tmp_path / "b"))
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert listing["backups"] == []


def test_a_damaged_catalog_does_not_keep_the_server_down(server_factory, tmp_path):
    srv = server_factory(name="cat")
    srv.start()
    srv.stop()
    catalog = tmp_path / "cat" / "backup_catalog.json"
    catalog.write_bytes(b'{"backups": [{"truncated')
    srv.start()
    assert srv.health()["status"] == "healthy"
    status, listing = call(srv, "GET", "/api/v1/admin/backups")
    assert status == 200 and listing["backups"] == []
    kept = [p for p in os.listdir(tmp_path / "cat") if p.startswith("backup_catalog.json.damaged-")]
    assert len(kept) == 1 and "backup catalog damaged" in srv.log()
    srv.stop()


def test_partial_file_of_a_backup_the_server_was_writing_when_killed_is_removed(server_factory, tmp_path):
    """What kill -9 in the middle of an API backup leaves: an in_progress entry
    and its .partial file. The next start fails the entry and removes the file;
    a client's backup file (written by its tool, elsewhere) is not touched."""
    srv = server_factory(name="k")
    srv.start()
    srv.stop()
    catalog = tmp_path / "k" / "backup_catalog.json"
    api_id, client_id = "5f0d9a52-8a4e-4c1e-9f43-5b1d2c3e4f50", "c"
    api_loc, client_loc = tmp_path / f"{api_id}.backup", tmp_path / "client.backup"
    for loc in (api_loc, client_loc):
        (tmp_path / (loc.name + ".partial")).write_bytes(b"half a backup")
    entries = [
        {"backup_id": api_id, "status": "in_progress", "origin": "api", "location": str(api_loc)},
        {"backup_id": client_id, "status": "in_progress", "origin": "client", "location": str(client_loc)},
    ]
    catalog.write_text(json.dumps({"format": 1, "backups": entries}))
    srv.start()
    assert not (tmp_path / f"{api_id}.backup.partial").exists()
    assert (tmp_path / "client.backup.partial").exists()
    for backup_id in (api_id, client_id):
        status, entry = call(srv, "GET", f"/api/v1/admin/backup/{backup_id}")
        assert entry["status"] == "failed" and "interrupted" in entry["error"]
    srv.stop()


def test_scratch_files_left_by_a_crash_are_removed_at_start(server_factory, tmp_path):
    srv = server_factory(name="s")
    srv.start()
    srv.stop()
    scratch = tmp_path / "s" / "backup_tmp"
    (scratch / "wal").mkdir(parents=True, exist_ok=True)
    (scratch / "0b7e-rustydb.sqlite").write_bytes(b"a copy that never finished")
    (scratch / "wal" / "000000010000000000000003").write_bytes(b"x")
    srv.start()
    assert list(scratch.iterdir()) == []
    assert "removed scratch files" in srv.log()
    srv.stop()
