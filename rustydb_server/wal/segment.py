"""WAL segment files: their names, their header, and the fragment framing.

Pure functions over bytes; ``writer.py`` and ``reader.py`` do the I/O.

The WAL is one byte stream cut into fixed-size segment files. An LSN is a
position in that stream: ``segno * segment_size + offset``. Every segment
starts with a 64-byte header; records follow at offset 64.

A record body is written as one or more fragments, LevelDB-log style, so a
record can be larger than a segment::

    u32 BE payload length | u32 BE crc32c | u8 kind | payload

The crc covers the fragment's LSN (u64 BE), its kind and its payload, so a
stale fragment left over from an older write, or one copied to another
position, never validates where it does not belong.
"""

from __future__ import annotations

import enum
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from rustydb_server.crc import crc32c

HEADER_SIZE = 64
MAGIC = b"RDBWAL01"
FORMAT_VERSION = 1
MIN_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024

# magic | version | timeline | segno | system_id | segment_size, then crc32c.
_HEADER = struct.Struct(">8sIIQQI")
_HEADER_CRC = struct.Struct(">I")

FRAGMENT_HEADER_SIZE = 9
_FRAGMENT_HEADER = struct.Struct(">IIB")
_CRC_PREFIX = struct.Struct(">QB")
_MAX_LSN = (1 << 64) - 1
# A fragment needs its header plus at least one payload byte to be worth
# writing; a smaller segment tail stays zero and the stream moves on.
MIN_FRAGMENT_SPACE = 10

_NAME_RE = re.compile(r"([0-9A-F]{8})([0-9A-F]{16})")


class FragmentKind(enum.IntEnum):
    FULL = 1
    FIRST = 2
    MIDDLE = 3
    LAST = 4
    SWITCH = 5  # empty payload: the rest of this segment is unused


class SegmentHeaderError(ValueError):
    """A segment header is damaged or does not describe a valid segment."""


class WalCorruptError(Exception):
    """The WAL is damaged somewhere other than a torn tail; recovery must stop."""

    def __init__(self, segment_name: str, offset: int, reason: str) -> None:
        self.segment_name = segment_name
        self.offset = offset
        self.reason = reason
        super().__init__(f"WAL segment {segment_name} is corrupt at offset {offset}: {reason}; recovery stopped")


# -- names and positions


def check_segment_size(segment_size: int) -> None:
    if (
        type(segment_size) is not int
        or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        or segment_size & (segment_size - 1)
    ):
        raise ValueError(f"WAL segment size must be a power of two between 64 KiB and 1 GiB, got {segment_size!r}")


def segment_name(timeline: int, segno: int) -> str:
    if not 0 <= timeline < 2**32 or not 0 <= segno < 2**64:
        raise ValueError(f"timeline {timeline} / segment {segno} out of range")
    return f"{timeline:08X}{segno:016X}"


def parse_segment_name(name: str) -> tuple[int, int]:
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(match.group(1), 16), int(match.group(2), 16)


def list_segments(wal_dir: str) -> list[tuple[int, int, str]]:
    """Every segment file in ``wal_dir`` as (timeline, segno, name), sorted."""
    found = []
    for entry in os.listdir(wal_dir):
        try:
            timeline, segno = parse_segment_name(entry)
        except ValueError:
            continue
        found.append((timeline, segno, entry))
    found.sort()
    return found


def normalize_lsn(lsn: int, segment_size: int) -> int:
    """The position where the next fragment at or after ``lsn`` really goes.

    Skips a segment's header and a tail too small for a fragment.
    """
    offset = lsn % segment_size
    if offset < HEADER_SIZE:
        return lsn - offset + HEADER_SIZE
    if segment_size - offset < MIN_FRAGMENT_SPACE:
        return lsn - offset + segment_size + HEADER_SIZE
    return lsn


# -- segment header


@dataclass(frozen=True)
class SegmentHeader:
    timeline: int
    segno: int
    system_id: int
    segment_size: int
    version: int = FORMAT_VERSION


def encode_segment_header(*, timeline: int, segno: int, system_id: int, segment_size: int) -> bytes:
    check_segment_size(segment_size)
    fields = _HEADER.pack(MAGIC, FORMAT_VERSION, timeline, segno, system_id, segment_size)
    crc = _HEADER_CRC.pack(crc32c(fields))
    return (fields + crc).ljust(HEADER_SIZE, b"\0")


def decode_segment_header(data: bytes) -> SegmentHeader:
    if len(data) < HEADER_SIZE:
        raise SegmentHeaderError(f"segment header is truncated ({len(data)} of {HEADER_SIZE} bytes)")
    fields = bytes(data[: _HEADER.size])
    magic, version, timeline, segno, system_id, size = _HEADER.unpack(fields)
    if magic != MAGIC:
        raise SegmentHeaderError(f"bad magic {magic!r} (not a RustyDB WAL segment)")
    (stored_crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    if stored_crc != crc32c(fields):
        raise SegmentHeaderError("segment header checksum mismatch")
    if version != FORMAT_VERSION:
        raise SegmentHeaderError(f"unsupported WAL format version {version}")
    try:
        check_segment_size(size)
    except ValueError as exc:
        raise SegmentHeaderError(str(exc)) from None
    if (segno + 1) * size > _MAX_LSN:
        # LSNs are 64-bit: a segment number this large names no LSN the
        # server can write, so the header is damaged whatever its checksum.
        raise SegmentHeaderError(f"segment number {segno} is beyond the 64-bit LSN space")
    return SegmentHeader(timeline, segno, system_id, size, version)


def check_segment_header(
    data: bytes,
    *,
    name: str,
    timeline: int | None,
    segno: int | None,
    segment_size: int | None,
    system_id: int | None,
) -> SegmentHeader:
    """Decode a header and check it is the segment we expected to find.

    ``None`` means "any". Raises WalCorruptError naming the file.
    """
    try:
        header = decode_segment_header(data)
    except SegmentHeaderError as exc:
        raise WalCorruptError(name, 0, f"bad segment header: {exc}") from None
    expected = {
        "timeline": timeline,
        "segment number": segno,
        "segment size": segment_size,
        "system id": system_id,
    }
    actual = {
        "timeline": header.timeline,
        "segment number": header.segno,
        "segment size": header.segment_size,
        "system id": header.system_id,
    }
    for what, want in expected.items():
        if want is not None and actual[what] != want:
            raise WalCorruptError(name, 0, f"segment header has {what} {actual[what]}, expected {want}")
    return header


# -- fragments


def fragment_crc(lsn: int, kind: int, payload: bytes) -> int:
    return crc32c(payload, crc32c(_CRC_PREFIX.pack(lsn, kind)))


def encode_fragment(lsn: int, kind: FragmentKind, payload: bytes) -> bytes:
    header = _FRAGMENT_HEADER.pack(len(payload), fragment_crc(lsn, kind, payload), kind)
    return header + payload


def build_fragments(body: bytes, lsn: int, segment_size: int) -> tuple[list[tuple[int, bytes]], int]:
    """Lay out one record body as fragments starting at (or just after) ``lsn``.

    Returns ``([(fragment_lsn, fragment_bytes), ...], end_lsn)``: at most one
    fragment per segment, so each item is one contiguous write. The record's
    own LSN is the first fragment's LSN; ``end_lsn`` is the byte after the
    last fragment.
    """
    fragments, end = build_fragment_pieces([body], lsn, segment_size)
    return [(pos, b"".join(pieces)) for pos, pieces in fragments], end


def build_fragment_pieces(
    body_pieces: Sequence[bytes | memoryview], lsn: int, segment_size: int
) -> tuple[list[tuple[int, list[bytes | memoryview]]], int]:
    """``build_fragments`` for a body given as pieces to be joined, without joining them.

    Each fragment is ``(fragment_lsn, [header, payload views...])``: the
    views point into the caller's buffers, so a large body is never copied
    (the caller keeps the buffers alive until the pieces are written).
    """
    views = [memoryview(piece).cast("B") for piece in body_pieces if len(piece)]
    total = sum(len(view) for view in views)
    out: list[tuple[int, list[bytes | memoryview]]] = []
    pos = normalize_lsn(lsn, segment_size)
    start = index = inside = 0  # bytes laid out so far; where they stop in ``views``
    while True:
        room = segment_size - pos % segment_size - FRAGMENT_HEADER_SIZE
        take = min(room, total - start)
        first = start == 0
        last = start + room >= total
        if first and last:
            kind = FragmentKind.FULL
        elif first:
            kind = FragmentKind.FIRST
        elif last:
            kind = FragmentKind.LAST
        else:
            kind = FragmentKind.MIDDLE
        payload: list[bytes | memoryview] = []
        crc = crc32c(_CRC_PREFIX.pack(pos, kind))
        need = take
        while need:
            view = views[index]
            n = min(need, len(view) - inside)
            piece = view[inside : inside + n]
            payload.append(piece)
            crc = crc32c(piece, crc)
            need -= n
            inside += n
            if inside == len(view):
                index, inside = index + 1, 0
        out.append((pos, [_FRAGMENT_HEADER.pack(take, crc, kind), *payload]))
        end = pos + FRAGMENT_HEADER_SIZE + take
        if last:
            return out, end
        start += take
        pos = normalize_lsn(end, segment_size)


def build_switch_fragment(lsn: int) -> bytes:
    return encode_fragment(lsn, FragmentKind.SWITCH, b"")


class Fragment(NamedTuple):
    # A named tuple rather than a frozen dataclass: replay builds one per
    # fragment, and a tuple is made several times faster (as immutable).
    lsn: int
    kind: FragmentKind
    payload: bytes
    next_offset: int  # offset in the segment just after this fragment


class BadFragment(Exception):
    """The bytes at a position are not a valid fragment.

    ``next_offset`` is where the following fragment would start if the
    damaged header's length is believed, or None if the length is impossible.
    """

    def __init__(self, offset: int, reason: str, next_offset: int | None) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.next_offset = next_offset


def parse_fragment(buf, offset: int, segment_lsn: int, segment_size: int) -> Fragment | None:
    """Parse the fragment at ``offset`` of a segment's bytes.

    ``buf`` is the whole segment (bytes, mmap, ...). Returns None for a zero
    header (the end of written data); raises BadFragment otherwise when the
    bytes do not validate. The caller makes sure at least MIN_FRAGMENT_SPACE
    bytes remain.
    """
    if offset + FRAGMENT_HEADER_SIZE > len(buf):
        raise BadFragment(offset, "fragment header runs past the end of the file", None)
    if segment_lsn + segment_size > _MAX_LSN:
        raise BadFragment(offset, "the segment lies beyond the 64-bit LSN space", None)
    length, crc, kind = _FRAGMENT_HEADER.unpack_from(buf, offset)
    if length == 0 and crc == 0 and kind == 0:
        return None
    payload_start = offset + FRAGMENT_HEADER_SIZE
    next_offset = payload_start + length
    if next_offset > segment_size:
        raise BadFragment(offset, f"fragment length {length} runs past the segment end", None)
    if next_offset > len(buf):
        raise BadFragment(offset, f"fragment length {length} runs past the end of the file", None)
    known = _KINDS.get(kind)
    if known is None:
        raise BadFragment(offset, f"unknown fragment kind {kind}", next_offset)
    payload = bytes(buf[payload_start:next_offset])
    lsn = segment_lsn + offset
    if crc != crc32c(payload, crc32c(_CRC_PREFIX.pack(lsn, kind))):  # fragment_crc, inline: once per fragment
        raise BadFragment(offset, "fragment checksum mismatch", next_offset)
    if known is FragmentKind.SWITCH and length:
        raise BadFragment(offset, "switch fragment with a payload", next_offset)
    return Fragment(lsn, known, payload, next_offset)


# The kinds by their byte: a dict lookup, not FragmentKind(kind), on the per-fragment path.
_KINDS = {int(k): k for k in FragmentKind}


@dataclass(frozen=True)
class SegmentStop:
    """Why scanning one segment stopped.

    ``how`` is one of:
      "full"   - the tail is too small for another fragment: go to the next segment
      "switch" - a SWITCH fragment closed the segment: go to the next segment
      "zero"   - a zero header: no more data was written here
      "bad"    - bytes that do not validate (``reason``, ``next_offset`` say more)
      "limit"  - the caller's stop offset was reached
    """

    how: str
    offset: int
    reason: str = ""
    next_offset: int | None = None


def scan_segment(
    buf,
    segno: int,
    segment_size: int,
    start_offset: int = HEADER_SIZE,
    stop_offset: int | None = None,
):
    """Yield the valid fragments of one segment, then one SegmentStop.

    Fragments at or after ``stop_offset`` are not parsed.
    """
    segment_lsn = segno * segment_size
    offset = max(start_offset, HEADER_SIZE)
    while True:
        if stop_offset is not None and offset >= stop_offset:
            yield SegmentStop("limit", offset)
            return
        if segment_size - offset < MIN_FRAGMENT_SPACE:
            yield SegmentStop("full", offset)
            return
        try:
            fragment = parse_fragment(buf, offset, segment_lsn, segment_size)
        except BadFragment as bad:
            yield SegmentStop("bad", offset, bad.reason, bad.next_offset)
            return
        if fragment is None:
            yield SegmentStop("zero", offset)
            return
        yield fragment
        if fragment.kind == FragmentKind.SWITCH:
            yield SegmentStop("switch", offset)
            return
        offset = fragment.next_offset


_KIND_BYTE = re.compile(rb"[\x01-\x05]")
_SEARCH_CHUNK = 1 << 20
_SEARCH_BLOCK = 1 << 12
_ZEROS = bytes(_SEARCH_CHUNK)


def end_of_data(buf, start: int, end: int) -> int:
    """The offset just past the last non-zero byte of ``buf[start:end]``, or ``start`` if all are zero.

    A server's start checks the zeroed rest of its last WAL segment (16 MB by
    default) this way: equality with zeros is a memcmp, where
    ``bytes.rstrip(b"\\0")`` tests byte by byte (about 2.5 ms a megabyte).
    """
    last = end
    for size in (_SEARCH_CHUNK, _SEARCH_BLOCK):
        while last > start:
            lo = max(start, last - size)
            chunk = buf[lo:last]
            if chunk != (_ZEROS if len(chunk) == _SEARCH_CHUNK else _ZEROS[: len(chunk)]):
                break  # the last non-zero byte is in this chunk: narrow it down in smaller blocks
            last = lo
        else:
            return start
    lo = max(start, last - _SEARCH_BLOCK)
    return lo + len(bytes(buf[lo:last]).rstrip(b"\0"))


def find_valid_fragment(buf, start: int, segno: int, segment_size: int) -> int | None:
    """The first offset after ``start`` where a valid fragment lies, or None.

    Used only once reading has stopped, to tell a torn tail (nothing valid
    after it) from damage (valid data after it). All-zero space is skipped
    at C speed; only bytes that could be a fragment kind are tried.
    """
    end = min(len(buf), segment_size)
    # Nothing valid can start after the last non-zero byte but 8 (the kind).
    last = end_of_data(buf, start, end)
    if last == start:
        return None
    segment_lsn = segno * segment_size
    first = start + 1
    region = bytes(buf[first + FRAGMENT_HEADER_SIZE - 1 : last])
    for match in _KIND_BYTE.finditer(region):
        candidate = first + match.start()
        if segment_size - candidate < MIN_FRAGMENT_SPACE:
            break
        (length,) = struct.unpack_from(">I", buf, candidate)
        if candidate + FRAGMENT_HEADER_SIZE + length > end:
            continue
        try:
            if parse_fragment(buf, candidate, segment_lsn, segment_size) is not None:
                return candidate
        except BadFragment:
            continue
    return None
