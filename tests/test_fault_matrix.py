"""Faults at every durable file operation of commit, checkpoint, WAL switch,
archive, backup and restore: ENOSPC, EIO, and a crash right after the call.

The matrix (tests/support/fault_matrix.py, scenarios in fault_scenarios.py)
records each operation's calls through FileOps, then reruns it once per call
and fault and checks what must hold afterwards. CI runs every call of the
engine's operations and every 2nd or 3rd elsewhere (each fault starting at a
different call, so every call gets some fault); bench/faults.py runs them all.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

from rustydb_server.archive import segment_file as sf
from rustydb_server.container.format import BackupType
from rustydb_server.fileops import FileOps
from tests.support import fault_scenarios as fs
from tests.support.fault_matrix import FAULTS, Crash, Injector, Matrix, first_call, tally


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    logging.disable(logging.CRITICAL)  # a few hundred runs' worth of the server's log lines
    m = Matrix(str(tmp_path_factory.mktemp("faults")))
    yield m
    logging.disable(logging.NOTSET)
    m.close()


def _report(t) -> str:
    lines = []
    for case in t.problems:
        lines.append(f"{case.fault} at call {case.at} {case.call}: {case.outcome} {case.message}")
        lines += [f"    {p}" for p in case.problems]
    return "\n".join(lines)


@pytest.mark.parametrize("scenario", fs.scenarios(), ids=lambda s: s.name)
def test_a_fault_at_any_call_loses_nothing_acknowledged_and_leaves_nothing_torn(matrix, scenario):
    t = tally(matrix, scenario, every=scenario.ci_every)
    assert not t.problems, _report(t)
    assert t.calls >= 2 and t.runs >= t.calls  # every call got at least one fault
    for fault in FAULTS:
        ran = sum(n for key, n in t.outcomes.items() if key.startswith(fault + ":"))
        assert ran, f"no {fault} run"
    # a crash always ended the operation (never swallowed), a failure was always reported
    assert t.outcomes["crash:ok"] == t.outcomes["crash:error"] == 0
    assert t.outcomes["eio:error"] > 0 and t.outcomes["enospc:error"] > 0


# ------------------------------------------------------------ the harness itself


def test_the_injector_records_counted_calls_and_fails_the_chosen_one(tmp_path):
    ops = Injector(str(tmp_path))
    ops.armed = True
    ops.write_file_atomic(str(tmp_path / "f"), b"data")
    assert ops.calls == [
        ("open", "f.tmp.#"),
        ("write", "f.tmp.#"),
        ("fsync", "f.tmp.#"),
        ("rename", "f"),
        ("fsync_dir", "."),
    ]
    ops = Injector(str(tmp_path), "eio", 2)
    ops.armed = True
    with pytest.raises(OSError) as e:
        ops.write_file_atomic(str(tmp_path / "g"), b"data")
    assert e.value.errno == errno.EIO and e.value.filename.startswith(str(tmp_path / "g.tmp."))
    assert not os.path.exists(tmp_path / "g") and os.listdir(tmp_path) == ["f"]  # the temp file removed


def test_a_crash_sets_aside_the_files_as_they_were_at_that_call(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    seen = []
    ops = Injector(str(root), "crash", 1, on_crash=lambda: seen.append(sorted(os.listdir(root))))
    ops.armed = True
    with pytest.raises(Crash):
        ops.write_file_atomic(str(root / "f"), b"data")
    [files] = seen
    assert len(files) == 1 and files[0].startswith("f.tmp.")  # written, not yet renamed
    assert os.listdir(root) == []  # the cleanup that ran after it is what a crash never does


class _ArchiveInPlace(fs.Archive):
    """An archiver that writes each archive file under its final name directly."""

    name = "archive_in_place"

    def act(self, state):
        real = sf.pack_segment

        def in_place(src, dest, *, fileops, **kw):
            real(src, dest + ".whole", **kw)  # the right bytes, then copied the wrong way
            with open(dest + ".whole", "rb") as f:
                data = f.read()
            os.unlink(dest + ".whole")
            fd = fileops.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            for at in range(0, len(data), 16384):
                fileops.write(fd, data[at : at + 16384])
            fileops.fsync(fd)
            fileops.close(fd)
            return len(data)

        sf.pack_segment = in_place
        try:
            super().act(state)
        finally:
            sf.pack_segment = real


def test_the_matrix_finds_a_torn_archive_file_written_in_place(matrix):
    t = tally(matrix, _ArchiveInPlace(), every=2)
    torn = [c for c in t.problems if any("not a whole segment" in p for p in c.problems)]
    assert {c.fault for c in torn} == set(FAULTS)  # a crash, or a failed write left behind
    assert t.lost == len(t.problems) >= len(torn)  # counted as data lost, as bench/faults.py prints it


# ------------------------------------------------- the failures the matrix found


def test_a_backup_whose_header_cannot_be_written_reports_it_and_removes_its_partial(matrix):
    """BackupFile.abort() ran before the attributes it reads were set: an
    AttributeError replaced the real error (and swallowed a crash), and the
    .partial file stayed."""
    scenario = fs.Backup(BackupType.FULL)
    header = first_call(matrix, scenario, "write", ".backup.partial")
    for fault in ("enospc", "eio"):
        case = matrix.run(scenario, fault, header)
        assert case.outcome == "error" and case.message.startswith("OSError"), case.message
        assert ".backup.partial" in case.message and not case.problems, case
    case = matrix.run(scenario, "crash", header)
    assert case.outcome == "crash" and not case.problems, case


def test_switch_wal_on_a_failing_disk_is_an_io_error_naming_the_segment(matrix):
    """The switch fragment's write failing with EIO escaped as a bare OSError."""
    scenario = fs.SwitchWal()
    calls = matrix.record(scenario)
    fragment = [i for i, (op, _) in enumerate(calls) if op == "pwrite"][1]
    case = matrix.run(scenario, "eio", fragment)
    assert case.message.startswith("EngineError: could not switch the WAL: Input/output error"), case.message
    assert "/data/wal/0000" in case.message and "run SWITCH WAL again" in case.message
    assert not case.problems, case


@pytest.mark.parametrize(
    "scenario,op,kind,names",
    [
        (fs.Commit(), "pwrite", "data/wal/", "/data/wal/0000"),
        (fs.Checkpoint(), "fsync", "data/control", "/data/control"),
        (fs.Archive(), "write", ".walz.partial", ".walz.partial"),
        (fs.Restore("full"), "write", "databases/rustydb.sqlite", "/databases/rustydb.sqlite"),
    ],
    ids=["commit", "checkpoint", "archive", "restore"],
)
def test_an_io_error_names_the_file_it_happened_to(matrix, scenario, op, kind, names):
    """A write or fsync on a descriptor failed with "Input/output error" and
    nothing more: FileOps now names the file a descriptor was opened as."""
    case = matrix.run(scenario, "eio", first_call(matrix, scenario, op, kind))
    assert case.outcome == "error" and names in case.message, case.message
    assert not case.problems, case


def test_a_new_wal_segment_is_named_by_its_final_name_in_errors(tmp_path):
    ops = FileOps()
    tmp, final = str(tmp_path / "seg.tmp"), str(tmp_path / "seg")
    fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT)
    try:
        ops.rename(tmp, final)
        assert ops.named(OSError(errno.EIO, "Input/output error"), fd).filename == final
    finally:
        ops.close(fd)


@pytest.mark.parametrize(
    "scenario,call",
    [
        (fs.Restore("incremental"), ("fsync", "target/databases/rustydb.sqlite")),
        (fs.Restore("incremental"), ("rename", "target/control")),
        (fs.Restore("chain"), ("rename", "target.restoring-#/control")),
        (fs.Backup(BackupType.FULL), ("rename", "backups/#.backup")),
        (fs.Archive(), ("open", "data/wal/archive_status/#.done")),
    ],
    ids=["incremental-sync", "incremental-control", "chain-control", "server-backup", "archive-mark"],
)
def test_writes_that_bypassed_fileops_now_go_through_it(matrix, scenario, call):
    """An incremental restore, the server's own backups and the archive's marks
    wrote with os calls (or FileOps.REAL) directly: no fault could reach them."""
    assert call in matrix.record(scenario)
