"""The structure scan: nesting, sizes and bombs refused before msgpack builds anything."""

import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client.protocol.errors import ProtocolError, RemoteProtocolError
from rustydb_client.protocol.frames import FrameDecoder, decode_body, encode_frame
from rustydb_client.protocol.scan import MAX_DEPTH, check_structure


def decode_all(data: bytes) -> list[dict]:
    d = FrameDecoder()
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_nesting_up_to_the_limit_is_accepted():
    # depth 8: the message map, then 7 levels below it
    msg = {"type": "backup", "options": {"a": [[[[[[1]]]]]]}}
    assert decode_all(encode_frame(msg)) == [msg]
    assert MAX_DEPTH == 8


def test_nesting_past_the_limit_is_rejected():
    msg = {"type": "backup", "options": {"a": [[[[[[[1]]]]]]]}}
    with pytest.raises(ProtocolError) as e:
        decode_all(encode_frame(msg))
    assert e.value.code == "frame_too_deep"


def test_deep_nesting_bomb_is_rejected_without_recursion():
    # 100k nested one-element arrays in a 100 KB frame: msgpack's own
    # unpacker would go down 100k levels; the scan stops at level 9.
    body = b"\x81\xa4type" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(ProtocolError) as e:
        decode_all(raw_frame(body))
    assert e.value.code == "frame_too_deep"


def test_wide_bomb_is_rejected_before_objects_are_built():
    # 3 MB of one-element arrays would become millions of Python lists
    # (hundreds of MB); the scan refuses it on counting, allocating nothing.
    count = 1_500_000
    body = b"\x82\xa4type\xa4rows\xa4rows\xdd" + struct.pack(">I", count) + b"\x91\xc0" * count
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as e:
            decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.code == "frame_too_complex"
    assert peak < 1_000_000  # bytes: nothing proportional to the frame was allocated


def test_container_claiming_more_entries_than_bytes_is_rejected():
    body = b"\x82\xa4type\xa4rows\xa4rows\xdd" + struct.pack(">I", 900_000) + b"\xc0" * 10
    with pytest.raises(ProtocolError) as e:
        decode_body(body)
    assert e.value.code == "bad_frame"


def test_the_scan_finds_the_root_maps_last_key_and_value():
    body = msgpack.packb({"type": "backup_data", "entry": "e", "data": b"xyz"})
    key_at, value_at = check_structure(body)
    assert msgpack.unpackb(body[key_at:value_at]) == "data"
    assert msgpack.unpackb(body[value_at:]) == b"xyz"
    assert check_structure(msgpack.packb(1)) is None


@pytest.mark.parametrize(
    "body, code",
    [
        (b"\xc1", "bad_frame"),
        (b"\xd6\xff\x00\x00\x00\x00", "bad_frame"),
        (msgpack.packb({"type": "x"}) + b"\x00", "bad_frame"),
        (msgpack.packb({"type": "x"})[:-1], "bad_frame"),
        (msgpack.packb([[[[[[[[[1]]]]]]]]]), "frame_too_deep"),
    ],
)
def test_the_scan_names_what_is_wrong(body, code):
    with pytest.raises(RemoteProtocolError) as e:
        check_structure(body)
    assert e.value.code == code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_the_scan_of_random_bytes_only_raises_protocol_error(body):
    try:
        check_structure(body)
    except RemoteProtocolError:
        pass
