"""ClientConnection.bulk_sending: a backup stream may fill the socket buffer."""

from __future__ import annotations

import socket

import trio
import trio.testing

from rustydb_server.wire import BULK_NOTSENT_LOWAT, ClientConnection


def lowat(stream) -> int:
    return stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)


async def test_bulk_sending_raises_the_low_water_mark_and_restores_it():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server_stream = await listeners[0].accept()
        conn = ClientConnection(None, server_stream, ("127.0.0.1", 1))
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
        await client.aclose()
        await server_stream.aclose()
        await listeners[0].aclose()


async def test_bulk_sending_is_a_no_op_on_streams_without_a_socket():
    a, _b = trio.testing.memory_stream_pair()
    conn = ClientConnection(None, a, ("test", 0))
    with conn.bulk_sending():
        pass
