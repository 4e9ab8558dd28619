"""The worker threads a backup's chunks are encoded and decoded on: pools
started on first use, and a lower priority for them."""

from __future__ import annotations

import os
import sys
import threading


def thread_pool(workers: int, name: str, **kwargs):
    # Imported on first use: concurrent.futures pulls in logging, a part of
    # every tool's start-up, and reading a table out of a backup uses no pool.
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix=name, **kwargs)


def lower_thread_priority(nice: int, *, whole_process: bool = False) -> None:
    """Raise the calling thread's niceness to ``nice``; never lower it.

    On Linux niceness is per thread, and threads started later inherit it.
    Elsewhere it is the whole process's, so it is changed only when the
    caller says the whole process is meant (a backup tool, not the server).
    Only for threads that end with the backup: raising niceness back needs
    privileges a service user does not have.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    if sys.platform.startswith("linux"):
        who = threading.get_native_id()
    elif whole_process:
        who = 0
    else:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, who) < nice:
            os.setpriority(os.PRIO_PROCESS, who, nice)
    except OSError:
        pass  # refused: the backup still runs, at normal priority
