"""Waiting on the event loop for the WAL to be durable: one flush for every waiter.

A statement that ran on the event loop (a learned-short autocommit write, or
a read whose snapshot holds commits not flushed yet) is answered only once
the WAL is durable up to an LSN. The fdatasync must not block the loop, so it
runs in a worker thread; but one thread hop per waiter would cost each
statement a hop again. Here the first waiter flushes everything written so
far, in a worker thread, and every waiter that arrives meanwhile waits for
that flush on the loop (a trio.Event); those its flush did not cover start
the next one. One hop per flush, not per statement (group commit on the
loop's side; the engine's flush already groups worker threads).
"""

from __future__ import annotations

import trio

from .engine.instance import Engine


class WalFlushes:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._running: trio.Event | None = None  # set when the flush in a worker returns
        # Counters for the bench and the tests.
        self.waits = 0  # waits that found the WAL not durable yet
        self.flushes = 0  # flushes run for them in a worker thread

    async def wait(self, lsn: int) -> None:
        """Return once the WAL is durable up to ``lsn``. A failed flush raises
        FatalWalError here, for every waiter (the server is stopping)."""
        engine = self._engine
        if engine.is_durable(lsn):
            return
        self.waits += 1
        while not engine.is_durable(lsn):
            running = self._running
            if running is not None:
                await running.wait()
                continue
            running = self._running = trio.Event()
            self.flushes += 1
            try:
                # Everything written so far: later waiters may be covered too.
                # Not cancelable once started: the flush belongs to every waiter.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(engine.flush_wal, None)
            finally:
                self._running = None
                running.set()
