"""Copying backups to the repositories of ``backup_repositories``, in the background.

Every backup the server records while backup_repositories is set (taken
through the API, by the scheduler, or by rusty-db-backup --repo into one of
them) gets, in its catalog entry, one state per repository: ``copied``,
``pending`` or ``failing`` (with the error and the number of attempts).
The Replicator, a task of the backup service's nursery, works per
repository: one copy at a time to each, oldest backup first, so a repository
that is down delays only its own copies; after a failure it retries that
repository with a growing delay (RETRY_FIRST_S doubling up to RETRY_MAX_S),
and at once when another backup completes. The states are in the server's
catalog, so copies still due after a restart go on from there.

A copy (blocking, in a worker thread): the backup's file goes under
``backups/<id>/<id>.backup`` (visible only once complete), then its entry
into the repository's own catalog (repo_catalog.record). The source is the
server's file, else a repository that already holds the backup. A file the
server wrote straight into the first repository (a local directory) is not
copied again: only its entry is written.

A backup the server writes while the first repository is S3 is streamed into
it as it is written (service.py, S3Repository.open_upload): while that upload
is finishing, the replicator leaves that repository alone (``begin_stream``,
``stream_ended``), so the backup is not uploaded twice; once it is complete,
its state is ``copied`` with ``via: stream``. A streamed upload given up
leaves the state ``pending``, and the replicator copies the backup from the
server's file as for any other.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import trio

from ..logsetup import get_logger
from . import repo_catalog
from .catalog import Catalog, known_path

log = get_logger("rustydb.backup")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0

COPIED, PENDING, FAILING = "copied", "pending", "failing"


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def location_in(url: str, key: str) -> str:
    """Where an object of a repository is, as the catalog records a location:
    the file's absolute path in a local repository, else the object's URL."""
    if is_s3(url):
        return f"{url.rstrip('/')}/{key}"
    return os.path.join(os.path.abspath(url), *key.split("/"))


def same_repository(a: str, b: str) -> bool:
    if is_s3(a) or is_s3(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def initial_states(urls: list[str], location: str | None, backup_id: str) -> dict | None:
    """The repositories a just-completed backup is due in: ``copied`` where its
    file already is (written there by rusty-db-backup --repo), else ``pending``.
    None when no repositories are configured."""
    if not urls:
        return None
    now = int(time.time())
    key = repo_catalog.backup_key(backup_id)
    out = {}
    for url in urls:
        here = location is not None and location == location_in(url, key)
        # A local first repository holds the server's own file, but not yet its catalog entry.
        held_by_tool = here and is_s3(url)
        out[url] = {"state": COPIED if held_by_tool else PENDING, "error": None, "attempts": 0, "updated_at": now}
    return out


class Replicator:
    def __init__(self, catalog: Catalog, settings, open_repository: Callable | None = None):
        self.bytes_copied: dict[str, int] = {}  # per repository, since the server started (for /metrics)
        self.catalog = catalog
        self.settings = settings
        self._open = open_repository or _open_repository
        self._wake = trio.Event()
        self._busy: set[str] = set()
        self._retry_at: dict[str, float] = {}  # url -> trio time of its next attempt
        self._delay: dict[str, float] = {}
        self._streaming: set[tuple[str, str]] = set()  # (url, backup_id) being streamed by the backup itself

    def urls(self) -> list[str]:
        return list(self.settings["backup_repositories"] or [])

    def kick(self) -> None:
        """Something new to copy: try every repository now, failing ones too."""
        self._retry_at.clear()
        self._wake.set()

    def due(self) -> dict[str, list[str]]:
        """Backups still to copy, by repository URL, oldest first; only to the
        repositories backup_repositories names now (one taken off the list gets no more)."""
        configured = set(self.urls())
        out: dict[str, list[str]] = {}
        for entry in self.catalog.list():
            if entry["status"] != "completed":
                continue
            for url, state in _states(entry).items():
                if url in configured and state.get("state") in (PENDING, FAILING):
                    out.setdefault(url, []).append(entry["backup_id"])
        # A repository whose oldest due backup is still being streamed into it waits
        # for that upload (the copies keep their order); stream_ended wakes it.
        return {url: ids for url, ids in out.items() if (url, ids[0]) not in self._streaming}

    def begin_stream(self, url: str, backup_id: str) -> None:
        """The backup is being streamed into ``url`` by its writer: no copy of it there meanwhile."""
        self._streaming.add((url, backup_id))

    def streamed(self, url: str, backup_id: str, size: int, **timeline) -> None:
        """The streamed upload is complete and in the repository's catalog (``timeline``:
        where its time went, logged with it)."""
        self.bytes_copied[url] = self.bytes_copied.get(url, 0) + size
        self._record(backup_id, url, state=COPIED, error=None, via="stream")
        log.info("backup streamed into a repository", backup_id=backup_id, repository=url, **timeline)

    def stream_ended(self, url: str, backup_id: str) -> None:
        """The streamed upload is over, done or given up: whatever is still due is copied now."""
        if (url, backup_id) in self._streaming:
            self._streaming.discard((url, backup_id))
            self.kick()

    def summary(self) -> dict[str, dict]:
        """Per repository: how many backups it holds, how many wait, the last error."""
        out = {url: {"copied": 0, "pending": 0, "failing": None} for url in self.urls()}
        for entry in self.catalog.list():
            for url, state in _states(entry).items():
                s = out.get(url)
                if s is None:
                    continue  # no longer in backup_repositories
                if state.get("state") == COPIED:
                    s["copied"] += 1
                elif entry["status"] == "completed":
                    s["pending"] += 1
                    if state.get("state") == FAILING:
                        s["failing"] = state.get("error")
        return out

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                for url in self.due():
                    if url not in self._busy and self._retry_at.get(url, -math.inf) <= now:
                        self._busy.add(url)
                        nursery.start_soon(self._copy_all, url)
                upcoming = [t for url, t in self._retry_at.items() if url not in self._busy]
                with trio.move_on_at(min(upcoming, default=math.inf)):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _copy_all(self, url: str) -> None:
        skipped: set[str] = set()  # backups with nothing to copy from: the next ones go on
        try:
            while True:
                waiting = [b for b in self.due().get(url, []) if b not in skipped]
                if not waiting:
                    if skipped:  # look again later whether their files came back
                        self._retry_at[url] = trio.current_time() + RETRY_MAX_S
                    return
                backup_id = waiting[0]
                try:
                    from .service import cancel_flag  # the service imports this module

                    # At shutdown the copy stops at its next chunk (the upload is
                    # aborted, nothing is listed) and stays pending for the next start.
                    async with cancel_flag() as cancel:
                        await trio.to_thread.run_sync(self.copy, url, backup_id, cancel)
                except CopyCancelled:
                    return
                except NoSource as e:  # this backup's problem, not the repository's
                    skipped.add(backup_id)
                    self._record(backup_id, url, state=FAILING, error=str(e), attempts=self._attempts(backup_id, url))
                    log.warning("a backup cannot be copied to a repository", backup_id=backup_id, error=str(e))
                    continue
                except Exception as e:  # a repository error, an OSError, a damaged catalog: retried
                    error = str(e) or type(e).__name__
                    attempts = self._attempts(backup_id, url)
                    self._record(backup_id, url, state=FAILING, error=error, attempts=attempts)
                    delay = min(self._delay.get(url, RETRY_FIRST_S / 2) * 2, RETRY_MAX_S)
                    self._delay[url] = delay
                    self._retry_at[url] = trio.current_time() + delay
                    log.warning(
                        "copying a backup to a repository failed; retrying later",
                        backup_id=backup_id,
                        repository=url,
                        error=error,
                        attempts=attempts,
                        retry_in_s=delay,
                    )
                    return
                self._delay.pop(url, None)
                self._retry_at.pop(url, None)
                if not self._record(backup_id, url, state=COPIED, error=None, via="copy"):
                    self._retry_at[url] = trio.current_time() + RETRY_MAX_S
                    return
                log.info("backup copied to a repository", backup_id=backup_id, repository=url)
        finally:
            self._busy.discard(url)
            self._wake.set()

    def _attempts(self, backup_id: str, url: str) -> int:
        """The number of this attempt to copy a backup to a repository."""
        before = _states(self.catalog.get(backup_id) or {}).get(url, {}).get("attempts")
        return (before if isinstance(before, int) else 0) + 1

    def _record(self, backup_id: str, url: str, **state) -> bool:
        """Write a copy's state to the catalog; a full disk must not stop the server."""
        try:
            self.catalog.update_repository(backup_id, url, **state)
            return True
        except OSError as e:
            log.error(
                "cannot record a backup copy's state in the catalog",
                backup_id=backup_id,
                repository=url,
                error=e.strerror or str(e),
            )
            return False

    def copy(self, url: str, backup_id: str, cancel: threading.Event | None = None) -> None:
        """Copy one backup to one repository (blocking); CopyCancelled once ``cancel`` is set."""
        entry = self.catalog.get(backup_id)
        if entry is None:
            return  # deleted meanwhile
        repo = self._open(url, self.settings)
        key = repo_catalog.backup_key(backup_id)
        size, chunks = self._source(entry, url, key)
        there = repo.stat(key)
        if there is None or there.size != size:
            repo.put_stream(key, _until(cancel, chunks()), if_absent=True)
            self.bytes_copied[url] = self.bytes_copied.get(url, 0) + size
        if cancel is not None and cancel.is_set():
            raise CopyCancelled()
        repo_catalog.record(repo, repo_catalog.entry_document(entry, size))

    def forget(self, url: str, backup_id: str) -> None:
        """Remove a deleted backup from one repository (blocking)."""
        repo_catalog.forget(self._open(url, self.settings), backup_id)

    def _source(self, entry: dict, url: str, key: str):
        """The backup's size and its bytes: the server's file, else a repository holding it."""
        location = entry.get("location")
        if known_path(location) and os.path.isfile(location):
            return os.path.getsize(location), lambda: repo_catalog.file_chunks(location)
        for other, state in _states(entry).items():
            if other == url or state.get("state") != COPIED:
                continue
            src = self._open(other, self.settings)
            info = src.stat(key)
            if info is not None:
                return info.size, lambda src=src: src.open_stream(key)
        raise NoSource(
            f"backup {entry['backup_id']} has no copy to copy from: its file {location} is gone and no "
            "repository holds it yet"
        )


def _states(entry: dict) -> dict[str, dict]:
    """An entry's per-repository states; whatever a hand-edited catalog holds, never a crash."""
    states = entry.get("repositories")
    if not isinstance(states, dict):
        return {}
    return {url: s for url, s in states.items() if isinstance(url, str) and isinstance(s, dict)}


class NoSource(Exception):
    """The backup's file is gone and no repository holds it: nothing to copy from."""


class CopyCancelled(Exception):
    """The server is shutting down: the copy stopped, to be done at the next start."""


def _until(cancel: threading.Event | None, chunks):
    for chunk in chunks:
        if cancel is not None and cancel.is_set():
            raise CopyCancelled()
        yield chunk


def _open_repository(url: str, settings):
    from ..repository import open_repository

    return open_repository(url, settings)
