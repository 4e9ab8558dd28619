import errno
import itertools
import os
import shutil
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_server.fileops import FileOps
from rustydb_server.wal.reader import (
    WalCorruptError,
    WalEntry,
    find_wal_end,
    read_segment_file,
    read_segment_sequence,
    read_segments,
    read_wal,
)
from rustydb_server.wal.segment import (
    HEADER_SIZE,
    build_fragments,
    list_segments,
    normalize_lsn,
    segment_name,
)
from rustydb_server.wal.writer import (
    WalDiskFullError,
    WalFsyncError,
    WalWriter,
)

SIZE = 64 * 1024
SYSID = 0x5EED


def open_writer(wal_dir, start_lsn=0, **kwargs):
    return WalWriter(str(wal_dir), timeline=1, system_id=SYSID, segment_size=SIZE, start_lsn=start_lsn, **kwargs)


def read_all(wal_dir, start_lsn=0, **kwargs):
    return list(read_wal(str(wal_dir), timeline=1, segment_size=SIZE, start_lsn=start_lsn, **kwargs))


def wal_end(wal_dir, start_lsn=0):
    return find_wal_end(str(wal_dir), timeline=1, segment_size=SIZE, start_lsn=start_lsn)


def make_body(i, size):
    # No zero bytes: zeroing any byte of a body must change it.
    pattern = bytes((i * 31 + k) % 255 + 1 for k in range(255))
    return (pattern * (size // 255 + 1))[:size]


def write_records(wal_dir, sizes, **kwargs):
    """Append bodies of the given sizes; return the WalEntry each should read back as."""
    expected = []
    with open_writer(wal_dir, **kwargs) as writer:
        for i, size in enumerate(sizes):
            body = make_body(i, size)
            lsn, end = writer.append(body)
            expected.append(WalEntry(lsn, end, body))
        writer.flush()
    return expected


def segment_path(wal_dir, segno, timeline=1):
    return os.path.join(str(wal_dir), segment_name(timeline, segno))


def patch_byte(wal_dir, lsn, change):
    segno, offset = divmod(lsn, SIZE)
    with open(segment_path(wal_dir, segno), "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([change(old)]))


def zero_from(wal_dir, lsn):
    """What a crash leaves when nothing at or after ``lsn`` reached the disk."""
    for _, segno, name in _segments(wal_dir):
        start = max(lsn - segno * SIZE, HEADER_SIZE)
        if start < SIZE:
            with open(os.path.join(str(wal_dir), name), "r+b") as f:
                f.seek(start)
                f.write(bytes(SIZE - start))


def _segments(wal_dir):
    return list_segments(str(wal_dir))


class CountingOps(FileOps):
    def __init__(self):
        self.fdatasyncs = 0
        self.lock = threading.Lock()

    def fdatasync(self, fd):
        with self.lock:
            self.fdatasyncs += 1
        super().fdatasync(fd)


# -- round trips


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.integers(0, 300),
            st.integers(0, 3 * SIZE),
            st.just("switch"),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_appended_records_read_back_exactly(plan):
    with tempfile.TemporaryDirectory() as wal_dir:
        expected, resume = [], 0
        with open_writer(wal_dir) as writer:
            for i, step in enumerate(plan):
                if step == "switch":
                    resume = writer.switch_segment()
                    continue
                body = make_body(i, step)
                lsn, end = writer.append(body)
                expected.append(WalEntry(lsn, end, body))
                resume = end
            assert writer.flush() == writer.end_lsn
        assert read_all(wal_dir) == expected
        # Where a restarted writer goes on (both sides may name the same spot
        # before or after a segment header).
        assert normalize_lsn(wal_end(wal_dir), SIZE) == normalize_lsn(resume, SIZE)
        # Reading from any record's LSN yields that record and the rest.
        if expected:
            middle = expected[len(expected) // 2]
            assert read_all(wal_dir, start_lsn=middle.lsn)[0] == middle
        paths = [os.path.join(wal_dir, name) for _, _, name in _segments(wal_dir)]
        assert list(read_segments(paths)) == expected


def test_empty_wal_reads_as_empty(tmp_path):
    assert read_all(tmp_path) == []
    assert wal_end(tmp_path, start_lsn=SIZE * 7 + 100) == SIZE * 7 + 100


# -- torn tails


def _cut_points(sizes):
    """A sample of byte positions across every fragment of the last record."""
    lsn = 0
    for size in sizes:
        fragments, end = build_fragments(bytes(size), lsn, SIZE)
        lsn = end
    points = []
    for frag_lsn, data in fragments:
        n = len(data)
        points += [frag_lsn + k for k in sorted({0, 3, 4, 8, 9, 10, n // 2, n - 1})]
    return points


SMALL_TAIL = [100, 2000, 300, 150]
SPANNING_TAIL = [100, 2000, 300, SIZE + 500]
TORN_CASES = [("full", SMALL_TAIL, cut) for cut in _cut_points(SMALL_TAIL)] + [
    ("spanning", SPANNING_TAIL, cut) for cut in _cut_points(SPANNING_TAIL)
]


@pytest.mark.parametrize("sizes, cut", [case[1:] for case in TORN_CASES], ids=[f"{n}-{c}" for n, _, c in TORN_CASES])
def test_a_torn_last_record_keeps_every_earlier_record(tmp_path, sizes, cut):
    expected = write_records(tmp_path, sizes)
    assert cut in range(expected[-1].lsn, expected[-1].end_lsn)
    zero_from(tmp_path, cut)
    assert read_all(tmp_path) == expected[:-1]
    resume = wal_end(tmp_path)
    assert resume == expected[-2].end_lsn
    # The server restarts there and goes on writing.
    with open_writer(tmp_path, start_lsn=resume) as writer:
        lsn, end = writer.append(b"after the crash")
        writer.flush()
    assert read_all(tmp_path) == expected[:-1] + [WalEntry(lsn, end, b"after the crash")]


@pytest.mark.parametrize("index", [0, 3, 5, 8, 9, 40, 120])
def test_a_damaged_last_record_is_a_torn_tail(tmp_path, index):
    expected = write_records(tmp_path, [100, 200, 150])
    patch_byte(tmp_path, expected[-1].lsn + index, lambda b: b ^ 0x41)
    assert read_all(tmp_path) == expected[:-1]


def test_damage_in_the_last_fragment_of_a_spanning_record_is_a_torn_tail(tmp_path):
    expected = write_records(tmp_path, [100, SIZE + 500])
    last_fragment_lsn = build_fragments(expected[-1].body, expected[-1].lsn, SIZE)[0][-1][0]
    patch_byte(tmp_path, last_fragment_lsn + 20, lambda b: b ^ 1)
    assert read_all(tmp_path) == expected[:-1]


# -- corruption in the middle


def _many_records(tmp_path, count=30, size=150):
    return write_records(tmp_path, [size] * count)


@pytest.mark.parametrize("where", [0, 5, 8, 9, 60])  # length, crc, kind, payload
def test_damage_followed_by_valid_records_is_refused(tmp_path, where):
    expected = _many_records(tmp_path)
    victim = expected[10]
    patch_byte(tmp_path, victim.lsn + where, lambda b: b ^ (0x10 if where != 0 else 0x80))
    with pytest.raises(WalCorruptError) as info:
        read_all(tmp_path)
    err = info.value
    assert err.segment_name == segment_name(1, 0)
    assert err.offset == victim.lsn % SIZE
    assert segment_name(1, 0) in str(err) and str(victim.lsn % SIZE) in str(err)
    assert "recovery stopped" in str(err)
    with pytest.raises(WalCorruptError):
        wal_end(tmp_path)


def test_records_already_read_are_returned_before_corruption_is_raised(tmp_path):
    expected = _many_records(tmp_path)
    patch_byte(tmp_path, expected[10].lsn + 30, lambda b: b ^ 1)
    got = []
    with pytest.raises(WalCorruptError):
        for entry in read_wal(str(tmp_path), timeline=1, segment_size=SIZE, start_lsn=0):
            got.append(entry)  # noqa: PERF402
    assert got == expected[:10]


def test_a_damaged_length_is_refused_when_valid_records_follow(tmp_path):
    expected = _many_records(tmp_path)
    victim = expected[10]
    # The claimed length no longer leads to the next fragment; it is found anyway.
    patch_byte(tmp_path, victim.lsn + 3, lambda b: b ^ 0x7F)
    with pytest.raises(WalCorruptError, match=f"valid fragment follows at offset {expected[11].lsn}") as info:
        read_all(tmp_path)
    assert info.value.offset == victim.lsn % SIZE


def test_a_hole_to_the_end_of_a_segment_is_refused_when_later_segments_have_data(tmp_path):
    expected = write_records(tmp_path, [1000] * 150)  # three segments' worth
    victim = expected[20]
    with open(segment_path(tmp_path, 0), "r+b") as f:
        f.seek(victim.lsn)
        f.write(bytes(SIZE - victim.lsn))
    with pytest.raises(WalCorruptError, match="later segment 000000010000000000000001") as info:
        read_all(tmp_path)
    assert info.value.offset == victim.lsn


def test_damage_in_a_segment_that_a_later_segment_follows_is_corruption(tmp_path):
    # The writer syncs a segment before writing the next, so once the next
    # holds data, damage in the first is not a torn write.
    expected = write_records(tmp_path, [100, SIZE + 500])
    patch_byte(tmp_path, expected[-1].lsn + 30, lambda b: b ^ 1)
    with pytest.raises(WalCorruptError):
        read_all(tmp_path)


def test_a_missing_segment_in_the_middle_is_refused(tmp_path):
    write_records(tmp_path, [1000] * 200)
    os.unlink(segment_path(tmp_path, 1))
    with pytest.raises(WalCorruptError, match="missing") as info:
        read_all(tmp_path)
    assert info.value.segment_name == segment_name(1, 1)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: b"X" + raw[1:], "magic"),
        (lambda raw: raw[:20] + bytes([raw[20] ^ 1]) + raw[21:], "checksum"),
    ],
)
def test_a_damaged_segment_header_names_the_file(tmp_path, damage, message):
    write_records(tmp_path, [1000] * 100)
    path = segment_path(tmp_path, 1)
    with open(path, "r+b") as f:
        raw = f.read(HEADER_SIZE)
        f.seek(0)
        f.write(damage(raw))
    with pytest.raises(WalCorruptError, match=message) as info:
        read_all(tmp_path)
    assert info.value.segment_name == segment_name(1, 1)


def test_a_segment_from_another_system_is_refused(tmp_path):
    write_records(tmp_path, [10])
    with pytest.raises(WalCorruptError, match="system id"):
        read_all(tmp_path, system_id=SYSID + 1)
    # A segment copied in from another system (or misnamed) is caught too.
    other = tmp_path / "other"
    other.mkdir()
    with WalWriter(str(other), timeline=1, system_id=999, segment_size=SIZE, start_lsn=SIZE) as w:
        w.append(b"x" * 100)
        w.flush()
    shutil.copy(segment_path(other, 1), segment_path(tmp_path, 1))
    with pytest.raises(WalCorruptError, match="system id 999") as info:
        read_all(tmp_path)
    assert info.value.segment_name == segment_name(1, 1)


# -- segment switch and completion


def test_switch_segment_moves_on_and_reports_the_completed_segment(tmp_path):
    completed = []
    with open_writer(tmp_path, on_segment_complete=completed.append) as writer:
        a = writer.append(b"a")
        assert writer.switch_segment() == SIZE + HEADER_SIZE
        assert completed == [segment_name(1, 0)]
        # Nothing in the new segment yet: nothing to switch.
        assert writer.switch_segment() == SIZE + HEADER_SIZE
        b = writer.append(b"b")
        assert b[0] == SIZE + HEADER_SIZE
        writer.flush()
        assert writer.switch_segment() == 2 * SIZE + HEADER_SIZE
    assert completed == [segment_name(1, 0), segment_name(1, 1)]
    assert [e.body for e in read_all(tmp_path)] == [b"a", b"b"]
    assert a[1] < SIZE
    # A writer restarting after a switch must not write into the switched segment.
    assert wal_end(tmp_path) == 2 * SIZE + HEADER_SIZE


def test_a_segment_is_reported_complete_only_once_durable(tmp_path):
    ops = CountingOps()
    seen = []

    def on_complete(name):
        seen.append((name, writer.flushed_lsn == writer.end_lsn, ops.fdatasyncs))

    writer = open_writer(tmp_path, fileops=ops, on_segment_complete=on_complete)
    for i in range(100):
        writer.append(make_body(i, 1000))  # never flushed by the caller
    writer.close()
    assert [name for name, _, _ in seen] == [segment_name(1, 0)]
    assert all(durable and syncs > 0 for _, durable, syncs in seen)


class OrderOps(FileOps):
    """Logs writes (a new segment's, under its temporary name, too) and
    fdatasyncs by segment file name."""

    def __init__(self):
        self.names = {}
        self.log = []

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path).removesuffix(".tmp")
        return fd

    def pwrite(self, fd, data, offset):
        self.log.append(("write", self.names[fd]))
        return super().pwrite(fd, data, offset)

    def write(self, fd, data):
        self.log.append(("write", self.names[fd]))
        return super().write(fd, data)

    def fdatasync(self, fd):
        self.log.append(("fdatasync", self.names[fd]))
        super().fdatasync(fd)


@pytest.mark.parametrize("sizes", [[3 * SIZE], [1000] * 200], ids=["spanning", "small"])
def test_a_segment_is_synced_before_the_next_one_gets_data(tmp_path, sizes):
    # The reader's corruption test depends on this order: valid data in a
    # later segment proves the earlier one complete.
    ops = OrderOps()
    with open_writer(tmp_path, fileops=ops) as writer:
        for i, size in enumerate(sizes):
            writer.append(make_body(i, size))  # never flushed by the caller
    segments = sorted({name for _, name in ops.log})
    assert len(segments) >= 3
    for earlier, later in itertools.pairwise(segments):
        first_write_later = ops.log.index(("write", later))
        last_write_earlier = max(i for i, e in enumerate(ops.log) if e == ("write", earlier))
        assert ("fdatasync", earlier) in ops.log[last_write_earlier:first_write_later]


def test_records_spanning_segments_report_each_segment_in_order(tmp_path):
    completed = []
    with open_writer(tmp_path, on_segment_complete=completed.append) as writer:
        writer.append(b"z" * (3 * SIZE))
    assert completed == [segment_name(1, n) for n in range(3)]


def test_a_failing_callback_does_not_fail_the_append(tmp_path):
    def boom(name):
        raise RuntimeError("archive status dir gone")

    with open_writer(tmp_path, on_segment_complete=boom) as writer:
        writer.append(b"a")
        writer.switch_segment()
        writer.append(b"b")
        writer.flush()
    assert [e.body for e in read_all(tmp_path)] == [b"a", b"b"]


# -- fsync failure


class FailingSyncOps(FileOps):
    def __init__(self):
        self.calls = 0

    def fdatasync(self, fd):
        self.calls += 1
        raise OSError(errno.EIO, "Input/output error")


def test_an_fsync_failure_poisons_the_writer(tmp_path):
    ops = FailingSyncOps()
    writer = open_writer(tmp_path, fileops=ops)
    writer.append(b"not acknowledged")
    with pytest.raises(WalFsyncError) as info:
        writer.flush()
    assert segment_name(1, 0) in str(info.value)
    assert info.value.errno == errno.EIO
    assert writer.flushed_lsn == 0
    for call in (lambda: writer.append(b"x"), writer.flush, writer.switch_segment):
        with pytest.raises(WalFsyncError):
            call()
    assert ops.calls == 1  # never retried
    writer.close()


def test_an_fsync_failure_while_leaving_a_segment_poisons_the_writer(tmp_path):
    ops = FailingSyncOps()
    writer = open_writer(tmp_path, fileops=ops)
    with pytest.raises(WalFsyncError):
        writer.append(b"y" * (SIZE + 10))
    with pytest.raises(WalFsyncError):
        writer.append(b"x")
    writer.close()


# -- disk full


class DiskOps(FileOps):
    """Runs out of space for new files while ``full`` is set."""

    def __init__(self):
        self.full = False
        self.new_files = set()

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        if flags & os.O_CREAT:
            self.new_files.add(fd)
        else:
            self.new_files.discard(fd)
        return fd

    def write(self, fd, data):
        if self.full and fd in self.new_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)


def test_disk_full_on_the_first_segment_then_space_comes_back(tmp_path):
    ops = DiskOps()
    ops.full = True
    writer = open_writer(tmp_path, fileops=ops)
    with pytest.raises(WalDiskFullError) as info:
        writer.append(b"first")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "WAL disk is full" in str(info.value)
    assert os.listdir(tmp_path) == []  # no temp file left behind
    ops.full = False
    lsn, end = writer.append(b"first")
    writer.flush()
    writer.close()
    assert read_all(tmp_path) == [WalEntry(lsn, end, b"first")]


def test_disk_full_in_the_middle_of_a_spanning_record(tmp_path):
    ops = DiskOps()
    writer = open_writer(tmp_path, fileops=ops)
    kept = [WalEntry(*writer.append(make_body(i, 500)), make_body(i, 500)) for i in range(5)]
    writer.flush()
    ops.full = True
    big = make_body(99, SIZE)
    with pytest.raises(WalDiskFullError):
        writer.append(big)
    assert writer.end_lsn == kept[-1].end_lsn
    assert read_all(tmp_path) == kept  # no half record, nothing in a second segment
    assert [name for _, _, name in _segments(tmp_path)] == [segment_name(1, 0)]
    ops.full = False
    lsn, end = writer.append(big)
    assert lsn == kept[-1].end_lsn  # the failed append left nothing behind
    small = writer.append(b"after")
    writer.flush()
    writer.close()
    assert read_all(tmp_path) == kept + [WalEntry(lsn, end, big), WalEntry(*small, b"after")]


class FailingWriteOps(FileOps):
    """Fails the first write into the segment named ``fail_in`` with EIO, once,
    after writing half of it (a short write first)."""

    def __init__(self, fail_in):
        self.fail_in = fail_in
        self.names = {}
        self.failed = False

    def open(self, path, flags, mode=0o600):
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path).removesuffix(".tmp")
        return fd

    def _fails(self, fd, data):
        if self.failed or self.names.get(fd) != self.fail_in:
            return False
        self.failed = True
        return True

    def pwrite(self, fd, data, offset):
        if self._fails(fd, data):
            os.pwrite(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(errno.EIO, "Input/output error")
        return super().pwrite(fd, data, offset)

    def write(self, fd, data):
        if self._fails(fd, data):
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.EIO, "Input/output error")
        return super().write(fd, data)


def test_a_failed_append_is_rolled_back(tmp_path):
    ops = FailingWriteOps(fail_in=segment_name(1, 1))  # the second fragment of the second record
    writer = open_writer(tmp_path, fileops=ops)
    first = writer.append(b"a" * 100)
    with pytest.raises(OSError, match="Input/output"):
        writer.append(b"b" * (SIZE + 100))
    assert ops.failed
    second = writer.append(b"c" * 10)
    assert second[0] == first[1]
    writer.flush()
    writer.close()
    assert read_all(tmp_path) == [WalEntry(*first, b"a" * 100), WalEntry(*second, b"c" * 10)]
    assert [name for _, _, name in _segments(tmp_path)] == [segment_name(1, 0)]


# -- group commit


class GatedOps(CountingOps):
    """The first fdatasync blocks until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd):
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10)
        super().fdatasync(fd)


def test_one_fsync_covers_every_commit_that_waited_for_it(tmp_path):
    ops = GatedOps()
    writer = open_writer(tmp_path, fileops=ops)
    appended = threading.Semaphore(0)
    results, errors = {}, []

    def commit(i):
        try:
            lsn, end = writer.append(make_body(i, 200))
            appended.release()
            results[i] = (lsn, end, writer.flush(end))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    first = threading.Thread(target=commit, args=(0,))
    first.start()
    assert ops.entered.wait(10)  # thread 0 is inside fdatasync
    others = [threading.Thread(target=commit, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    for _ in range(8):
        assert appended.acquire(timeout=10)  # appends go on while an fsync runs
    ops.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert not errors
    assert ops.fdatasyncs == 2  # thread 0's, then one for the seven that waited
    assert all(flushed >= end for _, end, flushed in results.values())
    writer.close()
    got = {e.lsn: e.body for e in read_all(tmp_path)}
    assert got == {lsn: make_body(i, 200) for i, (lsn, _, _) in results.items()}


class SlowSyncOps(CountingOps):
    def fdatasync(self, fd):
        time.sleep(0.002)  # a disk, so that commits pile up behind it
        super().fdatasync(fd)


def test_concurrent_commits_are_all_durable_and_share_fsyncs(tmp_path):
    ops = SlowSyncOps()
    writer = open_writer(tmp_path, fileops=ops)
    committed, errors = [], []
    lock = threading.Lock()

    def worker(t):
        try:
            for i in range(40):
                body = make_body(t * 1000 + i, 500)  # 8*40*509 bytes: crosses segments
                lsn, end = writer.append(body)
                assert writer.flush(end) >= end
                assert writer.flushed_lsn >= end
                with lock:
                    committed.append(WalEntry(lsn, end, body))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    writer.close()
    assert not errors
    assert ops.fdatasyncs < len(committed) == 320
    assert read_all(tmp_path) == sorted(committed, key=lambda e: e.lsn)


# -- restart


def test_reopen_at_the_wal_end_and_continue(tmp_path):
    expected = write_records(tmp_path, [100, SIZE + 5, 300])
    resume = wal_end(tmp_path)
    assert resume == expected[-1].end_lsn
    with open_writer(tmp_path, start_lsn=resume) as writer:
        assert writer.end_lsn == writer.flushed_lsn == resume
        more = WalEntry(*writer.append(b"more"), b"more")
        writer.flush()
    assert read_all(tmp_path) == expected + [more]


def test_reopen_wipes_a_torn_tail(tmp_path):
    expected = write_records(tmp_path, [100, 100])
    end = expected[-1].end_lsn
    with open(segment_path(tmp_path, 0), "r+b") as f:
        f.seek(end + 500)
        f.write(b"\xff" * 64)  # garbage of a write that never completed
    assert wal_end(tmp_path) == end
    with open_writer(tmp_path, start_lsn=end) as writer:
        writer.append(b"x")
        writer.flush()
    with open(segment_path(tmp_path, 0), "rb") as f:
        f.seek(end + 500)
        assert f.read(64) == bytes(64)
    assert [e.body for e in read_all(tmp_path)][-1] == b"x"


def test_reopen_removes_the_remains_of_an_unfinished_spanning_record(tmp_path):
    expected = write_records(tmp_path, [100, 3 * SIZE])
    os.unlink(segment_path(tmp_path, 3))  # the crash came before its last fragment
    assert read_all(tmp_path) == expected[:1]
    resume = wal_end(tmp_path)
    assert resume == expected[0].end_lsn
    with open_writer(tmp_path, start_lsn=resume) as writer:
        after = WalEntry(*writer.append(b"after"), b"after")
        writer.flush()
    # Left in place, segment 1's valid middle fragment would look like data
    # after a hole and make the next recovery refuse to start.
    assert [s for _, s, _ in _segments(tmp_path)] == [0]
    assert read_all(tmp_path) == expected[:1] + [after]


def test_reopen_refuses_a_segment_of_another_system(tmp_path):
    write_records(tmp_path, [100])
    with pytest.raises(WalCorruptError, match="system id"):
        WalWriter(str(tmp_path), timeline=1, system_id=1, segment_size=SIZE, start_lsn=500)


def test_a_new_timeline_starts_mid_segment(tmp_path):
    expected = write_records(tmp_path, [100, 200])
    with WalWriter(
        str(tmp_path), timeline=2, system_id=SYSID, segment_size=SIZE, start_lsn=expected[0].end_lsn
    ) as writer:
        entry = WalEntry(*writer.append(b"timeline 2"), b"timeline 2")
        writer.flush()
    assert entry.lsn == expected[0].end_lsn
    got = list(read_wal(str(tmp_path), timeline=2, segment_size=SIZE, start_lsn=entry.lsn))
    assert got == [entry]
    assert read_all(tmp_path) == expected  # timeline 1 untouched


# -- archived segment files


def test_archived_segment_files_chain_into_records(tmp_path):
    wal = tmp_path / "wal"
    archive = tmp_path / "archive"
    wal.mkdir()
    archive.mkdir()
    expected = write_records(wal, [30_000, 30_000, 50_000, 100, SIZE * 2, 10])
    paths = []
    for _, _segno, name in _segments(wal):
        dest = archive / f"{name}.copy"
        shutil.copy(wal / name, dest)
        paths.append(str(dest))
    assert list(read_segments(paths)) == expected
    # One file alone: only the records that start and end in it.
    one = list(read_segment_file(paths[1]))
    assert one == [e for e in expected if SIZE <= e.lsn and e.end_lsn <= 2 * SIZE]
    assert one  # the test layout puts at least one record wholly in segment 1
    # Starting in the middle of the chain at a record boundary.
    start = next(i for i, e in enumerate(expected) if e.lsn >= SIZE)
    assert list(read_segments(paths[1:], expected[start].lsn)) == expected[start:]
    with pytest.raises(WalCorruptError, match="missing"):
        list(read_segments(paths[:1] + paths[2:]))


def _split_between(wal, other, moved):
    """Move the segments numbered in ``moved`` from ``wal`` to ``other``; return {segno: path}."""
    paths = {}
    for _, segno, name in _segments(wal):
        if segno in moved:
            shutil.move(wal / name, other / name)
            paths[segno] = str(other / name)
        else:
            paths[segno] = str(wal / name)
    return paths


def read_sequence(paths, start_lsn=0, **kwargs):
    return list(read_segment_sequence(paths, timeline=1, segment_size=SIZE, start_lsn=start_lsn, **kwargs))


def test_segments_from_two_places_read_as_one_wal(tmp_path):
    """Archived segments unpacked in one directory, the rest still in wal/: a
    record that begins in one place and ends in the other is joined."""
    wal, scratch = tmp_path / "wal", tmp_path / "scratch"
    wal.mkdir()
    scratch.mkdir()
    # 40 kB records: every segment boundary is crossed by one
    expected = write_records(wal, [40_000] * 8 + [SIZE * 2, 500])
    segnos = [segno for _, segno, _ in _segments(wal)]
    assert len(segnos) >= 6
    for moved in ({0, 1}, {0, 1, 2, 3}, {1, 3}, {segnos[-1]}):
        tmp_wal, tmp_scratch = tmp_path / "w", tmp_path / "s"
        shutil.copytree(wal, tmp_wal)
        tmp_scratch.mkdir()
        paths = _split_between(tmp_wal, tmp_scratch, moved)
        assert read_sequence(paths) == expected, moved
        # from a record boundary in the middle, up to a stop LSN
        mid = next(i for i, e in enumerate(expected) if e.lsn >= SIZE)
        stop = expected[-2].end_lsn
        assert read_sequence(paths, expected[mid].lsn, stop_lsn=stop) == expected[mid:-1]
        shutil.rmtree(tmp_wal)
        shutil.rmtree(tmp_scratch)


def test_a_sequence_with_a_hole_or_a_wrong_file_is_refused(tmp_path):
    expected = write_records(tmp_path, [40_000] * 6)
    paths = {segno: str(tmp_path / name) for _, segno, name in _segments(tmp_path)}
    assert read_sequence(paths) == expected
    holed = {k: v for k, v in paths.items() if k != 1}
    with pytest.raises(WalCorruptError, match="missing but later segment"):
        read_sequence(holed)
    # the file given for segment 1 is segment 2: its header says so
    swapped = {**paths, 1: paths[2]}
    with pytest.raises(WalCorruptError) as err:
        read_sequence(swapped)
    assert segment_name(1, 1) in str(err.value)
    # a file that vanished before it was read is a hole, not a crash
    os.unlink(paths[1])
    with pytest.raises(WalCorruptError, match="missing"):
        read_sequence(paths)


def test_a_sequence_that_ends_before_its_stop_lsn_is_refused(tmp_path):
    """Records before stop_lsn are known to exist: the WAL ending earlier is
    damage, never a torn tail that silently drops them."""
    expected = write_records(tmp_path, [40_000] * 6)
    paths = {segno: str(tmp_path / name) for _, segno, name in _segments(tmp_path)}
    stop = expected[-1].end_lsn
    assert read_sequence(paths, stop_lsn=stop) == expected
    # the last segment missing
    last = max(paths)
    with pytest.raises(WalCorruptError, match="known to reach LSN") as err:
        read_sequence({k: v for k, v in paths.items() if k != last}, stop_lsn=stop)
    assert segment_name(1, last) in str(err.value) and "missing" in str(err.value)
    # the last record zeroed: without a stop LSN a torn tail, with one damage
    first, offset = divmod(expected[-1].lsn, SIZE)
    for segno in range(first, last + 1):
        start = offset if segno == first else HEADER_SIZE
        with open(paths[segno], "r+b") as f:
            f.seek(start)
            f.write(bytes(SIZE - start))
    assert read_sequence(paths) == expected[:-1]
    with pytest.raises(WalCorruptError, match="known to reach LSN"):
        read_sequence(paths, stop_lsn=stop)
    # stopping exactly at a segment start after a switch is reaching the stop
    switched = tmp_path / "switched"
    switched.mkdir()
    with open_writer(switched) as writer:
        entry = WalEntry(*writer.append(b"one"), b"one")
        end = writer.switch_segment()
        writer.flush()
    one = {segno: str(switched / name) for _, segno, name in _segments(switched)}
    assert read_sequence(one, stop_lsn=end) == [entry]


def test_a_live_reader_stops_at_the_flushed_lsn(tmp_path):
    with open_writer(tmp_path) as writer:
        done = [WalEntry(*writer.append(make_body(i, 3000)), make_body(i, 3000)) for i in range(30)]
        flushed = writer.flush()
        writer.append(b"in flight")  # written, not yet durable
        got = read_all(tmp_path, start_lsn=done[3].lsn, stop_lsn=flushed)
        assert read_all(tmp_path)[-1].body == b"in flight"
    assert got == done[3:]
