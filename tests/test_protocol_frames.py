"""Frames: encoding, bulk frames, the FrameDecoder and its limits, with bytes alone."""

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from rustydb_client.protocol.frames import (
    BULK_VIEW_MIN,
    FrameDecoder,
    bin_header,
    bulk_frame_head,
    decode_body,
    encode_bulk_frame,
    encode_frame,
    encode_query_frame,
)


def decode_all(data: bytes, **kw) -> list[dict]:
    d = FrameDecoder(**kw)
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


MESSAGES = [
    {"type": "hello", "version": 1, "user": "alice", "database": None, "client": "test"},
    {"type": "query", "sql": "SELECT 'é', x'00'", "batch_rows": 5},
    {"type": "rows", "rows": [[1, "a", None, 1.5, b"\x00\xff"], [-(2**63), "", None, -0.0, b""]]},
    {"type": "notice", "message": "database sales does not exist, skipping"},
    {"type": "backup_data", "entry": "e", "last": False, "data": b"\x00" * 1000},
    {"type": "goodbye"},
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m["type"])
def test_frames_round_trip(msg):
    assert decode_all(encode_frame(msg)) == [msg]


def test_frames_split_at_every_byte_decode_the_same():
    data = b"".join(encode_frame(m) for m in MESSAGES)
    d = FrameDecoder()
    out = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        while (m := d.next_message()) is not None:
            out.append(m)
    assert out == MESSAGES
    assert d.buffered == 0


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=10), st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), values, max_size=6))
def test_any_message_round_trips_through_a_frame(type_, fields):
    msg = {"type": type_, **fields}
    try:
        (back,) = decode_all(encode_frame(msg))
    except RemoteProtocolError as e:
        # only what the receiving side refuses for everyone: too deep a nesting
        assert e.code == "frame_too_deep"
        return
    assert back == msg


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 255, 256, 65535, 65536, 70000]), st.text(max_size=40), st.booleans())
def test_bulk_frame_is_byte_identical_to_the_plain_frame(size, entry, last):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = {"type": "backup_data", "entry": entry, "last": last}
    head, body = encode_bulk_frame(msg, "data", data)
    assert head + body == encode_frame({**msg, "data": data})
    assert bulk_frame_head(msg, "data", size) == head
    assert body is data  # passed through, not copied


def test_bin_header_is_what_msgpack_writes():
    for size in (0, 255, 256, 65535, 65536):
        assert msgpack.packb(bytes(size)).startswith(bin_header(size))


def test_bulk_frame_refuses_what_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as e:
        encode_bulk_frame({"type": "backup_data"}, "data", b"x" * 2000, max_frame=1000)
    assert e.value.code == "frame_too_large"
    assert isinstance(e.value, LocalProtocolError)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=6),
)
def test_large_frames_fed_in_any_pieces_decode_the_same(cuts, sizes):
    msgs = [
        {"type": "backup_data", "entry": f"e{i}", "last": False, "data": bytes([i]) * n} for i, n in enumerate(sizes)
    ]
    data = b"".join(encode_frame(m) for m in msgs)
    d = FrameDecoder()
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        d.feed(data[pos : pos + step])
        pos, i = pos + step, i + 1
        while (m := d.next_message()) is not None:
            out.append(m)
    assert out == msgs
    assert d.buffered == 0


def receive(data: bytes, cuts: list[int], *, bulk_views: bool) -> list[dict]:
    """Decode ``data`` as a client socket would deliver it: into the frame's
    own buffer when the decoder offers one (recv_into), else fed in pieces."""
    d = FrameDecoder()
    out, pos, i = [], 0, 0
    while True:
        while (m := d.next_message(bulk_views=bulk_views)) is not None:
            out.append(m)
        if pos >= len(data):
            break
        step = cuts[i % len(cuts)]
        i += 1
        place = d.recv_buffer()
        if place is not None:
            n = min(step, len(place), len(data) - pos)
            place[:n] = data[pos : pos + n]
            d.received_into(n)
        else:
            n = min(step, len(data) - pos)
            d.feed(data[pos : pos + n])
        pos += n
    assert d.buffered == 0
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6),
    st.lists(st.sampled_from([0, 5, 4000, BULK_VIEW_MIN - 1, BULK_VIEW_MIN, 150_000]), min_size=1, max_size=6),
    st.booleans(),
)
def test_frames_received_in_place_decode_the_same(cuts, sizes, bulk_views):
    msgs = []
    for i, n in enumerate(sizes):
        msgs.append({"type": "backup_data", "entry": f"e{i}", "last": i % 2 == 0, "data": bytes([i + 1]) * n})
        msgs.append({"type": "notice", "message": f"between {i}"})
    data = b"".join(encode_frame(m) for m in msgs)
    out = receive(data, cuts, bulk_views=bulk_views)
    assert out == msgs  # a memoryview compares equal to the bytes it shows
    for m in out:
        if m["type"] == "backup_data":
            big = bulk_views and len(m["data"]) >= BULK_VIEW_MIN
            assert isinstance(m["data"], memoryview if big else bytes)
            if big:
                assert m["data"].readonly


def test_bulk_view_follows_msgpack_for_repeated_and_misplaced_keys():
    big = b"x" * BULK_VIEW_MIN
    # A key given twice: the last value wins, as with unpackb.
    body = (
        b"\x83"
        + msgpack.packb("type")
        + msgpack.packb("backup_data")
        + msgpack.packb("data")
        + msgpack.packb(1)
        + msgpack.packb("data")
        + msgpack.packb(big)
    )
    msg = decode_body(body, bulk_views=True)
    assert msg == decode_body(body) and isinstance(msg["data"], memoryview)
    assert list(msg) == ["type", "data"]
    # The bin as the 'type' itself is no message.
    body = b"\x82" + msgpack.packb("data") + msgpack.packb(1) + msgpack.packb("type") + msgpack.packb(big)
    with pytest.raises(ProtocolError, match="string 'type'"):
        decode_body(body, bulk_views=True)
    # A root array ending in a bin is no message either.
    with pytest.raises(ProtocolError, match="map"):
        decode_body(msgpack.packb(["backup_data", big]), bulk_views=True)
    # Inside a nested map the bin stays a copy.
    msg = decode_body(msgpack.packb({"type": "t", "inner": {"data": big}}), bulk_views=True)
    assert isinstance(msg["inner"]["data"], bytes)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.none()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=5)
        | st.binary(max_size=5)
        | st.just(b"z" * BULK_VIEW_MIN),
        max_size=4,
    ),
    st.text(max_size=5),
)
def test_bulk_views_decode_like_unpackb(fields, type_):
    body = msgpack.packb({"type": type_, **fields}, use_bin_type=True)
    try:
        plain = decode_body(body)
    except ProtocolError as e:
        with pytest.raises(ProtocolError) as again:
            decode_body(body, bulk_views=True)
        assert again.value.code == e.code
        return
    assert decode_body(body, bulk_views=True) == plain


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_with_bulk_views_only_raise_protocol_error(body):
    try:
        decode_body(body + b"\xc6\x00\x01\x00\x00" + bytes(65536), bulk_views=True)
    except RemoteProtocolError:
        pass


def test_received_into_must_match_the_buffer():
    d = FrameDecoder()
    with pytest.raises(ValueError):
        d.received_into(1)
    d.feed(encode_frame({"type": "x", "data": bytes(100_000)})[:10])
    place = d.recv_buffer()
    with pytest.raises(ValueError):
        d.received_into(len(place) + 1)


# ---------------------------------------------------------------- limits


def test_huge_claimed_length_fails_before_any_body_arrives():
    d = FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError) as e:
        d.feed(struct.pack(">I", 1025))
    assert e.value.code == "frame_too_large"
    # The decoder stays failed: the connection must be closed, not resynced.
    with pytest.raises(ProtocolError):
        d.next_message()


def test_claimed_length_at_the_limit_is_accepted():
    msg = {"type": "notice", "message": "x" * 100}
    frame = encode_frame(msg)
    assert decode_all(frame, max_frame=len(frame) - 4) == [msg]
    with pytest.raises(ProtocolError):
        decode_all(frame, max_frame=len(frame) - 5)


def test_encode_refuses_a_frame_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as e:
        encode_frame({"type": "notice", "message": "x" * 2000}, max_frame=1000)
    assert e.value.code == "frame_too_large"
    assert isinstance(e.value, LocalProtocolError)


def test_empty_frame_is_rejected():
    with pytest.raises(ProtocolError):
        decode_all(struct.pack(">I", 0))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used type byte
        b"\xd6\xff\x00\x00\x00\x00",  # ext (timestamp)
        msgpack.packb({"type": "x"}) + b"\x00",  # trailing bytes
        msgpack.packb({"type": "notice", "message": "abc"})[:-1],  # truncated
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb({"kind": "x"}),  # no type
        msgpack.packb({1: "x"}),  # non-string key
        b"\x81\xa4type\xa2\xff\xfe",  # invalid UTF-8
    ],
)
def test_malformed_bodies_raise_protocol_error(body):
    with pytest.raises(RemoteProtocolError):
        decode_all(raw_frame(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_protocol_error(data):
    d = FrameDecoder(max_frame=4096)
    try:
        d.feed(data)
        while d.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass


def test_the_decoder_remembers_the_largest_frame_it_took():
    decoder = FrameDecoder()
    small, large = encode_frame({"type": "x"}), encode_frame({"type": "x", "pad": b"p" * 100_000})
    for frame in (small, large, small):
        decoder.feed(frame)
        assert decoder.next_message() is not None
    assert decoder.largest_frame == len(large) - 4


# ------------------------------------------------- the small-frame fast paths

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=30,
)


def _outcome(body) -> object:
    try:
        return decode_body(body)
    except RemoteProtocolError as e:
        return e.code


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _values, max_size=5), st.binary(max_size=3), st.booleans())
def test_a_small_body_decodes_as_the_scan_first_path_does(fields, junk, damage):
    # bytes take the unpack-first path, a memoryview the scan-first one: the
    # same message, or the same error, whatever the body holds.
    body = msgpack.packb({"type": "t", **fields}, use_bin_type=True)
    if damage:  # cut short, or followed by junk
        body = body[: len(body) // 2] + junk
    assert _outcome(body) == _outcome(memoryview(body))


@pytest.mark.parametrize(
    "body, code",
    [
        (msgpack.packb({"type": "t", "a": [[[[[[[[1]]]]]]]]}), "frame_too_deep"),
        (b"\x82\xa4type\xa1t\xa1e\xc7\x00\x05", "bad_frame"),  # an empty ext value
        (b"\x81\xa4type\xa1t\x00", "bad_frame"),  # a byte after the message
        (b"\x82\xa4type\xa1t\xa1a\xdc\x00\x05\x01", "bad_frame"),  # cut short
    ],
)
def test_small_bodies_are_refused_as_the_scan_refuses_them(body, code):
    with pytest.raises(RemoteProtocolError) as e:
        decode_body(body)
    assert e.value.code == code


def test_frames_that_arrive_together_are_taken_one_by_one():
    data = b"".join(encode_frame(m) for m in MESSAGES)
    d = FrameDecoder()
    d.feed(data[:-3])  # the last frame incomplete
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    assert out == MESSAGES[:-1] and d.buffered > 0
    d.feed(data[-3:])
    assert d.next_message() == MESSAGES[-1] and d.buffered == 0


def test_a_bad_header_behind_good_frames_fails_after_them():
    d = FrameDecoder(max_frame=100)
    d.feed(encode_frame(MESSAGES[3]) + struct.pack(">I", 101))
    assert d.next_message() == MESSAGES[3]
    with pytest.raises(RemoteProtocolError) as e:
        d.next_message()
    assert e.value.code == "frame_too_large"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(1, 1_000_000))
def test_a_query_frame_is_the_plain_frame(sql, batch_rows):
    expected = encode_frame({"type": "query", "sql": sql, "batch_rows": batch_rows})
    assert encode_query_frame(sql, batch_rows) == expected


def test_a_query_frame_too_large_is_refused():
    with pytest.raises(LocalProtocolError) as e:
        encode_query_frame("x" * 200, 1, max_frame=100)
    assert e.value.code == "frame_too_large"
