"""GET /metrics: the server's figures in Prometheus' text format, through prometheus-client.

prometheus-client is imported at the first scrape, not at the server's start
(which it would slow for every server, scraped or not).

Each server has its own ``CollectorRegistry`` (never the library's global
one), holding one collector that reads the running server's state at each
scrape: nothing is counted twice and nothing is kept up to date between
scrapes, except what only an event can tell (``BackupStats``, fed by the
backup catalog whenever a backup ends).

Figures (all names start with ``rustydb_``):

* per backup type: ``backup_last_success_timestamp_seconds``,
  ``backup_last_duration_seconds``, ``backup_last_size_bytes`` (of the last
  completed backup; duration in whole seconds, as the catalog records it),
  ``backup_failures_total`` (since the server started);
* ``backup_bytes_written_total`` per destination (the backup file's
  directory; ``client`` for backups streamed to rusty-db-backup), and
  ``archive_bytes_written_total`` into archive_dest;
* ``filesystem_free_bytes``, ``filesystem_size_bytes`` of backup_dir and
  archive_dest (label ``role``; from ``os.statvfs`` of the directory, or of
  its nearest existing parent while it is not made yet);
* ``archive_lag_segments``, ``archive_lag_seconds`` (completed segments
  waiting to be archived, and how long the oldest has waited),
  ``archive_failures_in_a_row``, ``archived_segments_total``;
* ``wal_bytes_written_total`` (WAL appended since start), ``commits_total``,
  ``connections`` (open client sessions);
* ``backup_schedule_next_run_timestamp_seconds`` per scheduled backup type.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .backup.catalog import known_path
from .container.format import BackupType
from .health import free_space
from .schedule import plan as schedule_plan
from .schedule.scheduler import config_of

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["BackupStats", "Metrics"]

BACKUP_TYPES = tuple(t.value for t in BackupType.taken_by_server())


class BackupStats:
    """What only the end of a backup tells: fed by the catalog (``Catalog.listeners``)."""

    def __init__(self, entries: list[dict]):
        self._lock = threading.Lock()
        self.last_success: dict[str, dict] = {}
        self.failures: dict[str, int] = dict.fromkeys(BACKUP_TYPES, 0)
        self.bytes_by_destination: dict[str, int] = {}
        for e in entries:  # the catalog at start: the last successes survive a restart
            if e.get("status") == "completed":
                self._remember(e)

    def _remember(self, entry: dict) -> None:
        kind = str(entry.get("backup_type"))
        last = self.last_success.get(kind)
        if last is None or (entry.get("completed_at") or 0) >= (last.get("completed_at") or 0):
            self.last_success[kind] = entry

    def backup_ended(self, entry: dict) -> None:
        with self._lock:
            kind = str(entry.get("backup_type"))
            if entry.get("status") == "completed":
                self._remember(entry)
                location = entry.get("location")
                where = os.path.dirname(location) if known_path(location) else "client"
                self.bytes_by_destination[where] = self.bytes_by_destination.get(where, 0) + (
                    entry.get("size_bytes") or 0
                )
            else:
                self.failures[kind] = self.failures.get(kind, 0) + 1

    def snapshot(self) -> tuple[dict, dict, dict]:
        with self._lock:
            return dict(self.last_success), dict(self.failures), dict(self.bytes_by_destination)


class Metrics:
    """The running server's registry; ``render()`` is one scrape."""

    def __init__(self, settings, engine, archiver, backups, sessions):
        self.stats = BackupStats(backups.catalog.list())
        backups.catalog.listeners.append(self.stats.backup_ended)
        self._collector = _Collector(settings, engine, archiver, backups, sessions, self.stats)
        self._registry = None  # made at the first scrape
        self._lock = threading.Lock()  # scrapes render in worker threads

    @property
    def content_type(self) -> str:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import generate_latest

        with self._lock:
            if self._registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(self._collector)
                self._registry = registry
        return generate_latest(self._registry)


class _Collector:
    def __init__(self, settings, engine, archiver, backups, sessions, stats: BackupStats):
        self.settings = settings
        self.engine = engine
        self.archiver = archiver
        self.backups = backups
        self.sessions = sessions
        self.stats = stats
        self.wal_start_lsn = engine.wal.end_lsn

    def collect(self) -> Iterator[Metric]:
        yield from self._backups()
        yield from self._filesystems()
        yield from self._archive()
        yield from self._engine()
        yield from self._schedule()
        yield from self._checks()
        yield from self._repositories()

    def _repositories(self) -> Iterator[Metric]:
        """backup_repositories: what each holds, waits for and has been sent (the first one too)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        replicator = getattr(self.backups, "replicator", None)
        if replicator is None:
            return
        held = GaugeMetricFamily(
            "rustydb_repository_backups",
            "Backups in each of backup_repositories by copy state (copied, pending)",
            labels=["repository", "state"],
        )
        failing = GaugeMetricFamily(
            "rustydb_repository_failing",
            "1 while copying to this repository fails (retried with backoff), else 0",
            labels=["repository"],
        )
        sent = CounterMetricFamily(
            "rustydb_repository_bytes_copied",
            "Bytes of backups copied to each repository since the server started",
            labels=["repository"],
        )
        info = GaugeMetricFamily(
            "rustydb_repository_info",
            "1 per repository of backup_repositories, with the name given it there ('' for none)",
            labels=["repository", "name"],
        )
        for url, s in sorted(replicator.summary().items()):
            info.add_metric([url, getattr(url, "name", None) or ""], 1)
            held.add_metric([url, "copied"], s["copied"])
            held.add_metric([url, "pending"], s["pending"])
            failing.add_metric([url], 1 if s["failing"] else 0)
            sent.add_metric([url], replicator.bytes_copied.get(url, 0))
        yield from (held, failing, sent, info)

    def _backups(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        last, failures, by_destination = self.stats.snapshot()
        when = GaugeMetricFamily(
            "rustydb_backup_last_success_timestamp_seconds",
            "When the last backup of this type completed (Unix time)",
            labels=["backup_type"],
        )
        took = GaugeMetricFamily(
            "rustydb_backup_last_duration_seconds",
            "How long the last completed backup of this type took",
            labels=["backup_type"],
        )
        size = GaugeMetricFamily(
            "rustydb_backup_last_size_bytes", "Size of the last completed backup of this type", labels=["backup_type"]
        )
        for kind, e in sorted(last.items()):
            if e.get("completed_at") is not None:
                when.add_metric([kind], e["completed_at"])
                if e.get("started_at") is not None:
                    took.add_metric([kind], max(0, e["completed_at"] - e["started_at"]))
            if e.get("size_bytes") is not None:
                size.add_metric([kind], e["size_bytes"])
        failed = CounterMetricFamily(
            "rustydb_backup_failures",
            "Backups of this type that failed since the server started",
            labels=["backup_type"],
        )
        for kind, n in sorted(failures.items()):
            failed.add_metric([kind], n)
        written = CounterMetricFamily(
            "rustydb_backup_bytes_written",
            "Bytes of completed backups per destination directory since the server started",
            labels=["destination"],
        )
        for where, n in sorted(by_destination.items()):
            written.add_metric([where], n)
        yield from (when, took, size, failed, written)

    def _directories(self) -> list[tuple[str, str]]:
        out = [("backup_dir", self.backups.backup_dir())]
        if self.settings["archive_dest"] and not self.settings["archive_dest"].startswith("s3://"):
            out.append(("archive_dest", self.settings["archive_dest"]))
        replicator = getattr(self.backups, "replicator", None)
        for url in replicator.urls() if replicator is not None else []:
            if not url.startswith("s3://"):  # an object store's free space cannot be known
                out.append(("backup_repository", url))
        return out

    def _filesystems(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        free = GaugeMetricFamily(
            "rustydb_filesystem_free_bytes",
            "Bytes free (to the server's user) on the file system of backup_dir or archive_dest",
            labels=["role", "path"],
        )
        total = GaugeMetricFamily(
            "rustydb_filesystem_size_bytes",
            "Size of the file system of backup_dir or archive_dest",
            labels=["role", "path"],
        )
        for role, path in self._directories():
            space = free_space(path)
            if space is not None:
                free.add_metric([role, path], space[0])
                total.add_metric([role, path], space[1])
        yield from (free, total)

    def _archive(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        segments, seconds = self.archiver.lag()
        progress = self.archiver.progress
        yield GaugeMetricFamily(
            "rustydb_archive_lag_segments", "Completed WAL segments waiting to be archived", segments
        )
        yield GaugeMetricFamily(
            "rustydb_archive_lag_seconds", "How long the oldest WAL segment waiting to be archived has waited", seconds
        )
        yield GaugeMetricFamily(
            "rustydb_archive_failures_in_a_row",
            "Failed archive attempts since the last success",
            progress.failures_in_a_row,
        )
        yield CounterMetricFamily(
            "rustydb_archived_segments", "WAL segments archived since the server started", progress.archived_count
        )
        written = CounterMetricFamily(
            "rustydb_archive_bytes_written",
            "Bytes written to archive_dest since the server started",
            labels=["destination"],
        )
        if self.settings["archive_dest"]:
            written.add_metric([self.settings["archive_dest"]], progress.archived_bytes)
        yield written

    def _engine(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        engine = self.engine
        yield CounterMetricFamily(
            "rustydb_wal_bytes_written",
            "WAL bytes appended since the server started",
            engine.wal.end_lsn - self.wal_start_lsn,
        )
        yield CounterMetricFamily("rustydb_commits", "Transactions committed since the server started", engine.commits)
        yield GaugeMetricFamily("rustydb_connections", "Open client sessions", len(self.sessions))

    def _schedule(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        nxt = GaugeMetricFamily(
            "rustydb_backup_schedule_next_run_timestamp_seconds",
            "When each scheduled backup type runs next (Unix time)",
            labels=["backup_type"],
        )
        config = config_of(self.settings)
        if config is not None:
            now = dt.datetime.now(dt.UTC)
            for kind, expression in sorted(config.crons.items()):
                nxt.add_metric([kind], schedule_plan.next_fire(expression, config.tz, now).timestamp())
        yield nxt

    def _checks(self) -> Iterator[Metric]:
        """The scheduled restore drill and verify (schedule/checks.py)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        scheduler = self.backups.scheduler
        checks = scheduler.checks if scheduler is not None else None
        success = GaugeMetricFamily(
            "rustydb_check_last_success_timestamp_seconds",
            "When the scheduled restore drill or verify last passed in this server's run (Unix time)",
            labels=["check"],
        )
        failures = CounterMetricFamily(
            "rustydb_check_failures",
            "Scheduled restore drills or verifies that failed since the server started",
            labels=["check"],
        )
        nxt = GaugeMetricFamily(
            "rustydb_check_next_run_timestamp_seconds",
            "When the scheduled restore drill or verify runs next (Unix time)",
            labels=["check"],
        )
        if checks is not None:
            for kind, at in sorted(checks.last_success.items()):
                success.add_metric([kind], at)
            for kind, count in sorted(checks.failures.items()):
                failures.add_metric([kind], count)
            for kind, at in sorted(checks.next_at.items()):
                nxt.add_metric([kind], at.timestamp())
        yield from (success, failures, nxt)
