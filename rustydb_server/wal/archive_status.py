"""Archive status marks: ``wal/archive_status/<segment>.ready`` and ``.done``.

A segment gets ``.ready`` once it is complete and durable (the engine writes
it), and ``.done`` once the archive holds it (the archiver writes it). With several
archive destinations (archive_dest and archive_extra_dests) each one that
holds the segment gets ``<segment>.done-<tag>`` (``mark_copied``; the tag
names the destination), and ``.done`` comes only when every destination has
its mark (the per-destination marks are then removed). Only
``.done`` proves a segment archived; WAL retention keeps every segment
without it while archiving is on. Empty files; their names are the state.
"""

from __future__ import annotations

import os

from rustydb_server import fileops as fileops_mod
from rustydb_server.logsetup import get_logger

log = get_logger(__name__)

READY = ".ready"
DONE = ".done"


def _touch(status_dir: str, name: str, fileops: fileops_mod.FileOps) -> None:
    fd = fileops.open(os.path.join(status_dir, name), os.O_WRONLY | os.O_CREAT, 0o600)
    fileops.close(fd)
    fileops.fsync_dir(status_dir)


def mark_ready(status_dir: str, segment: str, fileops: fileops_mod.FileOps = fileops_mod.REAL) -> None:
    """The segment is complete and durable: the archiver may copy it."""
    _touch(status_dir, segment + READY, fileops)


def mark_done(status_dir: str, segment: str, fileops: fileops_mod.FileOps = fileops_mod.REAL) -> None:
    """The archive holds the segment: retention may remove it."""
    _touch(status_dir, segment + DONE, fileops)


COPIED = ".done-"


def mark_copied(status_dir: str, segment: str, tag: str, fileops: fileops_mod.FileOps = fileops_mod.REAL) -> None:
    """One of several archive destinations (named by ``tag``) holds the segment."""
    _touch(status_dir, segment + COPIED + tag, fileops)


def is_copied(status_dir: str, segment: str, tag: str) -> bool:
    return os.path.exists(os.path.join(status_dir, segment + COPIED + tag))


def forget_copies(status_dir: str, segment: str) -> None:
    """Remove a segment's per-destination marks (it is .done, or gone)."""
    try:
        names = os.listdir(status_dir)
    except FileNotFoundError:
        return
    for n in names:
        if n.startswith(segment + COPIED):
            try:
                os.unlink(os.path.join(status_dir, n))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove archive status mark", segment=segment, error=str(e))


def is_archived(status_dir: str, segment: str) -> bool:
    return os.path.exists(os.path.join(status_dir, segment + DONE))


def is_marked(status_dir: str, segment: str) -> bool:
    """Whether the segment has either mark (a crash can come before .ready)."""
    return any(os.path.exists(os.path.join(status_dir, segment + s)) for s in (READY, DONE))


def waiting(status_dir: str) -> list[str]:
    """Segments marked ready and not yet archived, oldest first."""
    try:
        names = os.listdir(status_dir)
    except FileNotFoundError:
        return []
    ready = {n[: -len(READY)] for n in names if n.endswith(READY)}
    done = {n[: -len(DONE)] for n in names if n.endswith(DONE)}
    return sorted(ready - done)


def remove_marks(status_dir: str, segment: str) -> None:
    """Forget a removed segment; a mark that cannot be removed is only stale."""
    for suffix in (READY, DONE):
        try:
            os.unlink(os.path.join(status_dir, segment + suffix))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove archive status mark", segment=segment, error=str(e))
    forget_copies(status_dir, segment)
