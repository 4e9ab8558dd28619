"""WAL retention as a table: which segments a checkpoint may remove."""

from __future__ import annotations

import pytest

from rustydb_server.wal.retention import SegmentFacts, recyclable

SIZE = 1000


def segs(*archived: bool) -> list[SegmentFacts]:
    """Segments 1, 2, 3, ... with their .done marks."""
    return [SegmentFacts(n, f"seg{n}", done) for n, done in enumerate(archived, start=1)]


# Segment n covers LSN [n*1000, (n+1)*1000).
CASES = [
    # (why, segments, redo, keep_bytes, archive_mode, backup_keep_lsn, expected)
    ("nothing before the redo point", segs(False, False), 1500, 0, False, None, []),
    ("segments ending at or before redo go", segs(False, False, False), 3000, 0, False, None, ["seg1", "seg2"]),
    ("the segment holding redo stays", segs(False, False, False), 2999, 0, False, None, ["seg1"]),
    ("wal_keep_size keeps recent ones", segs(False, False, False), 4000, 1500, False, None, ["seg1"]),
    ("archiving on: unarchived stay", segs(True, False, True), 4000, 0, True, None, ["seg1", "seg3"]),
    ("archiving on: all archived go", segs(True, True), 3000, 0, True, None, ["seg1", "seg2"]),
    ("archiving off: .done marks do not matter", segs(False, True), 3000, 0, False, None, ["seg1", "seg2"]),
    ("an incremental still reads them", segs(False, False, False), 4000, 0, False, 2500, ["seg1"]),
    ("the backup's LSN at a segment end", segs(False, False, False), 4000, 0, False, 3000, ["seg1", "seg2"]),
    (
        "with archiving the incremental reads the archive",
        segs(True, True, True),
        4000,
        0,
        True,
        1500,
        ["seg1", "seg2", "seg3"],
    ),
    ("archiving on, incremental, one unarchived", segs(True, False, True), 4000, 0, True, 1500, ["seg1", "seg3"]),
    ("all rules at once", segs(True, True, True, True), 5000, 1000, True, 0, ["seg1", "seg2", "seg3"]),
    ("no segments", [], 5000, 0, True, 0, []),
]


@pytest.mark.parametrize(
    "segments, redo, keep, archive_mode, backup_keep, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_recyclable(segments, redo, keep, archive_mode, backup_keep, expected):
    got = recyclable(
        segments,
        segment_size=SIZE,
        redo_lsn=redo,
        keep_bytes=keep,
        archive_mode=archive_mode,
        backup_keep_lsn=backup_keep,
    )
    assert got == expected
