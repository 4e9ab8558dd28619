"""Archived segments of one timeline, unpacked ahead of the replay in worker threads.

Point-in-time recovery reads the archive through ``ArchivedSegments``, a
``SegmentSupplier`` of ``wal/reader.py``: the reader asks for one segment at a
time, in LSN order, only when its reading reaches it. Each request also starts
unpacking (decryption, decompression, digest check: work that releases the
GIL) the next ``depth`` segments in worker threads, so while the replay works
through one segment the next ones are being prepared, and no more than
``depth`` segments beyond the one being read are ever held in memory.

Reading that stops at the recovery target therefore never opens the archive
past ``depth`` segments beyond it, and a segment that cannot be unpacked only
fails the recovery if the reading asks for it: a damaged segment after the
target does not matter.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from ..archive import segment_file as sf
from ..wal import segment as walseg

# Segments unpacked ahead of the one being replayed. A 16 MiB segment of small
# transactions takes seconds to replay and tens of milliseconds to unpack, so
# two ahead already keep the replay from waiting; four cover a slow key or disk.
READ_AHEAD = 4


class ArchiveGapError(Exception):
    """A segment is missing from the archive while later ones are there."""


class ArchivedSegments:
    """Segments ``first``..``last`` (or the archive's end) of ``timeline``, unpacked on demand.

    ``segments`` maps segment numbers to archive files (``list_archive``'s
    listing of one timeline). Use as a context manager: leaving it cancels
    what is not started and waits for the worker threads.
    """

    def __init__(
        self,
        segments: dict[int, str],
        timeline: int,
        *,
        first: int,
        last: int | None = None,
        system_id: int | None,
        key=None,
        depth: int = READ_AHEAD,
        workers: int = 2,
    ) -> None:
        self.timeline = timeline
        self._paths = {s: p for s, p in segments.items() if s >= first and (last is None or s <= last)}
        self._system_id = system_id
        self._key = key
        self._depth = max(0, depth)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="pitr-unpack")
        self._futures: dict[int, Future] = {}
        self._scheduled_to = first - 1  # the highest segment number submitted so far
        self.segments_read = 0
        self.wait_seconds = 0.0  # how long the replay waited for a segment not ready yet

    def __enter__(self) -> ArchivedSegments:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _unpack(self, segno: int) -> bytes:
        _name, data = sf.unpack_segment(self._paths[segno], system_id=self._system_id, key=self._key)
        return data

    def _schedule(self, segno: int) -> None:
        """Have ``segno`` and the ``depth`` consecutive segments after it under way."""
        end = segno + self._depth
        s = max(segno, self._scheduled_to + 1)
        while s <= end and s in self._paths:
            if s not in self._futures:
                self._futures[s] = self._pool.submit(self._unpack, s)
            self._scheduled_to = s
            s += 1

    def get(self, segno: int) -> bytes | None:
        if segno not in self._paths:
            later = self.later(segno)
            if later:
                raise ArchiveGapError(
                    f"the archive is missing WAL segment {walseg.segment_name(self.timeline, segno)} "
                    f"(it holds {walseg.segment_name(self.timeline, later[0])} after it); recovery "
                    "cannot skip a gap"
                )
            return None
        for older in [s for s in self._futures if s < segno]:  # read past already
            self._futures.pop(older).cancel()
        self._schedule(segno)
        future = self._futures.pop(segno)
        started = time.perf_counter()
        data = future.result()  # a segment that cannot be unpacked fails here, when it is needed
        self.wait_seconds += time.perf_counter() - started
        self.segments_read += 1
        self._schedule(segno + 1)
        return data

    def __contains__(self, segno: int) -> bool:
        return segno in self._paths

    def later(self, segno: int) -> list[int]:
        return sorted(s for s in self._paths if s > segno)
