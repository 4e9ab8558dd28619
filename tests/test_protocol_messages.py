"""Messages: each event's map, its checks in each direction, and the bytes on the wire."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client.protocol import events as ev
from rustydb_client.protocol.errors import ProtocolError, RemoteProtocolError
from rustydb_client.protocol.frames import FrameDecoder, decode_body, encode_bulk_frame, encode_frame
from rustydb_client.protocol.messages import TO_CLIENT, TO_SERVER, event_of, message_of, validate_message


def decode_all(data: bytes) -> list[dict]:
    d = FrameDecoder()
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


TO_SERVER_EVENTS = [
    ev.Hello("alice", "sales", "test"),
    ev.Hello("alice", None, "test"),
    ev.ScramClientFirst("n,,n=alice,r=abc"),
    ev.ScramClientFinal("c=biws,r=abc,p=xyz"),
    ev.Query("SELECT 'é', x'00'", batch_rows=5),
    ev.Query("SELECT 1"),
    ev.BackupRequested("full", ["a"]),
    ev.BackupRequested("incremental", None, {"backup_id": "b1", "end_lsn": 10, "timeline": 1}),
    ev.Goodbye(),
]
TO_CLIENT_EVENTS = [
    ev.AuthRequired("SCRAM-SHA-256"),
    ev.ScramServerFirst("r=abc,s=c2FsdA==,i=4096"),
    ev.ScramServerFinal("v=abc"),
    ev.Ready("0.1.0", "main", 42),
    ev.Columns(["id", "name"]),
    ev.Rows([[1, "a", None, 1.5, b"\x00\xff"], [-(2**63), "", None, -0.0, b""]]),
    ev.Complete("SELECT 2", 2, "main", False),
    ev.Notice("database sales does not exist, skipping"),
    ev.Error("syntax_error", 'near "SELEC": syntax error', statement_line=3),
    ev.Error("shutdown", "the server is shutting down", fatal=True),
    ev.BackupHeader({"backup_id": "b1", "lsn": 10}),
    ev.BackupData("db/main", False, b"\x00" * 1000),
    ev.BackupEnd(10, 1000),
]


@pytest.mark.parametrize("event", TO_SERVER_EVENTS, ids=lambda e: e.type)
def test_client_messages_round_trip_and_validate(event):
    msg = message_of(event)
    (back,) = decode_all(encode_frame(msg))
    assert back == msg
    assert validate_message(back, TO_SERVER) is back
    assert event_of(back, TO_SERVER) == event


@pytest.mark.parametrize("event", TO_CLIENT_EVENTS, ids=lambda e: e.type)
def test_server_messages_round_trip_and_validate(event):
    msg = message_of(event)
    (back,) = decode_all(encode_frame(msg))
    assert back == msg
    assert validate_message(back, TO_CLIENT) is back
    assert event_of(back, TO_CLIENT) == event


def test_optional_fields_take_their_defaults_and_unknown_ones_are_ignored():
    assert event_of({"type": "query", "sql": "SELECT 1"}, TO_SERVER) == ev.Query("SELECT 1", 1000)
    assert event_of({"type": "hello", "version": 1, "user": "a", "client": "c"}, TO_SERVER) == ev.Hello("a", None, "c")
    # a newer client may add options an older server does not know
    msg = {"type": "backup", "options": {"type": "full", "databases": ["a"], "compression": "zstd"}}
    assert event_of(validate_message(msg, TO_SERVER), TO_SERVER) == ev.BackupRequested("full", ["a"])
    msg = {"type": "error", "code": "x", "message": "y", "fatal": False, "hint": "new"}
    assert event_of(validate_message(msg, TO_CLIENT), TO_CLIENT) == ev.Error("x", "y")


def test_backup_data_may_arrive_as_a_view():
    head, data = encode_bulk_frame({"type": "backup_data", "entry": "e", "last": True}, "data", bytes(100_000))
    msg = decode_body(bytearray(head[4:] + data), bulk_views=True)
    event = event_of(validate_message(msg, TO_CLIENT), TO_CLIENT)
    assert isinstance(event.data, memoryview) and event.data == bytes(100_000)


@pytest.mark.parametrize(
    "msg, direction",
    [
        ({"type": "hello", "version": "1", "user": "a", "client": "c"}, TO_SERVER),
        ({"type": "hello", "version": True, "user": "a", "client": "c"}, TO_SERVER),
        ({"type": "hello", "version": 1, "client": "c"}, TO_SERVER),
        ({"type": "query", "sql": b"SELECT 1"}, TO_SERVER),
        ({"type": "query", "sql": "x", "batch_rows": 0}, TO_SERVER),
        ({"type": "backup", "options": []}, TO_SERVER),
        ({"type": "backup", "options": {"backup_type": 1}}, TO_SERVER),
        ({"type": "backup", "options": {"databases": "main"}}, TO_SERVER),
        ({"type": "backup", "options": {"databases": [1]}}, TO_SERVER),
        ({"type": "backup", "options": {"base_backup": {"backup_id": "b"}}}, TO_SERVER),
        ({"type": "backup", "options": {"base_backup": {"backup_id": 1, "end_lsn": 2}}}, TO_SERVER),
        ({"type": "columns", "names": ["a", 1]}, TO_CLIENT),
        ({"type": "rows", "rows": [[{"a": 1}]]}, TO_CLIENT),
        ({"type": "rows", "rows": [1, 2]}, TO_CLIENT),
        ({"type": "complete", "status": "X", "rows_affected": 0, "database": "m", "in_transaction": 0}, TO_CLIENT),
        ({"type": "error", "code": "x", "message": "y", "fatal": False, "statement_line": "3"}, TO_CLIENT),
        ({"type": "backup_header", "manifest": []}, TO_CLIENT),
        ({"type": "backup_data", "entry": "e", "last": False, "data": "text"}, TO_CLIENT),
        ({"type": "backup_end", "end_lsn": 1}, TO_CLIENT),
        ({"type": "query", "sql": "SELECT 1"}, TO_CLIENT),  # wrong direction
        ({"type": "columns", "names": []}, TO_SERVER),
        ({"type": "launch_missiles"}, TO_SERVER),
        ({"sql": "x"}, TO_SERVER),
        (["query"], TO_SERVER),
    ],
)
def test_wrong_fields_and_types_are_bad_messages(msg, direction):
    with pytest.raises(ProtocolError) as e:
        validate_message(msg, direction)
    assert e.value.code == "bad_message"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([TO_SERVER, TO_CLIENT]))
def test_random_bodies_in_valid_frames_only_raise_protocol_error(body, direction):
    try:
        msg = decode_body(body)
        event_of(validate_message(msg, direction), direction)
    except RemoteProtocolError:
        pass


# ---------------------------------------------------------------- the wire, byte for byte

# Frames as the protocol wrote them before it became events (captured from
# that code): an older peer must read ours and we theirs, byte for byte.
PINNED = {
    "hello": (
        "0000004585a474797065a568656c6c6fa776657273696f6e01a475736572a5616c696365a86461746162617365a57361"
        "6c6573a6636c69656e74ae727573747964622d636c69656e74"
    ),
    "query": "0000002783a474797065a57175657279a373716ca853454c4543542031aa62617463685f726f7773cd03e8",
    "backup": (
        "0000005c82a474797065a66261636b7570a76f7074696f6e7383ab6261636b75705f74797065ab696e6372656d656e74"
        "616ca9646174616261736573c0ab626173655f6261636b757082a96261636b75705f6964a26231a7656e645f6c736e2a"
    ),
    "ready": (
        "0000003b84a474797065a57265616479ae7365727665725f76657273696f6ea5302e312e30a86461746162617365a46d"
        "61696eaa73657373696f6e5f696407"
    ),
    "columns": "0000001d82a474797065a7636f6c756d6e73a56e616d657392a26964a46e616d65",
    "rows": "0000002282a474797065a4726f7773a4726f7773919501a161c0cb3ff8000000000000c40100",
    "complete": (
        "0000004c85a474797065a8636f6d706c657465a6737461747573a853454c4543542031ad726f77735f61666665637465"
        "6401a86461746162617365a46d61696eae696e5f7472616e73616374696f6ec2"
    ),
    "error": (
        "0000004185a474797065a56572726f72a4636f6465ac73796e7461785f6572726f72a76d657373616765a3626164a566"
        "6174616cc2ae73746174656d656e745f6c696e6502"
    ),
    "backup_header": (
        "0000003682a474797065ad6261636b75705f686561646572a86d616e696665737482a96261636b75705f6964a26231a9"
        "64617461626173657390"
    ),
    "backup_data": (
        "0000003084a474797065ab6261636b75705f64617461a5656e747279a764622f6d61696ea46c617374c2a464617461c403010203"
    ),
    "backup_end": "0000002183a474797065aa6261636b75705f656e64a7656e645f6c736e2aa5627974657303",
    "goodbye": "0000000e81a474797065a7676f6f64627965",
}

PINNED_EVENTS = {
    "hello": (ev.Hello("alice", "sales", "rustydb-client"), TO_SERVER),
    "query": (ev.Query("SELECT 1"), TO_SERVER),
    "backup": (ev.BackupRequested("incremental", None, {"backup_id": "b1", "end_lsn": 42}), TO_SERVER),
    "ready": (ev.Ready("0.1.0", "main", 7), TO_CLIENT),
    "columns": (ev.Columns(["id", "name"]), TO_CLIENT),
    "rows": (ev.Rows([(1, "a", None, 1.5, b"\x00")]), TO_CLIENT),
    "complete": (ev.Complete("SELECT 1", 1, "main", False), TO_CLIENT),
    "error": (ev.Error("syntax_error", "bad", statement_line=2), TO_CLIENT),
    "backup_header": (ev.BackupHeader({"backup_id": "b1", "databases": []}), TO_CLIENT),
    "backup_data": (ev.BackupData("db/main", False, b"\x01\x02\x03"), TO_CLIENT),
    "backup_end": (ev.BackupEnd(42, 3), TO_CLIENT),
    "goodbye": (ev.Goodbye(), TO_SERVER),
}


@pytest.mark.parametrize("name", PINNED)
def test_frames_are_byte_compatible_with_the_earlier_protocol(name):
    event, direction = PINNED_EVENTS[name]
    pinned = bytes.fromhex(PINNED[name])
    assert encode_frame(message_of(event)) == pinned
    (msg,) = decode_all(pinned)
    back = event_of(validate_message(msg, direction), direction)
    assert encode_frame(message_of(back)) == pinned


def test_bulk_backup_data_is_byte_compatible_with_the_earlier_protocol():
    head, data = encode_bulk_frame({"type": "backup_data", "entry": "db/main", "last": False}, "data", b"\x01\x02\x03")
    assert head + data == bytes.fromhex(PINNED["backup_data"])
