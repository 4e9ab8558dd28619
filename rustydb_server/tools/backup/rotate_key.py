"""--rotate-key OLD NEW FILE...: re-wrap each backup's data key from OLD to NEW
(the data stays as it is encrypted; only the wrapped key changes)."""

from __future__ import annotations

import argparse
import os
import sys

from ...container.errors import BackupError
from ...container.rotate import rotate_key
from ...crypto import CryptoError
from ...keys import ENV_PASSPHRASE, KeyFileSource, KeySource, PassphraseSource
from ..output import fail, print_json
from . import PROG


def run(args: argparse.Namespace) -> int:
    old_spec, new_path, *files = args.rotate_key
    return rotate_keys(old_spec, new_path, files, as_json=args.json)


def rotate_keys(old_spec: str, new_path: str, files: list[str], *, as_json: bool) -> int:
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
        if not as_json:
            print(f"✓ {path}: key rotated to {new.describe()}")
    if as_json:
        print_json({"rotated": rotated, "failed": failed})
    if failed:
        return fail(
            PROG,
            f"{len(failed)} of {len(files)} backups were not rotated (see above); they still open with the old key",
        )
    return 0


def _old_key_source(spec: str) -> KeySource:
    if spec == "-":
        passphrase = os.environ.get(ENV_PASSPHRASE)
        if not passphrase:
            raise CryptoError(f"OLD is '-' but {ENV_PASSPHRASE} is not set; set it to the backups' passphrase")
        return PassphraseSource(passphrase)
    return KeyFileSource.from_file(spec)
