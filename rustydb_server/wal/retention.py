"""WAL retention: which segments a checkpoint may remove.

Pure: the engine gathers the facts (segments on disk, which are archived,
the redo point, the oldest LSN the next incremental reads) and removes what
this returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class SegmentFacts:
    segno: int
    name: str
    archived: bool  # it has a .done mark


def recyclable(
    segments: Iterable[SegmentFacts],
    *,
    segment_size: int,
    redo_lsn: int,
    keep_bytes: int,
    archive_mode: bool,
    backup_keep_lsn: int | None,
) -> list[str]:
    """Names of the segments that may go, in the order given.

    A segment goes only when it ends at or before ``redo_lsn - keep_bytes``
    (recovery never reads it, and wal_keep_size is honoured); when archiving
    is on, only once archived; and when the next incremental or differential
    still reads it (it ends after ``backup_keep_lsn``), only if the archive
    has it to read instead.
    """
    limit = redo_lsn - keep_bytes
    out = []
    for seg in segments:
        seg_end = (seg.segno + 1) * segment_size
        if seg_end > limit:
            continue
        if archive_mode and not seg.archived:
            continue  # never remove WAL the archive has not got
        if not archive_mode and backup_keep_lsn is not None and seg_end > backup_keep_lsn:
            continue  # the next incremental reads it here (with archiving on, from the archive)
        out.append(seg.name)
    return out
