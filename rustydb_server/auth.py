"""Who may connect and as which role: peer authentication on the Unix socket,
SCRAM-SHA-256 over TCP (loopback trust only as an opt-in), and the users file
of before roles, migrated into them at start.

The users file (setting ``auth_users_file``) is TOML, one table per user, with
the SCRAM verifier in PostgreSQL's text form, never the password:

    [users.alice]
    scram = "SCRAM-SHA-256$4096:<salt>$<stored key>:<server key>"

``rusty-db-server --make-user NAME`` reads a password from stdin and prints
such an entry.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import pwd
import socket
import struct
import tomllib
from collections.abc import Callable

from rustydb_client.protocol.scram import make_scram_credentials

from . import roles as roles_mod
from .logsetup import get_logger

log = get_logger("rustydb.auth")


class UsersFileError(Exception):
    pass


def format_verifier(password: str) -> str:
    salt, stored_key, server_key, iterations = make_scram_credentials(password)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def parse_verifier(text: str) -> tuple:
    """(salt, stored key, server key, iterations) of a verifier. A malformed one is
    refused without quoting any of it: it may be a password pasted in by mistake."""
    try:
        mech, rest = text.split("$", 1)
        iter_salt, keys = rest.split("$", 1)
        iterations, salt = iter_salt.split(":", 1)
        stored, server = keys.split(":", 1)
        if mech != "SCRAM-SHA-256":
            raise ValueError("not SCRAM-SHA-256")
        return (base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server), int(iterations))
    except ValueError:
        raise UsersFileError(
            "malformed SCRAM verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>, "
            "as rusty-db-server --make-user prints it"
        ) from None


def load_users(path: str) -> dict[str, tuple]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsersFileError(f"cannot read users file {path}: {e}") from None
    users = {}
    for name, entry in (data.get("users") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("scram"), str):
            raise UsersFileError(f'users file {path}: [users.{name}] needs a scram = "..." line')
        try:
            users[name] = parse_verifier(entry["scram"])
        except UsersFileError as e:
            raise UsersFileError(f"users file {path}: [users.{name}]: {e}") from None
    return users


def is_loopback(host: str | None) -> bool:
    """Whether a peer is on this machine's loopback interface: the one check
    behind trusting the wire protocol's loopback peers and the HTTP API's
    tokenless clients."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name rather than an address (an ASGI scope may hold one): only
        # "localhost" is known to mean this machine without a lookup.
        return host == "localhost"


LOCAL = "[local]"  # the host of a Unix-socket peer, in logs and peers


def peer_uid(sock) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def os_user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def is_service_uid(uid: int | None) -> bool:
    """The server's own OS user and root: the built-in superuser on the Unix socket."""
    return uid is not None and uid in (0, os.geteuid())


def is_superuser_peer(settings, peer, uid: int | None = None) -> bool:
    """Whether a connection is the superuser's before it has authenticated.

    On the Unix socket: the server's own OS user and root. Over TCP: a loopback
    client while auth_trust_loopback is on. It may use the connections
    superuser_reserved_connections keeps, and its handshake is not counted
    against max_handshakes.
    """
    if peer[0] == LOCAL:
        return is_service_uid(uid)
    return bool(settings["auth_trust_loopback"]) and is_loopback(peer[0])


def auth_fn_for(settings, peer, roles_of: Callable[[], roles_mod.Roles]):
    """None when the peer needs no password (the Unix socket: its OS user decides;
    a trusted loopback client); otherwise the SCRAM credentials of LOGIN roles."""
    if peer[0] == LOCAL or is_superuser_peer(settings, peer):
        return None

    def lookup(user: str):
        role = roles_of().get(user)
        if role is None or not role.login or not role.verifier:
            return None
        try:
            return parse_verifier(role.verifier)
        except UsersFileError as e:
            log.error("the role's password verifier is malformed; refusing the login", role=user, error=str(e))
            return None

    return lookup


class PeerAuthFailed(Exception):
    """No role for this client: the message says which and what to do."""


def session_role(settings, roles: roles_mod.Roles, peer, uid: int | None, user: str) -> roles_mod.Role:
    """The role a session that finished its handshake acts as.

    On the Unix socket the peer's OS user decides (SO_PEERCRED): the server's
    own user and root are the built-in superuser; another user is the role
    auth_peer_map names for it, or the role of its own name, which must exist
    and have LOGIN. Over TCP: the superuser for a trusted loopback client,
    otherwise the role SCRAM authenticated.
    """
    if peer[0] == LOCAL:
        if is_service_uid(uid):
            return roles_mod.BUILTIN
        name = os_user_name(uid) if uid is not None else "?"
        try:
            mapped = roles_mod.parse_peer_map(settings["auth_peer_map"]).get(name, name)
        except ValueError:
            mapped = name
        role = roles.get(mapped)
        if role is None or not role.login:
            why = "does not exist" if role is None else "has no LOGIN"
            raise PeerAuthFailed(
                f'peer authentication failed for OS user "{name}": role "{mapped}" {why}; the '
                f"superuser can run CREATE ROLE {mapped} LOGIN (or map the OS user with auth_peer_map)"
            )
        return role
    if is_superuser_peer(settings, peer):
        return roles_mod.BUILTIN
    role = roles.get(user)
    if role is None or not role.login:
        raise PeerAuthFailed(f'role "{user}" may not log in')
    return role


def users_file_verifiers(path: str) -> dict[str, str]:
    """The users file's well-formed entries as name -> verifier text (to migrate
    them into roles). A malformed one is left out and logged, without quoting
    it: it may be a password pasted in by mistake."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    verifiers = {}
    for name, entry in (data.get("users") or {}).items():
        scram = entry.get("scram") if isinstance(entry, dict) else None
        try:
            if not isinstance(scram, str):
                raise UsersFileError('needs a scram = "..." line')
            parse_verifier(scram)
        except UsersFileError as e:
            log.error("users file entry not migrated into a role", path=path, error=f"[users.{name}]: {e}")
            continue
        verifiers[name] = scram
    return verifiers
