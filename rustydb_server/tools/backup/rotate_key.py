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
from ..output import describe_os_error, fail, print_json
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
        except OSError as exc:
            failed.append({"file": path, "error": describe_os_error(exc)})
        else:
            rotated.append(path)
            if not as_json:
                print(f"✓ {path}: key rotated to {new.describe()}")
            continue
        if len(files) > 1:  # which of them failed; one file's failure is the error line itself
            print(f"✗ {path}: {failed[-1]['error']}", file=sys.stderr)
    if len(failed) == 1 and len(files) == 1:
        message = (
            f"the key of {failed[0]['file']} was not rotated: {failed[0]['error']}; it still opens with the old key"
        )
    else:
        message = (
            f"{len(failed)} of {len(files)} backups were not rotated (see above); they still open with the old key"
        )
    if as_json:
        print_json({"ok": not failed, "rotated": rotated, "failed": failed, **({"error": message} if failed else {})})
    return fail(PROG, message) if failed else 0


def _old_key_source(spec: str) -> KeySource:
    if spec == "-":
        passphrase = os.environ.get(ENV_PASSPHRASE)
        if not passphrase:
            raise CryptoError(f"OLD is '-' but {ENV_PASSPHRASE} is not set; set it to the backups' passphrase")
        return PassphraseSource(passphrase)
    return KeyFileSource.from_file(spec)
