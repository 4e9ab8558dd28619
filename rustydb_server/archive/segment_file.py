"""An archived WAL segment: the segment's bytes in a one-entry backup container.

Reusing the backup container gives archived WAL the same compression,
AES-256-GCM encryption, key handling and tamper detection as backups, and a
header (system id, timeline, LSN range) that restore checks before trusting a
file it finds in an archive directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid

from .. import __version__
from .. import fileops as _fileops
from ..container.errors import BackupError
from ..container.file import BackupFile
from ..container.format import BackupHeader, BackupType
from ..container.reader import BackupReader
from ..repository import location
from ..repository.base import RepositoryError
from ..wal import segment as walseg
from ..wal import timeline as waltl

ARCHIVE_SUFFIX = ".walz"
_ARCHIVED = re.compile(r"([0-9A-F]{24})\.walz")  # matched whole (fullmatch)


class ArchiveError(Exception):
    pass


def archive_name(segment_name: str) -> str:
    return segment_name + ARCHIVE_SUFFIX


def pack_segment(
    src_path: str,
    dest_path: str,
    *,
    system_id: int,
    segment_size: int,
    codec: str,
    key=None,
    fileops: _fileops.FileOps = _fileops.REAL,
) -> int:
    """Write ``src_path`` (a complete WAL segment) as an archive file; return its size."""
    name = os.path.basename(src_path)
    timeline, segno = walseg.parse_segment_name(name)
    with open(src_path, "rb") as f:
        data = f.read()
    if len(data) != segment_size:
        raise ArchiveError(f"WAL segment {src_path} has {len(data)} bytes, expected {segment_size}")
    header = BackupHeader(
        backup_id=str(uuid.uuid4()),
        backup_type=BackupType.WAL_SEGMENT,
        created_us=time.time_ns() // 1000,
        server_version=__version__,
        system_id=str(system_id),
        start_lsn=segno * segment_size,
        end_lsn=(segno + 1) * segment_size,
        timeline=timeline,
        extra={"segment": name, "sha256": hashlib.sha256(data).hexdigest()},
    )
    with BackupFile(dest_path, header, key=key, codec=codec, fileops=fileops) as bf:
        bf.begin_entry(f"wal/{name}")
        bf.write(data)
        bf.end_entry()
        return bf.commit().size_bytes


def archived_digest(path: str) -> str | None:
    """The sha256 of the segment inside an archive file (a path or an s3:// URL), from its header (no key needed)."""
    with location.open_read(path) as f:
        return archived_digest_of(f)


def archived_digest_of(f) -> str | None:
    """The sha256 of the segment inside the archive file open as ``f``."""
    header = BackupReader(f).header
    return header.extra.get("sha256") if isinstance(header.extra, dict) else None


def unpack_segment(path: str, *, system_id: int | None = None, key=None) -> tuple[str, bytes]:
    """Read an archive file back: (segment name, bytes), every check applied.

    A file that is no readable container is ArchiveError naming it (a
    BackupError would be taken for damage to the backup being restored)."""
    try:
        return _unpack_segment(path, system_id=system_id, key=key)
    except BackupError as exc:
        raise ArchiveError(f"{path} is not a readable archived WAL segment: {exc}") from None
    except RepositoryError as exc:
        raise ArchiveError(f"cannot read archived WAL segment {path}: {exc}") from None


def unlock(path: str, key) -> None:
    """Unwrap the data key of the archived file at ``path``, nothing more: its
    KEK is derived then (a passphrase's, once per process and salt), so a
    reader can have it ready before it needs the segment. Raises as
    ``unpack_segment`` would, or BackupError."""
    with location.open_read(path) as f:
        BackupReader(f, key=key)


def _unpack_segment(path: str, *, system_id: int | None, key) -> tuple[str, bytes]:
    with location.open_read(path) as f:
        reader = BackupReader(f, key=key)
        h = reader.header
        if h.backup_type is not BackupType.WAL_SEGMENT:
            raise ArchiveError(f"{path} is a {h.backup_type} backup, not an archived WAL segment")
        if system_id is not None and h.system_id != str(system_id):
            raise ArchiveError(
                f"{path} belongs to another database system (system id {h.system_id}, "
                f"expected {system_id}); is --archive-dir the right directory?"
            )
        name = h.extra.get("segment")
        # The name becomes a path when the segment is unpacked: only a segment
        # name, and only the one the file is archived under (a copy of another
        # segment under this name would replay the wrong records).
        expected = location.basename(path).removesuffix(ARCHIVE_SUFFIX)
        if not isinstance(name, str) or name != expected or not _is_segment_name(name):
            raise ArchiveError(
                f"{path} holds segment {name!r}, not {expected}: a file copied or renamed by hand? "
                "Move it out of the archive directory"
            )
        data = b"".join(reader.read_entry(f"wal/{name}"))
    if hashlib.sha256(data).hexdigest() != h.extra.get("sha256"):
        raise ArchiveError(f"{path}: segment digest does not match its header")
    return name, data


def _is_segment_name(name: str) -> bool:
    try:
        walseg.parse_segment_name(name)
    except ValueError:
        return False
    return True


def archived_timelines(archive_dir: str) -> set[int]:
    """The timelines ``archive_dir`` holds segments or history files of; none
    without an archive there. OSError when it cannot be listed."""
    if not archive_dir or not location.isdir(archive_dir):
        return set()
    try:
        segments = list_archive(archive_dir)
        histories = waltl.list_history_timelines(archive_dir)
    except ArchiveError as e:  # removed since the look above; an object store that fails
        if location.is_url(archive_dir):
            raise OSError(str(e)) from None
        return set()
    except RepositoryError as e:
        raise OSError(str(e)) from None
    return set(segments) | set(histories)


def list_archive(archive_dir: str) -> dict[int, dict[int, str]]:
    """{timeline: {segno: path}} of the archived segments in ``archive_dir``."""
    out: dict[int, dict[int, str]] = {}
    try:
        names = location.listdir(archive_dir)
    except FileNotFoundError:
        raise ArchiveError(f"archive directory {archive_dir} does not exist") from None
    except RepositoryError as e:
        raise ArchiveError(f"cannot list the WAL archive {archive_dir}: {e}") from None
    for n in names:
        m = _ARCHIVED.fullmatch(n)
        if m:
            tl, segno = walseg.parse_segment_name(m.group(1))
            out.setdefault(tl, {})[segno] = location.join(archive_dir, n)
    return out
