"""rusty-db-restore --archive-dir A --list-wal (tools/restore/list_wal.py): the archived
transactions and restore points, to choose a recovery target; nothing is restored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from rustydb_server.tools import restore_main
from tests.support.backups import open_engine, run_sql
from tests.support.servers import tool

# The fixtures build unencrypted backups: no key from the environment.
pytestmark = pytest.mark.usefixtures("no_keys")


def test_every_transaction_and_the_restore_point_are_listed(archived, capsys):
    _base, archive, _ = archived
    assert restore_main.main(["--archive-dir", archive, "--list-wal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    inserts = [line for line in lines if "rustydb: notes: +1" in line]
    assert len(inserts) == 20 and all(" txid " in line for line in inserts)
    point = [line for line in lines if "restore point 'before_purge' at " in line]
    assert len(point) == 1
    assert lines.index(point[0]) > lines.index(inserts[-1])
    assert any("rustydb: notes: -20" in line for line in lines[lines.index(point[0]) :])


def test_json_is_one_document_and_a_database_filter(archived, capsys):
    _base, archive, _ = archived
    assert restore_main.main(["--archive-dir", archive, "--list-wal", "--json", "--database", "rustydb"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert doc["ok"] is True and doc["archive_dir"] == archive
    assert [t["timeline"] for t in doc["timelines"]] == [1]
    items = doc["transactions"]
    txs = [i for i in items if "txid" in i]
    assert {i["database"] for i in txs} == {"rustydb"}
    assert {"timeline", "lsn", "txid", "commit_time", "database", "changes"} == set(txs[0])
    assert [i["restore_point"] for i in items if "restore_point" in i] == ["before_purge"]
    assert restore_main.main(["--archive-dir", archive, "--list-wal", "--json", "--database", "other"]) == 0
    assert [i for i in json.loads(capsys.readouterr().out)["transactions"] if "txid" in i] == []


def test_list_wal_needs_an_archive_that_exists(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        restore_main.main(["--list-wal"])
    assert info.value.code == 2 and "--list-wal needs --archive-dir" in capsys.readouterr().err
    assert restore_main.main(["--list-wal", "--archive-dir", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err == f"rusty-db-restore: error: archive directory {tmp_path / 'none'} does not exist\n"


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_a_reader_that_stops_early_ends_the_listing_quietly(archived, extra):
    """``rusty-db-restore --list-wal ... | head``: no traceback when head exits."""
    _base, archive, _ = archived
    env = {**os.environ, "RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}
    proc = subprocess.Popen(
        [tool("rusty-db-restore"), "--archive-dir", archive, "--list-wal", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 1
    assert err == "", err


@pytest.fixture(scope="module")
def three_segments(tmp_path_factory):
    """An archive of three segments, a transaction in each."""
    root = tmp_path_factory.mktemp("segments")
    engine = open_engine(str(root / "source"))
    archive = root / "archive"
    archive.mkdir()
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(a)")
        for i in range(3):
            run_sql(engine, "rustydb", f"INSERT INTO t VALUES ({i})")
            engine.switch_wal()
        c = engine.control
        status = engine.datadir.join(dd.ARCHIVE_STATUS_DIR)
        for name in sorted(n.removesuffix(".ready") for n in os.listdir(status)):
            sf.pack_segment(
                os.path.join(engine.datadir.wal_dir, name),
                str(archive / sf.archive_name(name)),
                system_id=c.system_id,
                segment_size=c.segment_size,
                codec="none",
            )
    finally:
        engine.close()
    names = sorted(os.listdir(archive))
    assert len(names) >= 3
    return archive, names


def test_a_gap_in_the_archive_is_one_error_line_after_what_precedes_it(three_segments, tmp_path, capsys):
    archive, names = three_segments
    gap = tmp_path / "gap"
    shutil.copytree(archive, gap)
    os.unlink(gap / names[1])
    assert restore_main.main(["--archive-dir", str(gap), "--list-wal"]) == 1
    out, err = capsys.readouterr()
    assert "txid" in out  # what the first segment holds
    assert err.startswith("rusty-db-restore: error: WAL segment ") and err.count("\n") == 1
    assert "is missing but later segment" in err and "the transactions before it are listed above" in err


def test_a_segment_copied_under_another_name_is_refused_by_name(three_segments, tmp_path, capsys):
    archive, names = three_segments
    dup = tmp_path / "dup"
    shutil.copytree(archive, dup)
    os.replace(dup / names[0], dup / names[1])  # segment 1's file now also stands for segment 2
    shutil.copy(archive / names[0], dup / names[0])
    assert restore_main.main(["--archive-dir", str(dup), "--list-wal"]) == 1
    err = capsys.readouterr().err
    assert f"{names[1]} holds segment '{names[0].removesuffix('.walz')}'" in err
    assert "Move it out of the archive directory" in err and err.count("\n") == 1
