"""rusty-db-restore --input LAST --chain-dir DIR (tools/restore/chain.py, restore/chain.py):
the chain is found, ordered, checked and applied in the staging directory."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from rustydb_server.restore.chain import find_chain, restore_chain
from rustydb_server.restore.errors import RestoreError
from rustydb_server.tools import restore_main
from tests.support.backups import rows


def test_the_chain_is_found_in_order(chain):  # noqa: F811
    paths, _ = chain
    directory = os.path.dirname(paths["full"])
    assert find_chain(paths["incr2"], directory) == [paths["full"], paths["incr1"], paths["incr2"]]
    assert find_chain(paths["diff2"], directory) == [paths["full"], paths["diff2"]]
    assert find_chain(paths["full"], directory) == [paths["full"]]


def test_the_chain_is_found_across_several_directories_and_the_catalog(chain, tmp_path):  # noqa: F811
    paths, _ = chain
    spread = {n: tmp_path / n for n in ("a", "b", "c")}
    for d in spread.values():
        d.mkdir()
    full = shutil.copy(paths["full"], spread["a"])
    incr1 = shutil.copy(paths["incr1"], spread["b"])
    incr2 = shutil.copy(paths["incr2"], spread["c"])
    assert find_chain(incr2, [str(spread["b"]), str(spread["a"])]) == [full, incr1, incr2]
    with pytest.raises(RestoreError, match="not in .*/b; pass the directory holding it with --chain-dir"):
        find_chain(incr2, [str(spread["b"])])
    # a stopped server's catalog knows where its backups were written
    data = tmp_path / "data"
    data.mkdir()
    entry = {"backup_id": _id_of(full), "status": "completed", "origin": "client", "location": full}
    (data / "backup_catalog.json").write_text(json.dumps({"format": 1, "backups": [entry]}))
    assert find_chain(incr2, [str(spread["b"])], str(data)) == [full, incr1, incr2]
    os.unlink(full)
    with pytest.raises(RestoreError, match=f"nor at {full} where the backup catalog recorded it"):
        find_chain(incr2, [str(spread["b"])], str(data))


def _id_of(path: str) -> str:
    from rustydb_server.container.reader import BackupReader

    with open(path, "rb") as f:
        return BackupReader(f).header.backup_id


def test_chain_dir_restores_the_whole_chain(chain, tmp_path, capsys):  # noqa: F811
    paths, states = chain
    data = str(tmp_path / "data")
    directory = os.path.dirname(paths["full"])
    assert restore_main.main(["--input", paths["incr2"], "--chain-dir", directory, "--data-dir", data]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Restored the chain of 3 backups into {data}:"
    assert out[1:4] == [f"  {paths[n]}" for n in ("full", "incr1", "incr2")]
    assert out[4] == f"Start the server with: rusty-db-server --data-dir {data}"
    assert rows(data) == states["incr2"]

    again = str(tmp_path / "again")
    argv = ["--input", paths["diff2"], "--chain-dir", directory, "--data-dir", again, "--json"]
    capsys.readouterr()  # the engine's log lines above
    assert restore_main.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "ok": True,
        "data_dir": again,
        "chain": [paths["full"], paths["diff2"]],
        "previous_data_dir": None,
    }
    assert rows(again) == states["incr2"]


class _RecordingFileOps:
    """FileOps that records, per database file, its writebacks and fsyncs."""

    @staticmethod
    def make(events: list):
        from rustydb_server.fileops import FileOps

        class Recording(FileOps):
            paths: dict = {}

            def open(self, path, flags, mode=0o600):
                fd = super().open(path, flags, mode)
                self.paths[fd] = os.path.basename(path)
                return fd

            def start_writeback(self, fd, offset, length):
                events.append(("writeback", self.paths[fd]))
                super().start_writeback(fd, offset, length)

            def fsync(self, fd):
                events.append(("fsync", self.paths.get(fd)))
                super().fsync(fd)

        return Recording()


def test_a_full_streamed_from_a_repository_goes_to_disk_as_it_is_written(chain, tmp_path, monkeypatch):  # noqa: F811
    """Read from a store, the full backup's files are written back as they come in (not all
    of them left to the one fsync after the incrementals); from local files they are not:
    the pages the incrementals rewrite would reach the disk twice. Synced once either way."""
    from rustydb_server import fileops
    from rustydb_server.repository import LocalRepository
    from rustydb_server.restore.chain import restore_members
    from rustydb_server.restore.from_repository import RepositoryObject

    monkeypatch.setattr(fileops, "FLUSH_AFTER", 4096)
    paths, states = chain
    repo = LocalRepository(str(tmp_path / "repo"))
    with open(paths["full"], "rb") as f:
        info = repo.put_bytes("backups/full.backup", f.read())
    streamed = RepositoryObject(repo, "backups/full.backup", info.size, readahead=4)
    for members, written_back in (
        ([streamed, paths["incr1"], paths["incr2"]], True),
        ([paths["full"], paths["incr1"], paths["incr2"]], False),
    ):
        events: list = []
        data = str(tmp_path / f"data-{written_back}")
        restore_members(members, data, fileops=_RecordingFileOps.make(events))
        assert rows(data) == states["incr2"]
        mine = [kind for kind, name in events if name == "rustydb.sqlite"]
        assert ("writeback" in mine) is written_back
        assert mine[-1] == "fsync" and mine.count("fsync") == 1  # synced once, after the incrementals


def test_a_missing_link_is_named_and_nothing_is_written(chain, tmp_path):  # noqa: F811
    paths, _ = chain
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("full", "incr2"):
        shutil.copy(paths[name], partial)
    data = str(tmp_path / "data")
    with pytest.raises(RestoreError, match=f"needs backup .*, which is not in {partial}"):
        restore_chain(str(partial / "incr2.backup"), str(partial), data)
    assert not os.path.exists(data)


def test_a_failing_incremental_leaves_no_half_restored_directory(chain, tmp_path, capsys):  # noqa: F811
    paths, _ = chain
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("full", "incr1", "incr2"):
        shutil.copy(paths[name], broken)
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("old contents")
    with open(broken / "incr2.backup", "r+b") as f:  # damage the last incremental's data
        f.seek(os.path.getsize(broken / "incr2.backup") // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    argv = ["--input", str(broken / "incr2.backup"), "--chain-dir", str(broken), "--data-dir", str(data), "--force"]
    assert restore_main.main(argv) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(os.listdir(data)) == ["keep.txt"]
    assert not glob.glob(str(data) + ".restoring-*") and not glob.glob(str(data) + ".old-*")
