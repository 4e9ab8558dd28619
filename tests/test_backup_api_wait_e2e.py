"""POST /api/v1/admin/backup with "wait": true, and the guide's automated backup
script telling the truth: real server, real HTTP, the guide's script text with
only paths and ports substituted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from rustydb_server.keys import create_key_file

from .test_archive_setup_e2e import block_archive_dest
from .test_backup_api_e2e import call, fill

needs_curl_jq = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")


def test_wait_answers_with_the_finished_backup(server, tmp_path):
    fill(server, 200)
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    status, done = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "full", "wait": True})
    assert status == 200, done
    assert done["status"] == "completed" and done["completed_at"] and done["size_bytes"] > 0
    assert os.path.exists(done["location"])
    status, entry = call(server, "GET", f"/api/v1/admin/backup/{done['backup_id']}")
    assert entry == {**done, **entry} and entry["status"] == "completed"


def test_wait_answers_a_failed_backup_with_its_reason_and_a_non_2xx_code(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text("archive_check_timeout = '2s'\n")
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    archive = tmp_path / "archive"
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    block_archive_dest(archive)  # archiving fails from now on
    status, body = call(srv, "POST", "/api/v1/admin/backup", {"backup_type": "pitr-base", "wait": True})
    assert status == 500, body
    assert body["error"] == "backup_failed" and "the archive check failed" in body["message"]
    assert body["backup"]["status"] == "failed" and body["backup"]["error"] in body["message"]
    srv.stop()


def guide_script(server, tmp_path, *, wait: bool = False, day: str | None = None) -> str:
    script = open(os.path.join(os.path.dirname(__file__), "guide_backup_script.sh")).read()
    script = (
        script.replace("http://localhost:8080", f"http://127.0.0.1:{server.http_port}")
        .replace('BACKUP_DIR="/backups/rustydb"', f'BACKUP_DIR="{tmp_path}/b"')
        .replace('LOG_FILE="/var/log/rustydb-backup.log"', f'LOG_FILE="{tmp_path}/log"')
        .replace('S3_BUCKET="s3://company-rustydb-backups"', 'S3_BUCKET=""')
        .replace("/tmp/backup_response.json", f"{tmp_path}/resp.json")
    )
    if day is not None:
        script = script.replace("DAY_OF_WEEK=$(date +%u)", f"DAY_OF_WEEK={day}")
    if wait:
        # What docs/backup-and-recovery.md says to type: "wait": true, and "completed" as success.
        script = script.replace('"encryption": true\n', '"encryption": true,\n        "wait": true\n').replace(
            'if [ "$STATUS" = "in_progress" ]; then\n    log "Backup started: $BACKUP_ID"',
            'if [ "$STATUS" = "completed" ]; then\n    log "Backup completed: $BACKUP_ID"',
        )
        assert script.count('"wait": true') == 2 and "Backup completed: $BACKUP_ID" in script
    return script


def run_script(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


@needs_curl_jq
def test_the_guides_script_as_written_fails_when_the_server_refuses_the_backup(server, tmp_path):
    fill(server, 50)
    # any day: the script asks for encryption and the server has no key
    proc = run_script(guide_script(server, tmp_path))
    log = (tmp_path / "log").read_text()
    assert proc.returncode == 1 and "ERROR: Backup failed to start" in log, log
    assert "key" in json.loads((tmp_path / "resp.json").read_text())["message"]
    # a weekday on a new server: the incremental has no full backup to build on, refused at once
    key = tmp_path / "k"
    create_key_file(str(key))
    server.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path}/server-backups';")
    proc = run_script(guide_script(server, tmp_path, day="1"))
    log = (tmp_path / "log").read_text()
    assert proc.returncode == 1 and log.count("ERROR: Backup failed to start") == 2, log
    assert "take a full backup first" in json.loads((tmp_path / "resp.json").read_text())["message"]
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert listing["backups"] == []


@needs_curl_jq
def test_the_guides_script_with_wait_reports_the_outcome(server, tmp_path):
    fill(server, 50)
    key = tmp_path / "k"
    create_key_file(str(key))
    server.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path}/server-backups';")
    proc = run_script(guide_script(server, tmp_path, wait=True, day="7"))
    log = (tmp_path / "log").read_text()
    assert proc.returncode == 0, proc.stderr + log
    answer = json.loads((tmp_path / "resp.json").read_text())
    assert answer["status"] == "completed" and f"Backup completed: {answer['backup_id']}" in log
    assert os.path.exists(answer["location"])
