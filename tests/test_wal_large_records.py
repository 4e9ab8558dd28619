"""Large WAL records written from their pieces are the bytes the format says.

A bulk load's record is encoded as pieces (``encode_record_parts``: a large
changeset is the record's own buffer) and written fragment by fragment from
those pieces, each new segment created holding its first fragment. Nothing
on disk may differ from what the WAL format gave before: the records are
compared with msgpack's own encoding of the record map, and whole segment
files with a reference laid out here from the format's definition (header,
fragments of ``u32 length | u32 crc32c(lsn, kind, payload) | u8 kind``,
zeros). So segments written before this change and after it read the same,
and old ones still replay (the reader is the one it always was).
"""

from __future__ import annotations

import os
import random

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_server.crc import crc32c
from rustydb_server.wal.reader import find_wal_end, read_wal
from rustydb_server.wal.record import (
    BY_REFERENCE_BYTES,
    TxRecord,
    decode_record,
    encode_record,
    encode_record_parts,
)
from rustydb_server.wal.segment import (
    FRAGMENT_HEADER_SIZE,
    HEADER_SIZE,
    MIN_FRAGMENT_SPACE,
    build_fragment_pieces,
    build_fragments,
    encode_segment_header,
    segment_name,
)
from rustydb_server.wal.writer import WalWriter

SIZE = 64 * 1024
SYSID = 0x5EED

# Sizes around every boundary the encoding has: msgpack's bin 8/16/32
# headers, the by-reference threshold, a segment's room for one fragment.
BOUNDARIES = [0, 1, 255, 256, 65535, 65536, BY_REFERENCE_BYTES - 1, BY_REFERENCE_BYTES, SIZE - 73, 3 * SIZE + 5]
sizes = st.one_of(st.sampled_from(BOUNDARIES), st.integers(min_value=0, max_value=3 * SIZE))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@st.composite
def tx_records(draw):
    steps = []
    for kind, size in draw(st.lists(st.tuples(st.sampled_from(["ddl", "changeset"]), sizes), max_size=4)):
        if kind == "ddl":
            steps.append(("ddl", "CREATE INDEX i ON t(" + "x" * min(size, 300) + ")"))
        else:
            steps.append(("changeset", payload(size, draw(st.integers(0, 1000)))))
    return TxRecord(
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.text(max_size=20)),
        tuple(steps),
    )


def reference_body(rec: TxRecord) -> bytes:
    """The body as the format defines it: msgpack of the record's map."""
    body = {"t": "tx", "txid": rec.txid, "commit_time_us": rec.commit_time_us, "database": rec.database}
    body["steps"] = [[kind, p] for kind, p in rec.steps]
    return msgpack.packb(body, use_bin_type=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx_records())
def test_a_record_in_pieces_is_the_formats_bytes_and_round_trips(rec):
    parts = encode_record_parts(rec)
    body = b"".join(parts)
    assert body == encode_record(rec) == reference_body(rec)
    assert decode_record(body) == rec
    # a large changeset is the record's own object, not a copy of it
    for kind, p in rec.steps:
        if kind == "changeset" and len(p) >= BY_REFERENCE_BYTES:
            assert any(part is p for part in parts)


@settings(max_examples=40, deadline=None)
@given(st.lists(sizes, min_size=1, max_size=4), st.integers(0, SIZE - 1))
def test_fragments_from_pieces_equal_fragments_of_the_joined_body(piece_sizes, lsn):
    pieces = [payload(n, i) for i, n in enumerate(piece_sizes)]
    from_pieces, end = build_fragment_pieces(pieces, SIZE + lsn, SIZE)
    joined, joined_end = build_fragments(b"".join(pieces), SIZE + lsn, SIZE)
    assert end == joined_end
    assert [(pos, b"".join(p)) for pos, p in from_pieces] == joined


def reference_segments(bodies: list[bytes], segment_size: int) -> dict[str, bytes]:
    """Segment files holding ``bodies`` from the start of the WAL (LSN 0),
    laid out from the format's definition alone."""
    files: dict[int, bytearray] = {}
    pos = HEADER_SIZE

    def segment(segno: int) -> bytearray:
        if segno not in files:
            header = encode_segment_header(timeline=1, segno=segno, system_id=SYSID, segment_size=segment_size)
            files[segno] = bytearray(header) + bytearray(segment_size - len(header))
        return files[segno]

    def skip(p: int) -> int:
        offset = p % segment_size
        if offset < HEADER_SIZE:
            return p - offset + HEADER_SIZE
        if segment_size - offset < MIN_FRAGMENT_SPACE:
            return p - offset + segment_size + HEADER_SIZE
        return p

    for body in bodies:
        pos = skip(pos)
        start = 0
        while True:
            room = segment_size - pos % segment_size - FRAGMENT_HEADER_SIZE
            chunk = body[start : start + room]
            first, last = start == 0, start + room >= len(body)
            kind = 1 if first and last else 2 if first else 4 if last else 3
            crc = crc32c(chunk, crc32c(pos.to_bytes(8, "big") + bytes([kind])))
            fragment = len(chunk).to_bytes(4, "big") + crc.to_bytes(4, "big") + bytes([kind]) + chunk
            buf = segment(pos // segment_size)
            offset = pos % segment_size
            buf[offset : offset + len(fragment)] = fragment
            pos += len(fragment)
            if last:
                break
            start += room
            pos = skip(pos)
    return {segment_name(1, segno): bytes(buf) for segno, buf in files.items()}


def read_records(wal_dir) -> list:
    return [decode_record(e.body) for e in read_wal(str(wal_dir), timeline=1, segment_size=SIZE, start_lsn=0)]


def written_segments(wal_dir) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(wal_dir)):
        with open(os.path.join(wal_dir, name), "rb") as f:
            out[name] = f.read()
    return out


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(tx_records(), min_size=1, max_size=3))
def test_segments_written_from_pieces_are_the_formats_bytes(tmp_path_factory, records):
    wal_dir = tmp_path_factory.mktemp("wal")
    with WalWriter(str(wal_dir), timeline=1, system_id=SYSID, segment_size=SIZE, start_lsn=0) as writer:
        for rec in records:
            writer.append(encode_record_parts(rec))
        writer.flush()
    bodies = [reference_body(rec) for rec in records]
    assert written_segments(wal_dir) == reference_segments(bodies, SIZE)
    # and they read back as the records, as segments written the old way do
    assert read_records(wal_dir) == records


def test_segments_in_the_old_layout_read_back(tmp_path):
    """Segments laid out the old way (zero-filled first, the record's whole
    msgpack body cut into fragments) read as the same records."""
    records = [
        TxRecord(7, 1_700_000_000_000_000, "rustydb", (("changeset", payload(3 * SIZE, 1)),)),
        TxRecord(8, 1_700_000_000_000_001, "rustydb", (("ddl", "CREATE TABLE t(a)"), ("changeset", b"x" * 10))),
    ]
    for name, data in reference_segments([reference_body(r) for r in records], SIZE).items():
        (tmp_path / name).write_bytes(data)
    assert read_records(tmp_path) == records
    # the writer goes on after them, with a large record written from pieces
    end = find_wal_end(str(tmp_path), timeline=1, segment_size=SIZE, start_lsn=0)
    third = TxRecord(9, 1_700_000_000_000_002, "rustydb", (("changeset", payload(2 * SIZE, 2)),))
    with WalWriter(str(tmp_path), timeline=1, system_id=SYSID, segment_size=SIZE, start_lsn=end) as writer:
        writer.append(encode_record_parts(third))
        writer.flush()
    assert read_records(tmp_path) == [*records, third]
