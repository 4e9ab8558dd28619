"""One session's worker thread: its SQLite calls handed over with the least trio can do.

``trio.to_thread.run_sync`` costs about 220 us a call on the 2-core machine
(a thread from trio's cache, a limiter, a context copy, the answer through
the trio token); a thread of the session's own that waits on a queue, with
the answer handed back the same way, costs about 130 us (``python
bench/floor.py`` prints both). Each session has at most one statement under
way, so one thread per session runs its calls in order, and the number of
sessions (max_connections) bounds these threads as the shared limiter did.

The semantics are to_thread's without ``abandon_on_cancel``: a call handed
over cannot be abandoned, so a cancelled task waits for it to return (its
SQLite work is stopped by interrupting the connection, as before) and the
cancellation is delivered at its next checkpoint; the call's exception is
raised in the task. The thread starts at the first call and ends after
``close()``, once the call it runs (if any) returns; it is a daemon, so
work stuck in the engine never holds up the process's exit (the stop guard
of run.py decides that).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio


class SessionWorker:
    def __init__(self, name: str):
        self._name = name
        self._calls: queue.SimpleQueue | None = None
        self._closed = False

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker thread; its result, or its exception raised here."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise RuntimeError("the session's worker thread is closed")
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._calls,), name=self._name, daemon=True).start()
        self._calls.put((fn, args, trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()))
        # The outcome the thread hands back: its value, or its exception raised here.
        return await trio.lowlevel.wait_task_rescheduled(_cannot_abandon)

    def close(self) -> None:
        """End the thread after the call it runs, if any (never waits for it)."""
        self._closed = True
        if self._calls is not None:
            self._calls.put(None)
            self._calls = None


def _cannot_abandon(_raise_cancel) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the call runs on: wait for its outcome


def _serve(calls: queue.SimpleQueue) -> None:
    while True:
        call = calls.get()
        if call is None:
            return
        fn, args, token, task = call
        result = outcome.capture(fn, *args)
        del call, fn, args  # nothing of the call lives on in this thread between calls
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:
            return  # the event loop is gone: nobody waits for the result
