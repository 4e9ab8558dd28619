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


def test_as_of_reads_a_time_a_txid_or_an_lsn():
    from rustydb_server.restore.pitr import parse_time
    from rustydb_server.tools.argtypes import as_of

    t = as_of("2026-12-01 14:30:00")
    assert (t.kind, t.value, t.inclusive) == ("time", parse_time("2026-12-01 14:30:00"), True)
    assert (as_of("txid:42").kind, as_of("txid:42").value) == ("txid", 42)
    assert (as_of("TXID: 7").kind, as_of("TXID: 7").value) == ("txid", 7)
    assert (as_of("lsn:1/0000A0").kind, as_of("lsn:1/0000A0").value) == ("lsn", (1 << 32) | 0xA0)
    assert as_of("2026-12-01T14:30:00+01:00").value == parse_time("2026-12-01T14:30:00+01:00")


@pytest.mark.parametrize(
    "text,words",
    [("txid:x", "whole number"), ("txid:0", "at least 1"), ("lsn:zz", "an LSN"), ("yesterday", "not a point in time")],
)
def test_as_of_refuses(text, words):
    from rustydb_server.tools.argtypes import as_of

    with pytest.raises(argparse.ArgumentTypeError, match=words):
        as_of(text)
