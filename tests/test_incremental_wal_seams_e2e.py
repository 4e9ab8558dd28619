"""Incrementals read without the change tracker, across every kind of WAL boundary.

With small (64 kB) segments and large records, records span segment
boundaries. An incremental taken after a restart (so the server's change
tracker has nothing) reads the WAL since its parent, part of it from the
archive and part from the server's own wal/ directory; a record that begins
in the last archived segment and ends in the first local one must be joined
like any other.
"""

from __future__ import annotations

import json
import os
import time

from rustydb_client import client as rc
from rustydb_server.wal import segment as walseg
from rustydb_server.wal.lsn import parse_lsn
from tests.support.servers import restore_to_target, run_tool
from tests.test_incremental_e2e import backup, dump, restore_in_order

SEGMENT = 64 * 1024


def archived_server(server_factory, tmp_path, name="seam"):
    archive = tmp_path / f"{name}-archive"
    archive.mkdir()
    conf = tmp_path / f"{name}.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name=name, extra_args=["--config", str(conf)]).start()
    srv.sql("ALTER SYSTEM SET archive_mode = on;")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    return srv, archive


def write_spanning(c, rows: int, size: int, tag: str) -> None:
    """Transactions of ``size`` bytes each: most of them cross a segment boundary."""
    for i in range(rows):
        c.execute(f"INSERT INTO items(name, qty) VALUES ('{tag}' || hex(randomblob({size // 2})), {i})")
    c.execute(f"UPDATE items SET qty = qty + 1 WHERE name LIKE '{tag}%' AND qty % 3 = 0")
    c.execute(f"DELETE FROM items WHERE name LIKE '{tag}%' AND qty % 5 = 0")


def wait_completed_archived(srv, timeout=40) -> None:
    """Every completed segment archived (without SWITCH WAL, so the current
    segment keeps the tail of the record that spans into it)."""
    deadline = time.monotonic() + timeout
    while srv.archive_status()["segments_waiting"]:
        assert time.monotonic() < deadline, srv.archive_status()
        time.sleep(0.1)


def local_segments(srv, timeline=None) -> list[tuple[int, int, str]]:
    segs = walseg.list_segments(os.path.join(srv.data_dir, "wal"))
    return sorted(s for s in segs if timeline is None or s[0] == timeline)


def continues_a_record(srv, name) -> bool:
    """Whether the server's segment ``name`` begins with the rest of a record
    begun in the segment before it."""
    with open(os.path.join(srv.data_dir, "wal", name), "rb") as f:
        buf = f.read()
    _tl, segno = walseg.parse_segment_name(name)
    frag = walseg.parse_fragment(buf, walseg.HEADER_SIZE, segno * SEGMENT, SEGMENT)
    assert frag is not None
    return frag.kind in (walseg.FragmentKind.MIDDLE, walseg.FragmentKind.LAST)


def archive_and_trim(srv) -> str:
    """Archive every completed segment and let a checkpoint remove them from
    the server; return the first segment left on the server."""
    wait_completed_archived(srv)
    srv.sql("CHECKPOINT;")
    return local_segments(srv)[0][2]


def test_incremental_reads_a_record_spanning_the_archive_and_the_server(server_factory, tmp_path):
    srv, archive = archived_server(server_factory, tmp_path)
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    srv.sql("INSERT INTO items(name, qty) VALUES ('seed', 1);")
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    # A restart: the change tracker knows nothing, the incremental reads the WAL.
    srv.stop()
    srv.start()
    c = rc.connect(port=srv.port)
    write_spanning(c, 30, 6000, "a")
    # the last transaction is larger than a segment: it surely crosses the
    # boundary the checkpoint below trims the server's WAL at
    c.execute(f"INSERT INTO items(name, qty) VALUES ('big' || hex(randomblob({SEGMENT})), -1)")
    first_local = archive_and_trim(srv)
    # the WAL since the full backup starts in the archive ...
    archived = sorted(n.removesuffix(".walz") for n in os.listdir(archive) if n.endswith(".walz"))
    assert archived[0] < first_local
    # ... and a record begun in the archive ends on the server
    assert continues_a_record(srv, first_local)
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    expected = dump(c)
    c.close()
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected


def incremental_sources(srv) -> list[str]:
    return [json.loads(line)["source"] for line in srv.log().splitlines() if '"incremental computed"' in line]


def test_incremental_reads_records_spanning_the_servers_own_segments(server_factory, tmp_path):
    """No archive: every segment is local, records cross from one to the next."""
    conf = tmp_path / "local.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="local", extra_args=["--config", str(conf)]).start()
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    full = tmp_path / "full.backup"
    start = backup(srv, full, "--type", "full")["end_lsn"]
    srv.stop()
    srv.start()
    c = rc.connect(port=srv.port)
    write_spanning(c, 30, 6000, "l")
    c.execute(f"INSERT INTO items(name, qty) VALUES ('big' || hex(randomblob({SEGMENT})), -1)")
    write_spanning(c, 5, 6000, "m")
    segs = [(segno, name) for _, segno, name in local_segments(srv)]
    continued = [n for segno, n in segs if segno > start // SEGMENT and continues_a_record(srv, n)]
    assert len(continued) >= 3  # records cross several boundaries inside the range
    incr = tmp_path / "incr.backup"
    # damage inside the range, with valid records after it: named, never an internal error
    victim = os.path.join(srv.data_dir, "wal", continued[0])
    with open(victim, "r+b") as f:
        f.seek(walseg.HEADER_SIZE + 100)
        byte = f.read(1)
        f.seek(walseg.HEADER_SIZE + 100)
        f.write(bytes([byte[0] ^ 0x01]))
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "incremental", "--output", str(incr))
    assert proc.returncode == 1 and not incr.exists()
    assert f"segment {continued[0]} is corrupt at offset {walseg.HEADER_SIZE}" in proc.stderr, proc.stderr
    assert "take a full backup" in proc.stderr and "internal" not in proc.stderr and "Traceback" not in proc.stderr
    with open(victim, "r+b") as f:
        f.seek(walseg.HEADER_SIZE + 100)
        f.write(byte)
    backup(srv, incr, "--type", "incremental")
    assert incremental_sources(srv) == ["wal"]
    expected = dump(c)
    c.close()
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected


def test_incrementals_across_a_timeline_switch(server_factory, tmp_path):
    """A server restored to a point in time writes a new timeline from the
    middle of a segment whose number the old timeline's archive also holds.
    An incremental whose parent is on the old timeline is refused; one whose
    parent is on the new timeline reads the new timeline's segments (the
    switch segment from the archive) across the archive/server seam."""
    srv, archive = archived_server(server_factory, tmp_path, "tl1")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    base = tmp_path / "base.backup"
    backup(srv, base, "--type", "pitr-base")
    c = rc.connect(port=srv.port)
    write_spanning(c, 12, 6000, "a")
    c.execute("CREATE RESTORE POINT 'mid'")
    write_spanning(c, 25, 6000, "b")  # timeline 1 goes on past the restore point
    c.close()
    srv.wait_archived()
    srv.stop()
    out = tmp_path / "tl2"
    proc = restore_to_target(base, archive, out, "--recovery-target-name", "mid", "--json")
    assert proc.returncode == 0, proc.stderr
    switch_lsn = parse_lsn(json.loads(proc.stdout.strip().splitlines()[-1])["end_lsn"])
    srv2 = server_factory(name="tl2")
    srv2.data_dir = str(out)
    srv2.extra_args = list(srv.extra_args)
    srv2.start()
    assert srv2.health()["wal"]["timeline"] == 2
    srv2.sql("ALTER SYSTEM SET archive_mode = on;")
    srv2.sql(f"ALTER SYSTEM SET archive_dest = '{archive}';")
    # the parent is on timeline 1: refused, saying why and what to do
    refused = tmp_path / "refused.backup"
    proc = run_tool(
        "rusty-db-backup",
        "--port",
        str(srv2.port),
        "--type",
        "incremental",
        "--base-backup",
        str(base),
        "--output",
        str(refused),
    )
    assert proc.returncode == 1
    assert "timeline 2" in proc.stderr and "timeline 1" in proc.stderr and "take a full backup" in proc.stderr
    assert "Traceback" not in proc.stderr and not refused.exists()
    # a full backup on timeline 2, taken in the segment where timeline 2 began
    full = tmp_path / "full2.backup"
    start = backup(srv2, full, "--type", "full")["end_lsn"]
    switch_segno = switch_lsn // SEGMENT
    assert start // SEGMENT == switch_segno
    srv2.stop()
    srv2.start()  # the incremental reads the WAL, not the change tracker
    c2 = rc.connect(port=srv2.port)
    write_spanning(c2, 30, 6000, "c")
    c2.execute(f"INSERT INTO items(name, qty) VALUES ('big' || hex(randomblob({SEGMENT})), -1)")
    first_local = archive_and_trim(srv2)
    tl, first_local_segno = walseg.parse_segment_name(first_local)
    assert tl == 2 and first_local_segno > switch_segno and continues_a_record(srv2, first_local)
    names = set(os.listdir(archive))
    # timeline 2's switch segment is read from the archive, where timeline 1
    # has a segment of the same number with other records after the switch
    for timeline in (1, 2):
        assert walseg.segment_name(timeline, switch_segno) + ".walz" in names
    incr = tmp_path / "incr2.backup"
    backup(srv2, incr, "--type", "incremental")
    assert incremental_sources(srv2)[-1] == "wal"
    expected = dump(c2)
    c2.execute("CREATE RESTORE POINT 'tl2-end'")
    c2.close()
    srv2.wait_archived()
    srv2.stop()
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected
    # PITR reads only the archive, one reader per timeline: from the first
    # base along timeline 1 to the switch, then timeline 2's spanning records
    proc = restore_to_target(
        base, archive, tmp_path / "pitr", "--recovery-target-name", "tl2-end", "--recovery-target-timeline", "latest"
    )
    assert proc.returncode == 0, proc.stderr
    assert dump(str(tmp_path / "pitr")) == expected
    # timeline 1's WAL up to the switch is needed: without its last segments
    # the restore fails naming the first one missing, it does not jump to
    # timeline 2 short of the switch
    for path in archive.glob("00000001*.walz"):
        if walseg.parse_segment_name(path.name.removesuffix(".walz"))[1] >= switch_segno:
            path.rename(tmp_path / path.name)
    proc = restore_to_target(base, archive, tmp_path / "pitr-gap", "--recovery-target-name", "tl2-end")
    assert proc.returncode == 1, proc.stderr
    assert walseg.segment_name(1, switch_segno) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "pitr-gap" / "control").exists()


def test_incremental_reads_an_encrypted_archive(server_factory, tmp_path):
    from rustydb_server.keys import create_key_file

    key = tmp_path / "archive.key"
    create_key_file(str(key))
    srv, archive = archived_server(server_factory, tmp_path, "enc")
    srv.sql("ALTER SYSTEM SET archive_encryption = on;")
    srv.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    srv.sql("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
    full = tmp_path / "full.backup"
    backup(srv, full, "--type", "full")
    srv.stop()
    srv.start()
    c = rc.connect(port=srv.port)
    write_spanning(c, 30, 6000, "e")
    c.execute(f"INSERT INTO items(name, qty) VALUES ('big' || hex(randomblob({SEGMENT})), -1)")
    first_local = archive_and_trim(srv)
    assert continues_a_record(srv, first_local)
    incr = tmp_path / "incr.backup"
    # without the key the server cannot read its archive: refused, saying so
    srv.sql("ALTER SYSTEM RESET backup_key_file;")
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "incremental", "--output", str(incr))
    assert proc.returncode == 1 and not incr.exists()
    assert "is encrypted and the server has no key" in proc.stderr and "backup_key_file" in proc.stderr
    assert "take a full backup" in proc.stderr and "Traceback" not in proc.stderr
    srv.sql(f"ALTER SYSTEM SET backup_key_file = '{key}';")
    # a damaged archived segment is named, with what to do
    victim = sorted(archive.glob("*.walz"))[1]
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x40
    victim.write_bytes(bytes(damaged))
    proc = run_tool("rusty-db-backup", "--port", str(srv.port), "--type", "incremental", "--output", str(incr))
    assert proc.returncode == 1 and not incr.exists()
    assert victim.name in proc.stderr and "cannot be read" in proc.stderr and "take a full backup" in proc.stderr
    assert "internal" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    victim.write_bytes(original)
    backup(srv, incr, "--type", "incremental")
    expected = dump(c)
    c.close()
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected
