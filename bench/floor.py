"""The floor of the fixed design: a round trip with no SQL in it.

A trio server that answers each framed msgpack request (the real frames
module) with one ``trio.to_thread.run_sync`` hop, as the design requires for
every blocking SQLite call, and nothing else: no session, no SQLite, no WAL.
Every statement the real server runs costs at least this much, so it bounds
what the core benchmark can show on this machine. Run by bench_core.py.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time

import trio

from rustydb_client.protocol import frames as proto

REPLY = proto.encode_frame(
    {"type": "complete", "status": "SELECT 1", "rows_affected": 0, "database": "rustydb", "in_transaction": False}
)


async def _answer(stream: trio.SocketStream, hop: bool) -> None:
    limiter = trio.CapacityLimiter(8)
    decoder = proto.FrameDecoder()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        decoder.feed(data)
        while decoder.next_message() is not None:
            if hop:
                await trio.to_thread.run_sync(lambda: None, limiter=limiter)
            await stream.send_all(REPLY)


def _serve(port: int, hop: bool) -> None:
    async def main() -> None:
        await trio.serve_tcp(lambda s: _answer(s, hop), port, host="127.0.0.1")

    trio.run(main)


def _client(port: int, seconds: float, out: mp.Queue) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = proto.encode_frame({"type": "query", "sql": "SELECT 1"})
    decoder = proto.FrameDecoder()
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sock.sendall(request)
        while decoder.next_message() is None:
            decoder.feed(sock.recv(65536))
        done += 1
    sock.close()
    out.put(done / seconds)


def round_trips(port: int, clients: int, seconds: float, hop: bool) -> float:
    """Round trips per second, all clients together."""
    server = mp.Process(target=_serve, args=(port, hop), daemon=True)
    server.start()
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.01)
        q: mp.Queue = mp.Queue()
        procs = [mp.Process(target=_client, args=(port, seconds, q)) for _ in range(clients)]
        for p in procs:
            p.start()
        total = sum(q.get() for _ in procs)
        for p in procs:
            p.join()
        return total
    finally:
        server.terminate()
        server.join()
