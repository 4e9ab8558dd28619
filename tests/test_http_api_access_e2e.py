"""Who may use the admin HTTP API, against real servers with real curl.

Without a token file, the guide's curl lines work as written from loopback.
A browser cannot drive the API: a POST a page could send anywhere (text/plain,
a form) is refused with 415, a foreign Origin or a Host name the API does not
answer to with 403, a CORS preflight is never answered, and no answer
carries an Access-Control header; none of them starts a backup. With a token
file (mode 0600), health tells only status and version without the token and
everything with it, every other route needs it from loopback too unless
http_api_trust_loopback is on; a token file others can read stops the server
at start. Every refusal of a token or a trust is an audit event in the log.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.servers import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

JSON = "Content-Type: application/json"


def curl(server: ServerProcess, *args: str, path: str = "/api/v1/admin/backups") -> tuple[int, dict, str]:
    """(status, body, response headers) of one curl run."""
    proc = subprocess.run(
        ["curl", "-s", "-D", "-", *args, f"http://127.0.0.1:{server.http_port}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body.strip() else {}, head


def configured(server_factory, tmp_path, **settings) -> ServerProcess:
    """A server started with a config file holding ``settings``."""
    conf = tmp_path / "rustydb.toml"
    conf.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in settings.items()))
    return server_factory(extra_args=["--config", str(conf)])


def backups(server: ServerProcess) -> list:
    status, body, _ = curl(server)
    assert status == 200, body
    return body["backups"]


def audit_events(server: ServerProcess) -> list[dict]:
    with open(server.log_path, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "audit":
            events.append(event)
    return events


def test_the_guides_calls_work_on_loopback_without_a_token(server):
    status, body, _ = curl(
        server,
        "-X",
        "POST",
        "-H",
        JSON,
        "-d",
        '{"backup_type": "full", "compression": true}',
        path="/api/v1/admin/backup",
    )
    assert status == 202, body
    status, health, _ = curl(server, path="/api/v1/admin/health")
    assert status == 200 and health["status"] == "healthy"
    assert health["data_directory"]["path"] == server.data_dir  # a trusted client sees everything
    assert "wal" in health


@pytest.mark.parametrize(
    "args,status,code",
    [
        # what any web page may send anywhere without a preflight
        (("-H", "Content-Type: text/plain", "-d", '{"backup_type": "full"}'), 415, "unsupported_media_type"),
        (("-d", "backup_type=full"), 415, "unsupported_media_type"),
        (("-F", "backup_type=full"), 415, "unsupported_media_type"),
        # a page on another site, with the JSON header (it would need a preflight, but refuse anyway)
        (("-H", JSON, "-H", "Origin: https://evil.example", "-d", "{}"), 403, "origin_not_allowed"),
        (("-H", "Content-Type: text/plain", "-H", "Origin: https://evil.example", "-d", "{}"), 403, None),
        (("-H", JSON, "-H", "Origin: null", "-d", "{}"), 403, "origin_not_allowed"),
        # DNS rebinding: a name the attacker controls, pointed at 127.0.0.1
        (("-H", JSON, "-H", "Host: rebind.evil.example:8080", "-d", "{}"), 403, "host_not_allowed"),
    ],
)
def test_a_browser_cannot_start_a_backup(server, args, status, code):
    got, body, head = curl(server, "-X", "POST", *args, path="/api/v1/admin/backup")
    assert got == status, body
    assert code is None or body["error"] == code
    assert body["message"]
    assert "access-control" not in head.lower()
    assert backups(server) == []


def test_no_cors_preflight_is_answered(server):
    for path in ("/api/v1/admin/backup", "/api/v1/admin/backups", "/api/v1/admin/health"):
        status, _body, head = curl(
            server,
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://evil.example",
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: content-type",
            path=path,
        )
        assert status >= 400, (path, status)
        assert "access-control" not in head.lower(), head


def test_a_delete_from_a_script_needs_no_content_type_but_a_form_is_refused(server):
    status, _, _ = curl(server, "-X", "DELETE", path="/api/v1/admin/backup/no-such-backup")
    assert status == 404  # reached the route: the guide's DELETE works as written
    status, body, _ = curl(
        server, "-X", "DELETE", "-H", "Content-Type: text/plain", path="/api/v1/admin/backup/no-such-backup"
    )
    assert status == 415, body


def test_localhost_and_configured_names_are_answered(server_factory, tmp_path):
    with configured(server_factory, tmp_path, http_api_allowed_hosts="db1.example, db2.example") as server:
        for host in ("localhost:8080", "db1.example", "DB2.example:80", "127.0.0.1", "[::1]:8080"):
            status, body, _ = curl(server, "-H", f"Host: {host}")
            assert status == 200, (host, body)
        status, _, _ = curl(server, "-H", "Host: db3.example")
        assert status == 403


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "api.token"
    path.write_text("s3cret-token-for-tests\n")
    path.chmod(0o600)
    return path


def test_with_a_token_health_tells_only_status_and_version_without_it(server_factory, tmp_path, token_file):
    with configured(server_factory, tmp_path, http_api_token_file=str(token_file)) as server:
        status, bare, _ = curl(server, path="/api/v1/admin/health")
        assert status == 200 and set(bare) == {"status", "version"} and bare["status"] == "healthy"
        status, full, _ = curl(
            server, "-H", "Authorization: Bearer s3cret-token-for-tests", path="/api/v1/admin/health"
        )
        assert status == 200 and full["data_directory"]["path"] == server.data_dir and "wal" in full
        status, _, _ = curl(server, "-H", "Authorization: Bearer wrong", path="/api/v1/admin/health")
        assert status == 401
        # every other route needs the token, loopback or not
        for args, path in (((), "/api/v1/admin/backups"), ((), "/api/v1/admin/archive")):
            status, body, head = curl(server, *args, path=path)
            assert status == 401 and "www-authenticate: bearer" in head.lower(), body
        status, body, _ = curl(server, "-X", "POST", "-H", JSON, "-d", "{}", path="/api/v1/admin/backup")
        assert status == 401, body
        status, body, _ = curl(
            server,
            "-X",
            "POST",
            "-H",
            JSON,
            "-H",
            "Authorization: Bearer s3cret-token-for-tests",
            "-d",
            '{"backup_type": "full"}',
            path="/api/v1/admin/backup",
        )
        assert status == 202, body
        backup_id = body["backup_id"]
        # trusting loopback again is an explicit choice
        server.sql("ALTER SYSTEM SET http_api_trust_loopback = on;")
        status, body, _ = curl(server)
        assert status == 200 and [b["backup_id"] for b in body["backups"]] == [backup_id]
        events = audit_events(server)
    refusals = [e for e in events if e["action"] == "http_request"]
    assert [(e["outcome"], e["path"], e["reason"]) for e in refusals] == [
        ("failed", "/api/v1/admin/health", "unauthorized"),
        ("denied", "/api/v1/admin/backups", "unauthorized"),
        ("denied", "/api/v1/admin/archive", "unauthorized"),
        ("denied", "/api/v1/admin/backup", "unauthorized"),
    ]
    assert all(e["peer"].startswith("127.0.0.1:") and e["level"] == "warning" for e in refusals)
    started = [e for e in events if e["action"] == "backup"]
    assert [(e["outcome"], e["backup_id"], e["user"], e["via"]) for e in started] == [
        ("ok", backup_id, "http:token", "http")
    ]
    assert "s3cret-token-for-tests" not in open(server.log_path).read()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_may_read_stops_the_server(server_factory, tmp_path, token_file, mode):
    token_file.chmod(mode)
    server = configured(server_factory, tmp_path, http_api_token_file=str(token_file))
    server.start(wait=False)
    assert server.wait_exit(30) != 0
    log = server.log()
    assert f"chmod 600 {token_file}" in log and "Traceback" not in log
    assert oct(mode)[2:] in log


def test_browser_refusals_are_audited(server):
    curl(
        server, "-X", "POST", "-H", JSON, "-H", "Origin: https://evil.example", "-d", "{}", path="/api/v1/admin/backup"
    )
    curl(server, "-H", "Host: rebind.evil.example", path="/api/v1/admin/backups")
    refusals = [e for e in audit_events(server) if e["action"] == "http_request"]
    assert [(e["outcome"], e["method"], e["reason"]) for e in refusals] == [
        ("denied", "POST", "origin_not_allowed"),
        ("denied", "GET", "host_not_allowed"),
    ]
