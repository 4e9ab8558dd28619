"""rusty-db-backup --type (tools/backup/take.py): the client side of streaming a backup
into a file, its failures leaving no file, and the guide's full backup against a real server."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rustydb_client.client import ConnectionFailed
from rustydb_client.protocol.frames import decode_body, encode_bulk_frame, encode_frame
from rustydb_client.protocol.messages import TO_CLIENT, event_of, validate_message
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.container.reader import BackupReader
from rustydb_server.engine.instance import Engine
from rustydb_server.tools.backup.take import BackupFailed, receive_backup
from tests.support.backups import NO_KEYS, assert_clean_error
from tests.support.servers import free_port, run_tool


def test_backup_threads_run_at_the_niceness_asked_and_the_caller_keeps_its_own():
    import threading

    from rustydb_server.container.threads import lower_thread_priority

    seen = []

    def work():
        lower_thread_priority(7)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [max(before, 7)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_encrypt_without_a_key_fails_before_connecting(tmp_path):
    port = free_port()  # nothing listens there: a key error must come first
    proc = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(tmp_path / "x.backup"),
        "--encrypt",
        "--port",
        str(port),
        env=NO_KEYS,
    )
    assert_clean_error(proc)
    assert "no backup encryption key" in proc.stderr
    assert not os.listdir(tmp_path)


def test_unreachable_server_is_a_clean_error(tmp_path):
    proc = run_tool(
        "rusty-db-backup", "--type", "full", "--output", str(tmp_path / "x.backup"), "--port", str(free_port())
    )
    assert_clean_error(proc)
    assert "could not connect" in proc.stderr
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- the stream, client side


class ReplayConnection:
    """Plays back the messages a server sends for one backup; then the line drops."""

    def __init__(self, messages):
        self.messages = list(messages)

    def next_event(self):
        if not self.messages:
            raise ConnectionFailed("the server closed the connection", "connection_lost")
        msg = self.messages.pop(0)
        # Through the real codec, so the tool sees what a socket would give it
        # (data as read-only views of the frame).
        if msg.get("type") == "backup_data" and isinstance(msg.get("data"), bytes):
            head, data = encode_bulk_frame({k: v for k, v in msg.items() if k != "data"}, "data", msg["data"])
            frame = head + data
        else:
            frame = encode_frame(msg)
        return event_of(validate_message(decode_body(bytearray(frame[4:]), bulk_views=True), TO_CLIENT), TO_CLIENT)


def server_messages(engine: Engine, piece: int = 4096) -> list[dict]:
    """What the server sends for a full backup, data cut into small frames."""
    snap = Snapshot(engine, None)
    try:
        manifest = snap.manifest().to_dict()
        msgs = [{"type": "backup_header", "manifest": manifest}]
        sent = 0
        for db in manifest["databases"]:
            data = b"".join(snap.stream_database(db["name"], engine.datadir.join("backup_tmp")))
            pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
            for i, p in enumerate(pieces):
                msgs.append({"type": "backup_data", "entry": db["entry"], "data": p, "last": i == len(pieces) - 1})
            sent += len(data)
        msgs.append({"type": "backup_end", "end_lsn": manifest["end_lsn"], "bytes": sent})
    finally:
        snap.close()
    return msgs


@pytest.fixture(scope="module")
def stream(source):
    return server_messages(source)


def assert_no_backup_left(out: str) -> None:
    assert not os.path.exists(out)
    assert not os.path.exists(out + ".partial")


def test_a_complete_stream_becomes_a_valid_file(stream, tmp_path):
    out = str(tmp_path / "s.backup")
    result = receive_backup(ReplayConnection(stream), out, key=None, codec="snappy", threads=2)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with open(out, "rb") as f:
        reader = BackupReader(f)
        reader.verify()
        for db in stream[0]["manifest"]["databases"]:
            sent = b"".join(m["data"] for m in stream if m.get("entry") == db["entry"])
            assert b"".join(reader.read_entry(db["entry"])) == sent
    assert result.raw_bytes == stream[-1]["bytes"]


@pytest.mark.parametrize("damage", ["error_midway", "dropped", "out_of_order", "short_count", "missing_entry"])
def test_a_broken_stream_leaves_no_backup_file(stream, tmp_path, damage):
    msgs = [dict(m) for m in stream]
    data_at = [i for i, m in enumerate(msgs) if m["type"] == "backup_data"]
    if damage == "error_midway":
        msgs.insert(data_at[2], {"type": "error", "code": "io", "message": "disk full", "fatal": False})
    elif damage == "dropped":
        msgs = msgs[: data_at[3]]
    elif damage == "out_of_order":
        last_of_first = next(i for i in data_at if msgs[i]["last"])
        msgs.insert(1, msgs.pop(last_of_first + 1))  # second entry's first frame comes first
    elif damage == "short_count":
        msgs[-1]["bytes"] += 1
    elif damage == "missing_entry":
        second = msgs[-2]["entry"]
        msgs = [m for m in msgs if m.get("entry") != second]
    out = str(tmp_path / "s.backup")
    with pytest.raises((BackupFailed, ConnectionFailed)) as info:
        receive_backup(ReplayConnection(msgs), out, key=None, codec="lz4", threads=1)
    if damage == "error_midway":
        assert "disk full" in str(info.value)
    assert_no_backup_left(out)


# ---------------------------------------------------------------- against a real server


def test_guide_full_backup_with_all_options_against_a_server(server, tmp_path):
    server.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
    server.sql(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 500) "
        "INSERT INTO customers SELECT i, 'c' || i FROM c;"
    )
    key_path = str(tmp_path / "k.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "full.backup")
    env = {**NO_KEYS, "RUSTYDB_BACKUP_KEY_FILE": key_path}
    proc = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        out,
        "--compress",
        "--encrypt",
        "--verify",
        "--threads",
        "4",
        "--port",
        str(server.port),
        env=env,
        check=True,
    )
    assert proc.stdout.splitlines()[-4:] == [
        "✓ Checksum verified",
        "✓ Encryption verified",
        "✓ File structure valid",
        "Backup is valid",
    ]
    summary = json.loads(
        run_tool(
            "rusty-db-backup",
            "--type",
            "full",
            "--database",
            "rustydb",
            "--output",
            str(tmp_path / "db.backup"),
            "--compress",
            "zstd",
            "--json",
            "--port",
            str(server.port),
            env=env,
            check=True,
        ).stdout
    )
    assert summary["databases"] == ["rustydb"] and summary["tables"] == 1
    assert summary["compression"] == "zstd" and summary["encrypted"] is False
    assert summary["size_bytes"] == os.path.getsize(tmp_path / "db.backup")
    again = run_tool("rusty-db-backup", "--type", "full", "--output", out, "--port", str(server.port), env=env)
    assert_clean_error(again)
    assert "already exists" in again.stderr
    unknown = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--database",
        "nosuchdb",
        "--output",
        str(tmp_path / "n.backup"),
        "--port",
        str(server.port),
    )
    assert_clean_error(unknown)
    assert not os.path.exists(tmp_path / "n.backup")
    assert not os.path.exists(tmp_path / "n.backup.partial")


def test_taking_a_backup_lowers_the_tools_priority_to_the_niceness_asked():
    import subprocess
    import sys

    code = (
        "import os; from rustydb_server.tools.backup.take import lower_priority; "
        "lower_priority({n}); print(os.getpriority(os.PRIO_PROCESS, 0))"
    )
    for asked, expected in ((10, 10), (0, 0)):
        out = subprocess.run(
            [sys.executable, "-c", code.format(n=asked)], capture_output=True, text=True, check=True
        ).stdout
        assert int(out) == max(expected, os.getpriority(os.PRIO_PROCESS, 0))


def test_sigterm_mid_backup_leaves_no_file(server, tmp_path, monkeypatch, capsys):
    """SIGTERM (a service stop, a cron timeout) cleans up as Ctrl-C does."""
    import signal

    from rustydb_server.container.writer import BackupWriter
    from rustydb_server.tools import backup_main

    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    server.sql("INSERT INTO t VALUES (1, 'one');")
    real_write = BackupWriter.write

    def write_then_get_terminated(self, data):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_write(self, data)

    monkeypatch.setattr(BackupWriter, "write", write_then_get_terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = str(tmp_path / "b.backup")
    rc = backup_main.main(["--type", "full", "--output", out, "--port", str(server.port), "--nice", "0"])
    assert rc == 143 and "stopped by SIGTERM" in capsys.readouterr().err
    assert_no_backup_left(out)
    assert signal.getsignal(signal.SIGTERM) == before
