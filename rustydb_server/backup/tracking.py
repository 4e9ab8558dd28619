"""Net changes since recent backups, kept current as transactions commit.

An incremental or differential is the compacted WAL since its parent (see
incremental.py). Compacting it when asked means reading all of that WAL and
putting every changeset through a changegroup, which takes time that grows
with the number of updates (0.15-0.2 s for 207,000 row changes on the
development machine, over half of the whole incremental). This module does
the same compaction as the records are logged, on a thread of its own, from
the moment a backup's snapshot is taken; asked for the net changes at some
LSN, it only has to output what it already holds.

Every input arrives through one queue, in the order the engine logged it:
records (``logged``, called under the lock that orders the records of each
database), ``start`` of a tracker at a backup's end LSN and ``net_changes``
at an incremental's end LSN (both called while the engine logs nothing, so a
tracker sees exactly the records at or after its base, and a result exactly
those before its end). Only the worker thread touches the trackers.

What it keeps is bounded: trackers for the latest backup and the latest full
backup (the bases of the next incremental and differential), plus those of
backups still running; each is dropped once the changesets it took in exceed
``max_bytes``. Without a tracker for a parent (after a restart, a dropped
tracker, a base older than the latest backups) the incremental reads the WAL
as before; both paths give the same steps.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..engine import rows_image
from ..logsetup import get_logger
from ..wal import record as walrec
from ..wal import rows_step
from ..wal.lsn import format_lsn
from .incremental import Compaction, NetChangesAt

log = get_logger("rustydb.backup")

#: Changeset bytes one tracker may take in before it gives up (its memory is
#: at most about this; repeated updates of the same rows need less).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Trackers of backups that never completed are dropped beyond this many.
MAX_PENDING = 2


@dataclass
class _Tracker:
    compaction: Compaction = field(default_factory=Compaction)
    kept: bool = False  # the base of a completed backup (else: a backup still running)


class ChangeTracking:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._trackers: dict[int, _Tracker] = {}  # base LSN -> tracker; worker thread only
        self._stopping = False
        # No backup has started tracking yet: a record then has nothing to
        # be added to (``_record`` would skip it), so ``logged`` does not
        # queue it, and a commit costs no hand-off to the worker thread.
        self._started = False
        self._thread = threading.Thread(target=self._run, name="change-tracking", daemon=True)
        self._thread.start()

    # -- called by the engine and the backup code (any thread)

    def logged(self, lsn: int, rec) -> None:
        """A record is durable in the WAL at ``lsn`` (never raises, never blocks)."""
        if self._started and isinstance(rec, (walrec.TxRecord, walrec.DatabaseRecord)):
            self._queue.put(("record", lsn, rec))

    def start(self, base_lsn: int) -> None:
        """Track from ``base_lsn``, a backup's end; call while nothing is logged."""
        self._started = True
        self._queue.put(("start", base_lsn))

    def keep(self, bases: list[int], newest: int) -> None:
        """The latest backups ended at ``bases``; ``newest`` just completed."""
        self._queue.put(("keep", tuple(bases), newest))

    def net_changes(self, base_lsn: int) -> Future:
        """The net changes from ``base_lsn`` to now; call while nothing is
        logged. The future gives a NetChangesAt, or None when no tracker
        covers ``base_lsn``."""
        future: Future = Future()
        self._queue.put(("net", base_lsn, future))
        return future

    def close(self) -> None:
        self._stopping = True  # what is still queued is dropped, not compacted
        self._queue.put(("stop",))
        self._thread.join(timeout=10)

    # -- the worker

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            kind = item[0]
            try:
                if self._stopping and kind != "stop":
                    if kind == "net":
                        _answer(item[2], None)
                    continue
                if kind == "stop":
                    self._trackers.clear()
                    return
                if kind == "record":
                    self._record(item[1], item[2])
                elif kind == "start":
                    self._start(item[1])
                elif kind == "keep":
                    self._keep(item[1], item[2])
                elif kind == "net":
                    _, base, future = item
                    if future.set_running_or_notify_cancel():  # not given up on (a timeout)
                        future.set_result(self._net(base))
            except Exception as e:  # never let tracking take the server down
                log.error("change tracking failed; incrementals read the WAL instead", error=f"{type(e).__name__}: {e}")
                self._trackers.clear()
                if kind == "net" and not item[2].done():
                    _answer(item[2], None)

    def _record(self, lsn: int, rec) -> None:
        # trackers whose backup was taken before this record was logged
        live = [base for base in self._trackers if lsn >= base]
        if live and isinstance(rec, walrec.TxRecord) and any(kind == "rows" for kind, _ in rec.steps):
            # A bulk insert's rows step is taken in as the changeset it stands
            # for: built once for all trackers, and not at all for one it would
            # take past its bound (about the image's size).
            size = sum(rows_step.parse_header(p)[0].size for kind, p in rec.steps if kind == "rows")
            for base in live:
                if self._trackers[base].compaction.changeset_bytes + size > self.max_bytes:
                    self._drop(base)
            live = [base for base in live if base in self._trackers]
            if live:
                rec = dataclasses.replace(rec, steps=rows_image.expand(rec.steps))
        for base in live:
            tracker = self._trackers[base]
            tracker.compaction.add(rec)
            if tracker.compaction.changeset_bytes > self.max_bytes:
                self._drop(base)

    def _drop(self, base: int) -> None:
        del self._trackers[base]
        log.info(
            "change tracking stopped for a backup base: too many changes to "
            "hold; the next incremental from it reads the WAL",
            base_lsn=format_lsn(base),
            limit_bytes=self.max_bytes,
        )

    def _start(self, base: int) -> None:
        self._trackers.setdefault(base, _Tracker())
        pending = sorted(b for b, t in self._trackers.items() if not t.kept)
        for old in pending[:-MAX_PENDING]:  # backups that never completed
            del self._trackers[old]

    def _keep(self, bases: tuple[int, ...], newest: int) -> None:
        for base, tracker in list(self._trackers.items()):
            if base in bases:
                tracker.kept = True
            elif base <= newest:  # superseded, or a backup that failed before it
                del self._trackers[base]

    def _net(self, base: int) -> NetChangesAt | None:
        tracker = self._trackers.get(base)
        # Only a completed backup is a base (a running one may still fail).
        return tracker.compaction.peek() if tracker is not None and tracker.kept else None


def _answer(future: Future, value) -> None:
    """Set ``future``'s result unless the asker gave up on it (cancelled it)."""
    if future.running() or future.set_running_or_notify_cancel():
        future.set_result(value)
