"""CRC-32C (Castagnoli): the checksum of WAL fragments, the control file and
backup record heads, computed in hardware by the ``crc32c`` package.

That package's ``__init__`` looks its own version up through
``importlib.metadata``, which costs every command-line tool about 18 ms of
start-up (a fifth of it) while the extension that does the work loads in
well under 1 ms. So the extension is loaded straight from the package's
directory when it is there, and through the package otherwise; both give the
same function (a test checks).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os


def _load():
    spec = importlib.util.find_spec("crc32c")  # finds the package without running it
    for where in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(where, "_crc32c" + suffix)
            if os.path.isfile(path):
                loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                module = importlib.util.module_from_spec(importlib.util.spec_from_loader("crc32c._crc32c", loader))
                loader.exec_module(module)
                return module.crc32c
    import crc32c as package  # another layout: the ordinary way

    return package.crc32c


crc32c = _load()
