"""Who may connect: the one loopback check, and which peers must log in with SCRAM."""

from __future__ import annotations

import os
import pwd

import pytest

from rustydb_server import auth
from rustydb_server import roles as roles_mod


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


SETTINGS = {"auth_trust_loopback": False, "auth_users_file": "", "auth_peer_map": ""}


def with_roles(*roles: roles_mod.Role) -> roles_mod.Roles:
    return roles_mod.Roles({r.name: r for r in roles})


def test_loopback_peers_are_trusted_only_when_the_setting_says_so():
    roles = with_roles()
    trusting = {**SETTINGS, "auth_trust_loopback": True}
    assert auth.auth_fn_for(trusting, ("127.0.0.1", 5000), lambda: roles) is None
    assert auth.auth_fn_for(trusting, ("::1", 5000), lambda: roles) is None
    assert auth.session_role(trusting, roles, ("::1", 5000), None, "anyone") is roles_mod.BUILTIN
    assert auth.auth_fn_for(SETTINGS, ("127.0.0.1", 5000), lambda: roles) is not None  # the default


def test_tcp_peers_log_in_as_login_roles_with_a_password():
    verifier = auth.format_verifier("secret")
    roles = with_roles(
        roles_mod.Role("alice", login=True, verifier=verifier),
        roles_mod.Role("nologin", login=False, verifier=verifier),
        roles_mod.Role("nopassword", login=True),
    )
    lookup = auth.auth_fn_for(SETTINGS, ("192.0.2.7", 5000), lambda: roles)
    assert lookup("alice") == auth.parse_verifier(verifier)
    for name in ("bob", "nologin", "nopassword", roles_mod.SUPERUSER_ROLE):
        assert lookup(name) is None, name
    assert auth.session_role(SETTINGS, roles, ("192.0.2.7", 5000), None, "alice").name == "alice"


def test_on_the_socket_the_os_user_decides_the_role():
    me = os.geteuid()
    roles = with_roles(roles_mod.Role("reader", login=True, attribute=roles_mod.READONLY))
    local = (auth.LOCAL, "x")
    assert auth.auth_fn_for(SETTINGS, local, lambda: roles) is None  # no password on the socket
    assert auth.session_role(SETTINGS, roles, local, me, "whatever") is roles_mod.BUILTIN
    assert auth.session_role(SETTINGS, roles, local, 0, "whatever") is roles_mod.BUILTIN
    assert auth.is_superuser_peer(SETTINGS, local, me) and auth.is_superuser_peer(SETTINGS, local, 0)
    other = next(p for p in pwd.getpwall() if p.pw_uid not in (0, me))
    assert not auth.is_superuser_peer(SETTINGS, local, other.pw_uid)
    with pytest.raises(auth.PeerAuthFailed, match=f'OS user "{other.pw_name}": role "{other.pw_name}" does not exist'):
        auth.session_role(SETTINGS, roles, local, other.pw_uid, "reader")  # the name it asks for does not count
    mapped = {**SETTINGS, "auth_peer_map": f"{other.pw_name}=reader"}
    assert auth.session_role(mapped, roles, local, other.pw_uid, "x").name == "reader"


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
