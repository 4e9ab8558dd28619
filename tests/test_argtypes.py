"""tools/argtypes.py: the numeric flags' converters and the words they refuse with."""

from __future__ import annotations

import argparse

import pytest

from rustydb_server.tools.argtypes import MAX_THREADS, niceness, thread_count


@pytest.mark.parametrize("text,value", [("1", 1), ("8", 8), (str(MAX_THREADS), MAX_THREADS)])
def test_thread_counts_in_range(text, value):
    assert thread_count(text) == value


@pytest.mark.parametrize(
    "text,words",
    [("0", "at least 1"), ("-2", "at least 1"), ("65", "at most 64"), ("two", "'two' is not a whole number")],
)
def test_thread_counts_out_of_range(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        thread_count(text)


@pytest.mark.parametrize("text,value", [("0", 0), ("10", 10), ("19", 19)])
def test_niceness_in_range(text, value):
    assert niceness(text) == value


@pytest.mark.parametrize("text,words", [("20", "20 is not a niceness from 0 to 19"), ("-1", "-1 is not"), ("x", "'x'")])
def test_niceness_out_of_range(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        niceness(text)
