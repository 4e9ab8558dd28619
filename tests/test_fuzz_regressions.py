"""Every crash the fuzzers found, as the input that found it and the behaviour now expected."""

from __future__ import annotations

import apsw
import pytest

from fuzz import sqlsplit as sqlsplit_target
from rustydb_client.sqlsplit import Statement, StatementSplitter, split_statements


@pytest.mark.parametrize(
    "text",
    ["\x0bSELECT 1", "\u3000SELECT 1;", "SELECT 1\x1c", "SELECT a\u3000;SELECT 2;"],
)
def test_the_fast_path_strips_only_what_sqlite_calls_whitespace(text):
    """Found by the sqlsplit fuzzer: \\v, \\x1c or U+3000 (an identifier character
    to SQLite) were stripped by the one-statement fast path and kept by the full scan."""
    splitter = StatementSplitter()
    assert split_statements(text) == splitter.feed(text) + splitter.finish()
    assert split_statements("\u3000SELECT 1;") == [Statement("\u3000SELECT 1", 1)]
    sqlsplit_target.check(b"\x00" + text.encode())


def test_a_word_sqlite_reads_as_an_identifier_is_pending_like_any_word():
    """Found by the property test: a lone U+3000 is a token to SQLite, so more input is awaited."""
    splitter = StatementSplitter()
    assert splitter.feed("\u3000") == []
    assert splitter.pending
    assert not apsw.complete("\u3000\n")


def test_quotes_of_one_kind_inside_another_do_not_count_for_the_fast_path():
    """Found by the sqlsplit fuzzer: the fast path paired quotes by counting each
    kind alone, so a backtick inside a string hid an unterminated identifier
    and the semicolon it swallows was dropped."""
    text = "SELECT '`' , `x;"
    assert split_statements(text) == [Statement("SELECT '`' , `x;", 1)]
    crash = bytes.fromhex(
        "d7014358453f3f3f3f3f3f3f3f3f3f3f3f243f3f3f0453454c45435420277574ffff626d696e60745900000000000000"
        "3f3f3f3f3f3f3f3f3f3f3f3f493f0453454c45435420277574ffff626d696e607474205345542000" + "3b"
    )
    sqlsplit_target.check(crash)


def test_a_trailing_line_comment_does_not_keep_the_splitter_waiting():
    """Not a crash but a deliberate difference the fuzzer pointed at: SQLite calls
    text ending inside a line comment incomplete; the splitter treats the
    comment as ended, as SQLite does once the line ends."""
    splitter = StatementSplitter()
    assert splitter.feed("SELECT 1; -- done") == [Statement("SELECT 1", 1)]
    assert not splitter.pending
    assert not apsw.complete("SELECT 1; -- done") and apsw.complete("SELECT 1; -- done\n")


def test_a_nil_optional_manifest_key_reads_as_absent():
    """Found by the backup fuzzer (its round trip assumed more than the format
    promises): a manifest whose optional keys are nil reads as one without
    them, and writes them back absent; reading that again gives the same."""
    from fuzz import backup as backup_target
    from rustydb_server.backup.manifest import Manifest

    written = backup_target.make_manifest("00000000-0000-4000-8000-000000000001", ["main"]).to_dict()
    with_nils = dict(written, all_databases=None, parent_id=None, wal_records=None)
    with_nils["databases"] = [dict(written["databases"][0], transactions=None)]
    manifest = Manifest.from_dict(with_nils)
    assert manifest.to_dict() == {k: v for k, v in written.items() if k != "all_databases"}
    assert Manifest.from_dict(manifest.to_dict()) == manifest
