"""ClientSide and ServerSide with bytes alone: handshakes, SCRAM, requests and
their answers, backup streams, and every event checked against the state machine."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_client.protocol import events as ev
from rustydb_client.protocol.connection import ClientSide, ServerSide, State
from rustydb_client.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from rustydb_client.protocol.frames import encode_frame
from rustydb_client.protocol.messages import message_of
from rustydb_client.protocol.scram import AUTH_FAILED_MESSAGE, make_scram_credentials

CREDS = {"alice": make_scram_credentials("s3cret")}


def lookup(user):
    return CREDS.get(user)


def events_of(side, data: bytes) -> list:
    """Everything ``side`` makes of ``data``."""
    side.receive_data(data)
    out = []
    while (event := side.next_event()) is not ev.NEED_DATA:
        out.append(event)
    return out


def frame(event) -> bytes:
    """An event's frame, built without any state machine (as a peer that breaks the rules would)."""
    return encode_frame(message_of(event))


def handshake(client: ClientSide, server: ServerSide, hello=None):
    """Run a handshake through real bytes; return the client's Ready or the error."""
    to_server = client.send(hello or ev.Hello("alice", "sales", "test"))
    while to_server:
        try:
            (event,) = events_of(server, to_server)
        except ProtocolError as e:
            return e
        data = b"".join(server.send(reply) for reply in event.replies)
        if isinstance(event, ev.SessionRequested):
            data += server.send(ev.Ready("0.1.0", event.database or "main", 1))
        to_server = b""
        for cev in events_of(client, data):
            if isinstance(cev, ev.AuthContinue):
                to_server += b"".join(client.send(reply) for reply in cev.replies)
            elif isinstance(cev, ev.Ready):
                return cev
    raise AssertionError("handshake stalled")


def session(auth=None) -> tuple[ClientSide, ServerSide]:
    client, server = ClientSide("s3cret"), ServerSide(auth)
    assert isinstance(handshake(client, server), ev.Ready)
    return client, server


# ---------------------------------------------------------------- handshake


def test_scram_exchange_with_the_right_password_opens_a_session():
    client = ClientSide("s3cret")
    server = ServerSide(lookup)
    ready = handshake(client, server)
    assert ready == ev.Ready("0.1.0", "sales", 1)
    assert client.state == server.state == State.IDLE
    assert (client.database, client.server_version, client.session_id) == ("sales", "0.1.0", 1)
    assert events_of(server, client.send(ev.Query("SELECT 1"))) == [ev.Query("SELECT 1")]


def test_wrong_password_and_unknown_user_fail_identically():
    wrong = handshake(ClientSide("nope"), ServerSide(lookup))
    unknown = handshake(ClientSide("s3cret"), ServerSide(lookup), ev.Hello("mallory", None, "test"))
    assert isinstance(wrong, RemoteProtocolError) and isinstance(unknown, RemoteProtocolError)
    assert (wrong.code, wrong.message) == (unknown.code, unknown.message) == ("auth_failed", AUTH_FAILED_MESSAGE)
    assert "mallory" not in unknown.message


def test_unknown_user_goes_through_the_same_exchange_shape():
    # The server answers client_first for an unknown user like for a known
    # one (same salt each time, same iteration count), failing only at the end.
    def server_first(user, server):
        client = ClientSide("x")
        (auth,) = events_of(server, client.send(ev.Hello(user, None, "c")))
        (first,) = events_of(client, server.send(auth.replies[0]))
        (reply,) = events_of(server, client.send(first.replies[0]))
        return dict(kv.split("=", 1) for kv in reply.replies[0].data.split(","))

    shared_secret = b"k" * 32
    known = server_first("alice", ServerSide(lookup, decoy_secret=shared_secret))
    ghost1 = server_first("ghost", ServerSide(lookup, decoy_secret=shared_secret))
    ghost2 = server_first("ghost", ServerSide(lookup, decoy_secret=shared_secret))
    assert known.keys() == ghost1.keys() == {"r", "s", "i"}
    assert known["i"] == ghost1["i"]
    assert ghost1["s"] == ghost2["s"]  # a stable fake salt reveals nothing


def test_auth_fn_raising_lookup_error_counts_as_unknown_user():
    def raising(user):
        raise KeyError(user)

    err = handshake(ClientSide("s3cret"), ServerSide(raising))
    assert isinstance(err, ProtocolError) and err.code == "auth_failed"


def test_no_auth_server_opens_session_on_hello():
    server = ServerSide(None)
    assert not server.auth_required
    ready = handshake(ClientSide(None), server, ev.Hello("anyone", None, "c"))
    assert ready.database == "main"


def test_client_without_password_gets_a_clear_error_when_auth_is_required():
    client = ClientSide(None)
    server = ServerSide(lookup)
    (auth,) = events_of(server, client.send(ev.Hello("alice", None, "c")))
    with pytest.raises(RemoteProtocolError) as e:
        events_of(client, server.send(auth.replies[0]))
    assert e.value.code == "password_required"
    assert "RUSTYDB_PASSWORD" in e.value.message


def test_client_rejects_a_server_that_does_not_know_the_password():
    # An impostor server accepting any proof cannot produce a valid server
    # signature: the client refuses the session.
    client = ClientSide("s3cret")
    server = ServerSide(lambda u: make_scram_credentials("other"))
    (auth,) = events_of(server, client.send(ev.Hello("alice", None, "c")))
    (first,) = events_of(client, server.send(auth.replies[0]))
    (server_first,) = events_of(server, client.send(first.replies[0]))
    events_of(client, server.send(server_first.replies[0]))
    with pytest.raises(RemoteProtocolError) as e:
        events_of(client, frame(ev.ScramServerFinal("v=AAAA")))
    assert e.value.code == "auth_failed"


def test_a_server_asking_for_another_mechanism_is_refused():
    client = ClientSide("s3cret")
    client.send(ev.Hello("alice", None, "c"))
    with pytest.raises(RemoteProtocolError) as e:
        events_of(client, frame(ev.AuthRequired("MD5")))
    assert e.value.code == "auth_failed" and "MD5" in e.value.message


def test_wrong_version_names_both_versions():
    server = ServerSide(None)
    with pytest.raises(RemoteProtocolError) as e:
        events_of(server, frame(ev.Hello("a", None, "c", version=7)))
    assert e.value.code == "unsupported_version"
    assert "7" in e.value.message and str(ev.PROTOCOL_VERSION) in e.value.message


@pytest.mark.parametrize(
    "auth, sequence",
    [
        (None, [ev.Query("SELECT 1")]),  # query before hello
        (None, [ev.Hello("a", None, "c"), ev.Hello("a", None, "c")]),
        (lookup, [ev.Hello("a", None, "c"), ev.Query("SELECT 1")]),
        (lookup, [ev.Hello("a", None, "c"), ev.ScramClientFinal("c=biws")]),
        (None, [ev.Hello("a", None, "c"), ev.ScramClientFirst("x")]),
        (None, [ev.Hello("a", None, "c"), ev.Goodbye(), ev.Query("SELECT 1")]),
    ],
)
def test_out_of_order_messages_are_rejected(auth, sequence):
    server = ServerSide(auth)
    *prefix, last = sequence
    for event in prefix:
        events_of(server, frame(event))
    with pytest.raises(RemoteProtocolError) as e:
        events_of(server, frame(last))
    assert e.value.code == "protocol_violation"


def test_client_rejects_session_messages_during_handshake():
    client = ClientSide()
    client.send(ev.Hello("a", None, "c"))
    with pytest.raises(RemoteProtocolError):
        events_of(client, frame(ev.Rows([[1]])))
    with pytest.raises(LocalProtocolError):
        ClientSide().send(ev.Query("SELECT 1"))


def test_client_tracks_database_and_transaction_from_complete():
    client = ClientSide()
    client.send(ev.Hello("a", None, "c"))
    events_of(client, frame(ev.Ready("0.1", "main", 3)))
    client.send(ev.Query("BEGIN"))
    (done,) = events_of(client, frame(ev.Complete("BEGIN", 0, "sales", True)))
    assert done == ev.Complete("BEGIN", 0, "sales", True)
    assert (client.database, client.in_transaction) == ("sales", True)
    (err,) = events_of(client, frame(ev.Error("x", "boom", fatal=True)))
    assert err.fatal and client.state == State.CLOSED


# ---------------------------------------------------------------- requests and answers


def test_a_query_and_its_answer_both_ways():
    client, server = session()
    assert events_of(server, client.send(ev.Query("SELECT a", batch_rows=2))) == [ev.Query("SELECT a", 2)]
    assert server.state == client.state == State.QUERY
    answer = [
        ev.Notice("hm"),
        ev.Columns(["a"]),
        ev.Rows([[1], [2]]),
        ev.Rows([[3]]),
        ev.Complete("SELECT 3", 3, "main", False),
    ]
    assert events_of(client, b"".join(server.send(e) for e in answer)) == answer
    assert server.state == client.state == State.IDLE


def test_an_error_ends_an_answer_and_the_session_goes_on():
    client, server = session()
    events_of(server, client.send(ev.Query("SELEC")))
    answer = [ev.Columns(["a"]), ev.Error("syntax_error", "no", statement_line=1)]
    assert events_of(client, b"".join(server.send(e) for e in answer)) == answer
    assert server.state == client.state == State.IDLE
    events_of(server, client.send(ev.Query("SELECT 1")))


def test_a_backup_stream_both_ways_without_copies():
    client, server = session()
    request = ev.BackupRequested("incremental", ["main"], {"backup_id": "b1", "end_lsn": 42})
    assert events_of(server, client.send(request)) == [request]
    assert server.state == client.state == State.BACKUP
    big = bytes(range(256)) * 1024
    out = server.send_with_data_passthrough(ev.BackupHeader({"backup_id": "b2", "databases": []}))
    head, data = server.send_with_data_passthrough(ev.BackupData("db/main", False, big))
    assert data is big  # the caller's bytes go out as they are
    out += [head, data]
    out.append(server.send_backup_data_head("db/main", True, 3))
    out.append(b"xyz")  # what the caller sends itself (sendfile)
    out += server.send_with_data_passthrough(ev.BackupEnd(42, len(big) + 3))
    got = events_of(client, b"".join(out))
    assert [type(e) for e in got] == [ev.BackupHeader, ev.BackupData, ev.BackupData, ev.BackupEnd]
    assert isinstance(got[1].data, memoryview) and got[1].data == big  # a view of the frame, not a copy
    assert got[2] == ev.BackupData("db/main", True, b"xyz")
    assert server.state == client.state == State.IDLE


def test_a_large_frame_can_be_received_in_place():
    client, server = session()
    events_of(server, client.send(ev.BackupRequested()))
    data = server.send(ev.BackupHeader({})) + server.send(ev.BackupData("e", True, bytes(300_000)))
    client.receive_data(data[:1000])
    assert isinstance(client.next_event(), ev.BackupHeader)
    assert client.next_event() is ev.NEED_DATA
    pos = 1000
    while (place := client.recv_buffer()) is not None:
        n = min(len(place), 70_000)
        place[:n] = data[pos : pos + n]
        client.received_into(n)
        pos += n
    assert pos > 1000 and len(data) - pos < 64 * 1024  # the tail is too small to be worth a view
    client.receive_data(data[pos:])
    assert client.next_event() == ev.BackupData("e", True, bytes(300_000))


def test_goodbye_closes_both_sides():
    client, server = session()
    assert events_of(server, client.send(ev.Goodbye())) == [ev.Goodbye()]
    assert client.state == server.state == State.CLOSED
    with pytest.raises(LocalProtocolError):
        client.send(ev.Query("SELECT 1"))


# ---------------------------------------------------------------- the state machine, sending


@pytest.mark.parametrize(
    "setup, event",
    [
        ("hello", ev.Ready("0.1", "main", 1)),  # nobody asked for a session yet
        ("idle", ev.Complete("OK", 0, "main", False)),  # no query under way
        ("idle", ev.Error("x", "not fatal")),  # a refusal answers a request
        ("idle", ev.Notice("hm")),
        ("query", ev.Rows([[1]])),  # rows before columns
        ("query", ev.BackupHeader({})),
        ("backup", ev.BackupData("e", False, b"x")),  # data before the header
        ("backup", ev.BackupEnd(1, 0)),
        ("backup", ev.Complete("OK", 0, "main", False)),
        ("closed", ev.Notice("hm")),
    ],
)
def test_the_server_may_not_send_what_the_state_does_not_allow(setup, event):
    client, server = ClientSide(), ServerSide(None)
    if setup != "hello":
        client, server = session()
    if setup == "query":
        events_of(server, client.send(ev.Query("SELECT 1")))
    elif setup == "backup":
        events_of(server, client.send(ev.BackupRequested()))
    elif setup == "closed":
        server.send(ev.Error("shutdown", "bye", fatal=True))
    before = server.state
    with pytest.raises(LocalProtocolError) as e:
        server.send(event)
    assert e.value.code == "protocol_violation"
    assert server.state == before


def test_the_server_sends_the_replies_it_owes_first():
    server = ServerSide(lookup)
    (auth,) = events_of(server, frame(ev.Hello("alice", None, "c")))
    with pytest.raises(LocalProtocolError):
        server.send(ev.Ready("0.1", "main", 1))
    with pytest.raises(LocalProtocolError):
        server.send(ev.AuthRequired())  # not the one it was given
    server.send(auth.replies[0])
    # a fatal error may always be sent, and then nothing else
    server.send(ev.Error("auth_failed", AUTH_FAILED_MESSAGE, fatal=True))
    with pytest.raises(LocalProtocolError):
        server.send(ev.Error("auth_failed", AUTH_FAILED_MESSAGE, fatal=True))


@pytest.mark.parametrize(
    "setup, event",
    [
        ("start", ev.Query("SELECT 1")),
        ("handshake", ev.Query("SELECT 1")),
        ("handshake", ev.Hello("a", None, "c")),
        ("query", ev.Query("SELECT 2")),  # one request at a time
        ("query", ev.BackupRequested()),
        ("idle", ev.Ready("0.1", "main", 1)),  # the server's to send
        ("idle", ev.ScramClientFinal("c=biws")),  # nobody asked for it
    ],
)
def test_the_client_may_not_send_what_the_state_does_not_allow(setup, event):
    client = ClientSide()
    if setup == "handshake":
        client.send(ev.Hello("a", None, "c"))
    elif setup != "start":
        client, _ = session()
        if setup == "query":
            client.send(ev.Query("SELECT 1"))
    before = client.state
    with pytest.raises(LocalProtocolError) as e:
        client.send(event)
    assert e.value.code == "protocol_violation"
    assert client.state == before


def test_the_client_refuses_a_request_it_cannot_send_and_stays_usable():
    client, _ = session()
    with pytest.raises(LocalProtocolError) as e:
        client.send(ev.Query("x" * (17 * 1024 * 1024)))
    assert e.value.code == "frame_too_large"
    with pytest.raises(LocalProtocolError) as e:
        client.send(ev.Query("SELECT 1", batch_rows=0))
    assert e.value.code == "bad_message"
    with pytest.raises(LocalProtocolError):
        client.send(ev.BackupRequested(databases="main"))
    assert client.state == State.IDLE
    client.send(ev.Query("SELECT 1"))


# ---------------------------------------------------------------- the state machine, receiving


@pytest.mark.parametrize(
    "setup, event",
    [
        ("idle", ev.Columns(["a"])),
        ("idle", ev.Error("x", "not fatal")),
        ("idle", ev.Ready("0.1", "main", 1)),
        ("query", ev.Rows([[1]])),  # rows before columns
        ("query", ev.BackupData("e", False, b"x")),
        ("backup", ev.BackupData("e", False, b"x")),  # data before the header
        ("backup", ev.Columns(["a"])),
    ],
)
def test_the_client_refuses_what_the_state_does_not_allow(setup, event):
    client, server = session()
    if setup == "query":
        client.send(ev.Query("SELECT 1"))
    elif setup == "backup":
        client.send(ev.BackupRequested())
    with pytest.raises(RemoteProtocolError) as e:
        events_of(client, frame(event))
    assert e.value.code == "protocol_violation"
    # the failure sticks: the connection is over
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_the_server_refuses_a_request_while_answering_one():
    client, server = session()
    events_of(server, client.send(ev.Query("SELECT 1")))
    with pytest.raises(RemoteProtocolError) as e:
        events_of(server, frame(ev.Query("SELECT 2")))
    assert e.value.code == "protocol_violation"


def test_end_of_stream_between_frames_and_inside_one():
    client, server = session()
    server.receive_data(b"")
    assert server.next_event() == ev.ConnectionClosed()
    client.send(ev.Query("SELECT 1"))
    client.receive_data(frame(ev.Columns(["a"]))[:7])
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as e:
        client.next_event()
    assert e.value.code == "connection_lost"


def test_a_bad_frame_header_is_reported_by_next_event():
    server = ServerSide(None, max_frame=100)
    server.receive_data(b"\x00\x00\x10\x00")  # receive_data itself never raises
    with pytest.raises(RemoteProtocolError) as e:
        server.next_event()
    assert e.value.code == "frame_too_large"
    assert server.recv_buffer() is None


# ---------------------------------------------------------------- any bytes at all


def fed(side, data: bytes, cut: int) -> None:
    for i in range(0, len(data), cut):
        side.receive_data(data[i : i + cut])
        while side.next_event() is not ev.NEED_DATA:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50), st.booleans(), st.booleans())
def test_any_bytes_only_ever_raise_the_protocol_error(data, cut, in_session, to_server):
    if in_session:
        client, server = session()
    else:
        client, server = ClientSide("pw"), ServerSide(lookup)
        client.send(ev.Hello("alice", None, "c"))
    side = server if to_server else client
    try:
        fed(side, data, cut)
    except RemoteProtocolError:
        pass


frames_to_server = st.sampled_from(
    [
        ev.Hello("alice", None, "c"),
        ev.ScramClientFirst("n,,n=alice,r=abc"),
        ev.ScramClientFinal("c=biws,r=abc,p=xyz"),
        ev.Query("SELECT 1"),
        ev.BackupRequested(),
        ev.Goodbye(),
    ]
).map(frame)
frames_to_client = st.sampled_from(
    [
        ev.AuthRequired(),
        ev.ScramServerFirst("r=abc,s=c2FsdA==,i=4096"),
        ev.ScramServerFinal("v=abc"),
        ev.Ready("0.1", "main", 1),
        ev.Columns(["a"]),
        ev.Rows([[1]]),
        ev.Complete("OK", 0, "main", False),
        ev.Notice("hm"),
        ev.Error("x", "y"),
        ev.BackupHeader({}),
        ev.BackupData("e", False, b"x"),
        ev.BackupEnd(1, 1),
    ]
).map(frame)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_to_server, max_size=6), st.lists(frames_to_client, max_size=6), st.booleans())
def test_valid_messages_in_any_order_only_ever_raise_the_protocol_error(to_server, to_client, in_session):
    if in_session:
        client, server = session()
    else:
        client, server = ClientSide("pw"), ServerSide(lookup)
        client.send(ev.Hello("alice", None, "c"))
    for side, data in ((server, b"".join(to_server)), (client, b"".join(to_client))):
        try:
            fed(side, data, 1 << 20)
        except RemoteProtocolError:
            pass


# ---------------------------------------------------------------- before authentication


def test_a_frame_over_the_handshake_limit_is_refused_before_authentication():
    server = ServerSide(lookup)
    # A header announcing 16 MiB, far below the session's limit: refused at its 4 bytes.
    server.receive_data((16 << 20).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError) as e:
        server.next_event()
    assert e.value.code == "frame_too_large"
    assert "4096-byte limit before authentication" in e.value.message


def test_a_hello_padded_past_the_handshake_limit_is_refused():
    server = ServerSide(None)
    with pytest.raises(RemoteProtocolError) as e:
        events_of(server, frame(ev.Hello("x" * 5000, None, "test")))
    assert e.value.code == "frame_too_large"


def test_full_size_frames_are_taken_once_the_session_is_established():
    client, server = session()
    big = "SELECT '" + "x" * 100_000 + "'"
    assert events_of(server, client.send(ev.Query(big))) == [ev.Query(big)]


def test_the_handshake_limit_holds_while_scram_is_under_way():
    server = ServerSide(lookup)
    (auth,) = events_of(server, frame(ev.Hello("alice", None, "test")))
    server.send(auth.replies[0])
    with pytest.raises(RemoteProtocolError) as e:
        events_of(server, frame(ev.ScramClientFirst(b"n,,n=alice,r=" + b"r" * 8000)))
    assert e.value.code == "frame_too_large"


def test_a_query_the_client_may_not_send_is_refused_and_changes_nothing():
    client, server = session()
    for bad in (ev.Query(b"SELECT 1"), ev.Query("SELECT 1", 0), ev.Query("SELECT 1", True)):
        with pytest.raises(LocalProtocolError):
            client.send(bad)
        assert client.state == State.IDLE
    assert events_of(server, client.send(ev.Query("SELECT 1", 7))) == [ev.Query("SELECT 1", 7)]
    assert client.state == State.QUERY
    with pytest.raises(LocalProtocolError):  # one request at a time
        client.send(ev.Query("SELECT 2"))


def test_the_server_answers_a_query_with_the_plain_frames():
    # The answer's parts go out through the server's short path: the same
    # bytes as the general encoding, the same order enforced.
    client, server = session()
    events_of(server, client.send(ev.Query("SELECT a, b")))
    answer = [ev.Columns(["a", "b"]), ev.Rows([[1, "x"]]), ev.Rows([[2, None]]), ev.Complete("SELECT 2", 2, "m", True)]
    for event in answer:
        assert server.send(event) == encode_frame(message_of(event))
    assert server.state == State.IDLE
    with pytest.raises(LocalProtocolError):  # no answer part outside an answer
        server.send(ev.Rows([[3]]))
    server.receive_data(frame(ev.Query("SELECT 1")))
    assert server.next_event() == ev.Query("SELECT 1") and server.state == State.QUERY
    with pytest.raises(LocalProtocolError):  # rows before the columns
        server.send(ev.Rows([[3]]))
    server.send(ev.Columns(["a"]))
    with pytest.raises(LocalProtocolError):  # columns twice
        server.send(ev.Columns(["a"]))
