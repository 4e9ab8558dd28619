"""The SQL splitter under any text: the contract fuzz/sqlsplit.py states, checked with hypothesis.

It never raises; pieces never change the statements; the one-statement fast
path agrees with the full scan; what it cuts is complete by sqlite3_complete.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import sqlsplit
from tests.support.mutations import mutated

SEEDS = sqlsplit.seeds()
SQL_CHARS = st.sampled_from(list(";'\"`[]-/*\n\t\x0b\x0c\r ab1éEND") + ["\u3000", "\x1c", "\x00", "CREATE TRIGGER "])


def test_the_seeds_keep_the_contract():
    for seed in SEEDS:
        sqlsplit.check(seed)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.lists(SQL_CHARS, max_size=40).map("".join))
def test_any_sql_like_text_keeps_the_contract(size, text):
    sqlsplit.check(bytes([size]) + text.encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_any_bytes_keep_the_contract(data):
    sqlsplit.check(data)


@settings(max_examples=300, deadline=None)
@given(mutated(SEEDS))
def test_damaged_scripts_keep_the_contract(data):
    sqlsplit.check(data)
