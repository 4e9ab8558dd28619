"""The audit trail against a real server: what its log file holds after the real tools ran.

A server with password logins only (a users file, loopback not trusted);
through rusty-db-cli and rusty-db-backup: a wrong password and an unknown
user, a statement the authorizer refuses, ALTER SYSTEM set, refused and
reset, a restore point, a backup streamed over the wire, then SHUTDOWN. Each
is exactly one ``audit`` event in the server's JSON log, with the user, the
peer and the outcome; the password never appears.
"""

from __future__ import annotations

import json
import secrets

from rustydb_server import audit
from tests.support.servers import ServerProcess, run_tool


def audit_events(log_path: str) -> list[dict]:
    events = []
    with open(log_path, "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "audit":
                events.append(event)
    return events


def test_each_audited_act_is_one_event_with_who_where_and_outcome(tmp_path):
    password = "pw-" + secrets.token_hex(12)
    made = run_tool("rusty-db-server", "--make-user", "alice", input=password + "\n", check=True)
    users = tmp_path / "users.toml"
    users.write_text(made.stdout)
    conf = tmp_path / "rustydb.toml"
    conf.write_text(f"auth_trust_loopback = false\nauth_users_file = '{users}'\nlog_format = 'json'\n")
    server = ServerProcess(str(tmp_path / "data"), extra_args=["--config", str(conf)])
    alice = {"RUSTYDB_USER": "alice", "RUSTYDB_PASSWORD": password}

    def cli(sql: str, env=alice):
        return run_tool("rusty-db-cli", "--port", str(server.port), "--command", sql, env=env)

    with server:
        assert cli("SELECT 1", env={"RUSTYDB_USER": "alice", "RUSTYDB_PASSWORD": "wrong"}).returncode != 0
        assert cli("SELECT 1", env={"RUSTYDB_USER": "mallory", "RUSTYDB_PASSWORD": "guess"}).returncode != 0
        assert cli(f"ATTACH '{tmp_path / 'x.db'}' AS x").returncode == 1
        assert cli("ALTER SYSTEM SET checkpoint_timeout = '10min'").returncode == 0
        assert cli("ALTER SYSTEM SET no_such_setting = 1").returncode == 1
        assert cli("ALTER SYSTEM RESET checkpoint_timeout").returncode == 0
        assert cli("CREATE RESTORE POINT 'before_upgrade'").returncode == 0
        backup = run_tool(
            "rusty-db-backup",
            "--type",
            "full",
            "--output",
            str(tmp_path / "full.backup"),
            "--port",
            str(server.port),
            env=alice,
        )
        assert backup.returncode == 0, backup.stderr
        assert cli("SHUTDOWN").returncode == 0
        assert server.wait_exit(30) == 0

    events = audit_events(server.log_path)
    summary = [(e["action"], e["outcome"], e["user"]) for e in events]
    assert summary == [
        ("authenticate", "failed", "alice"),
        ("authenticate", "failed", "mallory"),
        ("sql", "denied", "alice"),
        ("alter_system", "ok", "alice"),
        ("alter_system", "failed", "alice"),
        ("alter_system", "ok", "alice"),
        ("restore_point", "ok", "alice"),
        ("backup", "ok", "alice"),
        ("shutdown", "ok", "alice"),
    ]
    for e in events:
        assert e["action"] in audit.ACTIONS and e["logger"] == "rustydb.audit"
        assert e["peer"].startswith("127.0.0.1:"), e
        assert e["level"] == ("info" if e["outcome"] == "ok" else "warning")
    by_action = {(e["action"], e["outcome"]): e for e in events}
    assert by_action[("sql", "denied")]["refused"] == "SQLITE_ATTACH"
    assert by_action[("sql", "denied")]["target"] == str(tmp_path / "x.db")
    assert by_action[("alter_system", "ok")]["setting"] == "checkpoint_timeout"
    set_event = events[3]
    assert set_event["value"] == "600s" and set_event["statement"] == "ALTER SYSTEM SET"
    assert events[5]["statement"] == "ALTER SYSTEM RESET"
    refused = by_action[("alter_system", "failed")]
    assert refused["setting"] == "no_such_setting" and "value" not in refused and refused["error"]
    assert by_action[("restore_point", "ok")]["name"] == "before_upgrade"
    assert by_action[("backup", "ok")]["via"] == "wire" and by_action[("backup", "ok")]["backup_type"] == "full"
    assert by_action[("shutdown", "ok")]["mode"] == "graceful"
    with open(server.log_path, "rb") as f:
        assert password.encode() not in f.read()
