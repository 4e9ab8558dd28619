import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustydb_server.wal.segment import (
    FRAGMENT_HEADER_SIZE,
    HEADER_SIZE,
    MIN_FRAGMENT_SPACE,
    BadFragment,
    Fragment,
    FragmentKind,
    SegmentHeaderError,
    SegmentStop,
    WalCorruptError,
    build_fragments,
    build_switch_fragment,
    check_segment_header,
    check_segment_size,
    decode_segment_header,
    encode_segment_header,
    end_of_data,
    list_segments,
    normalize_lsn,
    parse_fragment,
    parse_segment_name,
    scan_segment,
    segment_name,
)

SIZE = 64 * 1024


def test_segment_name_format():
    assert segment_name(1, 0x2A) == "00000001000000000000002A"
    assert parse_segment_name("00000001000000000000002A") == (1, 0x2A)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_segment_names_round_trip_and_sort_like_numbers(timeline, segno):
    name = segment_name(timeline, segno)
    assert len(name) == 24 and parse_segment_name(name) == (timeline, segno)


@pytest.mark.parametrize(
    "name",
    [
        "00000001000000000000002a",
        "0000000100000000000002A",
        "00000001000000000000002A.ready",
        "",
        "0000000100000000000000G0",
        "00000001000000000000002A\n",
    ],
)
def test_parse_segment_name_refuses_other_names(name):
    with pytest.raises(ValueError):
        parse_segment_name(name)


def test_list_segments_sorts_and_ignores_other_files(tmp_path):
    for name in [
        "000000020000000000000001",
        "000000010000000000000010",
        "000000010000000000000002",
        "000000010000000000000003.tmp",
        "archive_status",
        "00000002.history",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert list_segments(str(tmp_path)) == [
        (1, 2, "000000010000000000000002"),
        (1, 16, "000000010000000000000010"),
        (2, 1, "000000020000000000000001"),
    ]


@pytest.mark.parametrize("size", [0, 32 * 1024, 3 * 64 * 1024, 2 * 1024**3, 64 * 1024 + 1])
def test_segment_size_must_be_a_power_of_two_in_range(size):
    with pytest.raises(ValueError, match="power of two"):
        check_segment_size(size)


def test_segment_header_round_trips():
    raw = encode_segment_header(timeline=3, segno=42, system_id=2**63 + 5, segment_size=SIZE)
    assert len(raw) == HEADER_SIZE and raw.startswith(b"RDBWAL01")
    header = decode_segment_header(raw)
    assert (
        header.timeline,
        header.segno,
        header.system_id,
        header.segment_size,
        header.version,
    ) == (3, 42, 2**63 + 5, SIZE, 1)


@pytest.mark.parametrize("index", range(40))
def test_any_damaged_header_byte_is_detected(index):
    raw = bytearray(encode_segment_header(timeline=3, segno=42, system_id=9, segment_size=SIZE))
    raw[index] ^= 0x10
    with pytest.raises(SegmentHeaderError):
        decode_segment_header(bytes(raw))


def test_header_errors_say_what_is_wrong():
    raw = encode_segment_header(timeline=1, segno=0, system_id=9, segment_size=SIZE)
    with pytest.raises(SegmentHeaderError, match="magic"):
        decode_segment_header(b"XXXXXXXX" + raw[8:])
    with pytest.raises(SegmentHeaderError, match="truncated"):
        decode_segment_header(raw[:20])


@pytest.mark.parametrize(
    "expect, message",
    [
        ({"timeline": 2}, "timeline 1, expected 2"),
        ({"segno": 8}, "segment number 7, expected 8"),
        ({"system_id": 10}, "system id 9, expected 10"),
        ({"segment_size": SIZE * 2}, f"segment size {SIZE}, expected {SIZE * 2}"),
    ],
)
def test_check_segment_header_names_the_file_and_the_mismatch(expect, message):
    raw = encode_segment_header(timeline=1, segno=7, system_id=9, segment_size=SIZE)
    wanted = {"timeline": 1, "segno": 7, "system_id": 9, "segment_size": SIZE, **expect}
    with pytest.raises(WalCorruptError, match=message) as info:
        check_segment_header(raw, name="000000010000000000000007", **wanted)
    assert "000000010000000000000007" in str(info.value)
    assert info.value.segment_name == "000000010000000000000007"


def test_normalize_lsn_skips_headers_and_small_tails():
    assert normalize_lsn(0, SIZE) == HEADER_SIZE
    assert normalize_lsn(SIZE * 3 + 5, SIZE) == SIZE * 3 + HEADER_SIZE
    assert normalize_lsn(SIZE * 3 + 100, SIZE) == SIZE * 3 + 100
    assert normalize_lsn(SIZE - MIN_FRAGMENT_SPACE, SIZE) == SIZE - MIN_FRAGMENT_SPACE
    assert normalize_lsn(SIZE - MIN_FRAGMENT_SPACE + 1, SIZE) == SIZE + HEADER_SIZE
    assert normalize_lsn(SIZE, SIZE) == SIZE + HEADER_SIZE


def _segments_from(writes):
    """Lay fragments into in-memory zero-filled segments."""
    segments = {}
    for lsn, data in writes:
        segno, offset = divmod(lsn, SIZE)
        buf = segments.setdefault(segno, bytearray(SIZE))
        assert offset >= HEADER_SIZE and offset + len(data) <= SIZE
        buf[offset : offset + len(data)] = data
    return segments


def _read_all(segments, start_lsn):
    """A minimal reader over in-memory segments: joins fragments into bodies."""
    records, parts = [], []
    segno, offset = divmod(normalize_lsn(start_lsn, SIZE), SIZE)
    while segno in segments:
        for event in scan_segment(bytes(segments[segno]), segno, SIZE, offset):
            if isinstance(event, SegmentStop):
                stop = event
                break
            parts.append(event.payload)
            if event.kind in (FragmentKind.FULL, FragmentKind.LAST):
                records.append(b"".join(parts))
                parts = []
        if stop.how not in ("full", "switch"):
            break
        segno, offset = segno + 1, HEADER_SIZE
    return records


@given(
    st.lists(st.integers(0, 3 * SIZE), min_size=1, max_size=6),
    st.integers(0, SIZE - 1),
)
def test_fragments_lay_out_bodies_that_read_back(sizes, start_offset):
    lsn = SIZE * 5 + start_offset
    start = lsn
    writes, bodies = [], []
    for i, size in enumerate(sizes):
        body = bytes([i % 256]) * size
        fragments, end = build_fragments(body, lsn, SIZE)
        assert fragments[0][0] == normalize_lsn(lsn, SIZE)
        assert end == fragments[-1][0] + len(fragments[-1][1])
        for frag_lsn, data in fragments:
            offset = frag_lsn % SIZE
            assert offset >= HEADER_SIZE and SIZE - offset >= MIN_FRAGMENT_SPACE
            assert offset + len(data) <= SIZE
        assert sum(len(d) - FRAGMENT_HEADER_SIZE for _, d in fragments) == size
        writes += fragments
        bodies.append(body)
        lsn = end
    assert _read_all(_segments_from(writes), start) == bodies


def test_fragment_kinds_for_a_body_spanning_three_segments():
    fragments, _ = build_fragments(b"x" * (2 * SIZE + 10), HEADER_SIZE, SIZE)
    kinds = [
        parse_fragment(_segments_from([(lsn, d)])[lsn // SIZE], lsn % SIZE, lsn - lsn % SIZE, SIZE).kind
        for lsn, d in fragments
    ]
    assert kinds == [FragmentKind.FIRST, FragmentKind.MIDDLE, FragmentKind.LAST]


def test_a_fragment_only_validates_at_its_own_lsn():
    ((lsn, data),) = build_fragments(b"hello", SIZE + 100, SIZE)[0]
    buf = bytearray(SIZE)
    buf[100 : 100 + len(data)] = data
    assert parse_fragment(buf, 100, SIZE, SIZE) == Fragment(lsn, FragmentKind.FULL, b"hello", 100 + len(data))
    # The same bytes in the same place of another segment: a stale copy.
    with pytest.raises(BadFragment, match="checksum"):
        parse_fragment(buf, 100, 2 * SIZE, SIZE)
    moved = bytearray(SIZE)
    moved[200 : 200 + len(data)] = data
    with pytest.raises(BadFragment, match="checksum") as info:
        parse_fragment(moved, 200, SIZE, SIZE)
    assert info.value.next_offset == 200 + len(data)


def test_parse_fragment_edge_cases():
    buf = bytearray(SIZE)
    assert parse_fragment(buf, 64, 0, SIZE) is None  # zero header: end of data
    buf[64:73] = (SIZE).to_bytes(4, "big") + b"\0\0\0\1\1"
    with pytest.raises(BadFragment, match="past the segment end") as info:
        parse_fragment(buf, 64, 0, SIZE)
    assert info.value.next_offset is None
    buf[64:73] = (3).to_bytes(4, "big") + b"\0\0\0\1\x09"
    with pytest.raises(BadFragment, match="unknown fragment kind"):
        parse_fragment(buf, 64, 0, SIZE)
    buf[64:73] = (200).to_bytes(4, "big") + b"\0\0\0\1\1"
    with pytest.raises(BadFragment, match="end of the file"):
        parse_fragment(bytes(buf[:100]), 64, 0, SIZE)  # a file cut short


def test_scan_segment_stops_at_switch_and_at_a_full_tail():
    buf = bytearray(SIZE)
    switch = build_switch_fragment(SIZE * 2 + 64)
    buf[64 : 64 + len(switch)] = switch
    events = list(scan_segment(bytes(buf), 2, SIZE))
    assert events[0].kind == FragmentKind.SWITCH and events[-1] == SegmentStop("switch", 64)
    # A record that leaves fewer than MIN_FRAGMENT_SPACE bytes ends the segment.
    fragments, end = build_fragments(b"y" * (SIZE - 64 - 9 - 5), 64, SIZE)
    assert end == SIZE - 5 and len(fragments) == 1
    segments = _segments_from(fragments)
    events = list(scan_segment(bytes(segments[0]), 0, SIZE))
    assert events[-1] == SegmentStop("full", SIZE - 5)


def test_a_segment_number_beyond_the_lsn_space_is_a_damaged_header_not_a_crash():
    from rustydb_server.wal import segment as seg

    size = 1 << 16
    segno = (1 << 64) // size  # the first segment number whose LSNs do not fit 64 bits
    fields = seg._HEADER.pack(seg.MAGIC, seg.FORMAT_VERSION, 1, segno, 7, size)
    data = (fields + seg._HEADER_CRC.pack(seg.crc32c(fields))).ljust(seg.HEADER_SIZE, b"\0")
    with pytest.raises(seg.SegmentHeaderError, match="beyond the 64-bit LSN space"):
        seg.decode_segment_header(data)
    buf = data + seg.encode_fragment(0, seg.FragmentKind.FULL, b"x").ljust(size - seg.HEADER_SIZE, b"\0")
    with pytest.raises(seg.BadFragment):
        seg.parse_fragment(buf, seg.HEADER_SIZE, segno * size, size)
    assert seg.find_valid_fragment(buf, 0, segno, size) is None


@given(
    size=st.sampled_from([0, 1, 4095, 4096, 4097, (1 << 20) - 1, 1 << 20, (1 << 20) + 4097, 3 << 20]),
    data=st.data(),
)
def test_end_of_data_finds_the_last_nonzero_byte(size, data):
    # The end of a WAL segment's data, found by comparing chunks and blocks with
    # zeros, is where stripping every trailing zero byte ends, for any layout.
    buf = bytearray(size)
    for _ in range(data.draw(st.integers(0, 3))):
        if size:
            buf[data.draw(st.integers(0, size - 1))] = data.draw(st.integers(1, 255))
    start = data.draw(st.integers(0, size))
    end = data.draw(st.integers(start, size))
    expected = start + len(bytes(buf[start:end]).rstrip(b"\0"))
    assert end_of_data(bytes(buf), start, end) == expected
