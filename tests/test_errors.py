"""Every error reported to clients derives from one base carrying its code;
the codes are the ones the wire protocol has always carried."""

from __future__ import annotations

import pytest

from rustydb_server.admin_parse import AdminSyntaxError, parse_admin
from rustydb_server.engine.instance import EngineError, FatalWalError
from rustydb_server.engine.session import SqlError
from rustydb_server.errors import ReportedError


@pytest.mark.parametrize(
    "error, code, fatal",
    [
        (SqlError("no such table: t"), "sql_error", False),
        (SqlError("statement canceled", code="query_canceled"), "query_canceled", False),
        (EngineError("recovery failed"), "engine_error", False),
        (EngineError('database "x" does not exist', code="unknown_database"), "unknown_database", False),
        (AdminSyntaxError("a ' is never closed"), "syntax_error", False),
        (FatalWalError("fdatasync: EIO"), "wal_failure", True),
        (
            ReportedError("closing the connection after idle_session_timeout", "idle_timeout", fatal=True),
            "idle_timeout",
            True,
        ),
    ],
)
def test_each_error_carries_its_code(error, code, fatal):
    assert isinstance(error, ReportedError)
    assert (error.code, error.fatal) == (code, fatal)


def test_the_message_is_the_exceptions_text():
    assert str(SqlError("no such table: t")) == "no such table: t"
    assert str(FatalWalError("fdatasync: EIO")) == (
        "the WAL could not be made durable (fdatasync: EIO); nothing more is acknowledged and the server is stopping"
    )


def test_a_malformed_admin_statement_is_a_syntax_error():
    with pytest.raises(ReportedError) as e:
        parse_admin("SHOW")
    assert e.value.code == "syntax_error" and "Usage:" in str(e.value)
