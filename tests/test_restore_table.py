"""rusty-db-restore --input FILE --table NAME --data-dir D (tools/restore/table.py,
restore/table.py): one table out of a full backup, a chain, or a base and the archive,
into a data directory of its own (importing into a server is tested end to end)."""

from __future__ import annotations

import json
import os

import apsw
import pytest

from rustydb_server import datadir as dd
from rustydb_server.tools import restore_main

# The fixtures build unencrypted backups: no key from the environment.
pytestmark = pytest.mark.usefixtures("no_keys")


def table_rows(data_dir: str, table: str, database: str = "rustydb"):
    db = apsw.Connection(
        os.path.join(data_dir, dd.DATABASES_DIR, f"{database}.sqlite"), flags=apsw.SQLITE_OPEN_READONLY
    )
    try:
        return db.execute(f"SELECT count(*), group_concat(id) FROM {table}").fetchall()
    finally:
        db.close()


def test_one_table_from_a_full_backup(chain, tmp_path, capsys):  # noqa: F811
    paths, _ = chain
    data = str(tmp_path / "data")
    assert (
        restore_main.main(["--input", paths["full"], "--table", "orders", "--database", "sales", "--data-dir", data])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Restored table orders (3 rows) of database sales from backup ")
    assert out[1] == (f"Export it with: rusty-db-export --table orders --input-dir {data} --output orders_restored.sql")
    assert dd.DataDir(data).list_databases() == ["sales"]
    assert table_rows(data, "orders", "sales") == [(3, "1,2,3")]


def test_one_table_at_the_end_of_a_chain(chain, tmp_path, capsys):  # noqa: F811
    paths, _ = chain
    data = str(tmp_path / "data")
    argv = ["--input", paths["incr2"], "--chain-dir", os.path.dirname(paths["full"]), "--table", "customers"]
    assert restore_main.main([*argv, "--data-dir", data, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chain"] == [paths["full"], paths["incr1"], paths["incr2"]]
    assert summary["database"] == "rustydb" and summary["table"] == "customers" and summary["data_dir"] == data
    count, ids = table_rows(data, "customers")[0]
    assert summary["rows"] == count and {"1", "2"}.isdisjoint(ids.split(","))  # both incrementals deleted one


def test_one_table_at_a_recovery_target(archived, tmp_path, capsys):  # noqa: F811
    base, archive, _ = archived
    data = str(tmp_path / "data")
    argv = ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--table", "notes"]
    assert restore_main.main([*argv, "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "Restored table notes (20 rows)" in out and "Recovered to name 'before_purge': last transaction txid " in out
    assert table_rows(data, "notes")[0][0] == 20


def test_a_missing_table_names_those_there_are(chain, tmp_path, capsys):  # noqa: F811
    paths, _ = chain
    data = tmp_path / "data"
    assert restore_main.main(["--input", paths["full"], "--table", "nope", "--data-dir", str(data)]) == 1
    assert "table 'nope' is not in the backup; its tables are: customers, notes" in capsys.readouterr().err
    assert not data.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--into-server", "127.0.0.1:5432"], "--into-server and --rename-to work with --table"),
        (["--table", "t", "--rename-to", "u"], "--rename-to names the table created by --into-server"),
        (["--table", "t", "--into-server", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_table_options_that_do_not_go_together_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        restore_main.main(["--input", "f", "--data-dir", "d", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
