"""The HTTP API's access decision, pure: every combination the e2e tests cannot reach
(a client off loopback, IPv6, a token set with trust forced on)."""

from __future__ import annotations

import pytest

from rustydb_server import http_access
from rustydb_server.http_access import decide, read_token

TOKEN = "tok-123"
HEALTH = "/api/v1/admin/health"


def verdict(method="GET", path="/api/v1/admin/backups", headers=None, client="127.0.0.1", token=None, trust="auto"):
    return decide(
        method,
        path,
        {"host": "127.0.0.1:8080", **(headers or {})},
        client,
        token,
        trust_loopback_setting=trust,
        allowed_host_names=http_access.allowed_hosts("db.example"),
    )


def test_loopback_without_a_token_file_is_trusted():
    assert verdict().status == 0 and verdict().by == "loopback"
    assert verdict(client="::1").status == 0


def test_off_loopback_without_a_token_file_is_refused_with_what_to_do():
    v = verdict(client="192.0.2.7")
    assert v.status == 401 and "http_api_token_file" in v.message and v.audit == "denied"


def test_once_a_token_is_set_loopback_needs_it_too_unless_trusted_explicitly():
    assert verdict(token=TOKEN).status == 401
    assert verdict(token=TOKEN, trust="on").status == 0
    assert verdict(token=None, trust="off").status == 401
    ok = verdict(token=TOKEN, client="192.0.2.7", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status == 0 and ok.by == "token"
    assert verdict(token=TOKEN, client="192.0.2.7", trust="on").status == 401  # trust is for loopback only


@pytest.mark.parametrize("given", ["Bearer wrong", f"bearer {TOKEN}", TOKEN, f"Bearer {TOKEN} ", "Bearer ", "Bearer é"])
def test_a_wrong_token_fails_everywhere(given):
    for path in (HEALTH, "/api/v1/admin/backups"):
        v = verdict(path=path, token=TOKEN, headers={"authorization": given}, trust="on")
        assert v.status == 401 and v.audit == "failed"


def test_health_shows_everything_only_to_a_trusted_client():
    assert verdict(path=HEALTH).full  # loopback, no token file
    assert not verdict(path=HEALTH, client="192.0.2.7").full
    assert verdict(path=HEALTH, client="192.0.2.7").status == 0
    assert not verdict(path=HEALTH, token=TOKEN).full
    assert verdict(path=HEALTH, token=TOKEN, headers={"authorization": f"Bearer {TOKEN}"}).full
    # a page that rebound its name to 127.0.0.1, or any page's fetch, learns only the status
    assert not verdict(path=HEALTH, headers={"host": "evil.example"}).full
    assert not verdict(path=HEALTH, headers={"origin": "https://evil.example"}).full


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        ("10.1.2.3:8080", True),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("db.example", True),
        ("db.example.:8080", True),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_hosts(host, allowed):
    assert (verdict(headers={"host": host}).status == 0) is allowed


def test_any_host_when_configured_so():
    assert http_access.host_allowed("anything.example", http_access.allowed_hosts(" * "))


@pytest.mark.parametrize(
    "method,content_type,status",
    [
        ("POST", "application/json", 0),
        ("POST", "application/json; charset=utf-8", 0),
        ("POST", "Application/JSON", 0),
        ("POST", None, 415),
        ("POST", "text/plain", 415),
        ("POST", "application/x-www-form-urlencoded", 415),
        ("POST", "multipart/form-data; boundary=x", 415),
        ("POST", "application/json-seq", 415),
        ("DELETE", None, 0),
        ("DELETE", "text/plain", 415),
        ("GET", "text/plain", 0),
    ],
)
def test_state_changing_requests_take_json_only(method, content_type, status):
    headers = {"content-type": content_type} if content_type else {}
    v = verdict(method=method, path="/api/v1/admin/backup", headers=headers)
    assert v.status == status
    assert status == 0 or "Content-Type: application/json" in v.message


def test_refusals_of_browsers_come_before_the_token_check():
    v = verdict(method="POST", headers={"origin": "https://evil.example", "content-type": "application/json"})
    assert v.status == 403 and v.code == "origin_not_allowed"


def test_the_token_file_must_be_private(tmp_path):
    path = tmp_path / "t"
    path.write_text(" tok \n")
    path.chmod(0o600)
    assert read_token(str(path)) == "tok"
    path.chmod(0o400)
    assert read_token(str(path)) == "tok"
    for mode in (0o640, 0o604, 0o644, 0o620, 0o602):
        path.chmod(mode)
        with pytest.raises(http_access.TokenFileError, match=f"chmod 600 {path}"):
            read_token(str(path))
    with pytest.raises(http_access.TokenFileError, match="cannot read"):
        read_token(str(tmp_path / "missing"))
    assert read_token("") is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    assert read_token(str(empty)) is None
