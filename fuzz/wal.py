"""The WAL reader: any bytes as one or two segment files.

Contract: read_wal, find_wal_end, read_segments and read_segment_sequence
raise only WalCorruptError, and a record body only WalRecordError when
decoded; the readers agree with each other on what the records are, and
reading up to the end find_wal_end found (as a live reader with a flushed
LSN does) gives the same records without an error.

The input's first byte chooses: bit 0, fix the checksums (so the fuzzer gets
past them to the framing logic); bit 1, two segments (the next two bytes are
the first one's length); bit 2, keep the file sizes as given (else padded
with zeros to the segment size).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile

from rustydb_server.crc import crc32c
from rustydb_server.wal.reader import (
    WalCorruptError,
    find_wal_end,
    read_segment_sequence,
    read_segments,
    read_wal,
)
from rustydb_server.wal.record import CheckpointRecord, TxRecord, WalRecordError, decode_record, encode_record
from rustydb_server.wal.segment import (
    FRAGMENT_HEADER_SIZE,
    HEADER_SIZE,
    MIN_FRAGMENT_SPACE,
    fragment_crc,
    segment_name,
)

SIZE = 64 * 1024
FIRST_SEGNO = 1
# Reading starts 4 KiB before the end of the first segment, so that a small
# input holds a record spanning into the second one; the first segment's
# bytes between its header and there are zeros and never read.
FIRST_DATA = SIZE - 4096
START_LSN = FIRST_SEGNO * SIZE + FIRST_DATA
_HEADER_FIELDS = 36  # magic 8, version 4, timeline 4, segno 8, system id 8, size 4; then the crc


def _fix_checksums(seg: bytearray, offset: int) -> None:
    """Make the header's and every fragment's crc right, as a writer would have."""
    if len(seg) >= _HEADER_FIELDS + 4:
        seg[_HEADER_FIELDS : _HEADER_FIELDS + 4] = struct.pack(">I", crc32c(bytes(seg[:_HEADER_FIELDS])))
    if len(seg) < 24:
        return
    (segno,) = struct.unpack_from(">Q", seg, 16)
    while offset + FRAGMENT_HEADER_SIZE <= len(seg) and SIZE - offset >= MIN_FRAGMENT_SPACE:
        length, crc, kind = struct.unpack_from(">IIB", seg, offset)
        if length == crc == kind == 0:
            return
        end = offset + FRAGMENT_HEADER_SIZE + length
        if end > len(seg):
            return
        payload = bytes(seg[offset + FRAGMENT_HEADER_SIZE : end])
        struct.pack_into(">I", seg, offset + 4, fragment_crc((segno * SIZE + offset) % 2**64, kind, payload))
        offset = end


def _segments(data: bytes) -> tuple[int, list[bytes]]:
    mode = data[0] if data else 0
    rest = data[1:]
    if mode & 2 and len(rest) >= 2:
        (first_len,) = struct.unpack_from(">H", rest)
        rest = rest[2:]
        parts = [rest[:first_len], rest[first_len:]]
    else:
        parts = [rest]
    out = []
    for i, part in enumerate(parts):
        # A part is a segment's header, then its data from where reading starts.
        data_at = FIRST_DATA if i == 0 else HEADER_SIZE
        seg = bytearray(part[:HEADER_SIZE])
        if len(part) > HEADER_SIZE:
            seg += bytes(data_at - len(seg)) + part[HEADER_SIZE : HEADER_SIZE + SIZE - data_at]
        if not mode & 4:
            seg += bytes(SIZE - len(seg))
        if mode & 1:
            _fix_checksums(seg, data_at)
        out.append(bytes(seg))
    return mode, out


_workdir: str | None = None


def _fresh_dir() -> str:
    global _workdir
    if _workdir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _workdir = tempfile.mkdtemp(prefix="rustydb-fuzz-wal-", dir=base)
    shutil.rmtree(_workdir, ignore_errors=True)
    os.makedirs(_workdir)
    return _workdir


def _outcome(read):
    try:
        return list(read()), None
    except WalCorruptError as e:
        return None, e


def check(data: bytes) -> None:
    _, segments = _segments(data)
    wal_dir = _fresh_dir()
    paths = {}
    for i, seg in enumerate(segments):
        path = os.path.join(wal_dir, segment_name(1, FIRST_SEGNO + i))
        with open(path, "wb") as f:
            f.write(seg)
        paths[FIRST_SEGNO + i] = path

    by_dir, _ = _outcome(lambda: read_wal(wal_dir, timeline=1, segment_size=SIZE, start_lsn=START_LSN))
    by_map, _ = _outcome(lambda: read_segment_sequence(paths, timeline=1, segment_size=SIZE, start_lsn=START_LSN))
    by_paths, _ = _outcome(lambda: read_segments(list(paths.values()), START_LSN))
    _outcome(lambda: read_segments(list(paths.values())))
    if by_dir is not None and by_map is not None:
        assert by_dir == by_map, (by_dir, by_map)
    if by_dir is not None and by_paths is not None:
        assert by_dir == by_paths, (by_dir, by_paths)
    try:
        end = find_wal_end(wal_dir, timeline=1, segment_size=SIZE, start_lsn=START_LSN)
    except WalCorruptError:
        end = None
    assert (end is None) == (by_dir is None), (end, by_dir)
    if by_dir is None:
        return
    lsn = START_LSN
    for entry in by_dir:
        assert lsn <= entry.lsn < entry.end_lsn, (lsn, entry)
        lsn = entry.end_lsn
        try:
            decode_record(entry.body)
        except WalRecordError:
            pass
    assert end >= lsn, (end, lsn)
    # A live reader told the WAL is durable up to that end reads the same records.
    upto, error = _outcome(
        lambda: read_segment_sequence(paths, timeline=1, segment_size=SIZE, start_lsn=START_LSN, stop_lsn=end)
    )
    assert error is None and upto == by_dir, (end, error, upto, by_dir)


def seeds() -> list[bytes]:
    from rustydb_server.wal.writer import WalWriter

    work = tempfile.mkdtemp(prefix="rustydb-fuzz-seed-")
    try:
        with WalWriter(work, timeline=1, system_id=0x5EED, segment_size=SIZE, start_lsn=START_LSN) as writer:
            writer.append(encode_record(TxRecord(1, 1_700_000_000_000_000, "main", ())))
            writer.append(encode_record(CheckpointRecord(START_LSN, 2, 1_700_000_000_000_001)))
            writer.append(encode_record(TxRecord(2, 1_700_000_000_000_002, "main", (("ddl", "CREATE TABLE t(a)"),))))
            writer.append(b"\xaa" * 5000)  # spans into the second segment (no byte a fragment kind)
            writer.append(encode_record(TxRecord(3, 1_700_000_000_000_003, "main", (("changeset", b"x"),))))
            writer.flush()
        with open(os.path.join(work, segment_name(1, FIRST_SEGNO)), "rb") as f:
            first = f.read()
        with open(os.path.join(work, segment_name(1, FIRST_SEGNO + 1)), "rb") as f:
            second = f.read().rstrip(b"\0")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = first[:HEADER_SIZE] + first[FIRST_DATA:]
    both = struct.pack(">H", len(first)) + first + second
    return [bytes([0]) + first.rstrip(b"\0"), bytes([2]) + both, bytes([3]) + both, bytes([6]) + both]


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
