"""--info FILE: print a backup's metadata from its header (no key needed)."""

from __future__ import annotations

import argparse
import datetime
import os

from ...container.format import BackupHeader
from ...wal.lsn import format_lsn
from ..output import fail, human_size, print_json
from . import PROG
from .header import UnreadableBackup, read_file_header


def run(args: argparse.Namespace) -> int:
    if args.repo:
        return show_info_in_repository(args.repo, args.info, as_json=args.json)
    return show_info(args.info, as_json=args.json)


def show_info_in_repository(url: str, which: str, *, as_json: bool) -> int:
    """--repo URL --info ID|latest: the header of a backup in a repository, read by ranges."""
    from ...backup.repo_catalog import RepoCatalogError
    from ...container.errors import BackupError
    from ...container.reader import BackupReader
    from ...repository import RepositoryError
    from ...settings import SettingError
    from .repo import find_backup, open_backup, open_repo

    try:
        repo = open_repo(url)
        entry = find_backup(repo, which)
        with open_backup(repo, entry) as f:
            header = BackupReader(f).header
            size = f.size
    except (RepositoryError, RepoCatalogError, SettingError) as exc:
        return fail(PROG, str(exc))
    except BackupError as exc:
        return fail(PROG, f"backup {which} in repository {url} is not a usable backup: {exc}")
    return print_info(header, size, as_json=as_json, extra={"repository": url, "key": entry["key"]})


def show_info(path: str, *, as_json: bool) -> int:
    try:
        header = read_file_header(path)
        size = os.path.getsize(path)
    except UnreadableBackup as exc:
        return fail(PROG, str(exc))
    return print_info(header, size, as_json=as_json)


def print_info(header: BackupHeader, size: int, *, as_json: bool, extra: dict | None = None) -> int:
    info = describe(header, size) | (extra or {})
    if as_json:
        print_json(info)
        return 0
    print(f"Backup ID: {info['backup_id']}")
    if extra:
        print(f"Repository: {extra['repository']} ({extra['key']})")
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
