"""Benchmarks measure the tools as installed: with their bytecode compiled.

``pip install .`` compiles a package's bytecode, and Python writes it on the
first import anywhere it may. With PYTHONDONTWRITEBYTECODE set (the
development sandbox sets it) an editable install never gets any, so every
start of a tool would compile its sources again: 50-75 ms more per
rusty-db-backup or rusty-db-restore run, which the figures for short runs
(incremental backups, table restores) would carry and a user would not.
"""

from __future__ import annotations

import compileall
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def compile_bytecode() -> None:
    for package in ("rustydb_client", "rustydb_server"):
        # force: compileall trusts a cached file whose recorded mtime matches
        # the source's, but the importer checks the size too; a source edited
        # twice within one second kept a stale cache that every import then
        # ignored, compiling that module again (10-20 ms) on each start.
        compileall.compile_dir(os.path.join(ROOT, package), quiet=1, force=True)
