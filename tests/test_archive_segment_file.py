"""The archive's listing: which timelines an archive directory has seen."""

from __future__ import annotations

from rustydb_server.archive import segment_file as sf
from rustydb_server.wal import segment as walseg


def test_archived_timelines_are_those_of_segments_and_history_files(tmp_path):
    for timeline, segno in ((1, 1), (1, 2), (3, 7)):
        (tmp_path / sf.archive_name(walseg.segment_name(timeline, segno))).write_bytes(b"")
    (tmp_path / "00000005.history").write_text("3\t0/00700000\tpitr\n")
    (tmp_path / walseg.segment_name(9, 1)).write_bytes(b"")  # not an archived file
    (tmp_path / "notes.txt").write_text("")
    assert sf.archived_timelines(str(tmp_path)) == {1, 3, 5}


def test_no_archive_has_seen_no_timeline(tmp_path):
    assert sf.archived_timelines("") == set()
    assert sf.archived_timelines(str(tmp_path / "missing")) == set()
    assert sf.archived_timelines(str(tmp_path)) == set()
