"""The WAL writer: appends record bodies to segment files and makes them durable.

Synchronous and thread-safe: the server calls it from worker threads.

Two locks, so that appends never wait for an fsync:
  * ``_append_lock`` serializes appends (and segment changes);
  * ``_cond`` guards what flushers share with appenders: the published end of
    the WAL, the current segment's fd, the flushed LSN and whether a flush
    is running. One thread at a time runs fdatasync; threads whose records
    it covered return without one (group commit).

Ordering rules the reader relies on (see reader.py):
  * a segment is fdatasynced before anything is written to the next one, so
    valid data in a later segment proves every earlier segment is complete;
  * a segment is created whole (header, zero-filled, fsync, rename, fsync of
    the directory) before use, so a write into it can never hit ENOSPC; a
    segment that a record's fragment starts is created holding that fragment
    (the middle segments of a large record are written once, not zeroed
    first), which the same fsync makes durable.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Sequence
from typing import Self

from rustydb_server import fileops as fileops_mod
from rustydb_server.logsetup import get_logger
from rustydb_server.wal.segment import (
    HEADER_SIZE,
    WalCorruptError,
    build_fragment_pieces,
    build_switch_fragment,
    check_segment_header,
    check_segment_size,
    encode_segment_header,
    list_segments,
    normalize_lsn,
    parse_segment_name,
    segment_name,
)

log = get_logger(__name__)

_ZERO_CHUNK = bytes(1 << 20)
_TEMP_SUFFIX = ".tmp"
# A piece of a record at least this large is written from its own buffer;
# smaller ones are joined into one write.
_DIRECT_WRITE_BYTES = 64 * 1024


class WalDiskFullError(OSError):
    """The WAL disk has no room for a new segment; nothing was acknowledged."""


class WalFsyncError(OSError):
    """An fsync of WAL data failed; the writer refuses all further work."""


class WalWriter:
    """Appends WAL records for one timeline, from ``start_lsn`` on.

    ``start_lsn`` is where valid WAL ends (``reader.find_wal_end``): anything
    after it on this timeline is wiped. ``on_segment_complete(name)`` is called
    once a segment is finished and durable, from the appending thread with
    appends held: it must be quick and must not append.
    """

    def __init__(
        self,
        wal_dir: str,
        *,
        timeline: int,
        system_id: int,
        segment_size: int,
        start_lsn: int,
        fileops: fileops_mod.FileOps = fileops_mod.REAL,
        on_segment_complete: Callable[[str], None] | None = None,
    ) -> None:
        check_segment_size(segment_size)
        if type(start_lsn) is not int or start_lsn < 0:
            raise ValueError(f"start_lsn must be a non-negative int, got {start_lsn!r}")
        if not 1 <= timeline < 2**32:
            raise ValueError(f"timeline must be in 1..2**32-1, got {timeline!r}")
        self._dir = wal_dir
        self._timeline = timeline
        self._system_id = system_id
        self._size = segment_size
        self._fo = fileops
        self._on_segment_complete = on_segment_complete

        self._append_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        # Shared with flushers (guarded by _cond):
        self._end_lsn = start_lsn
        self._flushed_lsn = start_lsn
        self._fd: int | None = None
        self._fd_name = ""
        self._flushing = False
        self._poison: tuple[int, str] | None = None
        self._closed = False
        # Appender-only (guarded by _append_lock): where the next fragment goes.
        self._pos = normalize_lsn(start_lsn, segment_size)
        self._segno = self._pos // segment_size

        self._remove_temp_files()
        self._reuse_segment(self._segno, self._pos % segment_size)
        self._remove_segments_after(self._segno)

    # -- public API

    @property
    def end_lsn(self) -> int:
        with self._cond:
            return self._end_lsn

    @property
    def flushed_lsn(self) -> int:
        with self._cond:
            return self._flushed_lsn

    @property
    def timeline(self) -> int:
        return self._timeline

    @property
    def segment_size(self) -> int:
        return self._size

    def append(self, body: bytes | Sequence[bytes]) -> tuple[int, int]:
        """Write one record body; return (lsn, end_lsn). Not durable until flush().

        ``body`` is the record's bytes, or pieces to be written one after the
        other as those bytes (``record.encode_record_parts``): a large piece
        goes from its own buffer to the file, never copied into a body.
        On any exception nothing of the record remains (the writer is rolled
        back to where it was), unless the writer is poisoned.
        """
        pieces = [body] if isinstance(body, (bytes, bytearray, memoryview)) else body
        with self._append_lock:
            self._check_usable()
            fragments, end = build_fragment_pieces(pieces, self._pos, self._size)
            orig_fd = self._fd
            segno, fd = self._segno, self._fd
            created: list[tuple[int, int]] = []
            left: list[tuple[int, int]] = []
            written: list[tuple[int, int, int]] = []
            try:
                for frag_lsn, data in fragments:
                    frag_segno = frag_lsn // self._size
                    if frag_segno != segno:
                        # Sync before the next segment sees a byte: see module doc.
                        self._sync_segment(fd, self._path(segno))
                        left.append((segno, fd))
                        segno, fd = frag_segno, None
                    offset = frag_lsn % self._size
                    if fd is None and offset == HEADER_SIZE:
                        # A new segment that starts with this fragment is
                        # created holding it: its bytes are written once, not
                        # zeros first and the fragment over them.
                        fd = self._create_segment(segno, data)
                        created.append((segno, fd))
                        continue
                    if fd is None:
                        fd = self._create_segment(segno)
                        created.append((segno, fd))
                    written.append((fd, offset, sum(len(piece) for piece in data)))
                    self._write_pieces(fd, data, offset)
            except BaseException:
                self._roll_back(orig_fd, written, created)
                raise
            with self._cond:
                if fd != orig_fd:
                    self._fd = fd
                    self._fd_name = self._path(segno)
                self._end_lsn = end
            self._segno = segno
            self._pos = normalize_lsn(end, self._size)
            self._finish_segments(left, leaving_current=self._pos // self._size != segno)
            return fragments[0][0], end

    def flush(self, upto_lsn: int | None = None) -> int:
        """Make the WAL durable up to ``upto_lsn`` (default: all appended).

        Returns the flushed LSN. Group commit: while one thread runs
        fdatasync, others wait and return if it covered them.
        """
        with self._cond:
            if self._closed:
                raise ValueError("the WAL writer is closed")
            target = self._end_lsn if upto_lsn is None else min(upto_lsn, self._end_lsn)
            while True:
                self._raise_if_poisoned()
                if self._flushed_lsn >= target:
                    return self._flushed_lsn
                if not self._flushing:
                    break
                self._cond.wait()
            self._flushing = True
            fd, name, covers = self._fd, self._fd_name, self._end_lsn
        self._run_fdatasync(fd, name, covers)
        return covers

    def switch_segment(self) -> int:
        """End the current segment now; return the LSN of the next segment's first record.

        A segment with no records yet is not switched (there is nothing to
        end, and skipping it would leave a gap).
        """
        with self._append_lock:
            self._check_usable()
            offset = self._pos % self._size
            if offset == HEADER_SIZE:
                return self._pos
            segno, fd = self._segno, self._fd
            created: list[tuple[int, int]] = []
            written: list[tuple[int, int, int]] = []
            try:
                if fd is None:
                    fd = self._create_segment(segno)
                    created.append((segno, fd))
                data = build_switch_fragment(self._pos)
                written.append((fd, offset, len(data)))
                self._fo.pwrite_all(fd, data, offset)
            except BaseException:
                self._roll_back(self._fd, written, created)
                raise
            next_lsn = (segno + 1) * self._size + HEADER_SIZE
            with self._cond:
                self._fd = fd
                self._fd_name = self._path(segno)
                self._end_lsn = next_lsn
            self._pos = next_lsn
            self._finish_segments([], leaving_current=True)
            return next_lsn

    def close(self) -> None:
        """Release the segment fd. Does not flush."""
        with self._append_lock:
            with self._cond:
                while self._flushing:
                    self._cond.wait()
                if self._closed:
                    return
                self._closed = True
                fd, self._fd = self._fd, None
            if fd is not None:
                self._fo.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_pieces(self, fd: int, pieces: list, offset: int) -> None:
        """Write one fragment's pieces from ``offset`` on: small pieces joined
        (a small record stays one write), a large one straight from its buffer."""
        small: list = []
        for piece in pieces:
            if len(piece) < _DIRECT_WRITE_BYTES:
                small.append(piece)
                continue
            if small:
                joined = b"".join(small)
                self._fo.pwrite_all(fd, joined, offset)
                offset += len(joined)
                small = []
            self._fo.pwrite_all(fd, piece, offset)
            offset += len(piece)
        if small:
            self._fo.pwrite_all(fd, b"".join(small), offset)

    # -- flushing and poisoning

    def _run_fdatasync(self, fd: int | None, name: str, covers: int) -> None:
        """fdatasync ``fd``; the caller has set ``_flushing``."""
        ok = False
        try:
            if fd is not None:  # None: everything written is in segments already synced
                self._fo.fdatasync(fd)
            ok = True
        except OSError as exc:
            raise self._poison_with(exc, f"fdatasync of WAL segment {name} failed") from exc
        finally:
            with self._cond:
                self._flushing = False
                if ok and covers > self._flushed_lsn:
                    self._flushed_lsn = covers
                self._cond.notify_all()

    def _sync_segment(self, fd: int, path: str) -> None:
        """fdatasync a segment from the append path, taking turns with flushers."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._raise_if_poisoned()
            self._flushing = True
            covers = self._end_lsn
        self._run_fdatasync(fd, path, covers)

    def _poison_with(self, exc: OSError, what: str) -> WalFsyncError:
        message = (
            f"{what}: {exc.strerror or exc}; the WAL writer is stopped "
            "(a failed fsync is never retried, the data it covered cannot be trusted)"
        )
        with self._cond:
            if self._poison is None:
                self._poison = (exc.errno or errno.EIO, message)
            self._cond.notify_all()
        log.error("wal_writer_poisoned", reason=message)
        return WalFsyncError(exc.errno or errno.EIO, message)

    def _raise_if_poisoned(self) -> None:
        if self._poison is not None:
            raise WalFsyncError(*self._poison)

    def _check_usable(self) -> None:
        with self._cond:
            if self._closed:
                raise ValueError("the WAL writer is closed")
            self._raise_if_poisoned()

    # -- leaving segments

    def _finish_segments(self, left: list[tuple[int, int]], *, leaving_current: bool) -> None:
        """Report segments left behind once they and the record are durable."""
        completed = [segno for segno, _ in left]
        to_close = [fd for _, fd in left]
        try:
            if leaving_current:
                completed.append(self._segno)
            if completed:
                # A segment is reported complete (and may be archived) only
                # once the record crossing it is durable, so a torn record
                # can never reach the archive.
                self.flush(self.end_lsn)
            if leaving_current:
                with self._cond:
                    to_close.append(self._fd)
                    self._fd = None
                    self._fd_name = ""
                self._segno += 1
        finally:
            self._close_fds([fd for fd in to_close if fd is not None])
        for segno in completed:
            self._report_complete(segment_name(self._timeline, segno))

    def _close_fds(self, fds: list[int]) -> None:
        if not fds:
            return
        with self._cond:
            # A flusher may be running fdatasync on one of them.
            while self._flushing:
                self._cond.wait()
            for fd in fds:
                self._fo.close(fd)

    def _report_complete(self, name: str) -> None:
        if self._on_segment_complete is None:
            return
        try:
            self._on_segment_complete(name)
        except Exception:
            # The record is durable and acknowledged-to-be; failing the
            # append now would make the caller roll back a logged commit.
            log.exception("wal_segment_complete_callback_failed", segment=name)

    # -- segment files

    def _path(self, segno: int) -> str:
        return os.path.join(self._dir, segment_name(self._timeline, segno))

    def _create_segment(self, segno: int, first: Sequence = ()) -> int:
        """Create a whole, durable segment; return its open fd.

        After its header the segment holds the pieces of ``first`` (its first
        fragment, if given), then zeros to its end.
        """
        path = self._path(segno)
        tmp = path + _TEMP_SUFFIX
        fd: int | None = None
        stage = "create"
        try:
            fd = self._fo.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            header = encode_segment_header(
                timeline=self._timeline,
                segno=segno,
                system_id=self._system_id,
                segment_size=self._size,
            )
            self._fo.write_all(fd, header)
            for piece in first:
                self._fo.write_all(fd, piece)
            remaining = self._size - len(header) - sum(len(piece) for piece in first)
            zeros = memoryview(_ZERO_CHUNK)
            while remaining:
                n = min(remaining, len(zeros))
                self._fo.write_all(fd, zeros[:n])
                remaining -= n
            stage = "fsync"
            self._fo.fsync(fd)
            stage = "rename"
            self._fo.rename(tmp, path)
            stage = "fsync_dir"
            self._fo.fsync_dir(self._dir)
        except OSError as exc:
            if fd is not None:
                _ignore_oserror(self._fo.close, fd)
            if stage != "fsync_dir":
                _ignore_oserror(self._fo.unlink, tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and stage != "fsync_dir":
                raise WalDiskFullError(
                    errno.ENOSPC,
                    f"the WAL disk is full: cannot create WAL segment {path}; "
                    "the write was not acknowledged, free space and retry",
                ) from exc
            if stage == "fsync":
                # Only a temp file was lost, but the device just failed a
                # sync; trusting it further would be hoping.
                raise self._poison_with(exc, f"fsync of new WAL segment {tmp} failed") from exc
            if stage == "fsync_dir":
                raise self._poison_with(
                    exc, f"fsync of WAL directory {self._dir} after creating {path} failed"
                ) from exc
            raise
        return fd

    def _reuse_segment(self, segno: int, offset: int) -> None:
        """Open an existing segment at restart and wipe everything after ``offset``."""
        path = self._path(segno)
        if not os.path.exists(path):
            return  # created on first write
        name = segment_name(self._timeline, segno)
        fd = self._fo.open(path, os.O_RDWR)
        try:
            check_segment_header(
                self._fo.pread(fd, HEADER_SIZE, 0),
                name=name,
                timeline=self._timeline,
                segno=segno,
                segment_size=self._size,
                system_id=self._system_id,
            )
            size = os.fstat(fd).st_size
            if size != self._size:
                raise WalCorruptError(name, size, f"segment file is {size} bytes, expected {self._size}")
            # A torn tail must not linger: bytes left past the resume point
            # would be read as garbage, or worse, as a valid stale fragment.
            wiped = False
            pos = offset
            while pos < self._size:
                n = min(len(_ZERO_CHUNK), self._size - pos)
                chunk = self._fo.pread(fd, n, pos)  # compared with zeros: a memcmp, not a count
                if chunk != (_ZERO_CHUNK if n == len(_ZERO_CHUNK) else _ZERO_CHUNK[:n]):
                    self._fo.pwrite_all(fd, memoryview(_ZERO_CHUNK)[:n], pos)
                    wiped = True
                pos += n
            if wiped:
                try:
                    self._fo.fdatasync(fd)
                except OSError as exc:
                    raise self._poison_with(exc, f"fdatasync of WAL segment {path} failed") from exc
        except BaseException:
            self._fo.close(fd)
            raise
        self._fd = fd
        self._fd_name = path

    def _remove_segments_after(self, segno: int) -> None:
        """Delete this timeline's segments past the resume point.

        They can only hold the torn remainder of a record that was never
        acknowledged (and never reported complete); left in place, its valid
        fragments would later look like data after a corrupt spot.
        """
        removed = False
        for timeline, other, name in list_segments(self._dir):
            if timeline == self._timeline and other > segno:
                self._fo.unlink(os.path.join(self._dir, name))
                removed = True
        if removed:
            self._fo.fsync_dir(self._dir)

    def _remove_temp_files(self) -> None:
        for entry in os.listdir(self._dir):
            if entry.endswith(_TEMP_SUFFIX):
                try:
                    parse_segment_name(entry[: -len(_TEMP_SUFFIX)])
                except ValueError:
                    continue
                self._fo.unlink(os.path.join(self._dir, entry))

    def _roll_back(
        self,
        orig_fd: int | None,
        written: list[tuple[int, int, int]],
        created: list[tuple[int, int]],
    ) -> None:
        """Undo a failed append so the on-disk WAL ends where it did before."""
        if self._poison is not None:
            for _, fd in created:
                _ignore_oserror(self._fo.close, fd)
            return
        try:
            for fd, offset, length in written:
                if fd == orig_fd:
                    self._fo.pwrite_all(fd, memoryview(bytes(length)), offset)
            for segno, fd in created:
                self._fo.close(fd)
                self._fo.unlink(self._path(segno))
            if created:
                self._fo.fsync_dir(self._dir)
        except OSError as exc:
            self._poison_with(exc, "could not undo a failed WAL append")


def _ignore_oserror(func: Callable[..., object], *args: object) -> None:
    try:
        func(*args)
    except OSError:
        pass
