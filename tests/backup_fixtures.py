"""The fixtures the rusty-db-backup tests share: ``source``, an in-process Engine
filled with known data, and ``plain_backup``, an lz4 backup of it.

Test modules load them with ``pytest_plugins = ["backup_fixtures"]``; built once
per test module that asks.
"""

from __future__ import annotations

import pytest
from sample_backups import fill_source, open_engine, write_backup


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("source") / "data")
    engine = open_engine(path)
    fill_source(engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain_backup(source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("plain") / "full.backup")
    manifest = write_backup(source, out, codec="lz4")
    return out, manifest
