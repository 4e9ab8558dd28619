"""--type TYPE --output FILE: take a backup from a running server.

The client side of a backup: send the request over the wire protocol, receive
the stream (a header carrying the manifest, data frames entry by entry, an
end message), and write it through ``FILE.partial`` (0600, fsynced, renamed
when complete), so a failed backup never leaves a file that looks complete.
The request names FILE; once it is durable the tool tells the server
(BackupStored), which only then records the backup, with that path, as present
and as the base of the next incremental.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rustydb_client.client import ClientError, connect, read_password_file
from rustydb_client.protocol import events

from ...backup.manifest import Manifest, ManifestError
from ...container.errors import BackupError
from ...container.file import BackupFile, Tee
from ...container.format import BackupHeader, BackupSummary
from ...container.reader import VerifyReport
from ...container.threads import lower_thread_priority
from ...crypto import CryptoError
from ...keys import KeySource, resolve_kek
from ...wal.lsn import format_lsn
from ..output import fail, human_size, mb_per_second, print_json
from ..progress import Progress
from . import PROG
from .header import UnreadableBackup, read_file_header
from .verify import print_verify_lines, verify_backup, verify_reader

DEFAULT_NICE = 10


class BackupFailed(Exception):
    """The backup could not be taken; the message says why."""


@dataclass
class StreamResult:
    manifest: Manifest
    header: BackupHeader
    summary: BackupSummary
    raw_bytes: int
    end_lsn: int
    notices: list[str] = field(default_factory=list)  # e.g. "based on <id> at <path>"
    recorded: bool | None = None  # whether the server recorded the file's path (None: it does not ask)
    location: str | None = None  # where the backup is, when ``store`` moved it (a repository)


def run(args: argparse.Namespace) -> int:
    target = None
    if args.repo:
        from ...repository import RepositoryError
        from ...settings import SettingError
        from ..repository_settings import is_reference
        from .repo import RepoTarget, server_repository

        try:
            url = args.repo
            if is_reference(url):  # --repo N, repoN or NAME: one of the server's backup_repositories
                url = server_repository(args, url)
            target = RepoTarget(url)
        except (RepositoryError, BackupFailed, ClientError, SettingError) as exc:
            return fail(PROG, f"cannot use repository {args.repo}: {exc}")
        output = target.request_output
    else:
        output = os.path.abspath(args.output)
        problem = _output_problem(output)
        if problem:
            return fail(PROG, problem)
    try:
        return _take(args, output, target)
    finally:
        if target is not None:
            target.close()


def _take(args: argparse.Namespace, output: str, target) -> int:
    from ...repository import RepositoryError

    key = None
    if args.encrypt:
        try:
            key = resolve_kek(args.key_file)  # before connecting: no key, no backup
        except CryptoError as exc:
            return fail(PROG, str(exc))
    codec = args.compress or "none"
    lower_priority(DEFAULT_NICE if args.nice is None else args.nice)
    started = time.monotonic()
    try:
        request = backup_request(args.type, args.database, args.base_backup, output)
        password = read_password_file(args.password_file)
        with connect(
            args.host,
            args.port,
            user=args.user,
            password=password,
            tls=args.tls,
            tls_ca_file=args.tls_ca_file,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
        ) as conn:
            conn.send(request)
            with Progress("backup", 0) as bar:
                result = receive_backup(
                    conn,
                    target.output_for if target else output,
                    key=key,
                    codec=codec,
                    threads=args.threads,
                    progress=bar,
                    store=target.store if target else None,
                    tee=target.tee_for if target else None,
                )
    except (BackupFailed, UnreadableBackup, ClientError, BackupError, CryptoError, RepositoryError) as exc:
        return fail(PROG, f"backup to {output} failed: {exc}; no backup file was written")
    except OSError as exc:
        return fail(PROG, f"backup to {output} failed: {exc.strerror or exc}; no backup file was written")
    seconds = time.monotonic() - started
    output = result.location or output
    report = None
    if args.verify_file:
        try:
            if target is not None:
                from ...backup.repo_catalog import backup_key
                from ...backup.repo_file import RepositoryFile

                with RepositoryFile(target.repo, backup_key(result.header.backup_id)) as f:
                    report = verify_reader(f, key, args.threads)
            else:
                report = verify_backup(output, key, args.threads)
        except (BackupError, CryptoError, OSError, RepositoryError) as exc:
            return fail(PROG, f"backup {output} was written but does not verify: {exc}")
    _print_summary(output, result, seconds, key, codec, report, as_json=args.json)
    return 0


def lower_priority(nice: int) -> None:
    """The tool's niceness, set before its threads start so they inherit it."""
    lower_thread_priority(nice, whole_process=True)


def backup_request(
    backup_type: str, databases: list[str] | None, base_backup_path: str | None, output: str | None = None
) -> events.BackupRequested:
    """The request to send; an incremental names its base by that backup's header."""
    base_backup = None
    if base_backup_path:
        h = read_file_header(base_backup_path)
        # What the server needs to start the incremental at this backup's end.
        base_backup = {
            "backup_id": h.backup_id,
            "type": h.backup_type,
            "end_lsn": h.end_lsn,
            "timeline": h.timeline,
            "system_id": int(h.system_id) if h.system_id.isdigit() else h.system_id,
            "base_full_id": h.base_full_id or (h.backup_id if h.backup_type.is_full_base else None),
        }
    return events.BackupRequested(backup_type, databases or None, base_backup, output)


def receive_backup(
    conn,
    output: str | Callable[[Manifest], str],
    *,
    key: KeySource | None,
    codec: str,
    threads: int,
    progress: Progress | None = None,
    store: Callable[[str, Manifest, BackupHeader, int], str] | None = None,
    tee: Callable[[Manifest], Tee | None] | None = None,
) -> StreamResult:
    """Read one backup stream from ``conn`` (after the request was sent) into ``output``.

    The file is committed only when the server's backup_end arrived and every
    entry of the manifest was received whole; on anything else it is aborted.
    ``output`` may be a function of the manifest (a repository names the file
    by the backup's id); ``store(path, manifest, header, end_lsn)``, called
    once the file is complete, puts it where it belongs (a repository and its
    catalog) and returns the location the server records. ``tee(manifest)``
    may give a Tee that is handed every byte of the file as it is written
    (a repository's streamed upload).
    """
    notices: list[str] = []
    manifest = _receive_manifest(conn, notices)
    if callable(output):
        output = output(manifest)
    header = manifest.to_header()
    entries = [db.entry for db in manifest.databases]
    if progress is not None:
        progress.update(0, sum(db.size_bytes for db in manifest.databases))
    try:
        bf = BackupFile(output, header, key=key, codec=codec, threads=threads, tee=tee(manifest) if tee else None)
    except (OSError, ValueError, BackupError) as exc:
        raise BackupFailed(f"cannot create {output}: {exc}") from None
    try:
        raw, end = _receive_entries(conn, bf, entries, progress, notices)
        summary = bf.commit()
    except BaseException:
        bf.abort()
        raise
    result = StreamResult(manifest, bf.header, summary, raw, end.end_lsn, notices)
    location = output
    if store is not None:
        location = result.location = store(output, manifest, bf.header, end.end_lsn)
    if end.awaiting_location:
        result.recorded = _confirm_stored(conn, manifest.backup_id, location)
    return result


def _confirm_stored(conn, backup_id: str, output: str) -> bool:
    """Tell the server the file is durable at ``output``; whether it recorded it."""
    conn.send(events.BackupStored(backup_id, output))
    while True:
        event = conn.next_event()
        if isinstance(event, events.Complete):
            return True
        if isinstance(event, events.Error):
            print(
                f"{PROG}: warning: the backup file {output} is complete, but the server did not record where it is "
                f"({event.message}); pass it as --base-backup to base an incremental on it",
                file=sys.stderr,
            )
            return False


def _receive_manifest(conn, notices: list[str]) -> Manifest:
    event = _next_stream_event(conn, notices)
    if not isinstance(event, events.BackupHeader):
        raise BackupFailed(f"the server answered the backup request with {event.type!r} instead of a backup header")
    try:
        return Manifest.from_dict(event.manifest)
    except ManifestError as exc:
        raise BackupFailed(
            f"the server sent an incomplete backup manifest ({exc}); is the server the same version as this tool?"
        ) from None


def _receive_entries(
    conn, bf: BackupFile, entries: list[str], progress: Progress | None, notices: list[str]
) -> tuple[int, events.BackupEnd]:
    position, is_open, raw = 0, False, 0
    while True:
        event = _next_stream_event(conn, notices)
        if isinstance(event, events.BackupEnd):
            break
        if not isinstance(event, events.BackupData):
            raise BackupFailed(f"unexpected {event.type!r} message in the middle of the backup stream")
        if position >= len(entries):
            raise BackupFailed("the server sent data after the last entry of its manifest")
        entry = event.entry
        if entry != entries[position]:
            raise BackupFailed(
                f"the server sent data for entry {entry!r} where {entries[position]!r} was due (stream out of order)"
            )
        if not is_open:
            bf.begin_entry(entry)
            is_open = True
        data = event.data
        bf.write(data)
        raw += len(data)
        if progress is not None:
            progress.update(raw)
        if event.last:
            bf.end_entry()
            is_open, position = False, position + 1
    if position != len(entries):
        raise BackupFailed(
            f"the backup stream ended after {position} of {len(entries)} entries (next missing: {entries[position]!r})"
        )
    if event.bytes != raw:
        raise BackupFailed(f"the server says it sent {event.bytes} bytes, {raw} arrived")
    return raw, event


def _next_stream_event(conn, notices: list[str]):
    while True:
        event = conn.next_event()  # data: views, not copies (BackupWriter.write)
        if isinstance(event, events.Error):
            raise BackupFailed(f"the server failed the backup: {event.message} ({event.code})")
        if not isinstance(event, events.Notice):  # notices are informational; the stream goes on
            return event
        notices.append(event.message)


def _output_problem(output: str) -> str | None:
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist; create it or choose another --output"
    if os.path.exists(output):
        return f"{output} already exists; backups are never overwritten, choose another --output"
    return None


def _print_summary(
    output: str,
    result: StreamResult,
    seconds: float,
    key: KeySource | None,
    codec: str,
    report: VerifyReport | None,
    *,
    as_json: bool,
) -> None:
    names = result.manifest.database_names
    tables = result.header.table_count
    if as_json:
        print_json(
            {
                "backup_id": result.header.backup_id,
                "type": result.header.backup_type,
                "output": output,
                "size_bytes": result.summary.size_bytes,
                "raw_bytes": result.raw_bytes,
                "databases": names,
                "tables": tables,
                "start_lsn": result.header.start_lsn,
                "end_lsn": result.end_lsn,
                "seconds": round(seconds, 3),
                "verified": report is not None,
                "encrypted": key is not None,
                "compression": codec,
                "based_on": _based_on(result),
                "recorded_by_server": result.recorded,
            }
        )
        return
    print(f"Backup ID: {result.header.backup_id}")
    print(f"Output: {output}")
    print(f"Type: {result.header.backup_type}")
    if _based_on(result):
        print(f"Based on: {_based_on(result).removeprefix('based on ')}")
    print(f"Databases: {', '.join(names)} ({tables} tables)")
    print(
        f"Size: {human_size(result.summary.size_bytes)} from {human_size(result.raw_bytes)} "
        f"of data (compression {codec}, encryption {'AES-256' if key else 'none'})"
    )
    print(f"LSN: {format_lsn(result.header.start_lsn)} - {format_lsn(result.end_lsn)}")
    print(f"Time: {seconds:.1f} s, {mb_per_second(result.raw_bytes, seconds)} MB/s")
    if report is not None:
        print_verify_lines(report)


def _based_on(result: StreamResult) -> str | None:
    """The server's "based on <id> at <path>" for an incremental or differential."""
    return next((n for n in result.notices if n.startswith("based on ")), None)
