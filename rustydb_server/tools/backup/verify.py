"""--verify FILE: check every chunk and digest of a backup without writing anything."""

from __future__ import annotations

import argparse
import os

from ...container.errors import BackupCorruptError, BackupError
from ...container.reader import BackupReader, VerifyReport
from ...crypto import CryptoError
from ...keys import KeySource, resolve_read_key
from ..output import fail, print_json
from ..progress import Progress
from . import PROG


def run(args: argparse.Namespace) -> int:
    return verify_file(
        args.verify_file, key_file=args.key_file, threads=args.threads, as_json=args.json, repo_url=args.repo
    )


def _verify_in_repository(url: str, which: str, key_file: str | None, threads: int) -> tuple[str, VerifyReport]:
    """--repo URL --verify ID|latest: read the backup from the repository once, by ranges."""
    from .repo import find_backup, open_backup, open_repo

    repo = open_repo(url)
    entry = find_backup(repo, which)
    with open_backup(repo, entry) as f:
        key = resolve_read_key(BackupReader(f).header, key_file)
        return f.name, verify_reader(f, key, threads)


def verify_file(path: str, *, key_file: str | None, threads: int, as_json: bool, repo_url: str | None = None) -> int:
    from ...backup.repo_catalog import RepoCatalogError
    from ...repository import RepositoryError
    from ...settings import SettingError

    try:
        if repo_url:
            path, report = _verify_in_repository(repo_url, path, key_file, threads)
        else:
            with open(path, "rb") as f:
                header = BackupReader(f).header
            key = resolve_read_key(header, key_file)
            report = verify_backup(path, key, threads)
    except (RepositoryError, RepoCatalogError, SettingError) as exc:
        message = f"cannot verify {path} in repository {repo_url}: {exc}"
        if as_json:
            print_json({"ok": False, "file": path, "valid": False, "error": message})
        return fail(PROG, message)
    except BackupCorruptError as exc:
        message = f"{path} is damaged: {exc}. Do not restore from it; use another backup and take a new one"
        if as_json:
            print_json(
                {
                    "ok": False,
                    "file": path,
                    "valid": False,
                    "backup_id": exc.backup_id,
                    "entry": exc.entry,
                    "chunk": exc.chunk,
                    "error": message,
                }
            )
        return fail(PROG, message)
    except (BackupError, CryptoError) as exc:
        message = f"cannot verify {path}: {exc}"
        if as_json:
            print_json({"ok": False, "file": path, "valid": False, "error": message})
        return fail(PROG, message)
    except OSError as exc:
        return fail(PROG, f"cannot read {path}: {exc.strerror or exc}")
    if as_json:
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


def verify_backup(path: str, key: KeySource | None, threads: int) -> VerifyReport:
    with open(path, "rb") as f:
        return verify_reader(f, key, threads)


def verify_reader(f, key: KeySource | None, threads: int) -> VerifyReport:
    """Verify the backup read from file object ``f`` (a file, or a repository's object)."""
    size = f.seek(0, os.SEEK_END)
    reader = BackupReader(f, key=key)
    with Progress("verify", size) as bar:
        return reader.verify(bar.update, threads=threads)


def print_verify_lines(report: VerifyReport) -> None:
    print("✓ Checksum verified")
    # Say only what was checked: an unencrypted backup has nothing to authenticate.
    print("✓ Encryption verified" if report.encryption_ok else "✓ Encryption: not encrypted")
    print("✓ File structure valid")
    print("Backup is valid")
