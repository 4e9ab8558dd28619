"""--create-key-file PATH: write a new random key file, mode 0600, never over another."""

from __future__ import annotations

import argparse
import os

from ...crypto import CryptoError
from ...keys import create_key_file
from ..output import fail, print_json
from . import PROG


def run(args: argparse.Namespace) -> int:
    return create_key(args.create_key_file, as_json=args.json)


def create_key(path: str, *, as_json: bool) -> int:
    try:
        create_key_file(path)
    except CryptoError as exc:
        return fail(PROG, str(exc))
    except OSError as exc:
        return fail(PROG, f"cannot create key file {path}: {exc.strerror or exc}")
    if as_json:
        print_json({"key_file": os.path.abspath(path), "mode": "0600"})
    else:
        print(
            f"Created key file {path} (mode 0600). Keep a copy somewhere safe and apart "
            "from the backups: without it, backups encrypted with it cannot be restored."
        )
    return 0
