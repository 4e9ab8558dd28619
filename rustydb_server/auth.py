"""Who may connect: loopback trust and SCRAM-SHA-256 credentials from a users file.

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
import tomllib

from rustydb_client.protocol.scram import make_scram_credentials

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


def is_superuser_peer(settings, peer) -> bool:
    """Whether a connection from ``peer`` is the superuser's.

    Until roles exist, the superuser is a client trusted without a password:
    one on loopback while auth_trust_loopback is on. It may use the
    connections superuser_reserved_connections keeps, and its handshake is
    not counted against max_handshakes.
    """
    return bool(settings["auth_trust_loopback"]) and is_loopback(peer[0])


def auth_fn_for(settings, peer):
    """None when this peer is trusted; otherwise a credentials lookup for SCRAM."""
    if is_superuser_peer(settings, peer):
        return None
    path = settings["auth_users_file"]

    def lookup(user: str):
        if not path:
            return None  # nobody can log in remotely until a users file is set
        try:
            return load_users(path).get(user)
        except UsersFileError as e:
            log.error("cannot use the users file; refusing the login", error=str(e))
            return None

    return lookup
