"""Roles: the statements' parsing, the privilege decisions and the roles file."""

from __future__ import annotations

import json
import os

import pytest

from rustydb_server import admin_parse as ap
from rustydb_server import roles as r
from rustydb_server.admin import required_action
from rustydb_server.fileops import REAL


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("CREATE ROLE alice", ap.CreateRole("alice", ap.RoleOptions())),
        (
            "create role alice with login password 'pw' readonly;",
            ap.CreateRole("alice", ap.RoleOptions(login=True, password="pw", attribute="readonly")),
        ),
        ("ALTER ROLE bob NOLOGIN PASSWORD NULL", ap.AlterRole("bob", ap.RoleOptions(login=False, clear_password=True))),
        ("ALTER ROLE bob NOSUPERUSER", ap.AlterRole("bob", ap.RoleOptions(clear_attribute=True))),
        ("DROP ROLE IF EXISTS bob", ap.DropRole("bob", True)),
        ("GRANT SELECT ON DATABASE sales TO bob", ap.Grant("SELECT", "sales", "bob")),
        ("GRANT ALL PRIVILEGES ON DATABASE sales TO bob", ap.Grant("ALL", "sales", "bob")),
        ("REVOKE WRITE ON DATABASE sales FROM bob", ap.Grant("WRITE", "sales", "bob", revoke=True)),
    ],
)
def test_role_statements_parse(sql, expected):
    assert ap.parse_admin(sql) == expected


@pytest.mark.parametrize(
    "sql, problem",
    [
        ("CREATE ROLE", "expected a role name"),
        ("CREATE ROLE a SUPERUSER BACKUP", "at most one of SUPERUSER, BACKUP and READONLY"),
        ("CREATE ROLE a PASSWORD", "expected the password in single quotes"),
        ("GRANT DELETE ON DATABASE x TO a", "expected SELECT or WRITE or ALL"),
        ("GRANT SELECT ON DATABASE x FROM a", "expected TO"),
    ],
)
def test_malformed_role_statements_show_the_form(sql, problem):
    with pytest.raises(ap.AdminSyntaxError) as e:
        ap.parse_admin(sql)
    assert problem in str(e.value) and "Usage:" in str(e.value)


def test_a_malformed_password_clause_never_quotes_the_password():
    with pytest.raises(ap.AdminSyntaxError) as e:
        ap.parse_admin("CREATE ROLE a PASSWORD 'hunter2' 'hunter3'")
    assert "hunter" not in str(e.value)
    assert "hunter2" not in repr(ap.parse_admin("CREATE ROLE a PASSWORD 'hunter2'"))


def test_every_server_wide_statement_needs_a_privilege():
    needs = {
        "ALTER SYSTEM SET archive_timeout = '1min'": r.ALTER_SYSTEM,
        "ALTER SYSTEM RESET ALL": r.ALTER_SYSTEM,
        "SHUTDOWN IMMEDIATE": r.SHUTDOWN,
        "CHECKPOINT": r.CHECKPOINT,
        "CREATE DATABASE x": r.CREATE_DATABASE,
        "DROP DATABASE x": r.DROP_DATABASE,
        "SWITCH WAL": r.SWITCH_WAL,
        "CREATE RESTORE POINT 'p'": r.CREATE_RESTORE_POINT,
        "CREATE ROLE x": r.MANAGE_ROLES,
        "DROP ROLE x": r.MANAGE_ROLES,
        "GRANT SELECT ON DATABASE d TO x": r.MANAGE_ROLES,
        "SHOW archive_timeout": None,
        "USE rustydb": None,
    }
    for sql, action in needs.items():
        assert required_action(ap.parse_admin(sql)) == action, sql


def test_what_each_attribute_allows():
    su = r.Role("su", attribute=r.SUPERUSER)
    bk = r.Role("bk", attribute=r.BACKUP)
    ro = r.Role("ro", attribute=r.READONLY)
    plain = r.Role("plain", grants={"sales": frozenset({r.SELECT})})
    writer = r.Role("w", grants={"sales": r.privileges_of("WRITE")})
    actions = (r.ALTER_SYSTEM, r.SHUTDOWN, r.CHECKPOINT, r.MANAGE_ROLES, r.TAKE_BACKUP, r.READ_ARCHIVE_STATUS)
    assert all(r.may(su, a) for a in actions)
    assert [a for a in actions if r.may(bk, a)] == [r.TAKE_BACKUP, r.READ_ARCHIVE_STATUS]
    assert not any(r.may(role, a) for role in (ro, plain, writer) for a in actions)
    assert (r.may_read(bk, "sales"), r.may_write(bk, "sales")) == (False, False)
    assert (r.may_read(ro, "anything"), r.may_write(ro, "anything")) == (True, False)
    assert (r.may_read(plain, "sales"), r.may_write(plain, "sales"), r.may_read(plain, "hr")) == (True, False, False)
    assert (r.may_read(writer, "sales"), r.may_write(writer, "sales")) == (True, True)
    # READONLY never writes, whatever it was granted
    assert not r.may_write(r.Role("ro2", attribute=r.READONLY, grants={"sales": r.privileges_of("ALL")}), "sales")


def test_grants_and_revokes():
    roles = r.Roles().create(r.Role("a", login=True))
    roles = roles.grant("a", "sales", r.privileges_of("ALL"))
    assert roles.get("a").grants == {"sales": frozenset({r.SELECT, r.WRITE})}
    assert roles.revoke("a", "sales", frozenset({r.WRITE})).get("a").grants == {"sales": frozenset({r.SELECT})}
    assert roles.revoke("a", "sales", frozenset({r.SELECT})).get("a").grants == {}  # writing needs reading
    with pytest.raises(r.RoleError, match="already exists"):
        roles.create(r.Role("a"))
    with pytest.raises(r.RoleError, match="does not exist"):
        roles.grant("nobody", "sales", frozenset({r.SELECT}))
    for change in (lambda: roles.drop(r.SUPERUSER_ROLE), lambda: roles.alter(r.SUPERUSER_ROLE, login=False)):
        with pytest.raises(r.RoleError, match="built-in superuser"):
            change()
    assert roles.drop("nobody", if_exists=True) is None


def test_the_roles_file_is_written_whole_at_mode_0600_and_read_back(tmp_path):
    store = r.RoleStore(str(tmp_path))
    assert store.roles.get(r.SUPERUSER_ROLE) is r.BUILTIN and not os.path.exists(store.path)
    store.save(store.roles.create(r.Role("a", login=True, attribute=r.BACKUP, verifier="v")))
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    data = json.loads(open(store.path).read())
    assert set(data["roles"]) == {"a"}  # the built-in one is never stored
    assert r.RoleStore(str(tmp_path)).roles.get("a") == r.Role("a", login=True, attribute=r.BACKUP, verifier="v")
    # what a backup's manifest carries, written back into a restored directory
    restored = tmp_path / "restored"
    restored.mkdir()
    r.restore_roles(str(restored), r.stored_roles(str(tmp_path)), REAL)
    assert r.RoleStore(str(restored)).roles.get("a") == store.roles.get("a")


def test_a_damaged_roles_file_is_named(tmp_path):
    (tmp_path / r.ROLES_FILE_NAME).write_text("{not json")
    with pytest.raises(r.RoleError, match="cannot read the roles file .*roles.json"):
        r.RoleStore(str(tmp_path))


def test_the_peer_map():
    assert r.parse_peer_map(" a=b , c = d ,") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError, match="not os_user=role"):
        r.parse_peer_map("lonely")
