"""The archiver under faults, end to end: real servers, a real archive, the real tools.

* the destination is missing, then created; or unwritable, then writable again:
  the server keeps committing, keeps the WAL (even across CHECKPOINT), shows the
  failure and the backlog in /api/v1/admin/archive and in the health answer, and
  once the destination is back everything is archived and a PITR restore gives
  every committed row;
* kill -9 while archiving under load, several cycles: the archive ends with every
  segment exactly once, leftovers of interrupted writes are never taken for
  segments, and PITR to the last acknowledged commit gives every acknowledged row;
* a file already in the archive under a segment's name with other content is
  never overwritten; the archiver reports the failure and keeps the WAL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time

import apsw
import pytest

from rustydb_client import client as rc
from rustydb_server.archive import segment_file as sf
from tests.support.servers import restore_to_target, run_tool

from .test_archive_setup_e2e import block_archive_dest

SEGMENT_SIZE = 64 * 1024


# ------------------------------------------------------------------ helpers
def archive_status(srv) -> dict:
    return srv.archive_status()


def wait_for(pred, what, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_archived(srv, timeout=40.0) -> dict:
    return srv.wait_archived(timeout)


def status_marks(data_dir) -> tuple[set[str], set[str]]:
    d = os.path.join(data_dir, "wal", "archive_status")
    names = os.listdir(d)
    ready = {n[:-6] for n in names if n.endswith(".ready")}
    done = {n[:-5] for n in names if n.endswith(".done")}
    return ready, done


def wal_segments(data_dir) -> set[str]:
    return {n for n in os.listdir(os.path.join(data_dir, "wal")) if len(n) == 24}


def archived_files(archive) -> set[str]:
    return {n for n in os.listdir(archive) if n.endswith(".walz")}


def start_primary(server_factory, tmp_path, archive, name="primary"):
    conf = tmp_path / "rustydb.toml"
    conf.write_text("wal_segment_size = '64kB'\narchive_timeout = '1s'\n")
    srv = server_factory(name=name, extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, body BLOB);")
    return srv


def take_base(srv, tmp_path):
    base = tmp_path / "pitr_base.backup"
    proc = run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port))
    assert proc.returncode == 0, proc.stderr
    return base


def commit_rows(conn, first_id, n, rows, size=500):
    """n autocommit inserts; each one acknowledged is remembered in rows (id -> body)."""
    for i in range(first_id, first_id + n):
        body = os.urandom(size)
        conn.execute(f"INSERT INTO t VALUES ({i}, 0, x'{body.hex()}')")
        rows[i] = body


def last_commit(conn, rid, rows) -> int:
    """One more commit, whose txid is known: the PITR target."""
    conn.execute("BEGIN")
    txid = conn.execute("SELECT txid_current()").rows[0][0]
    body = os.urandom(16)
    conn.execute(f"INSERT INTO t VALUES ({rid}, 0, x'{body.hex()}')")
    conn.execute("COMMIT")
    rows[rid] = body
    return txid


def pitr(tmp_path, base, archive, name, txid):
    out = tmp_path / name
    proc = restore_to_target(base, archive, out, "--recovery-target-txid", str(txid), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["last_replayed_txid"] == txid, report
    pitr.report = report
    return out


def restored_rows(data_dir) -> dict:
    db = apsw.Connection(os.path.join(str(data_dir), "databases", "rustydb.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {i: (g, bytes(b)) for i, g, b in db.execute("SELECT id, grp, body FROM t")}
    finally:
        db.close()


def check_outage_visible(srv, dest, checks_path_in_reason=True) -> dict:
    """During an outage: failure and backlog visible; the waiting WAL is kept."""
    st = wait_for(
        lambda: (s := archive_status(srv))["last_failure_reason"] and s["segments_waiting"] > 0 and s,
        "the archive status to show the failure",
        timeout=15,
    )
    assert st["archive_mode"] == "on"
    assert st["failures_in_a_row"] >= 1
    if checks_path_in_reason:
        assert str(dest) in st["last_failure_reason"], st
    health = srv.health()
    assert "archive" in health, health
    assert health["archive"]["segments_waiting"] > 0
    assert health["archive"]["last_failure_reason"]
    # CHECKPOINT must not remove any segment the archive does not have
    srv.sql("CHECKPOINT;")
    ready, done = status_marks(srv.data_dir)
    waiting = ready - done
    assert len(waiting) >= 2, (ready, done)
    missing = waiting - wal_segments(srv.data_dir)
    assert not missing, f"un-archived WAL segments removed by CHECKPOINT: {sorted(missing)}"
    for name in waiting:
        assert os.path.getsize(os.path.join(srv.data_dir, "wal", name)) == SEGMENT_SIZE
    return st


# --------------------------------------------------- ways to break the destination
@contextlib.contextmanager
def unwritable(path):
    """Make the directory path unwritable, even for root; yield how it was done."""
    os.chmod(path, 0o500)
    probe = os.path.join(path, ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    except PermissionError:
        try:
            yield "chmod"
        finally:
            os.chmod(path, 0o700)
        return
    os.close(fd)
    os.unlink(probe)
    os.chmod(path, 0o700)
    # root ignores the mode bits: try the immutable attribute, else a regular file
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0:
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            os.unlink(probe)
            blocked = False
        except OSError:
            blocked = True
        if blocked:
            try:
                yield "chattr"
            finally:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            return
        subprocess.run(["chattr", "-i", str(path)], check=True)
    aside = str(path) + ".aside"
    os.rename(path, aside)
    with open(path, "w") as f:
        f.write("not a directory\n")
    try:
        yield "file"
    finally:
        os.unlink(path)
        os.rename(aside, path)


@contextlib.contextmanager
def missing(path):
    aside = str(path) + ".away"
    os.rename(path, aside)
    try:
        yield "missing"
    finally:
        os.rename(aside, path)  # the destination is created again (with its old files)


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("fault", ["missing", "unwritable"])
def test_destination_outage_keeps_wal_and_loses_nothing(server_factory, tmp_path, fault):
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    base = take_base(srv, tmp_path)
    conn = rc.connect(port=srv.port)
    rows: dict[int, bytes] = {}
    commit_rows(conn, 1, 40, rows)
    wait_archived(srv)
    before = archived_files(archive)
    breaker = missing if fault == "missing" else unwritable
    with breaker(archive) as how:
        # the server keeps serving: every commit succeeds (~4 segments of WAL)
        commit_rows(conn, 1000, 500, rows)
        srv.sql("SWITCH WAL;")
        st = check_outage_visible(srv, archive)
        assert st["last_failed_segment"] == st["oldest_waiting_segment"], st
        # reads and writes still work during the outage
        commit_rows(conn, 5000, 5, rows)
        assert conn.execute("SELECT count(*) FROM t").rows[0][0] == len(rows)
        if how in ("chmod", "chattr"):
            assert archived_files(archive) == before, "a file appeared in an unwritable dir"
    # the destination is back: everything gets archived
    txid = last_commit(conn, 9999, rows)
    st = wait_archived(srv)
    assert st["failures_in_a_row"] == 0 and st["last_archived_segment"], st
    ready, done = status_marks(srv.data_dir)
    assert ready <= done
    assert not [n for n in os.listdir(archive) if n.endswith((".partial", ".tmp"))]
    # nothing lost: PITR from the base taken before the outage gives every row
    out = pitr(tmp_path, base, archive, "restored", txid)
    got = restored_rows(out)
    assert set(got) == set(rows), f"lost rows: {sorted(set(rows) - set(got))[:10]}"
    assert all(got[i][1] == rows[i] for i in rows)
    assert pitr.report["records_replayed"] >= len(rows), pitr.report
    conn.close()
    assert srv.stop() == 0


def test_pitr_report_counts_the_rows_it_changed(server_factory, tmp_path):
    """The --json report's changed_rows (the bench's replay figure) counts replayed rows."""
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    base = take_base(srv, tmp_path)
    conn = rc.connect(port=srv.port)
    rows: dict[int, bytes] = {}
    commit_rows(conn, 1, 30, rows, size=20)
    txid = last_commit(conn, 9999, rows)
    wait_archived(srv)
    pitr(tmp_path, base, archive, "restored", txid)
    assert pitr.report["records_replayed"] >= len(rows), pitr.report
    assert pitr.report["changed_rows"] >= len(rows), (
        f"rusty-db-restore --json reports changed_rows={pitr.report['changed_rows']} after "
        f"replaying {len(rows)} single-row inserts"
    )
    conn.close()
    assert srv.stop() == 0


def _writer(port, wid, first_n, acked, stop):
    """Two-row transactions with bulky bodies; each acknowledged one is remembered."""
    try:
        conn = rc.connect(port=port)
    except (rc.ClientError, OSError):
        return
    n = first_n
    try:
        while not stop.is_set():
            n += 1
            try:
                conn.execute("BEGIN")
                for part in (1, 2):
                    conn.execute(f"INSERT INTO t VALUES ({n * 4 + part}, {n}, x'{os.urandom(300).hex()}')")
                conn.execute("COMMIT")
            except (rc.ClientError, OSError):
                return
            acked.append(n)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def test_kill_9_while_archiving_loses_and_duplicates_nothing(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    base = take_base(srv, tmp_path)
    acked: dict[int, list[int]] = {1: [], 2: []}
    rnd = random.Random(11)
    for cycle in range(5):
        stop = threading.Event()
        threads = [
            threading.Thread(target=_writer, args=(srv.port, w, (cycle * 10 + w) * 100_000, acked[w], stop))
            for w in (1, 2)
        ]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.8, 2.0))  # long enough for segments to switch and archive
        srv.kill()
        stop.set()
        for t in threads:
            t.join(10)
        if cycle == 2:
            # what an interrupted write could leave behind, for a segment not archived yet
            ready, done = status_marks(srv.data_dir)
            for name in sorted(ready - done)[:1]:
                (archive / (name + ".walz.partial")).write_bytes(os.urandom(1000))
        srv.start()
    assert sum(len(v) for v in acked.values()) > 50
    # stray leftovers in the archive are not segments
    (archive / "000000010000000000000FFF.walz.partial").write_bytes(os.urandom(100))
    (archive / "000000010000000000000FFE.walz.tmp").write_bytes(os.urandom(100))
    conn = rc.connect(port=srv.port)
    final = {}
    txid = last_commit(conn, 1, final)
    wait_archived(srv)
    st = archive_status(srv)
    assert st["failures_in_a_row"] == 0, st
    ready, done = status_marks(srv.data_dir)
    assert ready <= done, f"segments never archived: {sorted(ready - done)}"

    # every segment exactly once, each file holding the segment its name says
    listing = sf.list_archive(str(archive))
    assert set(listing) == {1}, listing
    segnos = sorted(listing[1])
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap in the archive: {segnos}"
    assert len(segnos) >= 5
    assert {os.path.basename(p) for p in listing[1].values()} == archived_files(archive)
    seen = {}
    for path in listing[1].values():
        name, data = sf.unpack_segment(path)
        assert name + ".walz" == os.path.basename(path)
        digest = hashlib.sha256(data).hexdigest()
        assert digest not in seen, f"{name} has the content of {seen.get(digest)}"
        seen[digest] = name
        local = os.path.join(srv.data_dir, "wal", name)
        if os.path.exists(local):
            with open(local, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, name
    leftovers = [n for n in os.listdir(archive) if n.endswith((".partial", ".tmp"))]
    assert sorted(leftovers) == ["000000010000000000000FFE.walz.tmp", "000000010000000000000FFF.walz.partial"], (
        leftovers
    )

    # PITR to the last acknowledged commit: every acknowledged row, nothing half-done
    live = {i: (g, bytes(b)) for i, g, b in conn.execute("SELECT id, grp, body FROM t").rows}
    out = pitr(tmp_path, base, archive, "restored", txid)
    got = restored_rows(out)
    by_tx: dict[int, int] = {}
    for i, (g, _b) in got.items():
        if i != 1:
            by_tx[g] = by_tx.get(g, 0) + 1
    assert not {g: c for g, c in by_tx.items() if c != 2}, "transactions partly present"
    for w in (1, 2):
        lost = [n for n in acked[w] if n not in by_tx]
        assert not lost, f"writer {w}: acknowledged commits lost in PITR: {lost[:5]}"
    assert got == live, "the restore differs from the server at the same commit"
    conn.close()
    assert srv.stop() == 0


def test_existing_archive_file_with_other_content_is_never_overwritten(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    conn = rc.connect(port=srv.port)
    rows: dict[int, bytes] = {}
    commit_rows(conn, 1, 200, rows)
    wait_archived(srv)
    archived = sorted(archived_files(archive))
    assert len(archived) >= 2
    # hold the next segments back while the foreign file is put in place
    elsewhere = tmp_path / "nowhere"
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{elsewhere}';")  # made by the server
    block_archive_dest(elsewhere)  # a file there: the archiver cannot use it
    commit_rows(conn, 1000, 200, rows)
    srv.sql("SWITCH WAL;")
    wait_for(lambda: archive_status(srv)["segments_waiting"] >= 2, "segments to wait")
    ready, done = status_marks(srv.data_dir)
    victim = min(ready - done)
    # a valid archive file of another segment, renamed to the waiting segment's name
    foreign = archive / (victim + ".walz")
    shutil.copyfile(archive / archived[0], foreign)
    original = foreign.read_bytes()
    stat_before = os.stat(foreign)
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    st = wait_for(
        lambda: (
            (s := archive_status(srv))["last_failed_segment"] == victim
            and "already exists" in (s["last_failure_reason"] or "")
            and s
        ),
        "the archiver to report the collision",
        timeout=70,
    )
    assert victim in st["last_failure_reason"]
    assert st["segments_waiting"] >= 1
    time.sleep(1.5)  # a retry or two more
    assert foreign.read_bytes() == original, "an archived file was overwritten"
    assert os.stat(foreign).st_ino == stat_before.st_ino
    assert not (archive / (victim + ".walz.partial")).exists()
    # the segment stays in the WAL directory and is not marked archived
    srv.sql("CHECKPOINT;")
    assert victim in wal_segments(srv.data_dir)
    ready, done = status_marks(srv.data_dir)
    assert victim in ready and victim not in done
    assert archive_status(srv)["last_archived_segment"] < victim
    assert "archive" in srv.health()
    conn.close()
    assert srv.stop() == 0


@contextlib.contextmanager
def immutable(path):
    if subprocess.run(["chattr", "+i", path], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OSError):
            open(os.path.join(path, "probe"), "w").close()
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def test_segment_whose_ready_mark_cannot_be_written_is_not_deleted(server_factory, tmp_path):
    """Creating the .ready mark fails (inodes exhausted, I/O error, ...): the segment is
    still un-archived WAL, so a later CHECKPOINT must keep it and the archive must get it."""
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    base = take_base(srv, tmp_path)
    conn = rc.connect(port=srv.port)
    rows: dict[int, bytes] = {}
    commit_rows(conn, 1, 20, rows)
    wait_archived(srv)
    status_dir = os.path.join(srv.data_dir, "wal", "archive_status")
    before = wal_segments(srv.data_dir)
    with immutable(status_dir):
        commit_rows(conn, 1000, 300, rows)  # a few segments complete; no mark is written
        srv.sql("SWITCH WAL;")
    new = wal_segments(srv.data_dir) - before
    assert len(new) >= 3
    srv.sql("CHECKPOINT;")  # the marks could be written again now
    gone = sorted(new - wal_segments(srv.data_dir))
    txid = last_commit(conn, 9999, rows)
    wait_archived(srv)
    assert not gone, f"CHECKPOINT deleted WAL segments that were never archived: {gone}"
    out = pitr(tmp_path, base, archive, "restored", txid)
    assert set(restored_rows(out)) == set(rows)
    conn.close()
    assert srv.stop() == 0


def test_checkpoint_that_cannot_tidy_archive_status_keeps_the_server_up(server_factory, tmp_path):
    """An I/O error while CHECKPOINT removes status marks may fail that statement, but
    must not take the whole server down: other sessions keep reading and writing."""
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = start_primary(server_factory, tmp_path, archive)
    conn = rc.connect(port=srv.port)
    rows: dict[int, bytes] = {}
    commit_rows(conn, 1, 200, rows)
    wait_archived(srv)  # archived segments: the next CHECKPOINT removes them and their marks
    with immutable(os.path.join(srv.data_dir, "wal", "archive_status")):
        srv.cli("--command", "CHECKPOINT;")  # may report an error; that is fine
        time.sleep(0.5)
        assert srv.proc.poll() is None, f"the server died on CHECKPOINT:\n{srv.log()[-1500:]}"
        commit_rows(conn, 1000, 5, rows)
    assert srv.health()["status"] == "healthy"
    conn.close()
    assert srv.stop() == 0
