"""How a failed restore is reported: one message on stderr (and a JSON line with
--json) saying what failed, why and what to do, and exit status 1."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ...archive.segment_file import ArchiveError
from ...backup.repo_catalog import RepoCatalogError
from ...backup.vfs import BackupQueryError
from ...container.errors import BackupError, UnsupportedFormatError
from ...crypto import CryptoError
from ...datadir import DataDirError
from ...repository import RepositoryError
from ...restore.errors import RestoreError
from ...restore.incremental import IncrementalRestoreError
from ...restore.pitr import PitrError
from ...wal.segment import WalCorruptError
from ...wal.timeline import HistoryError
from ..interrupt import interruption, sigterm_interrupts
from ..output import fail, print_json

PROG = "rusty-db-restore"


def run_reporting_failures(args: argparse.Namespace, command: Callable[[], int]) -> int:
    """Run one restore verb; whatever stops it is reported, never a traceback."""
    try:
        with sigterm_interrupts():
            return command()
    except (
        RestoreError,
        DataDirError,
        PitrError,
        IncrementalRestoreError,
        ArchiveError,
        HistoryError,
        BackupQueryError,
        RepositoryError,
    ) as exc:
        return report_failure(args, str(exc))
    except RepoCatalogError as exc:
        return report_failure(args, f"{exc}; nothing was restored")
    except WalCorruptError as exc:
        return report_failure(args, f"{exc}; nothing was restored")
    except UnsupportedFormatError as exc:
        return report_failure(args, f"cannot restore from {args.input}: {exc}")
    except BackupError as exc:
        return report_failure(args, f"{args.input} is damaged: {exc}. Nothing was restored; use another backup")
    except CryptoError as exc:
        return report_failure(args, str(exc))
    except OSError as exc:
        return report_failure(args, f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
    except KeyboardInterrupt as exc:
        how, _ = interruption(exc)  # a failed restore exits 1, whatever stopped it
        return report_failure(args, f"{how}; nothing was restored")


def report_failure(args: argparse.Namespace, message: str) -> int:
    into = args.data_dir or f"the server at {args.into_server}"
    source = args.input or getattr(args, "repo", None)
    line = f"restore of {source} into {into} failed: {message}"
    if args.json:  # the document names the input and the target in fields of their own
        print_json({"ok": False, "input": args.input, "data_dir": args.data_dir, "error": message})
    return fail(PROG, line)
