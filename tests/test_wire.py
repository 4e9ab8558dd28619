"""The wire listener in-process over loopback TCP: the read loop hands requests
to the session's dispatcher, and the listener's own reasons to end a
connection reach the client as fatal errors with their codes."""

from __future__ import annotations

import pytest
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide
from rustydb_client.protocol.frames import FrameDecoder, encode_frame
from rustydb_client.protocol.messages import TO_CLIENT, event_of, message_of, validate_message
from rustydb_server import datadir as dd
from rustydb_server import wire
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.lifecycle import STOPPING, Lifecycle
from rustydb_server.settings import Settings, set_auto
from rustydb_server.wire import WireListener
from tests.support.servers import free_port


@pytest.fixture
def overrides():
    return {}


@pytest.fixture
async def listener(tmp_path, nursery, overrides):
    path = str(tmp_path / "data")
    settings = Settings.load(
        None, path, {"wal_segment_size": 1 << 20, "port": free_port(), "listen_address": "127.0.0.1", **overrides}
    )
    engine = Engine.open(dd.DataDir(path), settings)
    checkpointer = Checkpointer(engine, settings, Doorbell())
    await nursery.start(checkpointer.run)
    listener = WireListener(
        engine,
        settings,
        Lifecycle(),
        backups=None,
        checkpointer=checkpointer,
        settings_changed=lambda: None,
    )
    await nursery.start(listener.run)
    yield listener
    await listener.abort()
    engine.close()


class Client:
    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.protocol = ClientSide()

    async def send(self, event) -> None:
        await self.stream.send_all(self.protocol.send(event))

    async def next_event(self):
        while (event := self.protocol.next_event()) is events.NEED_DATA:
            data = await self.stream.receive_some(65536)
            if not data:
                return None  # the server closed the connection
            self.protocol.receive_data(data)
        return event

    async def answer(self) -> list:
        """Every event up to the end of the answer (a complete or an error)."""
        out = []
        while True:
            event = await self.next_event()
            out.append(event)
            if event is None or isinstance(event, (events.Complete, events.Error)):
                return out


async def connect(listener, database=None) -> Client:
    # Through the Unix socket, as the server's own OS user: the superuser, by
    # peer authentication (TCP would need a password).
    client = Client(await trio.open_unix_socket(listener.socket_path))
    await client.send(events.Hello("tester", database, "test"))
    return client


async def test_a_session_is_served_then_closed_on_goodbye(listener):
    client = await connect(listener)
    with trio.fail_after(10):
        ready = await client.next_event()
        assert isinstance(ready, events.Ready) and ready.database == "rustydb"
        assert list(listener.sessions) == [ready.session_id]
        await client.send(events.Query("SELECT 40 + 2"))
        assert (await client.answer())[1:] == [events.Rows([[42]]), events.Complete("SELECT 1", 1, "rustydb", False)]
        await client.send(events.Goodbye())
        assert await client.next_event() is None
        while listener.sessions:
            await trio.sleep(0.01)
    await client.stream.aclose()


async def test_an_answer_larger_than_the_socket_buffers_reaches_a_slow_reader_whole(listener):
    # Answers are first written straight to the socket; what does not fit
    # (here most of 12 MB, while the client is not reading) must follow in
    # order through trio's send_all, byte for byte.
    client = await connect(listener)
    with trio.fail_after(30):
        await client.next_event()
        await client.send(
            events.Query(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 60) "
                "SELECT i, printf('%0200000d', i) FROM c"
            )
        )
        await trio.sleep(0.5)  # the server fills the socket buffers meanwhile
        answer = await client.answer()
        rows = [row for e in answer if isinstance(e, events.Rows) for row in e.rows]
        assert rows == [[i, f"{i:0200000d}"] for i in range(1, 61)]
        assert answer[-1] == events.Complete("SELECT 60", 60, "rustydb", False)
        await client.send(events.Query("SELECT 40 + 2"))
        assert (await client.answer())[1:] == [events.Rows([[42]]), events.Complete("SELECT 1", 1, "rustydb", False)]
    await client.stream.aclose()


async def test_requests_that_are_already_there_are_answered_in_order(listener):
    # Requests sent ahead of their turn: 300 in one write, some of them
    # failing, some cut across reads, are each answered in turn, and a
    # client that closes right after its last request is answered up to it.
    client = await connect(listener)
    with trio.fail_after(30):
        assert isinstance(await client.next_event(), events.Ready)
        queries = [f"SELECT {i}" if i % 7 else "SELECT * FROM nowhere" for i in range(300)]
        wire_bytes = b"".join(encode_frame({"type": "query", "sql": q, "batch_rows": 10}) for q in queries)
        await client.stream.send_all(wire_bytes)
        for i in range(300):
            client.protocol.send(events.Query(queries[i]))  # the client's side of the conversation
            answer = await client.answer()
            if i % 7:
                assert answer[1:] == [events.Rows([[i]]), events.Complete("SELECT 1", 1, "rustydb", False)]
            else:
                assert isinstance(answer[-1], events.Error) and "nowhere" in answer[-1].message
        await client.stream.send_all(encode_frame({"type": "query", "sql": "SELECT 'last'", "batch_rows": 10}))
        await client.stream.send_eof()
        client.protocol.send(events.Query("SELECT 'last'"))
        assert (await client.answer())[1] == events.Rows([["last"]])
        assert await client.next_event() is None
        while listener.sessions:
            await trio.sleep(0.01)
    await client.stream.aclose()


async def test_a_session_on_a_missing_database_ends_with_a_fatal_error(listener):
    client = await connect(listener, "nowhere")
    with trio.fail_after(10):
        error = await client.next_event()
        assert (error.code, error.fatal) == ("unknown_database", True)
        assert await client.next_event() is None
    assert listener.sessions == {}
    await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"idle_session_timeout": "100ms"}])
async def test_an_idle_session_is_closed_after_idle_session_timeout(listener):
    client = await connect(listener)
    with trio.fail_after(10):
        assert isinstance(await client.next_event(), events.Ready)
        error = await client.next_event()
        assert (error.code, error.fatal) == ("idle_timeout", True)
        assert await client.next_event() is None
    await client.stream.aclose()


# A statement that runs longer than idle_session_timeout (about 0.5 s of
# SQLite's own work: a recursive count, in the session's worker thread).
SLOW_SELECT = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000) SELECT count(*) FROM c"


@pytest.mark.parametrize("overrides", [{"idle_session_timeout": "100ms"}])
async def test_the_idle_timeout_counts_only_waits_for_a_request(listener):
    # The connection's one wait scope carries the idle deadline only while it
    # waits: a statement longer than the timeout finishes, each request starts
    # the idle time again, and the session is closed only once it is idle.
    client = await connect(listener)
    with trio.fail_after(20):
        assert isinstance(await client.next_event(), events.Ready)
        for _ in range(2):
            await client.send(events.Query(SLOW_SELECT))
            assert (await client.answer())[1:] == [
                events.Rows([[3000000]]),
                events.Complete("SELECT 1", 1, "rustydb", False),
            ]
        for i in range(5):  # requests closer together than the timeout, over more than it
            await trio.sleep(0.05)
            await client.send(events.Query(f"SELECT {i}"))
            assert (await client.answer())[1] == events.Rows([[i]])
        error = await client.next_event()
        assert (error.code, error.fatal) == ("idle_timeout", True)
    await client.stream.aclose()


async def test_draining_lets_a_running_statement_finish_then_closes_its_session(listener):
    # A slow statement whose answer takes several batches (each fetched in the
    # worker thread: checkpoints a cancelled wait scope would break).
    client = await connect(listener)
    slow_rows = SLOW_SELECT.replace("SELECT count(*) FROM c", "SELECT i FROM c WHERE i % 1000 = 0")
    with trio.fail_after(20):
        assert isinstance(await client.next_event(), events.Ready)
        await client.send(events.Query(slow_rows, batch_rows=100))
        await trio.sleep(0.05)  # the statement is running
        listener.lifecycle.phase = STOPPING
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.drain, 10)
            answer = await client.answer()
            assert [row for e in answer if isinstance(e, events.Rows) for row in e.rows] == [
                [i] for i in range(1000, 3000001, 1000)
            ]
            assert answer[-1] == events.Complete("SELECT 3000", 3000, "rustydb", False)
            error = await client.next_event()
            assert (error.code, error.fatal) == ("shutdown", True)
    await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"max_connections": 1}])
async def test_connections_beyond_max_connections_are_refused(listener):
    first = await connect(listener)
    with trio.fail_after(10):
        assert isinstance(await first.next_event(), events.Ready)
        second = await connect(listener)
        error = await second.next_event()
        assert (error.code, error.fatal) == ("too_many_connections", True)
    await first.stream.aclose()
    await second.stream.aclose()


async def test_draining_closes_idle_sessions_with_shutdown(listener):
    client = await connect(listener)
    with trio.fail_after(10):
        assert isinstance(await client.next_event(), events.Ready)
        listener.lifecycle.phase = STOPPING
        await listener.drain(5)
        error = await client.next_event()
        assert (error.code, error.fatal) == ("shutdown", True)
    await client.stream.aclose()


# ------------------------------------------------- connection limits and timeouts


class RawClient(Client):
    """A client without the state machine: it may send anything, and reads
    whatever the server answers (the refusal of a connection that said nothing)."""

    def __init__(self, stream: trio.SocketStream):
        super().__init__(stream)
        self.decoder = FrameDecoder()

    async def send(self, event) -> None:
        await self.stream.send_all(encode_frame(message_of(event)))

    async def next_event(self):
        while (msg := self.decoder.next_message()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self.decoder.feed(data)
        return event_of(validate_message(msg, TO_CLIENT), TO_CLIENT)


async def open_raw(listener, *, unix: bool = False) -> RawClient:
    """A connection that has said nothing yet: over TCP (a client that must log
    in), or through the Unix socket (the superuser, by peer authentication)."""
    if unix:
        return RawClient(await trio.open_unix_socket(listener.socket_path))
    return RawClient(await trio.open_tcp_stream("127.0.0.1", listener.settings["port"]))


def trust_loopback(listener, on: bool) -> None:
    """Loopback clients are the superuser while auth_trust_loopback is on (a live setting)."""
    set_auto(listener.settings["data_dir"], "auth_trust_loopback", "on" if on else "off")
    listener.settings.reload()


async def until(predicate) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_a_frame_over_the_limit_before_authentication_is_refused_and_closed(listener):
    client = await open_raw(listener)
    with trio.fail_after(10):
        # A header claiming 16 MiB, the session limit; before authentication the limit is 4 KiB.
        await client.stream.send_all((16 << 20).to_bytes(4, "big") + b"\x00" * 100)
        error = await client.next_event()
        assert (error.code, error.fatal) == ("frame_too_large", True)
        assert "before authentication" in error.message
        assert await client.next_event() is None
        await until(lambda: listener.connections == 0)
    await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"authentication_timeout": "200ms"}])
async def test_a_silent_connection_is_closed_after_authentication_timeout(listener):
    client = await open_raw(listener)
    with trio.fail_after(10):
        error = await client.next_event()
        assert (error.code, error.fatal) == ("authentication_timeout", True)
        assert "authentication_timeout" in error.message
        assert await client.next_event() is None
        await until(lambda: listener.connections == 0)
    await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"authentication_timeout": "300ms"}])
async def test_a_client_dribbling_its_hello_is_closed_after_authentication_timeout(listener):
    client = await open_raw(listener)
    hello = encode_frame(message_of(events.Hello("tester", None, "test")))
    with trio.fail_after(10):
        for byte in hello[:-1]:  # never the last byte
            try:
                await client.stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.02)
        error = await client.next_event()
        assert (error.code, error.fatal) == ("authentication_timeout", True)
    await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"max_handshakes": 2, "max_connections": 50}])
async def test_connections_beyond_max_handshakes_are_refused(listener):
    trust_loopback(listener, False)  # loopback clients must authenticate, like remote ones
    waiting = [await open_raw(listener) for _ in range(2)]
    with trio.fail_after(10):
        await until(lambda: listener.connections == 2)
        third = await open_raw(listener)
        error = await third.next_event()
        assert (error.code, error.fatal) == ("too_many_connections", True)
        assert "max_handshakes" in error.message
        # A session is not a handshake: once one of them has gone, another gets in.
        await waiting[0].stream.aclose()
        await until(lambda: listener.connections == 1)
        fourth = await open_raw(listener)
        await fourth.send(events.Hello("tester", None, "test"))
        assert isinstance(await fourth.next_event(), events.AuthRequired)
    for c in (*waiting, third, fourth):
        await c.stream.aclose()


@pytest.mark.parametrize("overrides", [{"max_connections": 5}])
async def test_max_connections_counts_connections_that_have_not_said_hello(listener):
    clients = [await open_raw(listener, unix=True) for _ in range(8)]
    with trio.fail_after(10):
        for client in clients:
            try:
                await client.send(events.Hello("tester", None, "test"))
            except trio.BrokenResourceError:
                pass  # refused and closed already (a Unix socket says so at once); its answer is still read

        answers = [await client.next_event() for client in clients]
        ready = [a for a in answers if isinstance(a, events.Ready)]
        refused = [a for a in answers if isinstance(a, events.Error)]
        assert (len(ready), len(refused)) == (5, 3)
        assert {(e.code, e.fatal) for e in refused} == {("too_many_connections", True)}
        assert "max_connections 5" in refused[0].message
        assert len(listener.sessions) == 5
    for client in clients:
        await client.stream.aclose()


@pytest.mark.parametrize("overrides", [{"max_connections": 5, "superuser_reserved_connections": 2}])
async def test_reserved_connections_let_the_superuser_in_when_other_slots_are_full(listener):
    trust_loopback(listener, False)
    ordinary = [await open_raw(listener) for _ in range(3)]
    with trio.fail_after(10):
        await until(lambda: listener.connections == 3)
        refused = await open_raw(listener)
        error = await refused.next_event()
        assert (error.code, error.fatal) == ("too_many_connections", True)
        assert "reserved for the superuser (superuser_reserved_connections)" in error.message
        # The superuser: the server's own OS user on the Unix socket
        admins = [await connect(listener) for _ in range(2)]
        for admin in admins:
            assert isinstance(await admin.next_event(), events.Ready)
        beyond = await connect(listener)
        error = await beyond.next_event()
        assert (error.code, error.fatal) == ("too_many_connections", True)
        assert "max_connections 5" in error.message
    for c in (*ordinary, refused, *admins, beyond):
        await c.stream.aclose()


class LogRecorder:
    """Stands in for the listener's logger: every event, with its fields."""

    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((level, event, fields))


@pytest.mark.parametrize("overrides", [{"max_connections": 1}])
async def test_a_flood_of_refused_connections_is_logged_once_with_a_count(listener, monkeypatch):
    recorder = LogRecorder()
    monkeypatch.setattr(wire, "log", recorder)
    first = await connect(listener)
    with trio.fail_after(10):
        assert isinstance(await first.next_event(), events.Ready)
        for _ in range(5):
            refused = await open_raw(listener)
            assert (await refused.next_event()).code == "too_many_connections"
            await refused.stream.aclose()
    await first.stream.aclose()
    refusals = [fields for _, event, fields in recorder.events if event == "connection refused"]
    assert len(refusals) == 1 and refusals[0]["refused"] == 1  # the first; the next four wait for the next line


async def test_a_connection_that_received_a_large_frame_returns_freed_memory_when_it_closes(listener, monkeypatch):
    trims = []
    monkeypatch.setattr(wire, "return_freed_memory", lambda: trims.append(1))
    small = await connect(listener)
    large = await connect(listener)
    with trio.fail_after(10):
        for client in (small, large):
            assert isinstance(await client.next_event(), events.Ready)
        await small.send(events.Query("SELECT 1"))
        await small.answer()
        await large.send(events.Query("SELECT '" + "x" * (2 << 20) + "'"))
        await large.answer()
        for client in (small, large):
            await client.send(events.Goodbye())
            assert await client.next_event() is None
        await until(lambda: listener.connections == 0)
        await until(lambda: trims)
    assert trims == [1]  # only the one that took a frame of more than 1 MiB
    for client in (small, large):
        await client.stream.aclose()
