"""rusty-db-restore --input INCR --data-dir D --incremental (tools/restore/incremental.py):
a full backup and incrementals built from an in-process Engine, applied one by one
through the tool's main() in this process."""

from __future__ import annotations

import json

import pytest

from rustydb_server.tools import restore_main
from tests.support.backups import rows


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
