"""Incrementals read without the change tracker, across every kind of WAL boundary.

With small (64 kB) segments and large records, records span segment
boundaries. An incremental taken after a restart (so the server's change
tracker has nothing) reads the WAL since its parent, part of it from the
archive and part from the server's own wal/ directory; a record that begins
in the last archived segment and ends in the first local one must be joined
like any other.
"""

from __future__ import annotations

import os
import time

from rustydb_client import client as rc
from rustydb_server.wal import segment as walseg
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


def first_fragment_kind(srv, name) -> walseg.FragmentKind:
    with open(os.path.join(srv.data_dir, "wal", name), "rb") as f:
        buf = f.read()
    tl, segno = walseg.parse_segment_name(name)
    frag = walseg.parse_fragment(buf, walseg.HEADER_SIZE, segno * SEGMENT, SEGMENT)
    assert frag is not None
    return frag.kind


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
    c = rc.connect("127.0.0.1", srv.port)
    write_spanning(c, 30, 6000, "a")
    # the last transaction is larger than a segment: it surely crosses the
    # boundary the checkpoint below trims the server's WAL at
    c.execute(f"INSERT INTO items(name, qty) VALUES ('big' || hex(randomblob({SEGMENT})), -1)")
    first_local = archive_and_trim(srv)
    # the WAL since the full backup starts in the archive ...
    archived = sorted(n.removesuffix(".walz") for n in os.listdir(archive) if n.endswith(".walz"))
    assert archived[0] < first_local
    # ... and a record begun in the archive ends on the server
    assert first_fragment_kind(srv, first_local) in (walseg.FragmentKind.MIDDLE, walseg.FragmentKind.LAST)
    incr = tmp_path / "incr.backup"
    backup(srv, incr, "--type", "incremental")
    expected = dump(c)
    c.close()
    data = tmp_path / "restored"
    restore_in_order(data, full, incr)
    assert dump(str(data)) == expected
