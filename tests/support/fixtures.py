"""The fixtures the backup and restore tests share, loaded for every test by conftest.py.

``source``: an in-process Engine filled with known data; ``plain_backup``: an lz4
backup of it; ``chain``: a full backup, two incrementals and a differential;
``archived``: a base backup and archived WAL with a restore point; ``no_keys``:
no backup key in the environment. Each is built once per test module that asks.
"""

from __future__ import annotations

import os

import pytest

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from tests.support.backups import (
    COUNT_SQL,
    NO_KEYS,
    ROWS_SQL,
    fill_source,
    open_engine,
    run_sql,
    write_backup,
    write_incremental,
)


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


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """full, incr1, incr2 and diff2 (a differential at incr2's state) in one directory,
    with the data of the source after each one."""
    backups = tmp_path_factory.mktemp("chain")
    engine = open_engine(str(tmp_path_factory.mktemp("source") / "data"))
    try:
        fill_source(engine)
        paths, states = {}, {}
        paths["full"] = str(backups / "full.backup")
        full = write_backup(engine, paths["full"])
        states["full"] = run_sql(engine, "rustydb", ROWS_SQL)
        parent = full
        for n in (1, 2):
            run_sql(engine, "rustydb", f"INSERT INTO customers(name) VALUES ('incr {n}')")
            run_sql(engine, "rustydb", f"DELETE FROM customers WHERE id = {n}")
            paths[f"incr{n}"] = str(backups / f"incr{n}.backup")
            parent = write_incremental(engine, parent, paths[f"incr{n}"])
            states[f"incr{n}"] = run_sql(engine, "rustydb", ROWS_SQL)
        paths["diff2"] = str(backups / "diff2.backup")
        write_incremental(engine, full, paths["diff2"], backup_type="differential")
        yield paths, states
    finally:
        engine.close()


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """(base backup, archive directory, {point: the notes' state then}) with a restore
    point 'before_purge' between the inserts and a delete of every note."""
    root = tmp_path_factory.mktemp("pitr")
    engine = open_engine(str(root / "source"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        base = str(root / "base.backup")
        write_backup(engine, base)
        states = {"base": run_sql(engine, "rustydb", COUNT_SQL)}
        for i in range(20):
            run_sql(engine, "rustydb", f"INSERT INTO notes(body) VALUES ('note {i}')")
        states["before_purge"] = run_sql(engine, "rustydb", COUNT_SQL)
        engine.create_restore_point("before_purge")
        run_sql(engine, "rustydb", "DELETE FROM notes")
        states["end"] = run_sql(engine, "rustydb", COUNT_SQL)
        engine.switch_wal()
        archive = root / "archive"
        archive.mkdir()
        c = engine.control
        # what the archiver would copy: the segments marked ready
        ready = os.listdir(engine.datadir.join(dd.ARCHIVE_STATUS_DIR))
        assert ready, "the switch completed no segment"
        for name in sorted(n.removesuffix(".ready") for n in ready):
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                str(archive / sf.archive_name(name)),
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="none",
            )
    finally:
        engine.close()
    return base, str(archive), states


@pytest.fixture
def no_keys(monkeypatch):
    for name, value in NO_KEYS.items():
        monkeypatch.setenv(name, value)
