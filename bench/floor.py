"""The floor of the fixed design: a round trip with no SQL in it.

A trio server that answers each framed msgpack request (the real frames
module) with one ``trio.to_thread.run_sync`` hop, as the design requires for
every blocking SQLite call, and nothing else: no session, no SQLite, no WAL.
Every statement the real server runs costs at least this much, so it bounds
what the core benchmark can show on this machine. Run by bench_core.py.

``hop="dedicated"`` hands each call to one long-lived worker thread instead
(``DedicatedWorker``: a queue it waits on, the answer back through the trio
token), the cheaper hand-off issue 20 asked to try; ``python bench/floor.py``
prints both hand-offs' cost per call, in process and as round trips.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import statistics
import threading
import time

import outcome
import trio

from rustydb_client.protocol import frames as proto

REPLY = proto.encode_frame(
    {"type": "complete", "status": "SELECT 1", "rows_affected": 0, "database": "rustydb", "in_transaction": False}
)


class DedicatedWorker:
    """One long-lived thread that runs the calls handed to it, one at a time.

    ``await run(fn)`` puts the call on a queue the thread waits on and parks
    the task; the thread runs it and hands the outcome back through the trio
    token (run_sync_soon, which wakes the loop through its wakeup socket),
    where the task is rescheduled. No limiter, no thread cache, no context
    copy: the least a hand-off to another thread can be in trio. The call
    cannot be abandoned once handed over (as trio.to_thread.run_sync without
    abandon_on_cancel), so a cancelled task still waits for it.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, token, task = call
            result = outcome.capture(fn)
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    async def run(self, fn):
        await trio.lowlevel.checkpoint_if_cancelled()
        self._calls.put((fn, trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()))
        result = await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
        return result

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()


async def _answer(stream: trio.SocketStream, hop) -> None:
    limiter = trio.CapacityLimiter(8)
    worker = DedicatedWorker() if hop == "dedicated" else None
    decoder = proto.FrameDecoder()
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.feed(data)
            while decoder.next_message() is not None:
                if worker is not None:
                    await worker.run(lambda: None)
                elif hop:
                    await trio.to_thread.run_sync(lambda: None, limiter=limiter)
                await stream.send_all(REPLY)
    finally:
        if worker is not None:
            worker.close()


def _serve(port: int, hop) -> None:
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


def round_trips(port: int, clients: int, seconds: float, hop) -> float:
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


def hand_off_us(n: int = 5000) -> dict[str, float]:
    """Wall and loop-thread CPU microseconds per hand-off of an empty call, in process."""

    async def measure(hop) -> tuple[float, float]:
        limiter = trio.CapacityLimiter(8)
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n):
            await hop(lambda: None, limiter)
        return (time.perf_counter() - t0) / n * 1e6, (time.thread_time() - c0) / n * 1e6

    async def main() -> dict[str, float]:
        worker = DedicatedWorker()
        out: dict[str, list[float]] = {}
        for _ in range(5):  # interleaved rounds: the medians
            for name, hop in (
                ("to_thread", lambda fn, limiter: trio.to_thread.run_sync(fn, limiter=limiter)),
                ("dedicated", lambda fn, limiter: worker.run(fn)),
            ):
                wall, cpu = await measure(hop)
                out.setdefault(f"{name}_wall_us", []).append(wall)
                out.setdefault(f"{name}_loop_cpu_us", []).append(cpu)
        worker.close()
        return {k: statistics.median(v) for k, v in out.items()}

    return trio.run(main)


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
    from tests.support.servers import free_port

    per_call = hand_off_us()
    print(
        "a hand-off of an empty call to another thread and back, in process (median of 5 rounds of 5,000): "
        f"trio.to_thread.run_sync {per_call['to_thread_wall_us']:.1f} us wall "
        f"({per_call['to_thread_loop_cpu_us']:.1f} us loop-thread CPU), a dedicated worker thread "
        f"{per_call['dedicated_wall_us']:.1f} us ({per_call['dedicated_loop_cpu_us']:.1f} us)"
    )
    for clients in (1, 2):
        line = [f"round trips, {clients} client(s):"]
        for name, hop in (("no hop", False), ("to_thread", True), ("dedicated", "dedicated")):
            rate = round_trips(free_port(), clients, 3.0, hop)
            line.append(f"{name} {rate:,.0f}/s")
        print(" ".join(line))
