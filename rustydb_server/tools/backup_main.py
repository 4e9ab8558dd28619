"""rusty-db-backup: take, verify, describe and re-key backup files.

    rusty-db-backup --type full --output FILE [--compress [lz4|zstd|snappy]] [--encrypt]
                    [--key-file F] [--verify] [--threads N] [--database NAME] [--nice N] [--json]
    rusty-db-backup --verify FILE [--key-file F] [--threads N] [--json]
    rusty-db-backup --info FILE [--json]
    rusty-db-backup --rotate-key OLD NEW FILE...
    rusty-db-backup --create-key-file PATH

Taking a backup streams it from a running server over the wire protocol and
writes FILE through ``FILE.partial`` (0600, fsynced, renamed when complete),
so a failed backup never leaves a file that looks complete. The other modes
work on files alone and need no server.

Encryption keys come from --key-file, $RUSTYDB_BACKUP_KEY_FILE or
$RUSTYDB_BACKUP_PASSPHRASE. --rotate-key takes key files; to move a
passphrase-encrypted backup to a key file, set $RUSTYDB_BACKUP_PASSPHRASE and
pass OLD as "-".

Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass

from rustydb_client.client import ClientError, connect
from rustydb_client.protocol import events

from ..backup.manifest import header_from_manifest
from ..codecs import CODECS
from ..container.errors import BackupCorruptError, BackupError
from ..container.file import BackupFile
from ..container.format import BackupHeader, BackupSummary
from ..container.reader import BackupReader, VerifyReport
from ..container.rotate import rotate_key
from ..container.threads import lower_thread_priority
from ..crypto import CryptoError
from ..keys import (
    ENV_PASSPHRASE,
    KeyFileSource,
    KeySource,
    PassphraseSource,
    create_key_file,
    resolve_kek,
    resolve_read_key,
)
from ..wal.lsn import format_lsn
from .progress import (
    Progress,
    fail,
    human_size,
    interruption,
    mb_per_second,
    print_json,
    sigterm_interrupts,
    thread_count,
)

PROG = "rusty-db-backup"
BACKUP_TYPES = ("full", "incremental", "differential", "pitr-base")
DEFAULT_CODEC = "lz4"
DEFAULT_NICE = 10


def _niceness(text: str) -> int:
    """argparse type for --nice."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{value} is not a niceness from 0 to 19")
    return value


# ---------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Take a backup from a running RustyDB server, or verify, describe or "
        "re-key a backup file. The password comes from $RUSTYDB_PASSWORD; encryption keys "
        "from --key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    # --verify is both a mode (--verify FILE) and a flag of --type, so the
    # "exactly one mode" rule is checked in check_usage, not by argparse.
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--type", choices=BACKUP_TYPES, help="take a backup of this type")
    p.add_argument(
        "--verify",
        dest="verify_file",
        metavar="FILE",
        nargs="?",
        const=True,
        default=None,
        help="check every chunk and digest of FILE without writing anything "
        "(with --type: verify the new backup once written)",
    )
    mode.add_argument("--info", metavar="FILE", help="print FILE's metadata (no key needed)")
    mode.add_argument(
        "--rotate-key",
        nargs="+",
        metavar="OLD NEW FILE",
        help="re-wrap the data key of each FILE from key file OLD to key file NEW "
        f"(OLD '-' means the passphrase in ${ENV_PASSPHRASE})",
    )
    mode.add_argument(
        "--query",
        nargs=2,
        metavar=("FILE", "SQL"),
        help="run a read-only SQL query on a backup without restoring it "
        "(only the chunks the query reads are decrypted); --database "
        "picks the database",
    )
    mode.add_argument(
        "--create-key-file", metavar="PATH", help="create a new random key file (mode 0600; never overwrites)"
    )
    p.add_argument("--output", "-o", metavar="FILE", help="backup file to write (with --type)")
    p.add_argument(
        "--compress",
        nargs="?",
        const=DEFAULT_CODEC,
        choices=CODECS[1:],
        metavar="{lz4,zstd,snappy}",
        help="compress chunks (default algorithm lz4)",
    )
    p.add_argument("--encrypt", action="store_true", help="encrypt with AES-256-GCM")
    p.add_argument("--key-file", help="key file for --encrypt, --verify of an encrypted backup")
    p.add_argument(
        "--threads", type=thread_count, default=1, help="compress, encrypt and check chunks on N threads (default 1)"
    )
    p.add_argument(
        "--nice",
        type=_niceness,
        default=None,
        metavar="N",
        help="with --type: run at CPU niceness N, 0..19 (default "
        f"{DEFAULT_NICE}), so compressing the backup leaves the CPU to the "
        "server it protects when both are busy; 0 keeps normal priority",
    )
    p.add_argument(
        "--database", "-d", action="append", metavar="NAME", help="back up only this database (repeatable; default all)"
    )
    p.add_argument("--base-backup", metavar="FILE", help="for --type incremental: the backup to take changes since")
    p.add_argument(
        "--host",
        default=env.get("RUSTYDB_HOST", "127.0.0.1"),
        help="server address (default $RUSTYDB_HOST or 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=None, help="server port (default $RUSTYDB_PORT or 5432)")
    p.add_argument(
        "--user", "-U", default=env.get("RUSTYDB_USER"), help="user name (default $RUSTYDB_USER or your login name)"
    )
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    return p


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; parser.error exits with status 2."""
    take = args.type is not None
    modes = [args.type, args.info, args.rotate_key, args.create_key_file, args.query]
    if not any(m is not None for m in modes) and args.verify_file is None:
        parser.error("choose one of --type, --verify FILE, --info FILE, --rotate-key, --create-key-file")
    if take and isinstance(args.verify_file, str):
        parser.error("with --type, --verify takes no FILE (it verifies the new backup)")
    if not take and any(m is not None for m in modes) and args.verify_file is not None:
        parser.error("--verify FILE cannot be combined with --info, --rotate-key or --create-key-file")
    if not take and args.verify_file is True:
        parser.error("--verify needs the backup FILE to check")
    if take and not args.output:
        parser.error("--type needs --output FILE (where to write the backup)")
    if not take:
        for flag, value in (
            ("--output", args.output),
            ("--compress", args.compress),
            ("--encrypt", args.encrypt),
            ("--database", args.database if not args.query else None),
            ("--base-backup", args.base_backup),
            ("--nice", args.nice is not None),
        ):
            if value:
                parser.error(f"{flag} is only used with --type")
    if take and args.key_file and not args.encrypt:
        parser.error("--key-file with --type needs --encrypt (an unencrypted backup uses no key)")
    if args.base_backup and args.type != "incremental":
        parser.error("--base-backup is only used with --type incremental")
    if args.rotate_key is not None and len(args.rotate_key) < 3:
        parser.error("--rotate-key needs OLD NEW FILE... (two key files, then backup files)")
    if args.port is None:
        raw = os.environ.get("RUSTYDB_PORT", "5432")
        try:
            args.port = int(raw)
        except ValueError:
            parser.error(f"RUSTYDB_PORT={raw!r} is not a port number")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_usage(parser, args)
    try:
        with sigterm_interrupts():
            return _run(args)
    except KeyboardInterrupt as exc:
        how, status = interruption(exc)
        print(f"{PROG}: {how}; nothing was left half-written", file=sys.stderr)
        return status


def _run(args: argparse.Namespace) -> int:
    if args.type is not None:
        return take_backup(args)
    if args.info:
        return show_info(args)
    if args.rotate_key:
        return rotate_keys(args)
    if args.create_key_file:
        return create_key(args)
    if args.query:
        return query_backup(args)
    return verify_file(args)


# ---------------------------------------------------------------- taking a backup


class BackupFailed(Exception):
    """The backup could not be taken; the message says why."""


@dataclass
class StreamResult:
    manifest: dict
    header: BackupHeader
    summary: BackupSummary
    raw_bytes: int
    end_lsn: int


def backup_request(args: argparse.Namespace) -> events.BackupRequested:
    base_backup = None
    if args.base_backup:
        h = read_file_header(args.base_backup)
        # What the server needs to start the incremental at this backup's end.
        base_backup = {
            "backup_id": h.backup_id,
            "type": h.backup_type,
            "end_lsn": h.end_lsn,
            "timeline": h.timeline,
            "system_id": int(h.system_id) if h.system_id.isdigit() else h.system_id,
            "base_full_id": h.base_full_id or (h.backup_id if h.backup_type in ("full", "pitr-base") else None),
        }
    return events.BackupRequested(args.type, args.database or None, base_backup)


def receive_backup(
    conn, output: str, *, key: KeySource | None, codec: str, threads: int, progress: Progress | None = None
) -> StreamResult:
    """Read one backup stream from ``conn`` (after the request was sent) into ``output``.

    The file is committed only when the server's backup_end arrived and every
    entry of the manifest was received whole; on anything else it is aborted.
    """
    manifest = _receive_manifest(conn)
    try:
        header = header_from_manifest(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupFailed(
            f"the server sent an incomplete backup manifest ({exc!r} missing "
            "or wrong); is the server the same version as this tool?"
        ) from None
    entries = [db["entry"] for db in manifest["databases"]]
    if progress is not None:
        progress.update(0, sum(int(db.get("size_bytes", 0)) for db in manifest["databases"]))
    try:
        bf = BackupFile(output, header, key=key, codec=codec, threads=threads)
    except (OSError, ValueError, BackupError) as exc:
        raise BackupFailed(f"cannot create {output}: {exc}") from None
    try:
        raw, end = _receive_entries(conn, bf, entries, progress)
        summary = bf.commit()
    except BaseException:
        bf.abort()
        raise
    return StreamResult(manifest, bf.header, summary, raw, end.end_lsn)


def _receive_manifest(conn) -> dict:
    event = _next_stream_event(conn)
    if not isinstance(event, events.BackupHeader):
        raise BackupFailed(f"the server answered the backup request with {event.type!r} instead of a backup header")
    manifest = event.manifest
    if not isinstance(manifest.get("databases"), list):
        raise BackupFailed("the server's backup header carries no usable manifest")
    return manifest


def _receive_entries(
    conn, bf: BackupFile, entries: list[str], progress: Progress | None
) -> tuple[int, events.BackupEnd]:
    position, is_open, raw = 0, False, 0
    while True:
        event = _next_stream_event(conn)
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


def _next_stream_event(conn):
    while True:
        event = conn.next_event()  # data: views, not copies (BackupWriter.write)
        if isinstance(event, events.Error):
            raise BackupFailed(f"the server failed the backup: {event.message} ({event.code})")
        if not isinstance(event, events.Notice):  # notices are informational; the stream goes on
            return event


def take_backup(args: argparse.Namespace) -> int:
    output = os.path.abspath(args.output)
    problem = _output_problem(output)
    if problem:
        return fail(PROG, problem)
    key = None
    if args.encrypt:
        try:
            key = resolve_kek(args.key_file)  # before connecting: no key, no backup
        except CryptoError as exc:
            return fail(PROG, str(exc))
    codec = args.compress or "none"
    _lower_priority(DEFAULT_NICE if args.nice is None else args.nice)
    started = time.monotonic()
    try:
        request = backup_request(args)
        with connect(args.host, args.port, user=args.user) as conn:
            conn.send(request)
            with Progress("backup", 0) as bar:
                result = receive_backup(conn, output, key=key, codec=codec, threads=args.threads, progress=bar)
    except (BackupFailed, ClientError, BackupError, CryptoError) as exc:
        return fail(PROG, f"backup to {output} failed: {exc}; no backup file was written")
    except OSError as exc:
        return fail(PROG, f"backup to {output} failed: {exc.strerror or exc}; no backup file was written")
    seconds = time.monotonic() - started
    report = None
    if args.verify_file:
        try:
            report = verify_backup(output, key, args.threads)
        except (BackupError, CryptoError, OSError) as exc:
            return fail(PROG, f"backup {output} was written but does not verify: {exc}")
    _print_backup_summary(args, output, result, seconds, key, codec, report)
    return 0


def _lower_priority(nice: int) -> None:
    """The tool's niceness, set before its threads start so they inherit it."""
    lower_thread_priority(nice, whole_process=True)


def _output_problem(output: str) -> str | None:
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist; create it or choose another --output"
    if os.path.exists(output):
        return f"{output} already exists; backups are never overwritten, choose another --output"
    return None


def _print_backup_summary(
    args,
    output: str,
    result: StreamResult,
    seconds: float,
    key: KeySource | None,
    codec: str,
    report: VerifyReport | None,
) -> None:
    names = [db["name"] for db in result.manifest["databases"]]
    tables = result.header.table_count
    if args.json:
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
            }
        )
        return
    print(f"Backup ID: {result.header.backup_id}")
    print(f"Output: {output}")
    print(f"Type: {result.header.backup_type}")
    print(f"Databases: {', '.join(names)} ({tables} tables)")
    print(
        f"Size: {human_size(result.summary.size_bytes)} from {human_size(result.raw_bytes)} "
        f"of data (compression {codec}, encryption {'AES-256' if key else 'none'})"
    )
    print(f"LSN: {format_lsn(result.header.start_lsn)} - {format_lsn(result.end_lsn)}")
    print(f"Time: {seconds:.1f} s, {mb_per_second(result.raw_bytes, seconds)} MB/s")
    if report is not None:
        print_verify_lines(report)


# ---------------------------------------------------------------- verify


def read_file_header(path: str) -> BackupHeader:
    try:
        with open(path, "rb") as f:
            return BackupReader(f).header
    except OSError as exc:
        raise BackupFailed(f"cannot read backup {path}: {exc.strerror or exc}") from None
    except BackupError as exc:
        raise BackupFailed(f"{path} is not a usable backup: {exc}") from None


def verify_backup(path: str, key: KeySource | None, threads: int) -> VerifyReport:
    with open(path, "rb") as f:
        reader = BackupReader(f, key=key)
        with Progress("verify", os.fstat(f.fileno()).st_size) as bar:
            return reader.verify(bar.update, threads=threads)


def print_verify_lines(report: VerifyReport) -> None:
    print("✓ Checksum verified")
    # Say only what was checked: an unencrypted backup has nothing to authenticate.
    print("✓ Encryption verified" if report.encryption_ok else "✓ Encryption: not encrypted")
    print("✓ File structure valid")
    print("Backup is valid")


def verify_file(args: argparse.Namespace) -> int:
    path = args.verify_file
    try:
        with open(path, "rb") as f:
            header = BackupReader(f).header
        key = resolve_read_key(header, args.key_file)
        report = verify_backup(path, key, args.threads)
    except BackupCorruptError as exc:
        if args.json:
            print_json(
                {
                    "file": path,
                    "valid": False,
                    "backup_id": exc.backup_id,
                    "entry": exc.entry,
                    "chunk": exc.chunk,
                    "error": str(exc),
                }
            )
        return fail(PROG, f"{path} is damaged: {exc}. Do not restore from it; use another backup and take a new one")
    except (BackupError, CryptoError) as exc:
        if args.json:
            print_json({"file": path, "valid": False, "error": str(exc)})
        return fail(PROG, f"cannot verify {path}: {exc}")
    except OSError as exc:
        return fail(PROG, f"cannot read {path}: {exc.strerror or exc}")
    if args.json:
        print_json(
            {
                "file": path,
                "valid": True,
                "backup_id": report.backup_id,
                "encrypted": report.encrypted,
                "entries": report.entries,
                "chunks": report.chunks,
                "raw_bytes": report.raw_bytes,
                "file_bytes": report.file_bytes,
                "checksum_ok": report.checksum_ok,
                "encryption_ok": report.encryption_ok,
                "structure_ok": report.structure_ok,
            }
        )
    else:
        print_verify_lines(report)
    return 0


# ---------------------------------------------------------------- info


def describe(header: BackupHeader, size: int) -> dict:
    """Everything --info shows, as plain data (the --json form)."""
    created = datetime.datetime.fromtimestamp(header.created_us / 1e6)
    enc = header.encryption or {}
    return {
        "backup_id": header.backup_id,
        "type": header.backup_type,
        "created": created.strftime("%Y-%m-%d %H:%M:%S"),
        "created_us": header.created_us,
        "size_bytes": size,
        "compression": header.compression,
        "compressed": header.compression != "none",
        "encryption": "AES-256" if header.encrypted else "none",
        "encrypted": header.encrypted,
        "key_type": enc.get("kdf"),
        "databases": [db["name"] for db in header.databases],
        "tables": header.table_count,
        "start_lsn": header.start_lsn,
        "end_lsn": header.end_lsn,
        "timeline": header.timeline,
        "parent_id": header.parent_id,
        "base_full_id": header.base_full_id,
        "server_version": header.server_version,
        "system_id": header.system_id,
        "database_details": header.databases,
    }


def show_info(args: argparse.Namespace) -> int:
    try:
        header = read_file_header(args.info)
        size = os.path.getsize(args.info)
    except BackupFailed as exc:
        return fail(PROG, str(exc))
    info = describe(header, size)
    if args.json:
        print_json(info)
        return 0
    print(f"Backup ID: {info['backup_id']}")
    print(f"Type: {info['type']}")
    print(f"Created: {info['created']}")
    print(f"Size: {human_size(size)} ({'compressed' if info['compressed'] else 'uncompressed'})")
    print(f"Encryption: {info['encryption']}")
    print(f"Databases: {', '.join(info['databases'])}")
    print(f"Tables: {info['tables']}")
    print(f"Compression: {info['compression']}")
    if info["encrypted"]:
        kdf = info["key_type"]
        print("Key: key file" if kdf == "keyfile" else f"Key: passphrase ({kdf})")
    print(f"LSN range: {format_lsn(header.start_lsn)} - {format_lsn(header.end_lsn)}")
    print(f"Timeline: {header.timeline}")
    if header.parent_id:
        print(f"Parent backup: {header.parent_id}")
    if header.base_full_id:
        print(f"Base full backup: {header.base_full_id}")
    print(f"Server version: {header.server_version}")
    return 0


# ---------------------------------------------------------------- keys


def _old_key_source(spec: str) -> KeySource:
    if spec == "-":
        passphrase = os.environ.get(ENV_PASSPHRASE)
        if not passphrase:
            raise CryptoError(f"OLD is '-' but {ENV_PASSPHRASE} is not set; set it to the backups' passphrase")
        return PassphraseSource(passphrase)
    return KeyFileSource.from_file(spec)


def rotate_keys(args: argparse.Namespace) -> int:
    old_spec, new_path, *files = args.rotate_key
    try:
        old = _old_key_source(old_spec)
        new = KeyFileSource.from_file(new_path)
    except CryptoError as exc:
        return fail(PROG, f"cannot rotate keys: {exc}")
    rotated, failed = [], []
    for path in files:
        try:
            rotate_key(path, old, new)
        except (BackupError, CryptoError) as exc:
            failed.append({"file": path, "error": str(exc)})
            print(f"✗ {path}: {exc}", file=sys.stderr)
            continue
        except OSError as exc:
            failed.append({"file": path, "error": exc.strerror or str(exc)})
            print(f"✗ {path}: {exc.strerror or exc}", file=sys.stderr)
            continue
        rotated.append(path)
        if not args.json:
            print(f"✓ {path}: key rotated to {new.describe()}")
    if args.json:
        print_json({"rotated": rotated, "failed": failed})
    if failed:
        return fail(
            PROG,
            f"{len(failed)} of {len(files)} backups were not rotated (see above); they still open with the old key",
        )
    return 0


def create_key(args: argparse.Namespace) -> int:
    path = args.create_key_file
    try:
        create_key_file(path)
    except CryptoError as exc:
        return fail(PROG, str(exc))
    except OSError as exc:
        return fail(PROG, f"cannot create key file {path}: {exc.strerror or exc}")
    if args.json:
        print_json({"key_file": os.path.abspath(path), "mode": "0600"})
    else:
        print(
            f"Created key file {path} (mode 0600). Keep a copy somewhere safe and apart "
            "from the backups: without it, backups encrypted with it cannot be restored."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- querying a backup


def query_backup(args: argparse.Namespace) -> int:
    """--query FILE SQL: read a backup in place through the backup VFS."""
    import apsw

    from rustydb_client.cli import format_table

    from ..backup.vfs import BackupQueryError, open_backup_database

    path, sql = args.query
    try:
        header = read_file_header(path)
        if header.backup_type in ("incremental", "differential", "wal-segment"):
            return fail(
                PROG,
                f"{path} is a {header.backup_type} backup: it holds changes, "
                "not whole databases; query the full backup it builds on, or restore "
                "the chain with rusty-db-restore --chain-dir",
            )
        key = resolve_read_key(header, args.key_file) if header.encrypted else None
        names = [d["name"] for d in header.databases]
        database = (args.database or [None])[0] or (names[0] if len(names) == 1 else "rustydb")
        conn = open_backup_database(path, database, key=key)
    except (BackupFailed, BackupQueryError, BackupError, CryptoError, OSError) as exc:
        return fail(PROG, str(exc))
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            try:
                columns = [d[0] for d in cursor.description]
            except apsw.ExecutionCompleteError:  # no rows at all
                columns = []
            rows = [list(r) for r in cursor]
        except apsw.Error as exc:
            return fail(PROG, f"query failed: {exc}")
        except BackupError as exc:
            return fail(PROG, f"{path} is damaged where the query reads it: {exc}")
        decoded, total = conn.entry_reader.chunks_decoded, conn.entry_reader.chunk_count
    finally:
        conn.close()
    if args.json:
        print_json(
            {
                "columns": columns,
                "rows": [[_jsonable(v) for v in r] for r in rows],
                "chunks_decoded": decoded,
                "chunks_total": total,
            }
        )
    else:
        print(format_table(columns, rows) if columns else "(no rows)")
        print(f"(read {decoded} of {total} chunks of database {database})", file=sys.stderr)
    return 0


def _jsonable(value):
    return value.hex() if isinstance(value, bytes) else value
