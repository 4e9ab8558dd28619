"""Hostile connections against a real server: prints its memory; never run as a test.

    python bench/bench_hostile.py [--connections 10000] [--batch 500] [--bound-mb 64]

Opens ``--connections`` connections to a server on loopback, ``--batch`` at a
time (within the process's descriptor limit), none of which ever
authenticates: half announce a 16 MiB frame and send 64 KiB of it, half
dribble their hello a byte at a time and never finish it. Each batch is held
open for ``--hold`` seconds, then closed. The server's resident memory
(VmRSS of /proc/PID/status) is printed before, the highest seen during, and
after (once authentication_timeout has passed), against the bound: at most
``--bound-mb`` MiB over the figure before. The server runs with
auth_trust_loopback off, so these loopback peers are treated as strangers
from the network would be (a password to give, max_handshakes to respect).
It stops by itself: after the last batch or ``--seconds``, whichever comes
first. Exits 1 if memory went over the bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package

from rustydb_client import client as rc  # noqa: E402
from rustydb_client.protocol import events  # noqa: E402
from rustydb_client.protocol.frames import encode_frame  # noqa: E402
from rustydb_client.protocol.messages import message_of  # noqa: E402
from tests.support.servers import ServerProcess  # noqa: E402

HUGE_HEADER = (16 << 20).to_bytes(4, "big")
HUGE_BODY = b"\x00" * 65536
HELLO = encode_frame(message_of(events.Hello("intruder", None, "bench")))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Sampler:
    """The highest RSS seen, sampled every 50 ms in a thread of its own."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def open_batch(port: int, n: int) -> list[tuple[socket.socket, int]]:
    """n connections; each announces a huge frame (even index) or starts dribbling (odd)."""
    batch = []
    for i in range(n):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.send(HUGE_HEADER + HUGE_BODY if i % 2 == 0 else HELLO[:1])
        batch.append((s, 1))
    return batch


def dribble(batch: list[tuple[socket.socket, int]]) -> list[tuple[socket.socket, int]]:
    """One more byte of the hello on every dribbling connection (never the last)."""
    out = []
    for s, sent in batch:
        if sent < len(HELLO) - 1:
            with contextlib.suppress(OSError):
                s.send(HELLO[sent : sent + 1])
                sent += 1
        out.append((s, sent))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000, help="hostile connections in all (default 10000)")
    ap.add_argument("--batch", type=int, default=500, help="connections open at once (default 500)")
    ap.add_argument("--hold", type=float, default=1.0, help="seconds each batch stays open (default 1)")
    ap.add_argument("--bound-mb", type=float, default=64.0, help="allowed RSS growth in MiB (default 64)")
    ap.add_argument(
        "--auth-timeout", type=float, default=2.0, help="the server's authentication_timeout, seconds (default 2)"
    )
    ap.add_argument("--seconds", type=float, default=300.0, help="stop after this long at most (default 300)")
    args = ap.parse_args(argv)

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    batch_size = max(1, min(args.batch, soft - 64))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        conf = os.path.join(tmp, "rustydb.toml")
        with open(conf, "w") as f:
            f.write(f"authentication_timeout = {int(args.auth_timeout * 1000)}\n")
            f.write("auth_trust_loopback = false\n")
        srv = ServerProcess(os.path.join(tmp, "data"), extra_args=["--config", conf]).start()
        try:
            pid = srv.proc.pid
            # The first session's one-off allocations, before the figure.
            with contextlib.suppress(rc.ClientError), rc.connect(port=srv.port) as c:
                c.execute("SELECT 1")
            before = rss_kib(pid)
            bound = before + int(args.bound_mb * 1024)
            print(f"server RSS before: {before / 1024:.1f} MiB; bound: {bound / 1024:.1f} MiB")
            opened = 0
            rounds = 0
            with Sampler(pid) as sampler:
                while opened < args.connections and time.monotonic() - started < args.seconds:
                    batch = open_batch(srv.port, min(batch_size, args.connections - opened))
                    opened += len(batch)
                    rounds += 1
                    hold_until = time.monotonic() + args.hold
                    while time.monotonic() < hold_until:
                        time.sleep(0.1)
                        batch = dribble(batch)
                    for s, _ in batch:
                        s.close()
                # Connections the server still holds end at authentication_timeout.
                time.sleep(args.auth_timeout + 1)
            after = rss_kib(pid)
            elapsed = time.monotonic() - started
            print(f"hostile connections opened: {opened} in {rounds} batches of up to {batch_size}, {elapsed:.1f} s")
            print(f"server RSS during: peak {sampler.peak / 1024:.1f} MiB (+{(sampler.peak - before) / 1024:.1f})")
            print(f"server RSS after:  {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f})")
            ok = sampler.peak <= bound and after <= bound
            print(f"bound of +{args.bound_mb:g} MiB: {'held' if ok else 'EXCEEDED'}")
            return 0 if ok else 1
        finally:
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
