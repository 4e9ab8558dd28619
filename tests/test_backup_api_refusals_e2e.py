"""The HTTP API refuses at once what the CLI refuses at once, and what it accepts can succeed.

Both request paths run one check (BackupService.check_request) before anything
is recorded: an incremental or differential needs a full backup of this server
on its timeline and the WAL since it; a backup_dir the server cannot use is
refused too. Real servers, real HTTP, the guide's request bodies.
"""

from __future__ import annotations

import json

from tests.support.servers import run_tool

from .test_backup_api_e2e import call, fill, wait_done


def backups(server) -> list[dict]:
    status, listing = call(server, "GET", "/api/v1/admin/backups")
    assert status == 200, listing
    return listing["backups"]


def guide_body(kind: str) -> dict:
    """The guide's request bodies (its incremental asks for compression; its differential for nothing)."""
    return {"incremental": {"backup_type": "incremental", "compression": True}}.get(kind, {"backup_type": kind})


def test_incremental_and_differential_without_a_full_backup_are_refused_at_once(server, tmp_path):
    fill(server, 50)
    server.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    for kind in ("incremental", "differential"):
        status, body = call(server, "POST", "/api/v1/admin/backup", guide_body(kind))
        assert status == 422, body
        assert body["error"] == "invalid_backup_request"
        assert "needs an earlier full backup of this server; take a full backup first" in body["message"]
        # the CLI says the same, at once
        proc = run_tool(
            "rusty-db-backup", "--type", kind, "--output", str(tmp_path / f"{kind}.backup"), "--port", str(server.port)
        )
        assert proc.returncode == 1 and body["message"] in proc.stderr, proc.stderr
    assert backups(server) == []  # no id was handed out, nothing was recorded
    # once there is a full backup, what is answered 202 completes
    for kind in ("full", "incremental", "differential"):
        status, started = call(server, "POST", "/api/v1/admin/backup", guide_body(kind))
        assert status == 202, started
        assert wait_done(server, started["backup_id"])["status"] == "completed"
    assert [b["status"] for b in backups(server)] == ["completed"] * 3


def test_an_incremental_across_a_timeline_switch_is_refused_at_once(server_factory, tmp_path):
    primary = server_factory(name="primary").start()
    fill(primary, 50)
    full = tmp_path / "full.backup"
    run_tool("rusty-db-backup", "--type", "full", "--output", str(full), "--port", str(primary.port), check=True)
    primary.stop()
    restored_dir = tmp_path / "restored"
    run_tool("rusty-db-restore", "--input", str(full), "--data-dir", str(restored_dir), check=True)
    restored = server_factory(name="restored").start()
    assert json.loads(restored.sql("SHOW timeline;", "--json").stdout.splitlines()[-1])["rows"] == [["2"]]
    restored.sql("INSERT INTO customers(name, balance) VALUES ('after the restore', 1);")
    restored.sql(f"ALTER SYSTEM SET backup_dir = '{tmp_path / 'b'}';")
    before = backups(restored)
    for kind in ("incremental", "differential"):
        status, body = call(restored, "POST", "/api/v1/admin/backup", guide_body(kind))
        assert status == 422, body
        assert "the server is on timeline 2 but the base backup was taken on timeline 1" in body["message"]
        proc = run_tool(
            "rusty-db-backup",
            "--type",
            kind,
            "--output",
            str(tmp_path / f"{kind}.backup"),
            "--port",
            str(restored.port),
        )
        assert proc.returncode == 1 and body["message"] in proc.stderr, proc.stderr
    assert backups(restored) == before
    status, started = call(restored, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
    assert status == 202 and wait_done(restored, started["backup_id"])["status"] == "completed"
    status, started = call(restored, "POST", "/api/v1/admin/backup", guide_body("incremental"))
    assert status == 202 and wait_done(restored, started["backup_id"])["status"] == "completed"


def test_a_backup_dir_the_server_cannot_use_is_refused_at_once(server, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    server.sql(f"ALTER SYSTEM SET backup_dir = '{blocker}';")
    status, body = call(server, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
    assert status == 422, body
    assert body["message"].startswith(f"cannot use backup_dir {blocker}:")
    assert "set backup_dir to a directory the server can write" in body["message"]
    assert backups(server) == []
    assert server.health()["status"] == "healthy"
