"""FileOps' write-behind: writeback is started as a file grows, always before its fsync."""

from __future__ import annotations

import os
import sys

import pytest

from rustydb_server import fileops
from rustydb_server.fileops import REAL, FileOps, WriteBehind


class Recording(FileOps):
    def __init__(self):
        self.events = []

    def start_writeback(self, fd, offset, length):
        self.events.append(("writeback", fd, offset, length))
        super().start_writeback(fd, offset, length)

    def fsync(self, fd):
        self.events.append(("fsync", fd))
        super().fsync(fd)


def test_write_behind_covers_the_file_front_to_back_in_steps(tmp_path):
    ops = Recording()
    fd = ops.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT)
    behind = WriteBehind(ops, fd, every=100)
    for size in (40, 70, 10, 250, 5, 99):
        ops.write_all(fd, b"x" * size)
        behind.wrote(size)
    ops.fsync(fd)
    ops.close(fd)
    ranges = [(off, n) for kind, _fd, off, n in (e for e in ops.events if e[0] == "writeback")]
    # Contiguous from 0, each at least `every` long, never past what was written.
    assert ranges == [(0, 110), (110, 260), (370, 104)]
    assert ops.events[-1] == ("fsync", fd)


def test_start_writeback_on_a_real_file_is_harmless(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"y" * 100_000)
    FileOps().start_writeback(fd, 0, 100_000)
    os.fsync(fd)
    os.close(fd)
    assert path.read_bytes() == b"y" * 100_000


def test_without_sync_file_range_writeback_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setattr(fileops, "_sync_file_range", False)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"z" * 10)
    FileOps().start_writeback(fd, 0, 10)
    os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_resolves_on_linux():
    assert fileops._load_sync_file_range()


def test_replace_file_replaces_whole_or_not_at_all(tmp_path):
    calls = []

    class Recording(FileOps):
        def fsync(self, fd):
            calls.append("fsync")
            super().fsync(fd)

        def rename(self, src, dst):
            calls.append("rename")
            super().rename(src, dst)

        def fsync_dir(self, path):
            calls.append("fsync_dir")
            super().fsync_dir(path)

    path = tmp_path / "f"
    path.write_bytes(b"old")
    ops = Recording()
    with ops.replace_file(str(path)) as fd:
        ops.write_all(fd, b"new ")
        ops.write_all(fd, b"content")
    assert path.read_bytes() == b"new content" and os.stat(path).st_mode & 0o777 == 0o600
    assert calls == ["fsync", "rename", "fsync_dir"]
    with pytest.raises(RuntimeError), ops.replace_file(str(path)) as fd:
        ops.write_all(fd, b"half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"new content" and os.listdir(tmp_path) == ["f"]


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").write_text("a")
    try:
        REAL.exchange(str(a), str(b))
    except OSError as e:  # no RENAME_EXCHANGE on this system: callers fall back to renames
        pytest.skip(f"no RENAME_EXCHANGE here: {e}")
    assert os.listdir(b) == ["from-a"] and os.listdir(a) == []
    with pytest.raises(OSError):
        REAL.exchange(str(a), str(tmp_path / "missing"))
