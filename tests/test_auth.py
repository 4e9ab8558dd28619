"""Who may connect: the one loopback check, and which peers must log in with SCRAM."""

from __future__ import annotations

import pytest

from rustydb_server import auth


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("192.0.2.7", False),
        ("::ffff:192.0.2.7", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host, expected):
    assert auth.is_loopback(host) is expected


def test_loopback_peers_are_trusted_only_when_the_setting_says_so():
    trusting = {"auth_trust_loopback": True, "auth_users_file": ""}
    assert auth.auth_fn_for(trusting, ("127.0.0.1", 5000)) is None
    assert auth.auth_fn_for(trusting, ("::1", 5000)) is None
    strict = {"auth_trust_loopback": False, "auth_users_file": ""}
    assert auth.auth_fn_for(strict, ("127.0.0.1", 5000)) is not None


def test_remote_peers_log_in_against_the_users_file(tmp_path):
    verifier = auth.format_verifier("secret")
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\nscram = "{verifier}"\n')
    lookup = auth.auth_fn_for({"auth_trust_loopback": True, "auth_users_file": str(users)}, ("192.0.2.7", 5000))
    assert lookup("alice") == auth.parse_verifier(verifier)
    assert lookup("bob") is None


def test_without_a_users_file_nobody_logs_in_remotely():
    lookup = auth.auth_fn_for({"auth_trust_loopback": True, "auth_users_file": ""}, ("192.0.2.7", 5000))
    assert lookup("alice") is None


@pytest.mark.parametrize(
    "scram",
    [
        "SCRAM-SHA-256$hunter2-pasted:c2FsdA==$YQ==:Yg==",  # int() would quote it
        "hunter2-pasted$4096:c2FsdA==$YQ==:Yg==",  # the mechanism would be quoted
        "SCRAM-SHA-256$4096:hunter2-pasted$YQ==:Yg==",  # base64 of the salt
    ],
)
def test_a_malformed_verifier_is_refused_without_quoting_it(tmp_path, scram):
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\nscram = "{scram}"\n')
    with pytest.raises(auth.UsersFileError) as refused:
        auth.load_users(str(users))
    message = str(refused.value)
    assert "hunter2" not in message
    assert f"users file {users}: [users.alice]: malformed SCRAM verifier: expected SCRAM-SHA-256$" in message
