"""rusty-db-restore --archive-dir A --recovery-target-* (tools/restore/pitr.py,
restore/pitr.py): a base backup and archived WAL built from an in-process Engine,
recovered through the tool's main() in this process and through restore_to_target."""

from __future__ import annotations

import json
import os

import pytest

from rustydb_server import datadir as dd
from rustydb_server.fileops import FileOps
from rustydb_server.restore import pitr
from rustydb_server.tools import restore_main
from rustydb_server.wal import timeline as waltl
from tests.support.backups import notes

# The fixtures build unencrypted backups: no key from the environment.
pytestmark = pytest.mark.usefixtures("no_keys")

# ---------------------------------------------------------------- targets as typed


@pytest.mark.parametrize(
    "kind,typed,value",
    [
        ("txid", 14, 14),
        ("name", "before_purge", "before_purge"),
        ("lsn", "0/0400011E", 0x0400011E),
        ("lsn", "1/0", 1 << 32),
        ("time", "2025-12-11T14:30:00+00:00", 1765463400_000000),
        ("time", "2025-12-11 14:30:00.5+01:00", 1765459800_500000),
        ("immediate", "immediate", "immediate"),
    ],
)
def test_make_target_reads_what_the_operator_typed(kind, typed, value):
    assert pitr.make_target(kind, typed) == pitr.Target(kind, value, True)
    assert pitr.make_target(kind, typed, inclusive=False).inclusive is False


def test_an_unreadable_time_or_lsn_is_refused():
    with pytest.raises(pitr.PitrError, match="cannot read recovery target time 'yesterday'"):
        pitr.make_target("time", "yesterday")
    with pytest.raises(ValueError):
        pitr.make_target("lsn", "not an lsn")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--archive-dir", "A", "--recovery-target-txid", "1", "--recovery-target-name", "n"], "at most one"),
        (["--recovery-target-txid", "1"], "a recovery target needs --archive-dir"),
        (["--archive-dir", "A"], "--archive-dir needs a recovery target"),
        (["--archive-dir", "A", "--recovery-target-lsn", "x/y"], "is not an LSN like 0/1A2B3C4D"),
    ],
)
def test_target_options_that_do_not_go_together_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        restore_main.main(["--input", "base", "--data-dir", "d", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_an_unreadable_time_fails_saying_how_to_write_one(capsys):
    argv = ["--input", "b", "--data-dir", "d", "--archive-dir", "A", "--recovery-target-time", "noon", "--json"]
    assert restore_main.main(argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("cannot read recovery target time 'noon'")
    assert "restore of b into d failed: cannot read recovery target time" in captured.err


# ---------------------------------------------------------------- recovery


def test_recovery_to_a_restore_point_through_the_tool(archived, tmp_path, capsys):
    base, archive, states = archived
    data = str(tmp_path / "data")
    argv = ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--data-dir", data]
    assert restore_main.main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True and summary["recovery_target"] == "name 'before_purge'"
    assert summary["timeline"] == 2 and summary["previous_timeline"] == 1
    assert summary["records_replayed"] >= 20 and summary["data_dir"] == data
    # the replay's own time beside the whole restore's, neither overwriting the other
    assert 0 < summary["replay_seconds"] <= summary["seconds"]
    assert notes(data) == states["before_purge"]

    again = str(tmp_path / "again")
    assert restore_main.main([*argv[:-1], again]) == 0
    out = capsys.readouterr().out
    assert "Recovered to name 'before_purge': " in out
    assert "The server will continue on new timeline 2 (from 1 at LSN " in out
    assert f"Start the server with: rusty-db-server --data-dir {again}" in out


def test_recovery_to_the_end_of_the_base_replays_nothing(archived, tmp_path):
    base, archive, states = archived
    data = str(tmp_path / "data")
    result, report = pitr.restore_to_target(base, data, archive, pitr.Target("immediate"))
    assert report.records_replayed == 0 and report.new_timeline == 2
    assert result.data_dir == data
    assert notes(data) == states["base"]


def test_a_target_past_the_archive_fails_and_writes_nothing(archived, tmp_path):
    base, archive, _ = archived
    data = str(tmp_path / "data")
    with pytest.raises(pitr.PitrError, match="recovery target txid 999999 was not reached"):
        pitr.restore_to_target(base, data, archive, pitr.Target("txid", 999999))
    assert not os.path.exists(data)


def test_the_new_timelines_history_file_goes_through_fileops(archived, tmp_path):
    """Written atomically (temp, fsync, rename, fsync of wal/) like every durable file."""
    base, archive, _ = archived
    data = str(tmp_path / "data")
    calls = []

    class Recording(FileOps):
        fds: dict = {}

        def open(self, path, flags, mode=0o600):
            fd = super().open(path, flags, mode)
            self.fds[fd] = path
            return fd

        def fsync(self, fd):
            calls.append(("fsync", self.fds.get(fd)))
            super().fsync(fd)

        def rename(self, src, dst):
            calls.append(("rename", src, dst))
            super().rename(src, dst)

        def fsync_dir(self, path):
            calls.append(("fsync_dir", path))
            super().fsync_dir(path)

    pitr.restore_to_target(base, data, archive, pitr.Target("name", "before_purge"), fileops=Recording())
    renames = [c for c in calls if c[0] == "rename" and c[2].endswith(waltl.history_name(2))]
    assert len(renames) == 1
    _, tmp, history = renames[0]
    staged_wal = os.path.dirname(history)
    assert os.path.basename(staged_wal) == dd.WAL_DIR
    at = calls.index(renames[0])
    assert ("fsync", tmp) in calls[:at] and calls[at + 1] == ("fsync_dir", staged_wal)
    assert waltl.read_history(os.path.join(data, dd.WAL_DIR), 2)[-1][:1] == (1,)
