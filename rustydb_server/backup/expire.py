"""Expiring backups and archived WAL: the facts gathered for backup/retention.py's
plan, and the plan applied.

Applying is ordered so that a crash part-way leaves a state a second run
completes: the backup files go first, then their catalog entries (one
atomic rewrite of the catalog per entry), then the archived segments, each
directory fsynced after its removals. A file already gone counts as removed;
nothing the plan does not name is touched, and a backup file is removed only
when its header carries the backup id the plan names (the catalog's path may
since hold another file).
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable

from .. import fileops as _fileops
from ..archive import segment_file
from ..container.errors import BackupError
from ..container.reader import BackupReader
from ..datadir import DataDir
from ..repository import RepositoryError, location
from ..wal import timeline as waltl
from . import retention
from .catalog import Catalog, known_path, load_entries


@dataclasses.dataclass
class Facts:
    entries: list[dict]
    segments: list[retention.Segment]
    histories: dict[int, list[waltl.Switch]]
    segment_size: int
    unreadable: list[str]  # archive files left alone: no readable header


def gather(data_dir: str, archive_dir: str | None) -> Facts:
    """Read the catalog, the control file's segment size and the archive.

    CatalogError, DataDirError, HistoryError or ArchiveError say what could not be read."""
    entries = load_entries(data_dir)
    segment_size = DataDir(data_dir).read_control().segment_size
    segments: list[retention.Segment] = []
    histories: dict[int, list[waltl.Switch]] = {}
    unreadable: list[str] = []
    if archive_dir:
        for tl, by_segno in sorted(segment_file.list_archive(archive_dir).items()):
            for segno, path in sorted(by_segno.items()):
                archived_at = _archived_at(path)
                if archived_at is None:
                    unreadable.append(path)
                    continue
                segments.append(retention.Segment(tl, segno, path, archived_at))
        for tl in waltl.list_history_timelines(archive_dir):
            histories[tl] = waltl.read_history(archive_dir, tl)
    return Facts(entries, segments, histories, segment_size, unreadable)


def _archived_at(path: str) -> float | None:
    try:
        if location.is_url(path):  # the header only, not the whole segment
            try:
                return BackupReader(io.BytesIO(location.read_head(path, HEAD_BYTES))).header.created_us / 1e6
            except BackupError:
                pass  # a header longer than that: read the object
        with location.open_read(path) as f:
            return BackupReader(f).header.created_us / 1e6
    except (OSError, BackupError, RepositoryError):
        return None


#: What one ranged read of an archived segment in an object store fetches for its header.
HEAD_BYTES = 64 * 1024


def make_plan(facts: Facts, policy: retention.Policy, now: float | None = None) -> retention.Plan:
    return retention.plan(
        facts.entries,
        policy,
        now=time.time() if now is None else now,
        segments=facts.segments,
        histories=facts.histories,
        segment_size=facts.segment_size,
    )


@dataclasses.dataclass
class Outcome:
    removed_files: list[str] = dataclasses.field(default_factory=list)
    removed_entries: list[str] = dataclasses.field(default_factory=list)
    removed_segments: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (backup id, why)
    # (backup id, repository, error): a copy in backup_repositories that could not be removed
    repository_errors: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def apply(
    plan: retention.Plan,
    data_dir: str,
    fileops: _fileops.FileOps = _fileops.REAL,
    forget: Callable[[str, str], None] | None = None,
) -> Outcome:
    """Remove what ``plan`` names (see the module doc for the order). The caller
    holds the data directory's lock: a running server keeps its catalog in memory.
    ``forget(url, backup_id)`` removes a backup's copy from a repository of
    backup_repositories (its catalog entry, then its file): done first, so no
    repository lists a backup whose file is gone."""
    out = Outcome()
    removable = []
    for b in plan.backups:
        why = _file_mismatch(b)
        if why:
            out.refused.append((b.backup_id, why))
        else:
            removable.append(b)
    catalog = Catalog(data_dir, fileops)
    if forget is not None:
        for b in removable:
            for url in (catalog.get(b.backup_id) or {}).get("repositories") or {}:
                try:
                    forget(url, b.backup_id)
                except Exception as e:  # a repository that is down: the rest still expires
                    out.repository_errors.append((b.backup_id, url, str(e)))
    dirs: set[str] = set()
    for b in removable:
        if known_path(b.location) and _unlink(fileops, b.location):
            out.removed_files.append(b.location)
            dirs.add(os.path.dirname(b.location))
    for d in sorted(dirs):
        fileops.fsync_dir(d)
    for b in removable:
        if catalog.get(b.backup_id) is not None:
            catalog.remove(b.backup_id)
        out.removed_entries.append(b.backup_id)
    dirs = set()
    for s in plan.segments:
        if location.is_url(s.path):  # an object store: the delete is durable when it returns
            location.remove(s.path)
            out.removed_segments.append(s.path)
        elif _unlink(fileops, s.path):
            out.removed_segments.append(s.path)
            dirs.add(os.path.dirname(s.path))
    for d in sorted(dirs):
        fileops.fsync_dir(d)
    return out


def _file_mismatch(b: retention.ExpireBackup) -> str | None:
    """Why ``b``'s file must not be removed, or None (also when it is already gone)."""
    if not known_path(b.location) or not os.path.exists(b.location):
        return None
    try:
        with open(b.location, "rb") as f:
            found = BackupReader(f).header.backup_id
    except OSError as e:
        return f"cannot read {b.location}: {e.strerror or e}"
    except BackupError as e:
        return f"{b.location} is not a readable backup ({e}); remove it by hand if it is this backup's"
    if found != b.backup_id:
        return f"{b.location} now holds backup {found}, not {b.backup_id}; left in place"
    return None


def _unlink(fileops: _fileops.FileOps, path: str) -> bool:
    """Remove ``path``; False when it was already gone (a re-run after a crash)."""
    try:
        fileops.unlink(path)
    except FileNotFoundError:
        return False
    return True
