"""rusty-db-restore --input FILE --data-dir D (tools/restore/full.py) and restore.full: real
backups from an in-process Engine, restored, then opened by a new Engine (or, for the
guide's test-restore procedure, a real server)."""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess

import pytest

from rustydb_server import datadir as dd
from rustydb_server.container.errors import BackupCorruptError
from rustydb_server.keys import KeyFileSource
from rustydb_server.restore.errors import RestoreError
from rustydb_server.restore.full import restore_full
from tests.support.backups import (
    CUSTOMERS,
    NO_KEYS,
    flip_byte_in_chunk,
    open_engine,
    run_sql,
    write_backup,
)
from tests.support.servers import ServerProcess, free_port, run_tool, tool

CONTENT_SQL = {
    "rustydb": "SELECT count(*), sum(id), group_concat(name, ','), sum(balance) FROM customers",
    "sales": "SELECT count(*), sum(amount) FROM orders",
}


@pytest.fixture(scope="module")
def expected(source):
    return {db: run_sql(source, db, sql) for db, sql in CONTENT_SQL.items()}


@pytest.fixture(scope="module")
def backup(source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("backup") / "full.backup")
    write_backup(source, out, codec="lz4")
    return out


def restore(*args: str, env=None):
    return run_tool("rusty-db-restore", *args, env={**NO_KEYS, **(env or {})})


def assert_same_data(data_dir: str, expected: dict) -> None:
    engine = open_engine(data_dir)
    try:
        for db, sql in CONTENT_SQL.items():
            assert run_sql(engine, db, sql) == expected[db]
        # The restored directory is writable at once and its WAL continues.
        run_sql(engine, "rustydb", "INSERT INTO customers(name) VALUES ('after restore')")
        assert run_sql(engine, "rustydb", "SELECT count(*) FROM customers") == [[CUSTOMERS + 1]]
    finally:
        engine.close()


def leftovers(data_dir: str) -> list[str]:
    """Staging or set-aside directories a restore must never leave behind."""
    return glob.glob(data_dir + ".restoring-*") + glob.glob(data_dir + ".old-*")


def assert_failed_cleanly(proc) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- happy paths


def test_restore_into_a_new_directory_then_an_engine_opens_it(backup, expected, tmp_path):
    target = str(tmp_path / "new" / "data")
    proc = restore("--input", backup, "--data-dir", target, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"Start the server with: rusty-db-server --data-dir {target}" in proc.stdout
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    for name in ("rustydb", "sales"):
        path = os.path.join(target, "databases", f"{name}.sqlite")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not leftovers(target)
    assert not dd.DataDir(target).is_locked_by_other()
    assert_same_data(target, expected)


def test_restore_into_an_empty_directory_with_json_summary(backup, expected, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    proc = restore("--input", backup, "--data-dir", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["databases"] == ["rustydb", "sales"]
    assert summary["tables"] == 3 and summary["bytes"] > 0
    assert summary["data_dir"] == str(target)
    assert_same_data(str(target), expected)


def test_encrypted_restore_with_verification(source, expected, tmp_path):
    key_path = str(tmp_path / "k.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "enc.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path), codec="zstd")
    target = str(tmp_path / "data")

    no_key = restore("--input", out, "--data-dir", target)
    assert_failed_cleanly(no_key)
    assert "--key-file" in no_key.stderr
    assert not os.path.exists(target)

    proc = restore(
        "--input",
        out,
        "--data-dir",
        target,
        "--verify-encryption",
        "--integrity-check",
        "--threads",
        "4",
        env={"RUSTYDB_BACKUP_KEY_FILE": key_path},
    )
    assert proc.returncode == 0, proc.stderr
    assert "row counts match" in proc.stdout
    assert_same_data(target, expected)


# ---------------------------------------------------------------- refusing a target


def test_a_non_empty_directory_needs_force(backup, expected, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("old contents")
    proc = restore("--input", backup, "--data-dir", str(target))
    assert_failed_cleanly(proc)
    assert "not empty" in proc.stderr and "--force" in proc.stderr
    assert (target / "keep.txt").read_text() == "old contents"

    proc = restore("--input", backup, "--data-dir", str(target), "--force")
    assert proc.returncode == 0, proc.stderr
    # what is not part of a data directory (an archive kept inside it, as the
    # guide does, or any other file) is carried over, never deleted
    assert (target / "keep.txt").read_text() == "old contents"
    assert not leftovers(str(target))
    assert_same_data(str(target), expected)


def test_a_directory_held_by_a_server_is_refused_even_with_force(backup, tmp_path):
    target = str(tmp_path / "live")
    holder = dd.DataDir(target)
    holder.lock()  # as a running server does
    try:
        with open(os.path.join(target, "marker"), "w") as f:
            f.write("live data")
        for extra in ([], ["--force"]):
            proc = restore("--input", backup, "--data-dir", target, *extra)
            assert_failed_cleanly(proc)
            assert "running RustyDB server" in proc.stderr
        assert sorted(os.listdir(target)) == ["marker", dd.PID_FILE]
        assert not leftovers(target)
    finally:
        holder.unlock()


# ---------------------------------------------------------------- failures leave nothing


def test_a_damaged_backup_leaves_no_data_directory(backup, tmp_path):
    bad = str(tmp_path / "bad.backup")
    with open(backup, "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    entry, _chunk = flip_byte_in_chunk(bad, entry_index=1)  # damage in the second database
    for extra in ([], ["--verify-encryption"]):
        target = str(tmp_path / f"data{len(extra)}")
        proc = restore("--input", bad, "--data-dir", target, *extra)
        assert_failed_cleanly(proc)
        assert entry in proc.stderr and "chunk 0" in proc.stderr
        assert not os.path.exists(target)
        assert not leftovers(target)


def test_a_damaged_backup_never_touches_the_old_contents(backup, tmp_path):
    bad = str(tmp_path / "bad.backup")
    with open(backup, "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    flip_byte_in_chunk(bad, entry_index=1)
    target = tmp_path / "old"
    target.mkdir()
    (target / "keep.txt").write_text("old contents")
    (target / dd.PID_FILE).write_text("4242\nserver\n")  # left by a server that stopped
    proc = restore("--input", bad, "--data-dir", str(target), "--force")
    assert_failed_cleanly(proc)
    assert sorted(os.listdir(target)) == ["keep.txt", dd.PID_FILE]
    assert (target / "keep.txt").read_text() == "old contents"
    assert (target / dd.PID_FILE).read_text() == "4242\nserver\n"
    assert not leftovers(str(target))


def test_verify_encryption_writes_nothing_before_the_damage_is_found(backup, tmp_path):
    """With --verify-encryption no staging directory is even created for a bad file."""
    bad = str(tmp_path / "bad.backup")
    with open(backup, "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    flip_byte_in_chunk(bad, entry_index=1)
    target = str(tmp_path / "data")
    seen = []

    def progress(phase, done, total):
        seen.append(phase)

    with pytest.raises(BackupCorruptError):
        restore_full(bad, target, verify_encryption=True, progress=progress)
    assert "restore" not in seen  # not a byte of database data was written
    assert not os.path.exists(target) and not leftovers(target)


def test_a_failure_after_install_swaps_nothing_in(backup, tmp_path):
    """The hook point-in-time recovery uses runs on the staging directory; if it
    fails, the target stays as it was."""
    target = tmp_path / "old"
    target.mkdir()
    (target / "keep.txt").write_text("old contents")
    seen = {}

    def replay_fails(staging, manifest):
        seen["ready"] = dd.DataDir(staging).is_initialized()
        raise RuntimeError("archived segment missing")

    with pytest.raises(RuntimeError):
        restore_full(backup, str(target), force=True, post_install=replay_fails)
    assert seen == {"ready": True}
    assert sorted(os.listdir(target)) == ["keep.txt"]
    assert not leftovers(str(target))


def test_files_changed_after_install_are_fsynced_before_the_swap(backup, tmp_path, monkeypatch):
    """With more to apply (a chain), the database files are synced once, after
    the last change and before the directory appears under its name."""
    from rustydb_server import fileops
    from rustydb_server.fileops import FileOps

    monkeypatch.setattr(fileops, "FLUSH_AFTER", 4096)
    target = str(tmp_path / "restored")
    events = []

    class Recording(FileOps):
        paths: dict = {}

        def open(self, path, flags, mode=0o600):
            fd = super().open(path, flags, mode)
            self.paths[fd] = path
            return fd

        def fsync(self, fd):
            path = self.paths.get(fd, "")
            # Still in the staging directory, not yet swapped in under its name?
            staged = os.path.dirname(os.path.dirname(path)) != target
            events.append(("fsync", os.path.basename(path), not staged))
            super().fsync(fd)

        def start_writeback(self, fd, offset, length):
            events.append(("writeback", os.path.basename(self.paths[fd]), False))
            super().start_writeback(fd, offset, length)

    def change(staging, manifest):
        events.append(("post_install", None, False))

    restore_full(backup, target, post_install=change, fileops=Recording())
    mark = events.index(("post_install", None, False))
    synced_after = {name for kind, name, swapped in events[mark:] if kind == "fsync" and not swapped}
    assert {"rustydb.sqlite", "sales.sqlite"} <= synced_after
    # ...and not before: one fsync per file for the whole chain, and no
    # writeback started early, which would write the pages the chain changes twice.
    assert not [e for e in events[:mark] if e[1] in ("rustydb.sqlite", "sales.sqlite")]
    assert os.path.isdir(target)


def test_a_truncated_backup_is_refused(backup, tmp_path):
    with open(backup, "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.backup"
    cut.write_bytes(data[: len(data) // 2])
    target = str(tmp_path / "data")
    proc = restore("--input", str(cut), "--data-dir", target)
    assert_failed_cleanly(proc)
    assert not os.path.exists(target) and not leftovers(target)


# ---------------------------------------------------------------- --integrity-check


def test_integrity_check_catches_row_counts_the_manifest_disagrees_with(source, tmp_path):
    def lie(manifest):
        for db in manifest["databases"]:
            for table in db["tables"]:
                if table["name"] == "orders":
                    table["rows"] += 1

    out = str(tmp_path / "lying.backup")
    write_backup(source, out, edit=lie)
    target = str(tmp_path / "data")
    plain = restore("--input", out, "--data-dir", str(tmp_path / "unchecked"))
    assert plain.returncode == 0, plain.stderr  # without the check the counts are not compared
    proc = restore("--input", out, "--data-dir", target, "--integrity-check")
    assert_failed_cleanly(proc)
    assert "'sales'" in proc.stderr and "'orders'" in proc.stderr
    assert not os.path.exists(target) and not leftovers(target)


def test_integrity_check_passes_on_good_data(backup, tmp_path):
    proc = restore("--input", backup, "--data-dir", str(tmp_path / "d"), "--integrity-check", "--verify-encryption")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("row counts match") == 2


# ---------------------------------------------------------------- names are not paths


def _rename_first(entry=None, name=None):
    def edit(manifest):
        db = manifest["databases"][0]
        if name is not None:
            db["name"] = name
        if entry is not None:
            db["entry"] = entry

    return edit


@pytest.mark.parametrize(
    "edit,extra,expect",
    [
        (_rename_first(entry="databases/../x.sqlite"), (), "databases/../x.sqlite"),
        (_rename_first(name="../x"), (), "../x"),
        (_rename_first(name="a/b", entry="databases/a/b.sqlite"), (), "a/b"),
        (None, [("databases/evil/x.sqlite", "sales")], "unexpected entries"),
        (None, [("RUSTYDB_VERSION", "sales")], "unexpected entries"),
    ],
)
def test_unsafe_or_unexpected_entries_are_refused(source, tmp_path, edit, extra, expect):
    out = str(tmp_path / "odd.backup")
    write_backup(source, out, edit=edit, extra_entries=extra)
    target = str(tmp_path / "data")
    with pytest.raises(RestoreError) as info:
        restore_full(out, target)
    assert expect in str(info.value)
    assert not os.path.exists(target) and not leftovers(target)
    assert not os.path.exists(tmp_path / "x.sqlite")


def test_an_incremental_backup_is_not_restored_as_a_full_one(source, tmp_path):
    out = str(tmp_path / "incr.backup")
    write_backup(source, out, backup_type="incremental")
    proc = restore("--input", out, "--data-dir", str(tmp_path / "d"))
    assert_failed_cleanly(proc)
    assert "incremental" in proc.stderr
    assert not os.path.exists(tmp_path / "d")


# ---------------------------------------------------------------- the guide's test restore


def test_guide_monthly_test_restore(backup, tmp_path):
    """Step 1 as written (into a TEST_DIR that does not exist), then a second server
    on its own port answers health and counts rows."""
    test_dir = str(tmp_path / "restore-test")
    log = tmp_path / "backup-test.log"
    with open(log, "w") as f:  # ">> $LOG_FILE 2>&1"
        rc = subprocess.call(
            [
                tool("rusty-db-restore"),
                "--input",
                backup,
                "--data-dir",
                test_dir,
                "--verify-encryption",
                "--integrity-check",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **NO_KEYS},
        )
    assert rc == 0, log.read_text()
    with ServerProcess(test_dir) as server:
        assert server.health()["status"] == "healthy"
        out = server.sql("SELECT COUNT(*) FROM customers;").stdout
        assert str(CUSTOMERS) in out


def test_restore_starts_writeback_as_it_writes_and_fsyncs_after(backup, tmp_path, monkeypatch):
    """Big database files go to disk while later chunks are still being decoded."""
    from rustydb_server import fileops
    from rustydb_server.fileops import FileOps

    monkeypatch.setattr(fileops, "FLUSH_AFTER", 4096)
    events = []

    class Recording(FileOps):
        paths: dict = {}

        def open(self, path, flags, mode=0o600):
            fd = super().open(path, flags, mode)
            self.paths[fd] = os.path.basename(path)
            return fd

        def start_writeback(self, fd, offset, length):
            events.append(("writeback", self.paths[fd], offset, length))
            super().start_writeback(fd, offset, length)

        def fsync(self, fd):
            events.append(("fsync", self.paths.get(fd), None, None))
            super().fsync(fd)

    target = str(tmp_path / "restored")
    restore_full(backup, target, fileops=Recording())
    for name in ("rustydb.sqlite", "sales.sqlite"):
        mine = [e for e in events if e[1] == name]
        ranges = [(off, n) for kind, _, off, n in mine if kind == "writeback"]
        assert ranges and ranges[0][0] == 0
        assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))
        size = os.path.getsize(os.path.join(target, dd.DATABASES_DIR, name))
        assert ranges[-1][0] + ranges[-1][1] <= size
        assert mine[-1][0] == "fsync"


@pytest.mark.parametrize("threads", ["0", "65", "two"])
def test_thread_counts_outside_1_to_64_are_usage_errors(backup, tmp_path, threads):
    proc = restore("--input", backup, "--data-dir", str(tmp_path / "d"), "--threads", threads)
    assert proc.returncode == 2 and "--threads" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "d")


def test_sigterm_mid_restore_cleans_up_like_ctrl_c(backup, tmp_path, monkeypatch, capsys):
    """A service stop or a cron timeout sends SIGTERM: no staging directory and
    no lock-only data directory may be left for a server to start on."""
    import signal

    from rustydb_server.fileops import FileOps
    from rustydb_server.tools import restore_main

    real_write_all = FileOps.write_all
    calls = []

    def write_then_get_terminated(self, fd, data):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_write_all(self, fd, data)

    monkeypatch.setattr(FileOps, "write_all", write_then_get_terminated)
    before = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "restored"
    rc = restore_main.main(["--input", backup, "--data-dir", str(target)])
    assert rc == 1 and "stopped by SIGTERM; nothing was restored" in capsys.readouterr().err
    assert not target.exists() and os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_server_refuses_the_target_of_a_restore_that_was_killed(backup, tmp_path):
    """kill -9 of rusty-db-restore leaves the target holding only its lock
    file; a server must not start a new, empty database there."""
    target = tmp_path / "restored"
    target.mkdir(mode=0o700)
    (target / "rustydb.pid").write_text("4242\nrestore\n")  # the killed restore's lock
    proc = run_tool(
        "rusty-db-server",
        "--data-dir",
        str(target),
        "--port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        timeout=30,
    )
    assert proc.returncode == 1
    assert "is the target of a restore that did not finish (rusty-db-restore, pid 4242)" in proc.stderr
    assert sorted(os.listdir(target)) == ["rustydb.pid"]  # nothing initialized
    proc = restore("--input", backup, "--data-dir", str(target))
    assert proc.returncode == 0, proc.stderr
    server = ServerProcess(str(target)).start()
    try:
        assert server.health()["status"] == "healthy"
    finally:
        server.stop()
