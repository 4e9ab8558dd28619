"""A session's worker thread: results, errors, order, cancellation and close, with trio alone."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from rustydb_server.session_worker import SessionWorker


async def test_a_call_runs_in_the_worker_thread_and_returns_its_result():
    worker = SessionWorker("session 1")
    here = threading.get_ident()
    ident, value = await worker.run(lambda a, b: (threading.get_ident(), a + b), 40, 2)
    assert value == 42 and ident != here
    # The same thread for every call of the session.
    assert await worker.run(threading.get_ident) == ident
    worker.close()


async def test_a_call_that_raises_raises_in_the_task():
    worker = SessionWorker("session 1")

    def fail():
        raise ValueError("no such table: t")

    with pytest.raises(ValueError, match="no such table"):
        await worker.run(fail)
    assert await worker.run(lambda: "still serving") == "still serving"
    worker.close()


async def test_a_cancelled_task_waits_for_its_call_then_is_cancelled():
    # As trio.to_thread.run_sync without abandon_on_cancel: the call cannot be
    # abandoned; the cancellation comes once it returned.
    worker = SessionWorker("session 1")
    release = threading.Event()
    finished = []

    def slow():
        release.wait(10)
        finished.append(True)
        return "done"

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_soon():
                await trio.sleep(0.05)
                scope.cancel()
                await trio.sleep(0.1)
                assert not finished  # still waiting for the call
                release.set()

            nursery.start_soon(cancel_soon)
            await worker.run(slow)
            await trio.lowlevel.checkpoint()  # the cancellation is delivered here
            pytest.fail("the cancellation was lost")
    assert scope.cancelled_caught and finished == [True]
    worker.close()


async def test_the_event_loop_runs_while_a_call_blocks():
    worker = SessionWorker("session 1")
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await worker.run(time.sleep, 0.3)
        nursery.cancel_scope.cancel()
    assert ticks >= 5
    worker.close()


async def test_close_ends_the_thread_and_refuses_later_calls():
    worker = SessionWorker("session 7")
    await worker.run(lambda: None)
    (thread,) = [t for t in threading.enumerate() if t.name == "session 7"]
    worker.close()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)


async def test_a_worker_never_used_starts_no_thread():
    worker = SessionWorker("session 9")
    worker.close()
    assert not [t for t in threading.enumerate() if t.name == "session 9"]
