"""restore/staging.py: the target lock, the staging directory and the swap, on their own."""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

import pytest

from rustydb_server import datadir as dd
from rustydb_server.fileops import FileOps
from rustydb_server.restore.errors import RestoreError
from rustydb_server.restore.full import restore_full
from rustydb_server.restore.staging import TargetLock


def leftovers(target: str) -> list[str]:
    return glob.glob(target + ".restoring-*") + glob.glob(target + ".old-*")


def kept(target: str) -> list[str]:
    return glob.glob(target + ".pre-restore-*")


def test_a_swapped_stage_becomes_the_new_target(tmp_path):
    target = str(tmp_path / "data")
    with TargetLock(target) as lock:
        lock.check_target(force=False)
        with lock.stage("0123456789abcdef") as staging:
            assert staging.path == target + ".restoring-01234567"
            assert os.stat(staging.path).st_mode & 0o777 == 0o700
            assert os.path.isdir(os.path.join(staging.path, dd.DATABASES_DIR))
            Path(staging.path, "new.txt").write_text("new")
            assert staging.swap() is False  # nothing was replaced
    assert sorted(os.listdir(target)) == [dd.DATABASES_DIR, "new.txt"]
    assert not leftovers(target) and not dd.DataDir(target).is_locked_by_other()


def test_a_failure_inside_the_stage_leaves_no_trace(tmp_path):
    target = str(tmp_path / "data")
    with pytest.raises(RuntimeError), TargetLock(target) as lock, lock.stage("abc") as staging:
        Path(staging.path, "half.txt").write_text("half")
        raise RuntimeError("failed half way")
    assert os.listdir(tmp_path) == []  # neither the target the lock created nor the stage


def test_a_stage_left_by_an_interrupted_restore_is_replaced(tmp_path):
    target = str(tmp_path / "data")
    os.mkdir(target + ".restoring-abc")
    (tmp_path / "data.restoring-abc" / "stale").write_text("old attempt")
    with TargetLock(target) as lock, lock.stage("abc") as staging:
        assert os.listdir(staging.path) == [dd.DATABASES_DIR]
        staging.swap()


def test_force_replaces_a_data_directory_and_keeps_what_is_not_part_of_one(tmp_path):
    target = tmp_path / "data"
    (target / dd.DATABASES_DIR).mkdir(parents=True)
    (target / dd.DATABASES_DIR / "old.sqlite").write_text("old")
    (target / "archive").mkdir()
    (target / "rustydb.auto.toml").write_text("x = 1\n")
    with TargetLock(str(target)) as lock:
        with pytest.raises(RestoreError, match="not empty.*--force"):
            lock.check_target(force=False)
        lock.check_target(force=True)
        with lock.stage("abc") as staging:
            assert staging.swap() is True
    assert sorted(os.listdir(target)) == ["archive", dd.DATABASES_DIR, "rustydb.auto.toml"]
    assert os.listdir(target / dd.DATABASES_DIR) == []
    assert not leftovers(str(target))


def test_a_held_target_is_refused_and_left_alone(tmp_path):
    target = str(tmp_path / "live")
    holder = dd.DataDir(target)
    holder.lock()
    try:
        with pytest.raises(RestoreError, match="held by a running RustyDB server"), TargetLock(target):
            pass
        assert os.listdir(target) == [dd.PID_FILE]
    finally:
        holder.unlock()


def test_an_unswapped_restore_puts_the_old_pid_file_back(tmp_path):
    target = tmp_path / "old"
    target.mkdir()
    (target / dd.PID_FILE).write_text("4242\nserver\n")
    with TargetLock(str(target)) as lock, lock.stage("abc"):
        pass
    assert (target / dd.PID_FILE).read_text() == "4242\nserver\n"
    assert not leftovers(str(target))


# ------------------------------------------------ a --force restore killed at every step

STEPS = ("rename", "exchange", "fsync", "fsync_dir")


class KilledAt(FileOps):
    """Counts the renames and fsyncs of a restore; at the ``at``-th the process dies
    as under kill -9 (nothing after it runs, no clean-up). ``exchange=False``: a
    system without RENAME_EXCHANGE."""

    def __init__(self, at: int | None, *, exchange: bool = True):
        self.at = at
        self.calls = 0
        self.has_exchange = exchange

    def _step(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            os._exit(137)

    def rename(self, src, dst):
        self._step()
        super().rename(src, dst)

    def exchange(self, a, b):
        if not self.has_exchange:
            raise OSError(errno.ENOSYS, "no RENAME_EXCHANGE here")
        self._step()
        super().exchange(a, b)

    def fsync(self, fd):
        self._step()
        super().fsync(fd)

    def fsync_dir(self, path):
        self._step()
        super().fsync_dir(path)


def old_data_directory(backup: str, target: str) -> None:
    restore_full(backup, target)
    Path(target, dd.DATABASES_DIR, "marker-old").write_text("the data from before")
    os.mkdir(os.path.join(target, "archive"))  # kept inside it, carried over by --force
    Path(target, "archive", "segment").write_text("archived")


def what_a_server_finds(target: str) -> str:
    ddir = dd.DataDir(target)
    if ddir.is_initialized():
        return "old" if os.path.exists(os.path.join(target, dd.DATABASES_DIR, "marker-old")) else "new"
    with pytest.raises(dd.DataDirError, match="a restore into it did not finish"):
        ddir.initialize(segment_size=65536)
    return "refused"


@pytest.mark.parametrize("force", [True, False], ids=["force", "keep"])
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_restore_killed_at_any_step_leaves_old_data_or_new_never_nothing(plain_backup, tmp_path, exchange, force):
    backup, _ = plain_backup
    dry = tmp_path / "dry"
    old_data_directory(backup, str(dry))
    counter = KilledAt(None, exchange=exchange)
    restore_full(backup, str(dry), force=force, fileops=counter)
    assert counter.calls > 3
    seen = set()
    for at in range(1, counter.calls + 1):
        target = str(tmp_path / f"at{at}" / "data")
        old_data_directory(backup, target)
        pid = os.fork()
        if pid == 0:  # the restore, killed at its at-th step
            try:
                restore_full(backup, target, force=force, fileops=KilledAt(at, exchange=exchange))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 137, f"step {at} was not reached"
        found = what_a_server_finds(target)
        seen.add(found)
        if found == "refused":
            assert not exchange, f"killed at step {at}: with an atomic exchange the target is never missing"
        left = leftovers(target) + kept(target)
        archived = [p for p in [target, *left] if os.path.exists(os.path.join(p, "archive", "segment"))]
        assert archived, f"killed at step {at}: the archive kept in the data directory is gone"
        if not force:
            # Nothing lost, even when the restore is run again after the kill.
            assert has_old_data(target), f"killed at step {at}: the old data is gone"
            restore_full(backup, target)
            assert has_old_data(target), f"killed at step {at}, run again: the old data is gone"
            assert what_a_server_finds(target) == "new"
    assert "old" in seen and "new" in seen


def has_old_data(target: str) -> bool:
    places = [target, *leftovers(target), *kept(target)]
    return any(os.path.exists(os.path.join(p, dd.DATABASES_DIR, "marker-old")) for p in places)


def test_a_stopped_servers_data_directory_is_kept_aside(plain_backup, tmp_path):
    backup, _ = plain_backup
    target = str(tmp_path / "data")
    old_data_directory(backup, target)
    result = restore_full(backup, target)
    (aside,) = kept(target)
    assert result.kept_old == aside and result.replaced_old
    assert os.path.exists(os.path.join(aside, dd.DATABASES_DIR, "marker-old"))
    # what is not part of a data directory goes on with the restored one
    assert os.path.exists(os.path.join(target, "archive", "segment"))
    assert not os.path.exists(os.path.join(target, dd.DATABASES_DIR, "marker-old"))
    assert dd.DataDir(target).read_control().previous_data_dir == aside
    assert not leftovers(target)


def test_a_rerun_after_a_restore_killed_before_its_swap_leaves_nothing_aside(plain_backup, tmp_path):
    """What a killed restore built is its own work: the next run removes it, and
    sets nothing aside (there was no data directory before it) but the restored
    directory, when the kill came after the swap."""
    backup, manifest = plain_backup
    counter = KilledAt(None)
    restore_full(backup, str(tmp_path / "dry" / "data"), fileops=counter)
    for at in range(1, counter.calls + 1):
        target = str(tmp_path / f"at{at}" / "data")
        pid = os.fork()
        if pid == 0:  # the restore, killed at its at-th step
            try:
                restore_full(backup, target, fileops=KilledAt(at))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 137, f"step {at} was not reached"
        swapped = dd.DataDir(target).is_initialized()  # then the run again keeps it aside
        restore_full(backup, target)
        assert what_a_server_finds(target) == "new"
        assert leftovers(target) == [], f"killed at step {at}"
        assert len(kept(target)) == swapped, f"killed at step {at}"
