"""A client that goes away in the middle of a backup stream (issue 3, faults).

The server sends database files with sendfile, straight to the socket; a peer
that resets the connection mid-file must end that backup as failed in the
catalog, leave the server serving, and leave the next backup (which sends
from the same descriptor) whole.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request

from rustydb_client import client as rc
from rustydb_client.protocol import events
from rustydb_server.container.reader import BackupReader
from tests.support.servers import run_tool


def backups(srv) -> list[dict]:
    url = f"http://127.0.0.1:{srv.http_port}/api/v1/admin/backups"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    return body["backups"] if isinstance(body, dict) else body


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_client_that_resets_mid_stream_fails_only_its_backup(server_factory, tmp_path):
    srv = server_factory(name="drop").start()
    srv.sql("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB);")
    srv.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 40000) "
        "INSERT INTO blobs(b) SELECT randomblob(1000) FROM c;"
    )  # ~40 MB: more than any buffer
    conn = rc.connect(port=srv.port)
    conn.send(events.BackupRequested("full"))
    header = conn.next_event()
    assert isinstance(header, events.BackupHeader)
    backup_id = header.manifest["backup_id"]
    first = conn.next_event()
    assert isinstance(first, events.BackupData) and len(first.data) > 0
    # Reset, not a clean close: the server's next sendfile fails at once.
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn._sock.close()

    entry = wait_for(
        lambda: next((b for b in backups(srv) if b["backup_id"] == backup_id and b["status"] != "in_progress"), None)
    )
    assert entry["status"] == "failed"
    assert "disconnected" in entry["error"]
    # the server goes on, and the next backup is whole
    assert "40000" in srv.sql("SELECT count(*) FROM blobs;").stdout
    out = tmp_path / "after.backup"
    proc = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--port",
        str(srv.port),
        "--compress",
        "lz4",
        "--verify",
    )
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        reader = BackupReader(f)
        assert reader.verify().raw_bytes == sum(db["size_bytes"] for db in reader.header.databases)
    assert srv.proc.poll() is None
