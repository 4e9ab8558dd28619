"""Roles: who a session is, and what it may do.

Pure decisions (``may``, ``may_read``, ``may_write``) over a ``Roles`` value,
and ``RoleStore``, the roles file of the data directory (``roles.json``),
written whole and atomically through FileOps at every change.

A role has an optional SCRAM verifier (``PASSWORD``), ``LOGIN`` (it may
connect), at most one attribute and database grants:

- ``SUPERUSER``: everything;
- ``BACKUP``: take, list and verify backups and read the archive status, nothing else;
- ``READONLY``: SELECT on every database, nothing else;
- no attribute: what ``GRANT {SELECT | WRITE | ALL} ON DATABASE db`` gave it.

The built-in superuser (``SUPERUSER_ROLE``) always exists: the server's own
OS user and root are it on the Unix socket, without a password.

Why a file in the data directory rather than a table of the default database:
a table would be written through the WAL, but the default database can be
dropped and restored alone, and the authorizer would have to hide one more
internal table from every client; a small file is read at each login and at
start, is copied into every full backup's header (see backup/manifest.py's
``roles``), and a restore writes it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from .fileops import REAL, FileOps

ROLES_FILE_NAME = "roles.json"
SUPERUSER_ROLE = "rustydb"
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")

SUPERUSER, BACKUP, READONLY = "superuser", "backup", "readonly"
ATTRIBUTES = (SUPERUSER, BACKUP, READONLY)
SELECT, WRITE = "select", "write"

# Actions a statement or request needs, as named in "permission denied for <action>".
ALTER_SYSTEM = "ALTER SYSTEM"
SHUTDOWN = "SHUTDOWN"
CHECKPOINT = "CHECKPOINT"
CREATE_DATABASE = "CREATE DATABASE"
DROP_DATABASE = "DROP DATABASE"
SWITCH_WAL = "SWITCH WAL"
CREATE_RESTORE_POINT = "CREATE RESTORE POINT"
MANAGE_ROLES = "roles"
TAKE_BACKUP = "backup"
READ_ARCHIVE_STATUS = "archive status"

_BACKUP_ACTIONS = frozenset({TAKE_BACKUP, READ_ARCHIVE_STATUS})


class RoleError(Exception):
    """A role statement cannot be carried out; the message says why."""


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    login: bool = False
    attribute: str | None = None  # one of ATTRIBUTES
    verifier: str | None = None  # SCRAM-SHA-256 verifier text, never a password
    grants: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    @property
    def superuser(self) -> bool:
        return self.attribute == SUPERUSER

    def to_json(self) -> dict:
        return {
            "login": self.login,
            "attribute": self.attribute,
            "verifier": self.verifier,
            "grants": {db: sorted(p) for db, p in sorted(self.grants.items())},
        }

    @classmethod
    def from_json(cls, name: str, data: dict) -> Role:
        attribute = data.get("attribute")
        if attribute is not None and attribute not in ATTRIBUTES:
            raise RoleError(f"role {name}: unknown attribute {attribute!r}")
        grants = {db: frozenset(p) & {SELECT, WRITE} for db, p in (data.get("grants") or {}).items()}
        return cls(name, bool(data.get("login")), attribute, data.get("verifier"), grants)


BUILTIN = Role(SUPERUSER_ROLE, login=True, attribute=SUPERUSER)


def may(role: Role, action: str) -> bool:
    """Whether ``role`` may do one of the server-wide actions above."""
    if role.superuser:
        return True
    if role.attribute == BACKUP:
        return action in _BACKUP_ACTIONS
    return False


def may_read(role: Role, database: str) -> bool:
    if role.superuser or role.attribute == READONLY:
        return True
    if role.attribute == BACKUP:
        return False
    return bool(role.grants.get(database))


def may_write(role: Role, database: str) -> bool:
    if role.superuser:
        return True
    if role.attribute is not None:
        return False
    return WRITE in role.grants.get(database, ())


def privileges_of(words: str) -> frozenset[str]:
    """The privileges GRANT SELECT / WRITE / ALL names (ALL: both)."""
    return {"SELECT": frozenset({SELECT}), "WRITE": frozenset({SELECT, WRITE}), "ALL": frozenset({SELECT, WRITE})}[
        words
    ]


class Roles:
    """Every role by name, the built-in superuser included (it cannot be dropped)."""

    def __init__(self, roles: dict[str, Role] | None = None):
        self.by_name = {SUPERUSER_ROLE: BUILTIN, **(roles or {})}

    def get(self, name: str) -> Role | None:
        return self.by_name.get(name)

    def stored(self) -> dict:
        return {name: role.to_json() for name, role in sorted(self.by_name.items()) if name != SUPERUSER_ROLE}

    @classmethod
    def from_stored(cls, data: dict) -> Roles:
        if not isinstance(data, dict):
            raise RoleError("the roles are not a JSON object")
        return cls({name: Role.from_json(name, entry) for name, entry in data.items() if name != SUPERUSER_ROLE})

    # -- changes (each returns a new Roles; the caller stores it)

    def create(self, role: Role) -> Roles:
        if role.name in self.by_name:
            raise RoleError(f'role "{role.name}" already exists')
        return Roles({**self.by_name, role.name: role})

    def alter(self, name: str, **changes) -> Roles:
        role = self._existing(name, "alter")
        return Roles({**self.by_name, name: dataclasses.replace(role, **changes)})

    def drop(self, name: str, if_exists: bool = False) -> Roles | None:
        if name not in self.by_name:
            if if_exists:
                return None
            raise RoleError(f'role "{name}" does not exist')
        self._existing(name, "drop")
        return Roles({n: r for n, r in self.by_name.items() if n != name})

    def grant(self, name: str, database: str, privileges: frozenset[str]) -> Roles:
        role = self._existing(name, "grant to")
        grants = dict(role.grants)
        grants[database] = grants.get(database, frozenset()) | privileges
        return Roles({**self.by_name, name: dataclasses.replace(role, grants=grants)})

    def revoke(self, name: str, database: str, privileges: frozenset[str]) -> Roles:
        role = self._existing(name, "revoke from")
        grants = dict(role.grants)
        # Revoking SELECT revokes WRITE too: writing needs reading.
        left = grants.get(database, frozenset()) - (privileges | ({WRITE} if SELECT in privileges else set()))
        if left:
            grants[database] = left
        else:
            grants.pop(database, None)
        return Roles({**self.by_name, name: dataclasses.replace(role, grants=grants)})

    def _existing(self, name: str, verb: str) -> Role:
        if name == SUPERUSER_ROLE:
            raise RoleError(f'cannot {verb} the built-in superuser role "{SUPERUSER_ROLE}"')
        role = self.by_name.get(name)
        if role is None:
            raise RoleError(f'role "{name}" does not exist')
        return role


def roles_path(data_dir: str) -> str:
    return os.path.join(data_dir, ROLES_FILE_NAME)


class RoleStore:
    """The roles file of a data directory: read once at start, written whole at every change."""

    def __init__(self, data_dir: str, fileops: FileOps = REAL):
        self.path = roles_path(data_dir)
        self.fileops = fileops
        self.roles = read_roles(self.path)

    def save(self, roles: Roles) -> None:
        write_roles(self.path, roles, self.fileops)
        self.roles = roles


def read_roles(path: str) -> Roles:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return Roles()
    except (OSError, ValueError) as e:
        raise RoleError(
            f"cannot read the roles file {path}: {getattr(e, 'strerror', None) or e}; restore it from a backup"
        ) from None
    return Roles.from_stored(data.get("roles", {}) if isinstance(data, dict) else data)


def write_roles(path: str, roles: Roles, fileops: FileOps = REAL) -> None:
    body = json.dumps({"version": 1, "roles": roles.stored()}, indent=1, sort_keys=True).encode()
    fileops.write_file_atomic(path, body + b"\n", mode=0o600)


def migrate_users_file(store: RoleStore, users: dict[str, str]) -> list[str]:
    """Make a LOGIN SUPERUSER role of every user of the old users file (name -> verifier
    text) not yet a role; the names migrated. Each had every privilege before roles."""
    roles, added = store.roles, []
    for name, verifier in sorted(users.items()):
        if roles.get(name) is None and ROLE_NAME.fullmatch(name):
            roles = roles.create(Role(name, login=True, attribute=SUPERUSER, verifier=verifier))
            added.append(name)
    if added:
        store.save(roles)
    return added


def parse_peer_map(text: str) -> dict[str, str]:
    """``auth_peer_map``: "osuser=role, other=role2" as {os user: role}."""
    result = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        os_user, sep, role = (p.strip() for p in part.partition("="))
        if not sep or not os_user or not role:
            raise ValueError(f"auth_peer_map entry {part!r} is not os_user=role")
        result[os_user] = role
    return result


def stored_roles(data_dir: str) -> dict:
    """The roles of a data directory as a backup's manifest carries them."""
    return read_roles(roles_path(data_dir)).stored()


def restore_roles(data_dir: str, stored: dict, fileops: FileOps = REAL) -> None:
    """Write the roles a backup's manifest carried into a restored data directory."""
    write_roles(roles_path(data_dir), Roles.from_stored(stored), fileops)
