"""Splitting SQL scripts into statements, by SQLite's own completeness rule."""

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client.sqlsplit import Statement, StatementSplitter, leading_keywords, split_statements


def split_in_chunks(text: str, size: int) -> list[Statement]:
    splitter = StatementSplitter()
    out = []
    for i in range(0, len(text), size):
        out += splitter.feed(text[i : i + size])
    return out + splitter.finish()


def test_semicolons_inside_strings_identifiers_and_comments_do_not_split():
    text = "SELECT 'a;b', 'it''s;', \"c;d\", `e;f`, [g;h] FROM t; -- x; y\n/* one; two */ SELECT 2 /* ; */;"
    assert split_statements(text) == [
        Statement("SELECT 'a;b', 'it''s;', \"c;d\", `e;f`, [g;h] FROM t", 1),
        Statement("SELECT 2", 2),
    ]


def test_trailing_comments_are_dropped_so_the_statement_can_be_extended():
    (s,) = split_statements("SELECT 1 /* a */ -- b\n;")
    assert s.sql == "SELECT 1"
    assert apsw.complete(s.sql + ";")


def test_trigger_bodies_end_only_at_end_semicolon():
    text = (
        "CREATE TABLE t(a);\n"
        "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO log VALUES (new.a);\n"
        "  SELECT CASE WHEN new.a > 1 THEN 'x' END;\n"
        "END;\n"
        "INSERT INTO t VALUES (1);\n"
    )
    stmts = split_statements(text)
    assert [s.line for s in stmts] == [1, 2, 6]
    assert stmts[1].sql.startswith("CREATE TEMP TRIGGER") and stmts[1].sql.endswith("END")
    assert apsw.complete(stmts[1].sql + ";")


def test_lines_count_from_the_first_token_after_comments():
    text = "\n\n-- header\n/* multi\nline */\n  SELECT 1;\n\nSELECT\n2;"
    assert split_statements(text) == [Statement("SELECT 1", 6), Statement("SELECT\n2", 8)]


def test_empty_and_comment_only_input_gives_nothing():
    assert split_statements("") == []
    assert split_statements(" ;;; \n ; -- only a comment\n/* and ; this */") == []


def test_last_statement_needs_no_semicolon():
    assert split_statements("SELECT 1;\nSELECT 2") == [Statement("SELECT 1", 1), Statement("SELECT 2", 2)]


def test_unterminated_string_at_end_is_still_returned_for_the_server_to_reject():
    assert split_statements("SELECT 'abc;") == [Statement("SELECT 'abc;", 1)]


def test_statement_is_returned_as_soon_as_its_semicolon_arrives():
    splitter = StatementSplitter()
    assert splitter.feed("SELECT 1") == []
    assert splitter.pending
    assert splitter.feed(";\n") == [Statement("SELECT 1", 1)]
    assert not splitter.pending
    assert splitter.feed("/* open") == []
    assert splitter.pending  # inside a block comment: the shell must keep reading


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_chunk_boundaries_never_change_the_result(size):
    text = (
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;\n"
        "SELECT '--;' -- c;\n, 1/2, 3-4 /* ;* */; SELECT \"END\";\n"
        "EXPLAIN CREATE TRIGGER x BEFORE DELETE ON t BEGIN DELETE FROM u; END; SELECT 9"
    )
    assert split_in_chunks(text, size) == split_statements(text)


def test_large_script_streams_with_bounded_buffer():
    splitter = StatementSplitter()
    count = 0
    for i in range(20_000):
        count += len(splitter.feed(f"INSERT INTO t VALUES ({i}, 'x;y');\n"))
        assert len(splitter._buf) < 100 and not splitter._parts
    assert count == 20_000


# ---------------------------------------------------------------- properties

words = st.sampled_from(
    [
        "SELECT",
        "1",
        "x",
        "FROM",
        "t",
        "END",
        "BEGIN",
        "CREATE",
        "TABLE",
        "TRIGGER",
        "a_b",
        "+",
        "(",
        ")",
        ",",
        "*",
        "é",
        "$v",
        "2.5",
    ]
)
strings = st.text(alphabet="ab;'\"-/*\n ", max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'")
idents = st.text(alphabet="ab;'-*\n ", max_size=6).map(lambda s: '"' + s + '"')
comments = st.one_of(
    st.text(alphabet="ab;'\"/* ", max_size=8).map(lambda s: "-- " + s + "\n"),
    st.text(alphabet="ab;'\"-/\n ", max_size=8).map(lambda s: "/* " + s + " */"),
)
pieces = st.lists(st.one_of(words, strings, idents, comments), min_size=0, max_size=8)


@st.composite
def statements(draw):
    # A statement starts with a word (not a comment, which the splitter
    # drops) and never with CREATE/EXPLAIN (a trigger needs its own shape).
    first = draw(st.sampled_from(["SELECT", "INSERT", "UPDATE", "x"]))
    rest = draw(pieces)
    last = draw(words)  # a trailing line comment would swallow the ';'
    return " ".join([first, *rest, last])


@settings(max_examples=300, deadline=None)
@given(st.lists(statements(), min_size=1, max_size=6))
def test_joined_statements_split_back_into_themselves(stmts):
    text = ";\n".join(stmts)
    assert [s.sql for s in split_statements(text)] == stmts
    assert [s.sql for s in split_statements(text + ";")] == stmts


@settings(max_examples=300, deadline=None)
@given(st.lists(statements(), min_size=1, max_size=4), st.integers(1, 9))
def test_chunked_feeding_matches_whole_text(stmts, size):
    text = ";\n".join(stmts) + ";"
    assert split_in_chunks(text, size) == split_statements(text)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            words,
            strings,
            idents,
            comments,
            st.just(";"),
            st.just(" END ;"),
            st.just("CREATE TRIGGER"),
            st.just("CREATE TEMP TRIGGER"),
            st.just("EXPLAIN"),
        ),
        max_size=14,
    )
)
def test_statements_agree_with_sqlite_complete(tokens):
    text = " ".join(tokens)
    stmts = split_statements(text)
    # Every statement the splitter cuts is complete by SQLite's rule...
    splitter = StatementSplitter()
    cut = splitter.feed(text)
    for s in cut:
        assert apsw.complete(s.sql + ";"), s.sql
    # ...and the whole text is complete exactly when nothing is left pending.
    if stmts:
        assert apsw.complete(text) == (not splitter.pending)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=";'\"`[]-/*\nab END", max_size=40))
def test_arbitrary_text_never_crashes_and_keeps_every_token(text):
    stmts = split_statements(text)
    for s in stmts:
        assert s.sql and s.sql == s.sql.strip()
        assert s.line >= 1


def test_leading_keywords():
    assert leading_keywords("  /* c */ -- d\n alter system set x = 1") == ["ALTER", "SYSTEM"]
    assert leading_keywords("SHUTDOWN IMMEDIATE", n=1) == ["SHUTDOWN"]
    assert leading_keywords("select * from t", n=3) == ["SELECT"]
    assert leading_keywords('SHOW "all"') == ["SHOW"]
    assert leading_keywords("-- only a comment") == []
    assert leading_keywords("(SELECT 1)") == []
