"""The sans-IO wire protocol: frames, limits, message validation, ordering, SCRAM."""

import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client import protocol as p
from rustydb_client.protocol import ProtocolError


def decode_all(data: bytes, **kw) -> list[dict]:
    d = p.FrameDecoder(**kw)
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------- round trips

TO_SERVER_MESSAGES = [
    p.hello_message("alice", "sales", "test"),
    p.hello_message("alice", None, "test"),
    {"type": "scram_client_first", "data": "n,,n=alice,r=abc"},
    {"type": "scram_client_final", "data": "c=biws,r=abc,p=xyz"},
    p.query_message("SELECT 'é', x'00'", batch_rows=5),
    {"type": "query", "sql": "SELECT 1"},
    p.backup_message({"type": "full", "databases": ["a"], "compression": "zstd"}),
    p.goodbye_message(),
]
TO_CLIENT_MESSAGES = [
    {"type": "auth_required", "mechanism": "SCRAM-SHA-256"},
    {"type": "scram_server_first", "data": "r=abc,s=c2FsdA==,i=4096"},
    {"type": "scram_server_final", "data": "v=abc"},
    p.ready_message("0.1.0", "main", 42),
    p.columns_message(["id", "name"]),
    p.rows_message([[1, "a", None, 1.5, b"\x00\xff"], [-(2**63), "", None, -0.0, b""]]),
    p.complete_message("SELECT 2", 2, "main", False),
    p.notice_message("database sales does not exist, skipping"),
    p.error_message("syntax_error", 'near "SELEC": syntax error', statement_line=3),
    p.error_message("shutdown", "the server is shutting down", fatal=True),
    p.backup_header_message(backup_id="b1", lsn=10),
    p.backup_data_message(b"\x00" * 1000),
    p.backup_end_message(digest="ab"),
]


@pytest.mark.parametrize("msg", TO_SERVER_MESSAGES, ids=lambda m: m["type"])
def test_client_messages_round_trip_and_validate(msg):
    (back,) = decode_all(p.encode_frame(msg))
    assert back == msg
    assert p.validate_message(back, p.TO_SERVER) is back


@pytest.mark.parametrize("msg", TO_CLIENT_MESSAGES, ids=lambda m: m["type"])
def test_server_messages_round_trip_and_validate(msg):
    (back,) = decode_all(p.encode_frame(msg))
    assert back == msg
    assert p.validate_message(back, p.TO_CLIENT) is back


def test_frames_split_at_every_byte_decode_the_same():
    data = b"".join(p.encode_frame(m) for m in TO_CLIENT_MESSAGES)
    d = p.FrameDecoder()
    out = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        while (m := d.next_message()) is not None:
            out.append(m)
    assert out == TO_CLIENT_MESSAGES
    assert d.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 255, 256, 65535, 65536, 70000]), st.text(max_size=40), st.booleans())
def test_bulk_frame_is_byte_identical_to_the_plain_frame(size, entry, last):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = {"type": "backup_data", "entry": entry, "last": last}
    head, body = p.encode_bulk_frame(msg, "data", data)
    assert head + body == p.encode_frame({**msg, "data": data})


def test_bulk_frame_refuses_what_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as e:
        p.encode_bulk_frame({"type": "backup_data"}, "data", b"x" * 2000, max_frame=1000)
    assert e.value.code == "frame_too_large"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=6),
)
def test_large_frames_fed_in_any_pieces_decode_the_same(cuts, sizes):
    msgs = [
        {"type": "backup_data", "entry": f"e{i}", "last": False, "data": bytes([i]) * n} for i, n in enumerate(sizes)
    ]
    data = b"".join(p.encode_frame(m) for m in msgs)
    d = p.FrameDecoder()
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
    d = p.FrameDecoder()
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
    st.lists(st.sampled_from([0, 5, 4000, p.BULK_VIEW_MIN - 1, p.BULK_VIEW_MIN, 150_000]), min_size=1, max_size=6),
    st.booleans(),
)
def test_frames_received_in_place_decode_the_same(cuts, sizes, bulk_views):
    msgs = []
    for i, n in enumerate(sizes):
        msgs.append({"type": "backup_data", "entry": f"e{i}", "last": i % 2 == 0, "data": bytes([i + 1]) * n})
        msgs.append({"type": "notice", "message": f"between {i}"})
    data = b"".join(p.encode_frame(m) for m in msgs)
    out = receive(data, cuts, bulk_views=bulk_views)
    assert out == msgs  # a memoryview compares equal to the bytes it shows
    for m in out:
        if m["type"] == "backup_data":
            big = bulk_views and len(m["data"]) >= p.BULK_VIEW_MIN
            assert isinstance(m["data"], memoryview if big else bytes)
            if big:
                assert m["data"].readonly


def test_bulk_view_follows_msgpack_for_repeated_and_misplaced_keys():
    big = b"x" * p.BULK_VIEW_MIN
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
    msg = p.decode_body(body, bulk_views=True)
    assert msg == p.decode_body(body) and isinstance(msg["data"], memoryview)
    assert list(msg) == ["type", "data"]
    # The bin as the 'type' itself is no message.
    body = b"\x82" + msgpack.packb("data") + msgpack.packb(1) + msgpack.packb("type") + msgpack.packb(big)
    with pytest.raises(ProtocolError, match="string 'type'"):
        p.decode_body(body, bulk_views=True)
    # A root array ending in a bin is no message either.
    with pytest.raises(ProtocolError, match="map"):
        p.decode_body(msgpack.packb(["backup_data", big]), bulk_views=True)
    # Inside a nested map the bin stays a copy.
    msg = p.decode_body(msgpack.packb({"type": "t", "inner": {"data": big}}), bulk_views=True)
    assert isinstance(msg["inner"]["data"], bytes)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.none()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=5)
        | st.binary(max_size=5)
        | st.just(b"z" * p.BULK_VIEW_MIN),
        max_size=4,
    ),
    st.text(max_size=5),
)
def test_bulk_views_decode_like_unpackb(fields, type_):
    body = msgpack.packb({"type": type_, **fields}, use_bin_type=True)
    try:
        plain = p.decode_body(body)
    except ProtocolError as e:
        with pytest.raises(ProtocolError) as again:
            p.decode_body(body, bulk_views=True)
        assert again.value.code == e.code
        return
    assert p.decode_body(body, bulk_views=True) == plain


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_with_bulk_views_only_raise_protocol_error(body):
    try:
        p.decode_body(body + b"\xc6\x00\x01\x00\x00" + bytes(65536), bulk_views=True)
    except ProtocolError:
        pass


def test_received_into_must_match_the_buffer():
    d = p.FrameDecoder()
    with pytest.raises(ValueError):
        d.received_into(1)
    d.feed(p.encode_frame({"type": "x", "data": bytes(100_000)})[:10])
    place = d.recv_buffer()
    with pytest.raises(ValueError):
        d.received_into(len(place) + 1)


@pytest.mark.parametrize(
    "msg, direction",
    [
        ({"type": "hello", "version": "1", "user": "a", "client": "c"}, p.TO_SERVER),
        ({"type": "hello", "version": True, "user": "a", "client": "c"}, p.TO_SERVER),
        ({"type": "hello", "version": 1, "client": "c"}, p.TO_SERVER),
        ({"type": "query", "sql": b"SELECT 1"}, p.TO_SERVER),
        ({"type": "query", "sql": "x", "batch_rows": 0}, p.TO_SERVER),
        ({"type": "backup", "options": []}, p.TO_SERVER),
        ({"type": "columns", "names": ["a", 1]}, p.TO_CLIENT),
        ({"type": "rows", "rows": [[{"a": 1}]]}, p.TO_CLIENT),
        ({"type": "rows", "rows": [1, 2]}, p.TO_CLIENT),
        ({"type": "complete", "status": "X", "rows_affected": 0, "database": "m", "in_transaction": 0}, p.TO_CLIENT),
        ({"type": "error", "code": "x", "message": "y", "fatal": False, "statement_line": "3"}, p.TO_CLIENT),
        ({"type": "query", "sql": "SELECT 1"}, p.TO_CLIENT),  # wrong direction
        ({"type": "columns", "names": []}, p.TO_SERVER),
        ({"type": "launch_missiles"}, p.TO_SERVER),
        ({"sql": "x"}, p.TO_SERVER),
        (["query"], p.TO_SERVER),
    ],
)
def test_wrong_fields_and_types_are_bad_messages(msg, direction):
    with pytest.raises(ProtocolError) as e:
        p.validate_message(msg, direction)
    assert e.value.code == "bad_message"


# ---------------------------------------------------------------- limits


def test_huge_claimed_length_fails_before_any_body_arrives():
    d = p.FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError) as e:
        d.feed(struct.pack(">I", 1025))
    assert e.value.code == "frame_too_large"
    # The decoder stays failed: the connection must be closed, not resynced.
    with pytest.raises(ProtocolError):
        d.next_message()


def test_claimed_length_at_the_limit_is_accepted():
    msg = {"type": "notice", "message": "x" * 100}
    frame = p.encode_frame(msg)
    assert decode_all(frame, max_frame=len(frame) - 4) == [msg]
    with pytest.raises(ProtocolError):
        decode_all(frame, max_frame=len(frame) - 5)


def test_encode_refuses_a_frame_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as e:
        p.encode_frame({"type": "notice", "message": "x" * 2000}, max_frame=1000)
    assert e.value.code == "frame_too_large"


def test_empty_frame_is_rejected():
    with pytest.raises(ProtocolError):
        decode_all(struct.pack(">I", 0))


def nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return {"type": "backup", "options": value} if depth > 1 else {"type": "goodbye"}


def test_nesting_up_to_the_limit_is_accepted():
    # depth 8: the message map, then 7 levels below it
    msg = {"type": "backup", "options": {"a": [[[[[[1]]]]]]}}
    assert decode_all(p.encode_frame(msg)) == [msg]


def test_nesting_past_the_limit_is_rejected():
    msg = {"type": "backup", "options": {"a": [[[[[[[1]]]]]]]}}
    with pytest.raises(ProtocolError) as e:
        decode_all(p.encode_frame(msg))
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
            p.decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.code == "frame_too_complex"
    assert peak < 1_000_000  # bytes: nothing proportional to the frame was allocated


def test_container_claiming_more_entries_than_bytes_is_rejected():
    body = b"\x82\xa4type\xa4rows\xa4rows\xdd" + struct.pack(">I", 900_000) + b"\xc0" * 10
    with pytest.raises(ProtocolError) as e:
        p.decode_body(body)
    assert e.value.code == "bad_frame"


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
    with pytest.raises(ProtocolError):
        decode_all(raw_frame(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_protocol_error(data):
    d = p.FrameDecoder(max_frame=4096)
    try:
        d.feed(data)
        while (m := d.next_message()) is not None:
            p.validate_message(m, p.TO_SERVER)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_in_valid_frames_only_raise_protocol_error(body):
    try:
        msg = p.decode_body(body)
        p.validate_message(msg, p.TO_CLIENT)
    except ProtocolError:
        pass


# ---------------------------------------------------------------- sessions

CREDS = {"alice": p.make_scram_credentials("s3cret")}


def lookup(user):
    return CREDS.get(user)


def handshake(client: p.ClientProtocol, server: p.ServerProtocol):
    """Run a handshake through real frames; return the client's Ready or the error."""
    to_server = list(client.start())
    while to_server:
        (msg,) = decode_all(p.encode_frame(to_server.pop(0)))
        try:
            event = server.receive(msg)
        except ProtocolError as e:
            return e
        replies = list(event.replies)
        if isinstance(event, p.SessionRequested):
            replies.append(p.ready_message("0.1.0", event.database or "main", 1))
        for reply in replies:
            (reply,) = decode_all(p.encode_frame(reply))
            cev = client.receive(reply)
            if isinstance(cev, p.AuthContinue):
                to_server.extend(cev.replies)
            elif isinstance(cev, p.Ready):
                return cev
    raise AssertionError("handshake stalled")


def test_scram_exchange_with_the_right_password_opens_a_session():
    client = p.ClientProtocol("alice", "s3cret", "sales")
    server = p.ServerProtocol(lookup)
    ready = handshake(client, server)
    assert ready == p.Ready("0.1.0", "sales", 1)
    assert client.state == server.state == "session"
    assert isinstance(server.receive(p.query_message("SELECT 1")), p.Query)


def test_wrong_password_and_unknown_user_fail_identically():
    wrong = handshake(p.ClientProtocol("alice", "nope"), p.ServerProtocol(lookup))
    unknown = handshake(p.ClientProtocol("mallory", "s3cret"), p.ServerProtocol(lookup))
    assert isinstance(wrong, ProtocolError) and isinstance(unknown, ProtocolError)
    assert (wrong.code, wrong.message) == (unknown.code, unknown.message) == ("auth_failed", p.AUTH_FAILED_MESSAGE)
    assert "mallory" not in unknown.message


def test_unknown_user_goes_through_the_same_exchange_shape():
    # The server answers client_first for an unknown user like for a known
    # one (same salt each time, same iteration count), failing only at the end.
    def server_first(user, server):
        client = p.ClientProtocol(user, "x")
        hello = client.start()[0]
        (auth,) = server.receive(hello).replies
        (client_first,) = client.receive(auth).replies
        (reply,) = server.receive(client_first).replies
        return dict(kv.split("=", 1) for kv in reply["data"].split(","))

    shared_secret = b"k" * 32
    known = server_first("alice", p.ServerProtocol(lookup, decoy_secret=shared_secret))
    ghost1 = server_first("ghost", p.ServerProtocol(lookup, decoy_secret=shared_secret))
    ghost2 = server_first("ghost", p.ServerProtocol(lookup, decoy_secret=shared_secret))
    assert known.keys() == ghost1.keys() == {"r", "s", "i"}
    assert known["i"] == ghost1["i"]
    assert ghost1["s"] == ghost2["s"]  # a stable fake salt reveals nothing


def test_auth_fn_raising_lookup_error_counts_as_unknown_user():
    def raising(user):
        raise KeyError(user)

    err = handshake(p.ClientProtocol("alice", "s3cret"), p.ServerProtocol(raising))
    assert isinstance(err, ProtocolError) and err.code == "auth_failed"


def test_no_auth_server_opens_session_on_hello():
    ready = handshake(p.ClientProtocol("anyone", None, None), p.ServerProtocol(None))
    assert ready.database == "main"


def test_client_without_password_gets_a_clear_error_when_auth_is_required():
    client = p.ClientProtocol("alice", None)
    server = p.ServerProtocol(lookup)
    (auth,) = server.receive(client.start()[0]).replies
    with pytest.raises(ProtocolError) as e:
        client.receive(auth)
    assert e.value.code == "password_required"
    assert "RUSTYDB_PASSWORD" in e.value.message


def test_client_rejects_a_server_that_does_not_know_the_password():
    # An impostor server accepting any proof cannot produce a valid server
    # signature: the client refuses the session.
    client = p.ClientProtocol("alice", "s3cret")
    server = p.ServerProtocol(lambda u: p.make_scram_credentials("other"))
    (auth,) = server.receive(client.start()[0]).replies
    (first,) = client.receive(auth).replies
    (server_first,) = server.receive(first).replies
    client.receive(server_first)
    with pytest.raises(ProtocolError) as e:
        client.receive({"type": "scram_server_final", "data": "v=AAAA"})
    assert e.value.code == "auth_failed"


def test_wrong_version_names_both_versions():
    server = p.ServerProtocol(None)
    with pytest.raises(ProtocolError) as e:
        server.receive(p.hello_message("a", None, "c", version=7))
    assert e.value.code == "unsupported_version"
    assert "7" in e.value.message and str(p.PROTOCOL_VERSION) in e.value.message


@pytest.mark.parametrize(
    "auth, sequence",
    [
        (None, [p.query_message("SELECT 1")]),  # query before hello
        (None, [p.hello_message("a", None, "c"), p.hello_message("a", None, "c")]),
        (lookup, [p.hello_message("a", None, "c"), p.query_message("SELECT 1")]),
        (lookup, [p.hello_message("a", None, "c"), {"type": "scram_client_final", "data": "c=biws"}]),
        (None, [p.hello_message("a", None, "c"), {"type": "scram_client_first", "data": "x"}]),
        (None, [p.hello_message("a", None, "c"), p.goodbye_message(), p.query_message("SELECT 1")]),
    ],
)
def test_out_of_order_messages_are_rejected(auth, sequence):
    server = p.ServerProtocol(auth)
    *prefix, last = sequence
    for msg in prefix:
        server.receive(msg)
    with pytest.raises(ProtocolError) as e:
        server.receive(last)
    assert e.value.code == "protocol_violation"


def test_client_rejects_session_messages_during_handshake():
    client = p.ClientProtocol("a")
    client.start()
    with pytest.raises(ProtocolError):
        client.receive(p.rows_message([[1]]))
    with pytest.raises(ProtocolError):
        p.ClientProtocol("a").query("SELECT 1")


def test_client_tracks_database_and_transaction_from_complete():
    client = p.ClientProtocol("a")
    client.start()
    client.receive(p.ready_message("0.1", "main", 3))
    ev = client.receive(p.complete_message("BEGIN", 0, "sales", True))
    assert ev == p.Complete("BEGIN", 0, "sales", True)
    assert (client.database, client.in_transaction) == ("sales", True)
    err = client.receive(p.error_message("x", "boom", fatal=True))
    assert err.fatal and client.state == "closed"
