"""ClientConnection's bulk sending: a backup stream may fill the socket buffer,
and a database file goes from the file to the socket (sendfile)."""

from __future__ import annotations

import contextlib
import os
import socket
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from rustydb_client.protocol import events
from rustydb_client.protocol.frames import FrameDecoder, encode_frame
from rustydb_client.protocol.messages import message_of
from rustydb_server.wire import BULK_NOTSENT_LOWAT, ClientConnection

# A server that trusts loopback peers: no authentication to go through.
TRUSTING = SimpleNamespace(
    settings={"auth_trust_loopback": True, "auth_users_file": "", "client_send_timeout": 60_000},
    tls=SimpleNamespace(plaintext_refusal=None, context=None),  # TLS off
)
PEER = ("127.0.0.1", 1)


def backup_streaming(conn: ClientConnection) -> ClientConnection:
    """Bring the connection's protocol to a backup stream, as a client's hello
    and backup request would (what the server answers before it is dropped)."""
    proto = conn.protocol
    proto.receive_data(encode_frame(message_of(events.Hello("t", None, "test"))))
    assert isinstance(proto.next_event(), events.SessionRequested)
    proto.send(events.Ready("0", "main", 1))
    proto.receive_data(encode_frame(message_of(events.BackupRequested())))
    assert isinstance(proto.next_event(), events.BackupRequested)
    proto.send(events.BackupHeader({}))
    return conn


def lowat(stream) -> int:
    return stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)


@contextlib.asynccontextmanager
async def connected():
    """(client stream, server-side ClientConnection) over real loopback TCP."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server_stream = await listeners[0].accept()
        try:
            yield client, backup_streaming(ClientConnection(TRUSTING, server_stream, PEER))
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server_stream)
    finally:
        await listeners[0].aclose()


@contextlib.contextmanager
def open_file(tmp_path, content: bytes):
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def frames_of(data: bytes) -> list[dict]:
    d = FrameDecoder()
    d.feed(data)
    out = []
    while (m := d.next_message()) is not None:
        out.append(m)
    return out


async def test_bulk_sending_raises_the_low_water_mark_and_restores_it():
    async with connected() as (client, conn), trio.open_nursery() as nursery:
        server_stream = conn.stream
        before = lowat(server_stream)
        assert before < BULK_NOTSENT_LOWAT  # trio's latency-friendly default
        with conn.bulk_sending():
            assert lowat(server_stream) == BULK_NOTSENT_LOWAT
            # a 1 MiB frame leaves in one send now that the buffer may fill
            received = bytearray()

            async def drain():
                while len(received) < 1 << 20:
                    received.extend(await client.receive_some(1 << 20))

            nursery.start_soon(drain)
            await conn.stream.send_all(bytes(1 << 20))
        assert lowat(server_stream) == before
        with trio.fail_after(10):
            while len(received) < 1 << 20:
                await trio.sleep(0.01)


async def test_bulk_sending_is_a_no_op_on_streams_without_a_socket():
    a, _b = trio.testing.memory_stream_pair()
    conn = ClientConnection(TRUSTING, a, PEER)
    with conn.bulk_sending():
        pass


async def test_send_file_bulk_sends_the_file_bytes_as_a_frame(tmp_path):
    content = os.urandom(3 * 1024 * 1024 + 17)
    received = bytearray()
    with open_file(tmp_path, content) as fd:
        async with connected() as (client, conn):
            async with trio.open_nursery() as nursery:

                async def drain():
                    while chunk := await client.receive_some(1 << 20):
                        received.extend(chunk)

                nursery.start_soon(drain)
                with conn.bulk_sending():
                    # two frames from the middle of the file, then a small message
                    await conn.send_file_bulk("e", False, fd, 5, 2 * 1024 * 1024)
                    await conn.send_file_bulk("e", False, fd, 5 + 2 * 1024 * 1024, 1024 * 1024 + 12)
                await conn.send(events.Notice("end"))
                await conn.stream.aclose()
    msgs = frames_of(bytes(received))
    assert [m["type"] for m in msgs] == ["backup_data", "backup_data", "notice"]
    assert msgs[0]["data"] + msgs[1]["data"] == content[5:]


async def test_send_file_bulk_without_a_socket_reads_the_file(tmp_path):
    a, b = trio.testing.memory_stream_pair()
    conn = backup_streaming(ClientConnection(TRUSTING, a, PEER))
    received = bytearray()
    with open_file(tmp_path, b"0123456789" * 1000) as fd:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_file_bulk, "e", False, fd, 3, 4000)
            while len(received) < 4000:
                received.extend(await b.receive_some())
    assert frames_of(bytes(received))[0]["data"] == (b"0123456789" * 1000)[3:4003]


async def test_send_file_bulk_to_a_peer_that_left_is_a_broken_resource(tmp_path):
    with open_file(tmp_path, os.urandom(8 * 1024 * 1024)) as fd:
        async with connected() as (client, conn):
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await client.aclose()  # reset, not a clean close
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(20):
                    await conn.send_file_bulk("e", False, fd, 0, 8 * 1024 * 1024)


async def test_a_frame_cut_short_by_the_file_closes_the_connection(tmp_path):
    with open_file(tmp_path, b"x" * 1000) as fd:
        async with connected() as (client, conn):
            with pytest.raises(OSError, match="short"):
                await conn.send_file_bulk("e", False, fd, 0, 5000)
            received = bytearray()
            with trio.fail_after(10):
                while chunk := await client.receive_some(65536):
                    received.extend(chunk)
    # the frame's head and the 1000 bytes there were, then the end: no
    # further frame that the client would take for the rest of the body
    assert received.endswith(b"x" * 1000) and len(received) < 1100
