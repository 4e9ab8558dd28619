"""rusty-db-server with another CPython switch interval (bench only).

    python bench/switch_interval_server.py SECONDS [--probe REPORT_FILE] ARGS

Sets ``sys.setswitchinterval(SECONDS)`` and runs the server with its own
arguments. CPython's switch interval (5 ms by default) is how long a thread
that wants the GIL waits before it asks the thread holding it to let go: a
worker thread whose fdatasync returned while the event loop thread runs
Python can wait that long. bench_core.py's ``--switch-interval`` runs the
server through this, so bench_ab.py can compare intervals in one run;
``--probe`` runs it under bench/loop_probe.py's event-loop probe.
"""

from __future__ import annotations

import os
import sys

from rustydb_server.tools import server_main


def main() -> int:
    sys.setswitchinterval(float(sys.argv[1]))
    if sys.argv[2:3] == ["--probe"]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import loop_probe

        sys.argv = [sys.argv[0], *sys.argv[3:]]
        return loop_probe.main()
    return server_main.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
