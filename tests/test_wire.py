"""The wire listener in-process over loopback TCP: the read loop hands requests
to the session's dispatcher, and the listener's own reasons to end a
connection reach the client as fatal errors with their codes."""

from __future__ import annotations

import pytest
import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide
from rustydb_server import datadir as dd
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.lifecycle import STOPPING, Lifecycle
from rustydb_server.settings import Settings
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
    client = Client(await trio.open_tcp_stream("127.0.0.1", listener.settings["port"]))
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
