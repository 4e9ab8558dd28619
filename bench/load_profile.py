"""Where a point SELECT's CPU goes under load: counts per query (bench only).

    python bench/load_profile.py [--seconds 5] [--target server|floor|floor-hop|floor-threads|floor-selectors]
                                 [--strace] [--pyspy FILE] [--inline-budget 1ms]

Runs bench_core.py's point-SELECT load (2 client processes, the real client
library on the server's Unix socket, random primary keys of pgbench_accounts
at scale 10) and reads, over a window of it, what each process spent per
query: user and system CPU of every thread (/proc/PID/task/TID/stat), context
switches (voluntary and not, /proc/PID/task/TID/status), the machine's CPU
outside these processes (/proc/stat: other work and the kernel's
unattributed share), and from the server itself (run under a trio
instrument) its event loop's iterations (waits in epoll) and task steps per
query and how many statements ran inline, in the session's worker thread, or
were stopped inline and run again. ``--strace`` then counts syscalls per query
of the server and of one client with ``strace -c -f`` for 2 s (strace slows
the processes: counts, not times); ``--pyspy FILE`` records the server with
py-spy (``--native``, 2,000 Hz, the PYSPY environment variable names the
program) and prints the leaf functions that held most samples.

``--target floor`` runs the same measure against bench/floor.py's round trip
with no SQL (a trio server answering each frame with a fixed reply; here on a
Unix socket, as the real clients use), its clients raw sockets;
``floor-hop`` the same with each request handed to a worker thread and back
(floor.py's dedicated worker: what a statement run in the session's worker
thread costs on top); ``floor-threads`` and ``floor-selectors`` the same
round trip with no event loop (a blocking thread per connection) and with
a plain selectors loop: what trio's own per-wakeup work costs. The
difference between the figures of the targets is the gap to bisect.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------- /proc readers
def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """{tid: (user s, system s)} of every thread of ``pid`` alive now."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all threads of ``pid``."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def machine_times() -> dict[str, float]:
    """The machine's CPU seconds by kind, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: int(v) / CLK_TCK for n, v in zip(names, fields)}


class Snapshot:
    def __init__(self, pids: dict[str, int], queries: int, server_report: dict):
        self.at = time.perf_counter()
        self.threads = {name: thread_times(pid) for name, pid in pids.items()}
        self.switches = {name: context_switches(pid) for name, pid in pids.items()}
        self.machine = machine_times()
        self.queries = queries
        self.server = server_report


# ------------------------------------------------------------- the server side
class LoopCounter:
    """A trio instrument counting the loop's waits in epoll and its task steps.

    It also turns cProfile on and off on the loop's thread when asked
    (``want``, set by another thread), so a window of the load can be
    profiled: function calls per query are counts, which the load does not
    move, unlike times.
    """

    def __init__(self, profile_path: str | None = None) -> None:
        self.io_waits = 0
        self.task_steps = 0
        self.want: str | None = None
        self.profile_path = profile_path
        self.profiler = None

    def before_io_wait(self, timeout) -> None:
        self.io_waits += 1
        if self.want is not None:
            import cProfile

            if self.want == "start" and self.profiler is None:
                self.profiler = cProfile.Profile()
                self.profiler.enable()
            elif self.want == "stop" and self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile_path)
                self.profiler = None
            self.want = None

    def before_task_step(self, task) -> None:
        self.task_steps += 1


def serve(report: str, argv: list[str]) -> int:
    """The real server under the counting instrument, writing its counts to
    ``report`` (JSON) every 0.1 s."""
    import trio

    from rustydb_server.engine import statement_costs
    from rustydb_server.tools import server_main

    counter = LoopCounter(report + ".prof")
    costs = []
    real_init = statement_costs.StatementCosts.__init__

    def init(self, *args, **kw):
        real_init(self, *args, **kw)
        costs.append(self)

    statement_costs.StatementCosts.__init__ = init

    def write() -> None:
        while True:
            time.sleep(0.1)
            for want in ("start", "stop"):
                if os.path.exists(f"{report}.cprofile-{want}"):
                    os.unlink(f"{report}.cprofile-{want}")
                    counter.want = want
            data = {"io_waits": counter.io_waits, "task_steps": counter.task_steps}
            for name in ("inline_runs", "worker_runs", "reruns"):
                data[name] = sum(getattr(c, name) for c in costs)
            with open(report + ".tmp", "w") as f:
                json.dump(data, f)
            os.replace(report + ".tmp", report)

    threading.Thread(target=write, daemon=True).start()
    real_run = trio.run
    trio.run = lambda *args, **kw: real_run(*args, instruments=[counter], **kw)
    return server_main.main(argv)


def serve_floor(path: str, kind: str, report: str) -> None:
    """A round trip with no SQL on a Unix socket: each request frame answered
    with bench/floor.py's fixed reply. ``kind``: ``trio`` (floor.py's trio
    server), ``trio-hop`` (the same with a hand-off to a worker thread and
    back per request), ``threads`` (a plain blocking thread per connection,
    no event loop) or ``selectors`` (one thread, a selectors loop): what the
    event loop itself costs per request, against no loop at all."""
    import floor

    from rustydb_client.protocol import frames as proto

    counter = LoopCounter()

    def write() -> None:
        while True:
            time.sleep(0.1)
            with open(report + ".tmp", "w") as f:
                json.dump({"io_waits": counter.io_waits, "task_steps": counter.task_steps}, f)
            os.replace(report + ".tmp", report)

    threading.Thread(target=write, daemon=True).start()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    if kind == "threads":

        def answer(conn: socket.socket) -> None:
            decoder = proto.FrameDecoder()
            while data := conn.recv(65536):
                decoder.feed(data)
                while decoder.next_message() is not None:
                    conn.sendall(floor.REPLY)

        while True:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()
    if kind == "selectors":
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        decoders: dict = {}
        while True:
            events = sel.select()
            counter.io_waits += 1
            for key, _ in events:
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    decoders[conn] = proto.FrameDecoder()
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                data = conn.recv(65536)
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                decoder = decoders[conn]
                decoder.feed(data)
                while decoder.next_message() is not None:
                    conn.send(floor.REPLY)  # a small reply always fits the socket buffer here
    import trio

    async def main() -> None:
        sock = trio.socket.from_stdlib_socket(listener)
        hop = "dedicated" if kind == "trio-hop" else False
        await trio.serve_listeners(lambda s: floor._answer(s, hop), [trio.SocketListener(sock)])

    trio.run(main, instruments=[counter])


def read_report(path: str) -> dict:
    while True:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.02)


# ------------------------------------------------------------- the clients
def select_client(port: int, seed: int, counter, stop) -> None:
    from bench_core import SCALE

    from rustydb_client import client as rc

    rnd = random.Random(seed)
    conn = rc.connect(port=port)
    while not stop.is_set():
        for _ in range(50):
            aid = rnd.randint(1, 100_000 * SCALE)
            conn.execute(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
        counter.value += 50
    conn.close()


def floor_client(path: str, seed: int, counter, stop) -> None:
    from rustydb_client.protocol import frames as proto

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    request = proto.encode_frame({"type": "query", "sql": f"SELECT abalance FROM pgbench_accounts WHERE aid = {seed}"})
    decoder = proto.FrameDecoder()
    while not stop.is_set():
        for _ in range(50):
            sock.sendall(request)
            while decoder.next_message() is None:
                decoder.feed(sock.recv(65536))
        counter.value += 50
    sock.close()


# ------------------------------------------------------------- strace, py-spy
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def strace_counts(pid: int, seconds: float, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["strace", "-c", "-f", "-q", "-p", str(pid), "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def parse_strace(path: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} of an ``strace -c`` summary."""
    got = {}
    with open(path) as f:
        for line in f:
            m = _STRACE_ROW.match(line)
            if m and m.group(3) != "total":
                got[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return got


def pyspy_top(raw: str, n: int = 25) -> list[tuple[str, float]]:
    """The leaf frames holding most of the event loop thread's samples in a
    py-spy raw (collapsed) file, as fractions (other threads' stacks, idle
    workers mostly, left out)."""
    leaves: collections.Counter = collections.Counter()
    total = 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit() or "unrolled_run" not in stack:
                continue
            leaves[stack.rsplit(";", 1)[-1]] += int(count)
            total += int(count)
    return [(leaf, c / max(total, 1)) for leaf, c in leaves.most_common(n)]


# ------------------------------------------------------------- the measure
def per_query(a: Snapshot, b: Snapshot, pids: dict[str, int]) -> dict:
    q = max(b.queries - a.queries, 1)
    out: dict = {"queries": q, "seconds": b.at - a.at, "rate": q / (b.at - a.at)}
    ours = 0.0
    for name, pid in pids.items():
        user = sys_ = 0.0
        loop_user = loop_sys = 0.0
        for tid, (u1, s1) in b.threads[name].items():
            u0, s0 = a.threads[name].get(tid, (0.0, 0.0))
            user += u1 - u0
            sys_ += s1 - s0
            if tid == pid:
                loop_user, loop_sys = u1 - u0, s1 - s0
        ours += user + sys_
        v0, i0 = a.switches[name]
        v1, i1 = b.switches[name]
        out[name] = {
            "user_us": user / q * 1e6,
            "sys_us": sys_ / q * 1e6,
            "main_thread_user_us": loop_user / q * 1e6,
            "main_thread_sys_us": loop_sys / q * 1e6,
            "other_threads_us": (user + sys_ - loop_user - loop_sys) / q * 1e6,
            "voluntary_switches": (v1 - v0) / q,
            "involuntary_switches": (i1 - i0) / q,
        }
    m = {k: b.machine[k] - a.machine[k] for k in b.machine}
    busy = sum(v for k, v in m.items() if k not in ("idle", "iowait"))
    out["machine"] = {
        "busy_us": busy / q * 1e6,
        "outside_these_processes_us": (busy - ours) / q * 1e6,
        "softirq_us": m["softirq"] / q * 1e6,
        "idle_us": (m["idle"] + m["iowait"]) / q * 1e6,
    }
    for k in b.server:
        out.setdefault("server_counts", {})[k] = (b.server[k] - a.server.get(k, 0)) / q
    return out


def print_figures(target: str, fig: dict, names: list[str]) -> None:
    print(f"{target}: {fig['rate']:,.0f} queries/s over {fig['seconds']:.1f} s ({fig['queries']} queries)")
    print("  CPU per query (us): user / system (the main thread's user / system; other threads)")
    for name in names:
        f = fig[name]
        print(
            f"    {name:9s} {f['user_us']:6.1f} / {f['sys_us']:6.1f}   "
            f"({f['main_thread_user_us']:.1f} / {f['main_thread_sys_us']:.1f}; {f['other_threads_us']:.1f})   "
            f"context switches {f['voluntary_switches']:.2f} voluntary, {f['involuntary_switches']:.2f} involuntary"
        )
    m = fig["machine"]
    print(
        f"    machine   busy {m['busy_us']:.1f} (outside these processes {m['outside_these_processes_us']:.1f}, "
        f"softirq {m['softirq_us']:.1f}), idle {m['idle_us']:.1f}"
    )
    if fig.get("server_counts"):
        print("  server per query: " + ", ".join(f"{k} {v:.2f}" for k, v in fig["server_counts"].items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument(
        "--target", choices=("server", "floor", "floor-hop", "floor-threads", "floor-selectors"), default="server"
    )
    ap.add_argument("--inline-budget", help="the server's inline_statement_budget")
    ap.add_argument("--strace", action="store_true", help="also count syscalls per query (2 s of strace -c)")
    ap.add_argument("--pyspy", metavar="FILE", help="also record the server with py-spy into FILE (raw format)")
    ap.add_argument(
        "--cprofile", metavar="FILE", help="also profile the server's loop thread for 2 s into FILE (calls per query)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        # The server its interpreter has installed (run with another
        # checkout's venv to measure that checkout), not this one's.
        sys.exit(serve(args.serve[0], args.serve[1:]))
    sys.path.insert(0, os.path.join(HERE, ".."))  # the tests' support package

    from tests.support.servers import ServerProcess

    tmp = tempfile.mkdtemp(prefix="rustydb-loadprof-")
    report = os.path.join(tmp, "counts.json")
    srv = floor_proc = None
    counters = [mp.Value("q", 0, lock=False) for _ in range(args.clients)]
    stop = mp.Event()
    try:
        if args.target == "server":
            import bench_core

            from rustydb_client import client as rc

            extra = []
            if args.inline_budget is not None:
                conf = os.path.join(tmp, "rustydb.toml")
                with open(conf, "w") as f:
                    f.write(f'inline_statement_budget = "{args.inline_budget}"\n')
                extra = ["--config", conf]
            command = [sys.executable, os.path.abspath(__file__), "--serve", report]
            srv = ServerProcess(os.path.join(tmp, "data"), extra_args=extra, command=command).start()
            with rc.connect(port=srv.port) as c:
                bench_core.setup_pgbench(c)
                c.execute("CHECKPOINT")
            server_pid = srv.proc.pid
            target, where = select_client, srv.port
        else:
            path = os.path.join(tmp, "floor.sock")
            kind = {"floor": "trio", "floor-hop": "trio-hop"}.get(args.target, args.target.removeprefix("floor-"))
            floor_proc = mp.Process(target=serve_floor, args=(path, kind, report), daemon=True)
            floor_proc.start()
            while not os.path.exists(path):
                time.sleep(0.01)
            server_pid = floor_proc.pid
            target, where = floor_client, path
        clients = [
            mp.Process(target=target, args=(where, i + 1, counters[i], stop), daemon=True) for i in range(args.clients)
        ]
        for p in clients:
            p.start()
        pids = {"server": server_pid, **{f"client{i + 1}": p.pid for i, p in enumerate(clients)}}

        def snap() -> Snapshot:
            return Snapshot(pids, sum(c.value for c in counters), read_report(report))

        time.sleep(1.5)  # connected, and the point SELECT learned
        a = snap()
        time.sleep(args.seconds)
        b = snap()
        fig = per_query(a, b, pids)
        names = list(pids)
        print_figures(args.target, fig, names)
        if args.strace:
            outs = {name: os.path.join(tmp, f"strace-{name}.txt") for name in ("server", "client1")}
            a = snap()
            tracers = [strace_counts(pids[name], 2.0, out) for name, out in outs.items()]
            time.sleep(2.0)
            for t in tracers:
                t.send_signal(signal.SIGINT)
            for t in tracers:
                t.wait()
            b = snap()
            q = max(b.queries - a.queries, 1)
            fig["syscalls"] = {}
            print(f"  syscalls per query under strace ({q / (b.at - a.at):,.0f} queries/s while traced):")
            for name, out in outs.items():
                counts = parse_strace(out)
                fig["syscalls"][name] = {k: (c / q, e / q) for k, (c, e) in counts.items()}
                top = sorted(counts.items(), key=lambda kv: -kv[1][0])
                total = sum(c for c, _ in counts.values()) / q
                print(
                    f"    {name:9s} {total:.2f}: "
                    + ", ".join(f"{k} {c / q:.2f}" + (f" ({e / q:.2f} failed)" if e else "") for k, (c, e) in top)
                )
        if args.cprofile and args.target == "server":
            import pstats

            a = snap()
            open(report + ".cprofile-start", "w").close()
            time.sleep(2.0)
            open(report + ".cprofile-stop", "w").close()
            while not os.path.exists(report + ".prof"):
                time.sleep(0.05)
            time.sleep(0.2)
            b = snap()
            q = max(b.queries - a.queries, 1)
            shutil.copy(report + ".prof", args.cprofile)
            stats = pstats.Stats(args.cprofile)
            # Queries in the profiled window: the dispatcher's handle calls
            # (one per request), not the clients' counters, whose window is wider.
            q = sum(v[1] for (f, _, func), v in stats.stats.items() if func == "handle" and f.endswith("dispatch.py"))
            q = max(q, 1)
            calls = sum(v[1] for v in stats.stats.values())
            total = sum(v[2] for v in stats.stats.values())
            print(
                f"  cProfile of the loop thread ({args.cprofile}), {q} queries: {calls / q:.1f} Python and C "
                "function calls per query; the 30 with the most own time\n"
                "    (cProfile's times are inflated: compare the shares)"
            )
            top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:30]
            for (file, line, func), (_, ncalls, tottime, *_rest) in top:
                where = f"{os.path.basename(file)}:{line}" if line else file
                print(f"    {tottime / total * 100:5.1f}%  {ncalls / q:6.2f} calls  {func} ({where})")
            fig["calls_per_query"] = calls / q
        if args.pyspy:
            program = os.environ.get("PYSPY", "py-spy")
            subprocess.run(
                [program, "record", "--native", "-r", "2000", "-d", "3", "-p", str(server_pid)]
                + ["--format", "raw", "-o", args.pyspy],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print("  py-spy, the server's event loop thread, leaf frames (share of its samples):")
            for leaf, share in pyspy_top(args.pyspy):
                print(f"    {share * 100:5.1f}%  {leaf}")
        stop.set()
        for p in clients:
            p.join(10)
        if args.json:
            print(json.dumps(fig))
    finally:
        stop.set()
        if srv is not None:
            srv.stop()
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.join()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
