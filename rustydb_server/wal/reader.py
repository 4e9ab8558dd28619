"""Reading the WAL back: records in LSN order, a torn tail told apart from corruption.

How the end of the WAL is judged (the writer's ordering rules make this
sound, see writer.py):

* A zero header, a fragment that does not validate, or a record whose last
  fragments are missing is the *end of the WAL* (a torn tail) when nothing
  valid follows it: every record before it is returned, the partial one is not.
* It is *corruption* (WalCorruptError, naming segment and offset) when valid
  data follows: a valid fragment right after the bad one (by its claimed
  length), or a valid first fragment in any later segment. A later segment
  only receives data after every earlier one was fsynced, so bad bytes before
  it were once good, durable data.
* A fragment that validates but is out of sequence (a continuation without a
  start, a new record inside an unfinished one) is corruption: the writer
  never produces that.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple, Protocol

from rustydb_server import fileops as fileops_mod
from rustydb_server.wal.lsn import format_lsn
from rustydb_server.wal.segment import (
    FRAGMENT_HEADER_SIZE,
    HEADER_SIZE,
    MIN_FRAGMENT_SPACE,
    BadFragment,
    Fragment,
    FragmentKind,
    SegmentHeader,
    SegmentStop,
    WalCorruptError,
    check_segment_header,
    check_segment_size,
    find_valid_fragment,
    list_segments,
    normalize_lsn,
    parse_fragment,
    scan_segment,
    segment_name,
)

__all__ = [
    "WalCorruptError",
    "WalEntry",
    "find_wal_end",
    "read_segment_file",
    "read_segment_sequence",
    "read_segments",
    "read_supplied_segments",
    "read_wal",
    "SegmentSupplier",
]


class WalEntry(NamedTuple):
    # A named tuple, not a frozen dataclass: one is made per record read (replay's hot path).
    lsn: int  # position of the record's first fragment
    end_lsn: int  # the byte after its last fragment
    body: bytes


def read_wal(
    wal_dir: str,
    *,
    timeline: int,
    segment_size: int,
    start_lsn: int,
    system_id: int | None = None,
    stop_lsn: int | None = None,
    fileops: fileops_mod.FileOps = fileops_mod.REAL,
    skip_partial_first: bool = False,
) -> Iterator[WalEntry]:
    """Yield every record of ``timeline`` in ``wal_dir`` from ``start_lsn`` on.

    ``start_lsn`` must be a record boundary (a record's LSN or end LSN), or,
    with ``skip_partial_first``, the start of a segment: the tail of a record
    begun in an earlier segment is then skipped.
    A reader of a live WAL passes the writer's ``flushed_lsn`` as
    ``stop_lsn``: reading stops there, so records being written are never
    mistaken for a torn tail or for damage.
    """
    check_segment_size(segment_size)
    source = _DirSource(wal_dir, timeline, segment_size, system_id, fileops)
    scan = _WalScan(source, segment_size, start_lsn, skip_partial_first=skip_partial_first, stop_lsn=stop_lsn)
    return scan.entries()


def find_wal_end(
    wal_dir: str,
    *,
    timeline: int,
    segment_size: int,
    start_lsn: int,
    system_id: int | None = None,
    fileops: fileops_mod.FileOps = fileops_mod.REAL,
) -> int:
    """The LSN where a writer should resume: after the last valid record or switch."""
    check_segment_size(segment_size)
    source = _DirSource(wal_dir, timeline, segment_size, system_id, fileops)
    scan = _WalScan(source, segment_size, start_lsn, skip_partial_first=False)
    for _ in scan.entries():
        pass
    return scan.resume_lsn


def read_segments(
    paths: Iterable[str],
    start_lsn: int | None = None,
    *,
    timeline: int | None = None,
    segment_size: int | None = None,
    system_id: int | None = None,
    fileops: fileops_mod.FileOps = fileops_mod.REAL,
) -> Iterator[WalEntry]:
    """Yield the records of consecutive segment files (e.g. restored from an archive).

    The files may have any names; their headers say which segment they are.
    They must be one timeline and consecutive. Records that continue from one
    file into the next are joined. With ``start_lsn=None`` reading starts at
    the first file's first record, skipping the tail of a record that began
    in an earlier segment; a record still unfinished at the last file is not
    returned (pass the next file to get it).
    """
    source = _PathSource(list(paths), timeline, segment_size, system_id, fileops)
    if source.first_segno is None:
        return iter(())
    size = source.segment_size
    if start_lsn is None:
        return _WalScan(source, size, source.first_segno * size + HEADER_SIZE, skip_partial_first=True).entries()
    return _WalScan(source, size, start_lsn, skip_partial_first=False).entries()


def read_segment_sequence(
    paths: Mapping[int, str],
    *,
    timeline: int,
    segment_size: int,
    start_lsn: int,
    system_id: int | None = None,
    stop_lsn: int | None = None,
    fileops: fileops_mod.FileOps = fileops_mod.REAL,
) -> Iterator[WalEntry]:
    """Yield the records of ``timeline`` from ``start_lsn`` on, segments taken from ``paths``.

    ``paths`` maps each segment number to its file, wherever that file is:
    segments gathered from several places (an archive unpacked to a scratch
    directory and the server's own ``wal/``) are read as one WAL, so a record
    that begins in a file from one place and ends in a file from another is
    joined like any other. Each file's header must name that timeline and
    segment number. ``start_lsn`` must be a record boundary.

    With ``stop_lsn`` (a position every record before which is durable, such
    as the writer's ``flushed_lsn``) reading stops there, and the WAL ending
    earlier (a missing segment, a zero header, a fragment that does not
    validate) is WalCorruptError, never a torn tail: records known to exist
    are never silently left out. Without it the end is judged as by
    ``read_wal``.
    """
    check_segment_size(segment_size)
    source = _MapSource(dict(paths), timeline, segment_size, system_id, fileops)
    scan = _WalScan(
        source, segment_size, start_lsn, skip_partial_first=False, stop_lsn=stop_lsn, require_stop=stop_lsn is not None
    )
    return scan.entries()


class SegmentSupplier(Protocol):
    """Where ``read_supplied_segments`` gets segment bytes from (e.g. an archive
    unpacked on demand): only the segments the reading reaches are asked for."""

    def get(self, segno: int) -> bytes | None:
        """The whole segment ``segno``, or None if there is none."""

    def later(self, segno: int) -> list[int]:
        """The segment numbers after ``segno`` that exist, ascending."""


def read_supplied_segments(
    supplier: SegmentSupplier,
    *,
    timeline: int,
    segment_size: int,
    start_lsn: int,
    system_id: int | None = None,
    stop_lsn: int | None = None,
    skip_partial_first: bool = False,
) -> Iterator[WalEntry]:
    """Yield the records of ``timeline`` from ``start_lsn`` on, segments asked of
    ``supplier`` one at a time in LSN order as the reading reaches them
    (``skip_partial_first``: as in ``read_wal``).

    Reading stops as soon as the caller stops iterating: a segment after that
    point is never asked for. The end of the WAL and ``stop_lsn`` are judged as
    by ``read_segment_sequence``; each segment's header must name ``timeline``
    and its segment number.
    """
    check_segment_size(segment_size)
    source = _SupplierSource(supplier, timeline, segment_size, system_id)
    scan = _WalScan(
        source,
        segment_size,
        start_lsn,
        skip_partial_first=skip_partial_first,
        stop_lsn=stop_lsn,
        require_stop=stop_lsn is not None,
    )
    return scan.entries()


def read_segment_file(path: str, *, fileops: fileops_mod.FileOps = fileops_mod.REAL) -> Iterator[WalEntry]:
    """Yield the records that start and end in one segment file."""
    return read_segments([path], fileops=fileops)


# -- segment sources: where segment bytes come from


class _MappedSegment:
    """A read-only view of one whole segment file."""

    header: SegmentHeader

    def __init__(self, path: str, name: str, fileops: fileops_mod.FileOps) -> None:
        self.name = name
        fd = fileops.open(path, os.O_RDONLY)
        try:
            self.file_size = os.fstat(fd).st_size
            self.buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.file_size else b""
        finally:
            fileops.close(fd)

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()


class _BufferSegment:
    """One whole segment already in memory."""

    header: SegmentHeader

    def __init__(self, name: str, buf: bytes) -> None:
        self.name = name
        self.buf = buf
        self.file_size = len(buf)

    def close(self) -> None:
        pass


def _open_checked(
    path: str,
    name: str,
    fileops: fileops_mod.FileOps,
    *,
    timeline: int | None,
    segno: int | None,
    segment_size: int | None,
    system_id: int | None,
) -> _MappedSegment:
    return _checked(
        _MappedSegment(path, name, fileops),
        timeline=timeline,
        segno=segno,
        segment_size=segment_size,
        system_id=system_id,
    )


def _checked(seg, *, timeline, segno, segment_size, system_id):
    """``seg`` with its header checked (closed and WalCorruptError if it is wrong)."""
    name = seg.name
    try:
        header = check_segment_header(
            seg.buf[:HEADER_SIZE],
            name=name,
            timeline=timeline,
            segno=segno,
            segment_size=segment_size,
            system_id=system_id,
        )
        if seg.file_size != header.segment_size:
            raise WalCorruptError(
                name,
                seg.file_size,
                f"segment file is {seg.file_size} bytes, expected {header.segment_size}",
            )
    except BaseException:
        seg.close()
        raise
    seg.header = header
    return seg


class _PathSource:
    def __init__(
        self,
        paths: list[str],
        timeline: int | None,
        segment_size: int | None,
        system_id: int | None,
        fileops: fileops_mod.FileOps,
    ) -> None:
        self._fo = fileops
        self._paths: dict[int, str] = {}
        self._names: dict[int, str] = {}
        for path in paths:
            label = os.path.basename(path)
            seg = _open_checked(
                path,
                label,
                fileops,
                timeline=timeline,
                segno=None,
                segment_size=segment_size,
                system_id=system_id,
            )
            seg.close()
            header = seg.header
            timeline, segment_size, system_id = (
                header.timeline,
                header.segment_size,
                header.system_id,
            )
            if header.segno in self._paths:
                raise WalCorruptError(label, 0, f"segment {header.segno} given twice")
            self._paths[header.segno] = path
            self._names[header.segno] = label
        self.segment_size = segment_size or 0
        self.first_segno = min(self._paths) if self._paths else None
        self._timeline = timeline

    def name(self, segno: int) -> str:
        return self._names.get(segno) or segment_name(self._timeline or 0, segno)

    def open(self, segno: int) -> _MappedSegment | None:
        path = self._paths.get(segno)
        if path is None:
            return None
        return _open_checked(
            path,
            self._names[segno],
            self._fo,
            timeline=self._timeline,
            segno=segno,
            segment_size=self.segment_size,
            system_id=None,
        )

    def later(self, segno: int) -> list[int]:
        return sorted(other for other in self._paths if other > segno)


class _MapSource:
    """Segments of one timeline, each a file anywhere (segment number -> path)."""

    def __init__(
        self,
        paths: dict[int, str],
        timeline: int,
        segment_size: int,
        system_id: int | None,
        fileops: fileops_mod.FileOps,
    ) -> None:
        self._paths = paths
        self._timeline = timeline
        self.segment_size = segment_size
        self._system_id = system_id
        self._fo = fileops

    def name(self, segno: int) -> str:
        return segment_name(self._timeline, segno)

    def _path(self, segno: int) -> str | None:
        return self._paths.get(segno)

    def open(self, segno: int) -> _MappedSegment | None:
        path = self._path(segno)
        if path is None:
            return None
        try:
            seg = _open_checked(
                path,
                self.name(segno),
                self._fo,
                timeline=self._timeline,
                segno=segno,
                segment_size=self.segment_size,
                system_id=self._system_id,
            )
        except FileNotFoundError:
            return None
        # Without an expected system id, the first segment sets it for the rest.
        self._system_id = seg.header.system_id
        return seg

    def later(self, segno: int) -> list[int]:
        return sorted(other for other in self._paths if other > segno)


class _SupplierSource:
    """Segments of one timeline handed over in memory by a SegmentSupplier."""

    def __init__(self, supplier: SegmentSupplier, timeline: int, segment_size: int, system_id: int | None) -> None:
        self._supplier = supplier
        self._timeline = timeline
        self.segment_size = segment_size
        self._system_id = system_id

    def name(self, segno: int) -> str:
        return segment_name(self._timeline, segno)

    def open(self, segno: int) -> _BufferSegment | None:
        data = self._supplier.get(segno)
        if data is None:
            return None
        seg = _checked(
            _BufferSegment(self.name(segno), data),
            timeline=self._timeline,
            segno=segno,
            segment_size=self.segment_size,
            system_id=self._system_id,
        )
        self._system_id = seg.header.system_id
        return seg

    def later(self, segno: int) -> list[int]:
        return self._supplier.later(segno)


class _DirSource(_MapSource):
    """Segments of one timeline in a WAL directory."""

    def __init__(
        self,
        wal_dir: str,
        timeline: int,
        segment_size: int,
        system_id: int | None,
        fileops: fileops_mod.FileOps,
    ) -> None:
        super().__init__({}, timeline, segment_size, system_id, fileops)
        self._dir = wal_dir

    def _path(self, segno: int) -> str | None:
        return os.path.join(self._dir, self.name(segno))  # a missing file: open() returns None

    def later(self, segno: int) -> list[int]:
        return [
            other for timeline, other, _ in list_segments(self._dir) if timeline == self._timeline and other > segno
        ]


# -- the scan itself


class _WalScan:
    """Joins fragments into records across segments and judges where the WAL ends."""

    def __init__(
        self,
        source,
        segment_size: int,
        start_lsn: int,
        *,
        skip_partial_first: bool,
        stop_lsn: int | None = None,
        require_stop: bool = False,
    ):
        self._source = source
        self._size = segment_size
        self._start = start_lsn
        self._skip_partial = skip_partial_first
        self._stop_lsn = stop_lsn
        # Whether the WAL is known to reach stop_lsn (ending before it is damage).
        self._require_stop = require_stop
        # Where a writer should resume; advanced past each record and switch.
        self.resume_lsn = start_lsn

    def entries(self) -> Iterator[WalEntry]:
        size = self._size
        pos = normalize_lsn(self._start, size)
        segno, offset = divmod(pos, size)
        pending_lsn: int | None = None
        pending: list[bytes] = []
        while True:
            stop_offset = None if self._stop_lsn is None else self._stop_lsn - segno * size
            if stop_offset is not None and stop_offset <= offset:
                return
            seg = self._source.open(segno)
            if seg is None:
                self._refuse_gap(segno)
                self._refuse_short(self._source.name(segno), offset, segno * size + offset, "the segment is missing")
                return
            try:
                stop: SegmentStop | None = None
                for event in scan_segment(seg.buf, segno, size, offset, stop_offset):
                    if isinstance(event, SegmentStop):
                        stop = event
                        break
                    if event.kind is _FULL and pending_lsn is None:  # _take's common case, inline
                        self._skip_partial = False
                        entry = WalEntry(
                            event.lsn, event.lsn + FRAGMENT_HEADER_SIZE + len(event.payload), event.payload
                        )
                        self.resume_lsn = entry.end_lsn
                        yield entry
                        continue
                    entry, pending_lsn = self._take(seg.name, size, event, pending_lsn, pending)
                    if entry is not None:
                        self.resume_lsn = entry.end_lsn
                        yield entry
                assert stop is not None
                if stop.how == "limit":
                    return
                if stop.how in ("zero", "bad"):
                    self._refuse_valid_data_after(seg, segno, stop)
                    self._refuse_short(
                        seg.name, stop.offset, segno * size + stop.offset, stop.reason or "the data ends (zero header)"
                    )
                    return
            finally:
                seg.close()
            if stop.how == "switch":
                self.resume_lsn = (segno + 1) * size + HEADER_SIZE
            segno, offset = segno + 1, HEADER_SIZE

    def _take(
        self,
        name: str,
        size: int,
        fragment: Fragment,
        pending_lsn: int | None,
        pending: list[bytes],
    ) -> tuple[WalEntry | None, int | None]:
        """Feed one fragment to the record being assembled."""
        kind = fragment.kind
        offset = fragment.lsn % size
        if kind in (FragmentKind.FULL, FragmentKind.FIRST, FragmentKind.SWITCH):
            self._skip_partial = False
            if pending_lsn is not None:
                raise WalCorruptError(
                    name,
                    offset,
                    f"the record at LSN {pending_lsn} is unfinished but a {kind.name} fragment follows",
                )
            if kind == FragmentKind.FULL:
                return WalEntry(fragment.lsn, fragment.lsn + _span(fragment), fragment.payload), None
            if kind == FragmentKind.FIRST:
                pending.clear()
                pending.append(fragment.payload)
                return None, fragment.lsn
            return None, None
        # MIDDLE or LAST
        if pending_lsn is None:
            if self._skip_partial:
                return None, None  # the tail of a record from an earlier segment
            raise WalCorruptError(name, offset, f"a {kind.name} fragment continues no record")
        pending.append(fragment.payload)
        if kind == FragmentKind.MIDDLE:
            return None, pending_lsn
        body = b"".join(pending)
        pending.clear()
        return WalEntry(pending_lsn, fragment.lsn + _span(fragment), body), None

    def _refuse_short(self, name: str, offset: int, lsn: int, what: str) -> None:
        """Raise WalCorruptError if the WAL ends at ``lsn`` but is known to reach further."""
        if self._require_stop and self._stop_lsn is not None and lsn < self._stop_lsn:
            raise WalCorruptError(
                name, offset, f"{what}, but the WAL is known to reach LSN {format_lsn(self._stop_lsn)}"
            )

    def _refuse_gap(self, segno: int) -> None:
        later = self._source.later(segno)
        if later:
            raise WalCorruptError(
                self._source.name(segno),
                0,
                f"the segment is missing but later segment {self._source.name(later[0])} exists",
            )

    def _refuse_valid_data_after(self, seg: _MappedSegment, segno: int, stop: SegmentStop) -> None:
        """Raise WalCorruptError if valid data follows the spot where reading stopped."""
        evidence = self._valid_data_after(seg, segno, stop)
        if evidence is None:
            return  # a torn tail: the WAL ends here
        if _valid_fragment_at(seg.buf, stop.offset, segno, self._size):
            return  # the spot was being written as we read (a live WAL grew)
        what = stop.reason or "the data ends (zero header)"
        raise WalCorruptError(seg.name, stop.offset, f"{what}, but {evidence}")

    def _valid_data_after(self, seg: _MappedSegment, segno: int, stop: SegmentStop) -> str | None:
        nxt = stop.next_offset
        if (
            stop.how == "bad"
            and nxt is not None
            and self._size - nxt >= MIN_FRAGMENT_SPACE
            and _valid_fragment_at(seg.buf, nxt, segno, self._size)
        ):
            return f"a valid fragment follows at offset {nxt}"
        found = find_valid_fragment(seg.buf, stop.offset, segno, self._size)
        if found is not None:
            return f"a valid fragment follows at offset {found}"
        for later in self._source.later(segno):
            other = self._source.open(later)
            if other is None:
                continue
            try:
                valid = _valid_fragment_at(other.buf, HEADER_SIZE, later, self._size)
            finally:
                other.close()
            if valid:
                return f"later segment {other.name} holds valid records"
        return None


_FULL = FragmentKind.FULL


def _span(fragment: Fragment) -> int:
    return FRAGMENT_HEADER_SIZE + len(fragment.payload)


def _valid_fragment_at(buf, offset: int, segno: int, segment_size: int) -> bool:
    try:
        return parse_fragment(buf, offset, segno * segment_size, segment_size) is not None
    except BadFragment:
        return False
