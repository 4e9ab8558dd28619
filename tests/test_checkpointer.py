"""The checkpointer in-process, on trio's mock clock: when it checkpoints and when it does not."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from rustydb_server.checkpointer import Checkpointer
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import EngineError

TIMEOUT_S = 300
WAL_SIZE = 1000


class Engine:
    """What the checkpointer asks of the engine, recording each checkpoint's reason."""

    read_only_reason = None

    def __init__(self):
        self.wal_bytes = 0
        self.reasons: list[str] = []
        self.skip_if_idle: list[bool] = []
        self.fail_with: Exception | None = None
        self.complete = True
        self.sessions = set()  # open client sessions: none here
        # Databases whose last checkpoint was incomplete (commits durable first).
        self.durable_first: list[str] = []

    def durable_first_databases(self) -> list[str]:
        return self.durable_first

    def wal_bytes_since_checkpoint(self) -> int:
        return self.wal_bytes

    def checkpoint(self, reason: str, *, skip_if_idle: bool = False) -> dict:
        self.reasons.append(reason)
        self.skip_if_idle.append(skip_if_idle)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.complete:
            return {"complete": False}
        self.wal_bytes = 0
        return {"complete": True, "reason": reason}


async def inline(fn, *args):
    """Checkpoints run on the trio thread here, so the clock never jumps during one."""
    return fn(*args)


@pytest.fixture
def clock(autojump_clock):
    return autojump_clock


@pytest.fixture
def engine():
    return Engine()


@pytest.fixture
def settings():
    return {"checkpoint_timeout": TIMEOUT_S, "checkpoint_wal_size": WAL_SIZE}


@pytest.fixture
def doorbell():
    """What the engine's observer rings when the WAL crosses checkpoint_wal_size."""
    return Doorbell()


@pytest.fixture
async def checkpointer(nursery, engine, settings, doorbell):
    cp = Checkpointer(engine, settings, doorbell, run_sync=inline)
    await nursery.start(cp.run)
    return cp


async def test_fires_every_checkpoint_timeout(checkpointer, engine, clock):
    await trio.sleep_until(TIMEOUT_S - 1)
    assert engine.reasons == []
    await trio.sleep_until(TIMEOUT_S + 1)
    assert engine.reasons == ["time"]
    await trio.sleep_until(2 * TIMEOUT_S + 1)
    assert engine.reasons == ["time", "time"]


async def test_fires_when_the_wal_crosses_checkpoint_wal_size(checkpointer, doorbell, engine, clock):
    await trio.sleep(10)
    engine.wal_bytes = WAL_SIZE
    doorbell.ring()
    await trio.sleep(1)
    assert engine.reasons == ["wal size"]
    # The timer starts again from that checkpoint.
    await trio.sleep_until(11 + TIMEOUT_S - 2)
    assert engine.reasons == ["wal size"]
    await trio.sleep_until(11 + TIMEOUT_S + 1)
    assert engine.reasons == ["wal size", "time"]


async def test_a_ring_below_the_size_does_nothing(checkpointer, doorbell, engine, clock):
    engine.wal_bytes = WAL_SIZE - 1
    for _ in range(5):
        doorbell.ring()
        await trio.sleep(10)
    assert engine.reasons == []


async def test_checkpoint_statement_runs_one_and_gets_its_result(checkpointer, engine, clock):
    await trio.sleep(100)
    result = await checkpointer.checkpoint()
    assert result == {"complete": True, "reason": "requested"}
    assert engine.reasons == ["requested"]
    await trio.sleep_until(100 + TIMEOUT_S - 1)
    assert engine.reasons == ["requested"]


async def test_checkpoint_statement_gets_the_engines_error(checkpointer, engine, clock):
    engine.fail_with = EngineError("disk trouble", code="io_error")
    with pytest.raises(EngineError, match="disk trouble"):
        await checkpointer.checkpoint()
    engine.fail_with = None
    assert (await checkpointer.checkpoint())["complete"]  # still running


async def test_a_shorter_timeout_applies_at_once(checkpointer, engine, settings, clock):
    await trio.sleep(50)
    settings["checkpoint_timeout"] = 60
    checkpointer.settings_changed()
    await trio.sleep_until(59)
    assert engine.reasons == []
    await trio.sleep_until(61)
    assert engine.reasons == ["time"]


async def test_nothing_happens_without_a_reason(checkpointer, engine, clock):
    await trio.sleep_until(TIMEOUT_S - 1)
    assert engine.reasons == []


async def test_an_incomplete_checkpoint_is_retried_while_the_wal_is_over_the_size(
    checkpointer, doorbell, engine, clock
):
    engine.wal_bytes = WAL_SIZE
    engine.complete = False  # a long reader holds an old snapshot
    doorbell.ring()
    await trio.sleep(2.5)
    assert engine.reasons == ["wal size"] * 3  # at 0, 1 and 2 s
    engine.complete = True
    await trio.sleep(1)
    assert engine.reasons == ["wal size"] * 4
    await trio.sleep(10)  # complete, and the WAL is small again: no more
    assert engine.reasons == ["wal size"] * 4


async def test_an_incomplete_timed_checkpoint_is_not_retried_below_the_size(checkpointer, engine, clock):
    engine.complete = False
    await trio.sleep_until(TIMEOUT_S + 5)
    assert engine.reasons == ["time"]


async def test_only_timed_checkpoints_may_be_skipped_on_an_idle_server(checkpointer, doorbell, engine, clock):
    await trio.sleep_until(TIMEOUT_S + 1)
    engine.wal_bytes = WAL_SIZE
    doorbell.ring()
    await trio.sleep(1)
    await checkpointer.checkpoint()
    assert engine.reasons == ["time", "wal size", "requested"]
    assert engine.skip_if_idle == [True, False, False]


async def test_a_database_left_durable_first_is_checkpointed_again_soon_until_one_completes(
    checkpointer, engine, clock
):
    """A backup snapshot's checkpoint (not the checkpointer's) ended incomplete:
    its database's commits fsync first until a checkpoint of it completes."""
    engine.durable_first = ["rustydb"]
    engine.complete = False
    checkpointer.settings_changed()
    await trio.sleep(5)
    assert engine.reasons and set(engine.reasons) == {"incomplete"}
    tries = len(engine.reasons)
    engine.complete = True
    engine.durable_first = []
    await trio.sleep(60)
    assert len(engine.reasons) <= tries + 1  # the one that completed, then quiet until the timeout
