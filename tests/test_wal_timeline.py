"""wal/timeline.py: history file names, format and parsing, and the choice of a new timeline."""

from __future__ import annotations

import os

import pytest

from rustydb_server.fileops import FileOps
from rustydb_server.wal import timeline as waltl
from rustydb_server.wal.timeline import Switch


@pytest.mark.parametrize(
    "timeline,name",
    [(1, "00000001.history"), (2, "00000002.history"), (0x1A, "0000001A.history"), (0xFFFFFFFF, "FFFFFFFF.history")],
)
def test_history_names(timeline, name, tmp_path):
    assert waltl.history_name(timeline) == name
    (tmp_path / name).write_text("")
    assert waltl.list_history_timelines(str(tmp_path)) == [timeline]


def test_only_history_files_are_listed_in_order(tmp_path):
    for name in ("00000003.history", "00000002.history", "0000000A.history"):
        (tmp_path / name).write_text("")
    for name in ("000000020000000000000001", "00000002.history.tmp.1", "2.history", "0000000a.history"):
        (tmp_path / name).write_text("")
    assert waltl.list_history_timelines(str(tmp_path)) == [2, 3, 10]


@pytest.mark.parametrize(
    "entries,text",
    [
        ([], ""),
        ([Switch(1, 0x4000000, "recovery to txid 14")], "1\t4000000\trecovery to txid 14\n"),
        (
            [Switch(1, 0x10, "restore of backup a"), Switch(2, 0xABCDEF, "recovery to LSN 0/ABCDEF")],
            "1\t10\trestore of backup a\n2\tABCDEF\trecovery to LSN 0/ABCDEF\n",
        ),
        ([Switch(3, 0, "")], "3\t0\t\n"),
    ],
)
def test_format_and_parse_are_inverse(entries, text):
    assert waltl.format_history(entries) == text
    assert waltl.parse_history(text) == entries


@pytest.mark.parametrize(
    "text,entries",
    [
        ("# comment\n\n1\t10\twhy\n", [Switch(1, 0x10, "why")]),
        ("1\t10\n", [Switch(1, 0x10, "")]),  # no reason given
        ("1\tff\ttab\tin reason\n", [Switch(1, 0xFF, "tab\tin reason")]),
    ],
)
def test_parse_accepts_comments_blank_lines_and_missing_reasons(text, entries):
    assert waltl.parse_history(text) == entries


@pytest.mark.parametrize("text,line", [("x\t10\twhy\n", 1), ("1\t10\tok\n2\n", 2), ("1\tzz\twhy\n", 1)])
def test_parse_names_the_bad_line(text, line):
    with pytest.raises(waltl.HistoryError, match=f"00000002.history line {line} is not"):
        waltl.parse_history(text, "00000002.history")


@pytest.mark.parametrize(
    "used,new",
    [([1], 2), ([1, 2, 3], 4), ({1, 7}, 8), ([5, 2], 6), ([], 1)],
)
def test_the_next_timeline_is_above_every_one_seen(used, new):
    assert waltl.next_timeline(used) == new


def test_a_branch_appends_where_it_left_its_parent():
    ancestors = [Switch(1, 0x10, "first")]
    assert waltl.branch(ancestors, 2, 0x20, "second") == [Switch(1, 0x10, "first"), Switch(2, 0x20, "second")]
    assert ancestors == [Switch(1, 0x10, "first")]  # the parent's history is not changed


def test_read_history_of_timeline_1_is_empty_and_a_missing_file_is_an_error(tmp_path):
    assert waltl.read_history(str(tmp_path), 1) == []
    with pytest.raises(waltl.HistoryError, match="history file .*00000002.history for timeline 2 is missing"):
        waltl.read_history(str(tmp_path), 2)


def test_write_history_goes_through_fileops_atomically(tmp_path):
    calls = []

    class Recording(FileOps):
        def open(self, path, flags, mode=0o600):
            calls.append(("open", os.path.basename(path)))
            return super().open(path, flags, mode)

        def fsync(self, fd):
            calls.append(("fsync",))
            super().fsync(fd)

        def rename(self, src, dst):
            calls.append(("rename", os.path.basename(dst)))
            super().rename(src, dst)

        def fsync_dir(self, path):
            calls.append(("fsync_dir", path))
            super().fsync_dir(path)

    entries = [Switch(1, 0x10, "why")]
    path = waltl.write_history(str(tmp_path), 2, entries, Recording())
    assert path == str(tmp_path / "00000002.history")
    assert [c[0] for c in calls] == ["open", "fsync", "rename", "fsync_dir"]
    assert calls[2] == ("rename", "00000002.history") and calls[3] == ("fsync_dir", str(tmp_path))
    assert waltl.read_history(str(tmp_path), 2) == entries
    assert os.listdir(tmp_path) == ["00000002.history"]
