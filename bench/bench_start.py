"""Server start until it answers a query: prints figures; never run as a test.

    python bench/bench_start.py [--runs 15] [--baseline-src DIR] [--data-dir DIR] [--no-bytecode-cache]

A data directory (by default one made here: pgbench's tables at scale 1,
the server stopped cleanly; or --data-dir, e.g. a PITR's output) is copied
afresh for each start. Each start is timed from the process's launch until
``SELECT count(*)`` over the server's Unix socket returns, the client
retrying every 2 ms; beside it, the server's CPU until then (the sum of its
threads' ``/proc/<pid>/task/*/schedstat``), which varies less than wall time
on a shared machine. With --baseline-src (another source tree, e.g. an export
of main), its server starts alternate with this tree's, both launched the
same way; medians and the ratios are printed. Starts use a bytecode cache, as
an installed package has (--no-bytecode-cache: each start compiles).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from bench_recovery import init_pgbench  # noqa: E402

from rustydb_client import client as rc  # noqa: E402
from tests.support.servers import ServerProcess, free_port  # noqa: E402

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def launcher(src: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {src!r}); from rustydb_server.tools.server_main import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code]


def server_cpu(pid: int) -> float:
    ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ns += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended meanwhile
    return ns / 1e9


def start_once(cmd: list[str], source: str, work: str) -> tuple[float, float]:
    data = os.path.join(work, "start")
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(source, data)
    port, http_port = free_port(), free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--data-dir", data, "--port", str(port), "--http-port", str(http_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
    )
    try:
        while True:
            try:
                with rc.connect(port=port) as c:
                    c.execute("SELECT count(*) FROM pgbench_branches")
                break
            except Exception:  # noqa: BLE001 - not listening yet: any client error means "retry"
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited with {proc.returncode}") from None
                time.sleep(0.002)
        wall = time.perf_counter() - t0
        return wall, server_cpu(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="starts of each tree (default 15)")
    ap.add_argument("--baseline-src", help="another RustyDB source tree: its starts alternate with this tree's")
    ap.add_argument("--data-dir", help="the data directory to start (copied for each start); default: made here")
    ap.add_argument("--no-bytecode-cache", action="store_true", help="each start compiles its modules")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_start_")
    try:
        if not args.no_bytecode_cache:
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
        source = args.data_dir
        if source is None:
            source = os.path.join(work, "source")
            srv = ServerProcess(source)
            srv.start()
            with rc.connect(port=srv.port) as c:
                init_pgbench(c, 1)
            srv.stop()
        trees = {"this": launcher(HERE)}
        if args.baseline_src:
            trees["baseline"] = launcher(os.path.abspath(args.baseline_src))
        for cmd in trees.values():  # the first start fills the bytecode cache
            start_once(cmd, source, work)
        walls: dict[str, list[float]] = {name: [] for name in trees}
        cpus: dict[str, list[float]] = {name: [] for name in trees}
        for i in range(args.runs):
            for name in trees if i % 2 == 0 else list(trees)[::-1]:
                wall, cpu = start_once(trees[name], source, work)
                walls[name].append(wall)
                cpus[name].append(cpu)
        med = statistics.median
        for name in trees:
            print(
                f"{name:8s} start until answering: median {med(walls[name]):.3f} s (min {min(walls[name]):.3f}); "
                f"server CPU until then: median {med(cpus[name]):.3f} s (min {min(cpus[name]):.3f}); {args.runs} starts"
            )
        if "baseline" in trees:
            print(
                f"this/baseline, medians: wall {med(walls['this']) / med(walls['baseline']):.2f}, "
                f"server CPU {med(cpus['this']) / med(cpus['baseline']):.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
