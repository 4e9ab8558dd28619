"""archive_dest: made when missing, refused with the reason when it cannot be used.

The guide turns archiving on with two ALTER SYSTEM commands and no mkdir, so
the server makes a missing archive_dest itself (mode 0700). It makes missing
parent directories only inside a directory that is the server's own: the
nearest existing ancestor must be owned by the user the server runs as and
not writable by group or others (a shared place such as /tmp or /srv is not
the server's own; a directory someone else owns is not either). The last
component itself is made wherever the server may write, as ``mkdir`` would.

``prepare`` is called by ALTER SYSTEM before the setting is saved (a refusal
changes nothing) and at startup (a refusal stops the start with the reason).
The archiver only ``check``s before each copy: a destination that disappears
while the server runs (an unmounted disk, a directory moved away) is an
archiving failure, retried, never a new empty archive made in its place.

archive_dest may also be an object store, ``s3://bucket/prefix``: a
repository, whose archived WAL is under ``wal/`` (``location``). ALTER SYSTEM
checks that the store answers and takes a write there (``prepare`` with
``probe``); the start does not wait for the network (a store that is down
only makes archiving fail and retry, as a missing directory does).
"""

from __future__ import annotations

import os
import stat

from .. import fileops as _fileops
from ..repository import RepositoryError, is_s3_url
from ..repository import location as _location

#: Where archived WAL lives inside a repository (docs: the repository layout).
WAL_PREFIX = "wal"


class ArchiveDestError(Exception):
    """archive_dest cannot be used; the message names the path, the reason and what to do."""


def _own(path: str) -> str | None:
    """Why ``path`` (an existing directory) is not the server's own, or None."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by the server's user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "it is writable by other users"
    return None


def location(archive_dest: str) -> str:
    """Where the segments of ``archive_dest`` are: the directory itself, or an
    s3:// repository's ``wal/`` prefix."""
    if is_s3_url(archive_dest):
        return f"{archive_dest.rstrip('/')}/{WAL_PREFIX}"
    return archive_dest


def check(path: str) -> None:
    """The archiver's look before each copy: ArchiveDestError unless ``path`` is
    a directory the server can write. Makes nothing."""
    if not path:
        raise ArchiveDestError("archive_mode is on but archive_dest is not set")
    if is_s3_url(path):
        return  # the store says what is wrong when the copy is made
    if not os.path.lexists(path):
        raise ArchiveDestError(
            f"archive_dest {path} does not exist (removed or unmounted while the server runs); "
            "bring it back, or run ALTER SYSTEM SET archive_dest again, which makes it"
        )
    if not os.path.isdir(path):
        raise ArchiveDestError(f"archive_dest {path} exists and is not a directory; remove it or choose another path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArchiveDestError(
            f"archive_dest {path} is not writable by the server's user (uid {os.geteuid()}); "
            "give it to that user (chown) or choose another directory"
        )


def prepare(path: str, fileops: _fileops.FileOps = _fileops.REAL, *, settings=None, probe: bool = False) -> bool:
    """Make sure archive_dest ``path`` is a directory the server can write;
    make it (and parents inside the server's own directory) when missing.
    Returns whether anything was made; ArchiveDestError says why it cannot.

    For an s3:// archive_dest: the URL is checked, and with ``probe`` (ALTER
    SYSTEM) a small object is written under ``wal/`` and removed again, so a
    wrong endpoint, credentials or bucket is refused before it is saved."""
    if not path:
        raise ArchiveDestError("archive_mode is on but archive_dest is not set")
    if is_s3_url(path):
        _prepare_s3(path, settings, probe)
        return False
    path = os.path.abspath(path)
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ArchiveDestError(
                f"archive_dest {path} is not writable by the server's user (uid {os.geteuid()}); "
                "give it to that user (chown) or choose another directory"
            )
        return False
    if os.path.lexists(path):
        raise ArchiveDestError(f"archive_dest {path} exists and is not a directory; remove it or choose another path")
    missing = [path]
    ancestor = os.path.dirname(path)
    while not os.path.isdir(ancestor):
        if os.path.lexists(ancestor):
            raise ArchiveDestError(
                f"cannot create archive_dest {path}: {ancestor} exists and is not a directory; choose another path"
            )
        missing.append(ancestor)
        ancestor = os.path.dirname(ancestor)
    if len(missing) > 1:
        why = _own(ancestor)
        if why:
            raise ArchiveDestError(
                f"cannot create archive_dest {path}: its parent {missing[-1]} does not exist and the server "
                f"creates parents only inside a directory of its own, but {ancestor} is not ({why}); "
                f"create {missing[1]} owned by the server's user first (install -d -m 0700 -o USER {missing[1]})"
            )
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # whatever the umask
        except FileExistsError:
            continue  # made meanwhile (another request); checked below
        except OSError as e:
            raise ArchiveDestError(
                f"cannot create archive_dest {path}: {directory}: {e.strerror or e}; create it owned by the "
                "server's user, or choose another directory"
            ) from None
        fileops.fsync_dir(os.path.dirname(directory))
    if not os.path.isdir(path):
        raise ArchiveDestError(f"archive_dest {path} exists and is not a directory; remove it or choose another path")
    return True


PROBE_KEY = ".rustydb-archive-probe"


def _prepare_s3(url: str, settings, probe: bool) -> None:
    try:
        repo = _location.repository(location(url), settings)
        if probe:
            repo.put_bytes(PROBE_KEY, b"rustydb archive_dest check\n")
            repo.delete(PROBE_KEY)
    except RepositoryError as e:
        raise ArchiveDestError(f"archive_dest {url} cannot be used: {e}") from None
