"""The checkpointer: one task that runs every checkpoint of a running server.

It sleeps until one is due: checkpoint_timeout after the last one, the engine
ringing its doorbell because the WAL crossed checkpoint_wal_size, or a
CHECKPOINT statement asking for one and waiting for its result. Checkpoints
run one at a time, in a worker thread. One that a long reader kept from
completing is tried again a second later while the WAL is over the size (the
engine rings only once per crossing). While the engine is read-only for lack
of disk space, it also asks the engine every second to try writing again, so
the server becomes writable by itself once space is freed.
"""

from __future__ import annotations

import functools
import math

import trio

from .doorbell import Doorbell
from .engine.instance import FatalWalError
from .engine.session import pinning_sessions
from .logsetup import get_logger
from .settings import to_seconds

log = get_logger("rustydb.checkpointer")

#: How soon an incomplete checkpoint is tried again while the WAL is over checkpoint_wal_size.
RETRY_INCOMPLETE_S = 1.0
#: How often the sessions that keep checkpoints from completing are named in the log.
PIN_LOG_EVERY_S = 30.0
#: How often a server read-only for lack of space tries to write again.
RETRY_READ_ONLY_S = 1.0


class _Request:
    """A CHECKPOINT statement waiting for the checkpoint that serves it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: dict | None = None
        self.error: BaseException | None = None


class Checkpointer:
    def __init__(self, engine, settings, doorbell: Doorbell, run_sync=trio.to_thread.run_sync):
        self._engine = engine
        self._settings = settings
        self._doorbell = doorbell
        # How a checkpoint runs: in a worker thread (tests on the mock clock
        # run it inline, so time never jumps while one is in progress).
        self._run_sync = run_sync
        self._requests: list[_Request] = []
        self._retry_at = math.inf  # trio time to look at the WAL size again after an incomplete one
        self._pins_logged_at = -math.inf

    def settings_changed(self) -> None:
        """checkpoint_timeout or checkpoint_wal_size may have changed: look again."""
        self._doorbell.ring()

    async def checkpoint(self) -> dict:
        """Run a checkpoint that starts after this call, and return the engine's result."""
        request = _Request()
        self._requests.append(request)
        self._doorbell.ring()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last = trio.current_time()
        while True:
            deadline = last + to_seconds("checkpoint_timeout", self._settings["checkpoint_timeout"])
            wake = min(deadline, self._retry_at)
            if self._engine.durable_first_databases():
                # Their commits fsync before SQLite commits them until a
                # checkpoint of them completes: try again soon.
                wake = min(wake, last + RETRY_INCOMPLETE_S)
            if self._engine.read_only_reason is not None:
                wake = min(wake, trio.current_time() + RETRY_READ_ONLY_S)
            with trio.move_on_at(wake):
                await self._doorbell.wait()
            if trio.current_time() >= self._retry_at:
                self._retry_at = math.inf
            if self._engine.read_only_reason is not None and not self._requests:
                await self._try_resume()
            reason = self._due(deadline)
            if (
                reason is None
                and self._engine.durable_first_databases()
                and trio.current_time() >= last + RETRY_INCOMPLETE_S
            ):
                reason = "incomplete"
            if reason is None:
                continue
            complete = await self._run_one(reason)
            last = trio.current_time()
            if not complete:
                self._retry_at = last + RETRY_INCOMPLETE_S

    async def _try_resume(self) -> None:
        try:
            await self._run_sync(self._engine.try_resume_writes)
        except Exception as e:
            if not isinstance(e, FatalWalError):
                log.error("read-only server could not write again", error=str(e))

    def _due(self, deadline: float) -> str | None:
        if self._requests:
            return "requested"
        if trio.current_time() >= deadline:
            return "time"
        if self._engine.wal_bytes_since_checkpoint() >= self._settings["checkpoint_wal_size"]:
            return "wal size"
        return None

    async def _run_one(self, reason: str) -> bool:
        """Run one checkpoint and answer the requests it serves; False if it did not complete."""
        served, self._requests = self._requests, []
        try:
            # A timed checkpoint with nothing logged since the last one is skipped.
            result = await self._run_sync(
                functools.partial(self._engine.checkpoint, reason, skip_if_idle=reason == "time")
            )
        except Exception as e:
            if getattr(e, "code", None) == "disk_full":
                log.warning("checkpoint failed", reason=reason, error=str(e))
            elif not isinstance(e, FatalWalError):  # the engine's observer has asked for the stop
                log.error("checkpoint failed", reason=reason, error=str(e))
            for request in served:
                request.error = e
                request.done.set()
            return True  # failed, not incomplete: the next reason to checkpoint tries again
        if not result["complete"]:
            result = {**result, "pinned_by": pinning_sessions(self._engine, result.get("databases"))}
            self._log_pins(reason, result, asked=bool(served))
        for request in served:
            request.result = result
            request.done.set()
        return result["complete"]

    def _log_pins(self, reason: str, result: dict, *, asked: bool) -> None:
        """Name the sessions that keep checkpoints from completing: at every
        CHECKPOINT, otherwise every PIN_LOG_EVERY_S while it lasts."""
        now = trio.current_time()
        if not asked and now - self._pins_logged_at < PIN_LOG_EVERY_S:
            return
        self._pins_logged_at = now
        log.warning(
            "checkpoint incomplete: sessions hold old snapshots",
            reason=reason,
            databases=result.get("databases"),
            pinned_by=result["pinned_by"],
        )
