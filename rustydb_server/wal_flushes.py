"""Waiting on the event loop for the WAL to be durable: one flush for every waiter.

A statement that ran on the event loop (a learned-short autocommit write, or
a read whose snapshot holds commits not flushed yet) is answered only once
the WAL is durable up to an LSN. The fdatasync must not block the loop, so it
runs in a thread of its own; but one thread hop per waiter would cost each
statement a hop again. Here one flush at a time covers everything written
before it started, and every waiter that arrives meanwhile waits for it on
the loop (a trio.Event); those it did not cover start the next one. One hop
per flush, not per statement (group commit on the loop's side; the engine's
flush already groups worker threads).

``start`` is called on the loop right after an inline commit wrote its WAL
record, before SQLite's COMMIT: the fdatasync then runs while the loop
finishes the commit and turns to its waiters.
"""

from __future__ import annotations

import trio

from .engine.instance import Engine


class WalFlushes:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._running: trio.Event | None = None  # set when the running flush returns
        self._failed: BaseException | None = None  # what a flush raised (the server is stopping)
        # Counters for the bench and the tests.
        self.waits = 0  # waits that found the WAL not durable yet
        self.flushes = 0  # flushes run for them

    def start(self) -> None:
        """Flush everything written so far, in a thread, unless a flush is
        running already. On the event loop's thread only; never waits."""
        if self._running is not None or self._failed is not None:
            return
        done = self._running = trio.Event()
        self.flushes += 1
        token = trio.lowlevel.current_trio_token()
        engine = self._engine

        def flush() -> BaseException | None:  # in the flush's thread
            try:
                engine.flush_wal(None)
            except BaseException as e:  # noqa: BLE001 - handed to every waiter
                return e
            return None

        def deliver(result) -> None:  # in the flush's thread
            try:
                token.run_sync_soon(self._flushed, done, result.unwrap())
            except trio.RunFinishedError:
                pass  # the server has stopped; no one waits any more

        trio.lowlevel.start_thread_soon(flush, deliver)

    def _flushed(self, done: trio.Event, error: BaseException | None) -> None:
        if error is not None:
            self._failed = error
        self._running = None
        done.set()

    async def wait(self, lsn: int) -> None:
        """Return once the WAL is durable up to ``lsn``. A failed flush raises
        its error (FatalWalError) here, for every waiter: the server is stopping."""
        engine = self._engine
        if engine.is_durable(lsn):
            return
        self.waits += 1
        while not engine.is_durable(lsn):
            if self._failed is not None:
                raise self._failed
            self.start()
            running = self._running
            if running is not None:
                await running.wait()
