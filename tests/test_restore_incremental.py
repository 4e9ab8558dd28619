"""rusty-db-restore --input INCR --data-dir D --incremental (tools/restore/incremental.py):
a full backup and incrementals built from an in-process Engine, applied one by one
through the tool's main() in this process."""

from __future__ import annotations

import json

import pytest
from test_backup_tool import fill_source, open_engine, run_sql, write_backup

from rustydb_server.backup.incremental import IncrementalSource
from rustydb_server.backup.manifest import header_from_manifest
from rustydb_server.container.file import BackupFile
from rustydb_server.tools import restore_main

ROWS_SQL = "SELECT count(*), sum(id), group_concat(name, ',') FROM customers"


def write_incremental(engine, parent: dict, out: str, backup_type: str = "incremental") -> dict:
    """An incremental (or differential) backup of ``engine`` on top of ``parent``'s manifest."""
    scratch = engine.datadir.join("backup_tmp")
    with IncrementalSource(engine, parent, backup_type, None, scratch) as src:
        manifest = src.manifest()
        bf = BackupFile(out, header_from_manifest(manifest), codec="none")
        for entry, chunks in src.entries(scratch):
            bf.begin_entry(entry)
            for chunk in chunks:
                bf.write(chunk)
            bf.end_entry()
        bf.commit()
    return manifest


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


def rows(data_dir: str):
    engine = open_engine(data_dir)
    try:
        return run_sql(engine, "rustydb", ROWS_SQL)
    finally:
        engine.close()


def test_incrementals_applied_in_order_give_the_source_data(chain, tmp_path, capsys):
    paths, states = chain
    data = str(tmp_path / "data")
    assert restore_main.main(["--input", paths["full"], "--data-dir", data]) == 0
    capsys.readouterr()
    assert restore_main.main(["--input", paths["incr1"], "--data-dir", data, "--incremental"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("Applied incremental backup ") and f" to {data}: " in line
    assert restore_main.main(["--input", paths["incr2"], "--data-dir", data, "--incremental", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True and summary["type"] == "incremental" and summary["data_dir"] == data
    assert summary["databases"] == ["rustydb", "sales"] and summary["steps"] >= 1
    assert rows(data) == states["incr2"]


def test_a_differential_goes_straight_onto_its_full_backup(chain, tmp_path, capsys):
    paths, states = chain
    data = str(tmp_path / "data")
    assert restore_main.main(["--input", paths["full"], "--data-dir", data]) == 0
    assert restore_main.main(["--input", paths["diff2"], "--data-dir", data, "--incremental", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["type"] == "differential"
    assert rows(data) == states["incr2"]


def test_an_incremental_out_of_order_is_refused_naming_both_backups(chain, tmp_path, capsys):
    paths, _ = chain
    data = str(tmp_path / "data")
    assert restore_main.main(["--input", paths["full"], "--data-dir", data]) == 0
    capsys.readouterr()
    assert restore_main.main(["--input", paths["incr2"], "--data-dir", data, "--incremental"]) == 1
    err = capsys.readouterr().err
    assert "must be applied on top of backup" in err and "apply the incrementals in order" in err


@pytest.mark.parametrize("other", [["--archive-dir", "A"], ["--chain-dir", "C"]])
def test_incremental_combined_with_archive_or_chain_is_a_usage_error(other, capsys):
    with pytest.raises(SystemExit) as info:
        restore_main.main(["--input", "x", "--data-dir", "d", "--incremental", *other])
    assert info.value.code == 2
    assert "--incremental applies one file" in capsys.readouterr().err
