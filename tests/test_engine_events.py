"""The engine's observer in the server: reports from worker threads reach the trio thread."""

from __future__ import annotations

import trio

from rustydb_server.doorbell import Doorbell
from rustydb_server.engine_events import FATAL_EXIT_CODE, EngineEvents
from rustydb_server.lifecycle import Lifecycle


def events_for(lifecycle=None):
    checkpoint, archive = Doorbell(), Doorbell()
    events = EngineEvents(trio.lowlevel.current_trio_token(), lifecycle or Lifecycle(), checkpoint, archive)
    return events, checkpoint, archive


async def test_a_wal_failure_in_a_worker_thread_stops_the_server():
    lifecycle = Lifecycle()
    events, _, _ = events_for(lifecycle)
    await trio.to_thread.run_sync(events.wal_failed, "fsync failed")
    with trio.fail_after(5):
        await lifecycle.wait_for_shutdown()
    assert (lifecycle.shutdown_mode, lifecycle.exit_code) == ("fatal", FATAL_EXIT_CODE)


async def test_the_first_shutdown_request_decides():
    lifecycle = Lifecycle()
    lifecycle.request_shutdown("immediate")
    lifecycle.request_shutdown("fatal", 70)
    assert (lifecycle.shutdown_mode, lifecycle.exit_code) == ("immediate", 0)


async def test_reports_ring_the_doorbells():
    events, checkpoint, archive = events_for()
    with trio.fail_after(5):
        await trio.to_thread.run_sync(events.checkpoint_due)
        await checkpoint.wait()
        await trio.to_thread.run_sync(events.segment_ready, "000000010000000000000002")
        await archive.wait()
        events.segment_started()  # from the trio thread too (a statement run inline)
        await archive.wait()


async def test_a_doorbell_rung_twice_wakes_one_wait():
    bell = Doorbell()
    bell.ring()
    bell.ring()
    await bell.wait()
    with trio.move_on_after(0.05) as waited:
        await bell.wait()
    assert waited.cancelled_caught
