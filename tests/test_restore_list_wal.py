"""rusty-db-restore --archive-dir A --list-wal (tools/restore/list_wal.py): the archived
transactions and restore points, to choose a recovery target; nothing is restored."""

from __future__ import annotations

import json

import pytest

from rustydb_server.tools import restore_main

# The fixtures build unencrypted backups: no key from the environment.
pytestmark = pytest.mark.usefixtures("no_keys")


def test_every_transaction_and_the_restore_point_are_listed(archived, capsys):  # noqa: F811
    _base, archive, _ = archived
    assert restore_main.main(["--archive-dir", archive, "--list-wal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    inserts = [line for line in lines if "rustydb: notes: +1" in line]
    assert len(inserts) == 20 and all(" txid " in line for line in inserts)
    point = [line for line in lines if "restore point 'before_purge' at " in line]
    assert len(point) == 1
    assert lines.index(point[0]) > lines.index(inserts[-1])
    assert any("rustydb: notes: -20" in line for line in lines[lines.index(point[0]) :])


def test_json_lines_and_a_database_filter(archived, capsys):  # noqa: F811
    _base, archive, _ = archived
    assert restore_main.main(["--archive-dir", archive, "--list-wal", "--json", "--database", "rustydb"]) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    txs = [i for i in items if "txid" in i]
    assert {i["database"] for i in txs} == {"rustydb"}
    assert {"lsn", "txid", "commit_time", "database", "changes"} == set(txs[0])
    assert [i["restore_point"] for i in items if "restore_point" in i] == ["before_purge"]
    assert restore_main.main(["--archive-dir", archive, "--list-wal", "--json", "--database", "other"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines() if "txid" in line] == []


def test_list_wal_needs_an_archive_that_exists(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        restore_main.main(["--list-wal"])
    assert info.value.code == 2 and "--list-wal needs --archive-dir" in capsys.readouterr().err
    assert restore_main.main(["--list-wal", "--archive-dir", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err == f"rusty-db-restore: error: archive directory {tmp_path / 'none'} does not exist\n"
