"""Restoring from a repository alone: its catalog, its backup files, its archived WAL.

The disaster case: a new machine with nothing but the repository's address,
its credentials and the backup key. ``fetch`` reads the repository's catalog
(backup/repo_catalog.py) and chooses what to restore. A local repository's
files are read where they are. From an object store, the full (or
pitr-base) backup, alone, as a recovery's base or as a chain's first, is
read in place, front to back, by ranges fetched in parallel ahead (no
temporary copy); a chain's incrementals are downloaded meanwhile, on a
thread of their own, into a private working directory beside the data
directory (same file system, so the space is checked where the restore
writes), each one waited for only when it is applied. The archived WAL
(``wal/``), when recovery replays it, is read in place like any archive
(segment by segment, unpacked ahead). The restore itself is then the one of
local files (restore_full, restore_members, restore_to_target), which
verifies every chunk as it reads it; the working directory is removed at
the end, whatever happens.

What is restored:
- a recovery target: the newest full or pitr-base backup before it (or the
  one --backup names), then the archived WAL up to the target;
- no target, and the repository holds archived WAL: the newest full or
  pitr-base backup (or --backup's) and every archived WAL record after it,
  to the latest point the archive reaches;
- no target and no archived WAL: the backup's whole chain (the newest
  backup, or --backup's: its full backup, then its incrementals).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backup import repo_catalog
from ..backup.repo_file import RepositoryFile
from ..container.format import BackupType
from ..repository import LocalRepository
from .errors import RestoreError
from .pitr import Target

WAL_PREFIX = "wal/"
#: Block size of a backup restored straight from an object store (one range request each).
STREAM_BLOCK = 8 << 20


@dataclass(frozen=True)
class RepositoryObject:
    """A backup in a repository, read in place by byte ranges (table restore)."""

    repo: object
    key: str
    size: int
    readahead: int = 0  # blocks fetched ahead in parallel: a whole restore read front to back
    #: its first and last blocks, fetched once for all the opens of this object
    blocks: dict = field(default_factory=dict, compare=False, repr=False)

    def open(self) -> RepositoryFile:
        if not self.readahead:
            return RepositoryFile(self.repo, self.key, self.size, shared=self.blocks)
        return RepositoryFile(
            self.repo, self.key, self.size, block=STREAM_BLOCK, readahead=self.readahead, shared=self.blocks
        )

    def __str__(self) -> str:
        return f"{self.repo.url}/{self.key}"


@dataclass
class Fetched:
    repository: str
    chain: list[dict]  # catalog entries, full backup first
    paths: list  # their downloaded files (or, without download, RepositoryObjects), in the same order
    archive_dir: str | None  # the archive (the repository's wal/, read in place), when WAL is replayed
    target: Target | None  # what to recover to (None: the chain alone)
    workdir: str


def _choose(entries: dict, which: str, target: Target | None, has_wal: bool, url: str) -> tuple[list[dict], bool]:
    """The entries to restore, and whether archived WAL is replayed on top."""
    if target is None and not (has_wal and which == "latest"):
        return repo_catalog.chain_of(entries, repo_catalog.pick(entries, which, url=url), url=url), False
    if which != "latest":
        base = repo_catalog.pick(entries, which, url=url)
        if not BackupType(base["backup_type"]).is_full_base:
            raise RestoreError(
                f"backup {base['backup_id']} in repository {url} is {base['backup_type']}: recovery with "
                "archived WAL starts from a full or pitr-base backup; name one with --backup"
            )
    else:
        before = target.value if target is not None and target.kind == "time" else None
        base = repo_catalog.base_for_target(entries, before, url=url)
    return [base], True


@contextlib.contextmanager
def fetch(
    repo,
    data_dir: str,
    *,
    which: str = "latest",
    target: Target | None = None,
    archive_dir: str | None = None,
    download: bool = True,
) -> Iterator[Fetched]:
    """Download what restoring ``which`` (or to ``target``) from ``repo`` needs; see the module doc.
    With ``download`` false the backups stay in the repository (RepositoryObjects,
    read by ranges)."""
    entries = repo_catalog.load(repo)
    # Whether there is WAL to replay matters for a target or the latest backup only
    # (the listing of a long archive is many requests).
    wal_matters = target is not None or which == "latest"
    has_wal = archive_dir is not None or (wal_matters and next(iter(repo.list(WAL_PREFIX)), None) is not None)
    chain, replay = _choose(entries, which, target, has_wal, repo.url)
    if replay and not has_wal:
        raise RestoreError(
            f"repository {repo.url} holds no archived WAL ({WAL_PREFIX} is empty) to recover to the target; "
            "restore a backup without a recovery target, or give the archive kept elsewhere: "
            "--input FILE --archive-dir DIR"
        )
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    workdir = tempfile.mkdtemp(dir=parent, prefix=".rustydb-repository-restore-")
    try:
        with contextlib.ExitStack() as stack:
            if download and isinstance(repo, LocalRepository):
                # A local repository's objects are files: restored from where they are, no copy.
                paths = [_local_file(repo, e) for e in chain]
            elif download:
                # The full (or pitr-base) backup is restored straight from the store, read
                # front to back by parallel ranges, with no temporary copy on disk. The
                # incrementals after it (each read twice: checked whole, then applied) are
                # fetched meanwhile, in the background, into the working directory.
                paths = [_streamed(repo, chain[0])]
                if len(chain) > 1:
                    prefetch = stack.enter_context(_Prefetch(repo, chain[1:], workdir))
                    paths += prefetch.members
            else:
                paths = [RepositoryObject(repo, e["key"], _size(repo, e)) for e in chain]
            archive = None
            if replay:
                # Read in place, as archive_dest's archive is: segment by segment, unpacked ahead.
                archive = archive_dir or wal_location(repo.url)
            yield Fetched(
                repository=repo.url,
                chain=chain,
                paths=paths,
                archive_dir=archive,
                target=(target or Target("end")) if replay else None,
                workdir=workdir,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _local_file(repo, entry: dict) -> str:
    size = _size(repo, entry)
    expected = entry.get("size_bytes")
    if isinstance(expected, int) and size != expected:
        raise RestoreError(
            f"repository {repo.url}: {entry['key']} is {size} bytes, its catalog entry says {expected}; the "
            "copy is damaged or was replaced: restore from another repository"
        )
    return repo.path(entry["key"])


def _streamed(repo, entry: dict) -> RepositoryObject:
    size = _size(repo, entry)
    expected = entry.get("size_bytes")
    if isinstance(expected, int) and size != expected:
        raise RestoreError(
            f"repository {repo.url}: {entry['key']} is {size} bytes, its catalog entry says {expected}; the "
            "copy is damaged or was replaced: restore from another repository"
        )
    readahead = max(4, 2 * int(getattr(repo, "concurrency", 2)))
    return RepositoryObject(repo, entry["key"], size, readahead=readahead)


class _Member:
    """An incremental of the chain, fetched in the background: ``open`` waits until it is all here."""

    def __init__(self, url: str, entry: dict, path: str):
        self.entry = entry
        self.path = path
        self.name = f"{url}/{entry['key']}"
        self.fetched = threading.Event()
        self.error: BaseException | None = None

    def open(self):
        self.fetched.wait()
        if self.error is not None:
            raise self.error
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it

    def __str__(self) -> str:
        return self.name


class _Prefetch:
    """Downloads a chain's incrementals, in order, on a thread of its own, while the
    full backup before them is restored; stops (and waits for the thread) on exit."""

    def __init__(self, repo, entries: list[dict], workdir: str):
        self.repo = repo
        self.members = [_Member(repo.url, e, os.path.join(workdir, f"{e['backup_id']}.backup")) for e in entries]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repo-prefetch", daemon=True)

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for member in self.members:
            try:
                if self._stop.is_set():
                    raise RestoreError(f"the download of {member.name} was stopped: the restore ended before it")
                _download(self.repo, member.entry["key"], member.path, member.entry, stop=self._stop)
            except BaseException as e:  # handed to the restore, which raises it where it needs the file
                member.error = e
            finally:
                member.fetched.set()


def _size(repo, entry: dict) -> int:
    info = repo.stat(entry["key"])
    if info is None:
        raise RestoreError(
            f"repository {repo.url}: its catalog lists backup {entry['backup_id']}, but {entry['key']} is "
            "missing; restore from another repository"
        )
    return info.size


def _download(repo, key: str, path: str, entry: dict | None = None, stop: threading.Event | None = None) -> str:
    size = 0
    with open(path, "xb") as f:
        chunks = repo.open_stream(key, 4 << 20)
        try:
            for chunk in chunks:
                if stop is not None and stop.is_set():
                    raise RestoreError(f"the download of {repo.url}/{key} was stopped: the restore ended before it")
                f.write(chunk)
                size += len(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the ranges still being fetched are dropped
    expected = (entry or {}).get("size_bytes")
    if isinstance(expected, int) and size != expected:
        raise RestoreError(
            f"repository {repo.url}: {key} is {size} bytes, its catalog entry says {expected}; the copy is "
            "damaged or was replaced: restore from another repository"
        )
    return path


def wal_location(url: str) -> str:
    """Where a repository's archived WAL is, as --archive-dir takes it (a directory or an s3:// prefix)."""
    if url.startswith("s3://"):
        return f"{url.rstrip('/')}/{WAL_PREFIX.rstrip('/')}"
    return os.path.join(url, WAL_PREFIX.rstrip("/"))
