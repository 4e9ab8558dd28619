"""rusty-db-server with a probe of its event loop's scheduling delay (bench only).

Run as ``python bench/loop_probe.py REPORT_FILE ARGS`` (the server's own
arguments after the report file). A trio instrument notes when each task
becomes runnable and when it next runs; the longest wait between the two is
how long the loop kept a ready task waiting (an inline statement, encoding an
answer, the GIL held by a worker thread, the OS running another process). The
loop thread's own CPU time over the same wait (time.thread_time) is the part
the loop spent working on other tasks: on a machine shared with other work
the wall-clock figure also counts the time the OS gave the core to others.
A thread writes the worst of both and the wall figure's 99th percentile
since the last reset to REPORT_FILE every 0.2 s as JSON; creating
``REPORT_FILE.reset`` starts a new window.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import trio

from rustydb_server.tools import server_main

BUCKET_S = 0.0001  # the percentile's resolution: 0.1 ms
BUCKETS = 1000


class SchedulingDelay(trio.abc.Instrument):
    def __init__(self) -> None:
        self.ready: dict = {}
        self.reset()

    def reset(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0
        self.counts = [0] * (BUCKETS + 1)

    def task_scheduled(self, task) -> None:
        self.ready[task] = (time.perf_counter(), time.thread_time())

    def before_task_step(self, task) -> None:
        since = self.ready.pop(task, None)
        if since is not None:
            delay = time.perf_counter() - since[0]
            cpu = time.thread_time() - since[1]
            if cpu > self.worst_cpu:
                self.worst_cpu = cpu
            if delay > self.worst:
                self.worst = delay
            self.counts[min(int(delay / BUCKET_S), BUCKETS)] += 1

    def task_exited(self, task) -> None:
        self.ready.pop(task, None)


def _percentile(counts: list[int], fraction: float) -> float:
    total = sum(counts)
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= total * fraction:
            return (i + 1) * BUCKET_S
    return 0.0


def _report(probe: SchedulingDelay, path: str) -> None:
    while True:
        time.sleep(0.2)
        if os.path.exists(path + ".reset"):
            os.unlink(path + ".reset")
            probe.reset()
        counts = list(probe.counts)
        report = {
            "steps": sum(counts),
            "worst_ms": probe.worst * 1e3,
            "worst_cpu_ms": probe.worst_cpu * 1e3,
            "p99_ms": _percentile(counts, 0.99) * 1e3,
        }
        with open(path + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(path + ".tmp", path)


def main() -> int:
    path = sys.argv[1]
    probe = SchedulingDelay()
    threading.Thread(target=_report, args=(probe, path), daemon=True).start()
    real_run = trio.run
    trio.run = lambda *args, **kw: real_run(*args, instruments=[probe], **kw)
    return server_main.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
