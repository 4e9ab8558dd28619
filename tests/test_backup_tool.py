"""rusty-db-backup: --info, --verify, keys, rotation, usage, and the client side of streaming.

Backups are built from a real in-process Engine (no server process) except in
the one test that runs the guide's full backup against a real server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat

import pytest
from helpers import free_port, run_tool

from rustydb_client.client import ConnectionFailed
from rustydb_client.protocol.frames import decode_body, encode_bulk_frame, encode_frame
from rustydb_client.protocol.messages import TO_CLIENT, event_of, validate_message
from rustydb_server import datadir as dd
from rustydb_server.backup.manifest import header_from_manifest
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.container.file import BackupFile
from rustydb_server.container.format import RECORD
from rustydb_server.container.reader import BackupReader
from rustydb_server.engine.instance import Engine
from rustydb_server.engine.session import SqlSession
from rustydb_server.keys import KeyFileSource, PassphraseSource
from rustydb_server.settings import Settings
from rustydb_server.tools.backup_main import BackupFailed, receive_backup

NO_KEYS = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}
CUSTOMERS = 3000


# ---------------------------------------------------------------- building real backups


def open_engine(path: str) -> Engine:
    return Engine.open(dd.DataDir(path), Settings.load(None, path, {"wal_segment_size": 65536}))


def run_sql(engine: Engine, database: str, sql: str):
    from rustydb_client.sqlsplit import leading_keywords

    session = SqlSession(engine, database, 1)
    _result, rows, _fin = session.run(sql, leading_keywords(sql, 2), 1_000_000)
    return rows


def fill_source(engine: Engine) -> None:
    """Two databases, three tables, rows of mixed text and numbers."""
    run_sql(engine, "rustydb", "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, balance REAL)")
    run_sql(
        engine,
        "rustydb",
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c "
        f"WHERE i < {CUSTOMERS}) INSERT INTO customers SELECT i, 'customer ' || i || "
        "hex(randomblob(8)), i * 1.5 FROM c",
    )
    run_sql(engine, "rustydb", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    run_sql(engine, "rustydb", "INSERT INTO notes(body) VALUES ('hello'), ('world')")
    engine.create_database("sales")
    run_sql(engine, "sales", "CREATE TABLE orders(id INTEGER PRIMARY KEY, amount INTEGER)")
    run_sql(engine, "sales", "INSERT INTO orders(amount) VALUES (10), (20), (30)")


def write_backup(
    engine: Engine, out: str, *, key=None, codec: str = "none", edit=None, extra_entries=(), backup_type: str = "full"
) -> dict:
    """A backup file as the tool writes it; ``edit`` changes the manifest it records
    (the data written stays the snapshot's), ``extra_entries`` adds (entry, database)."""
    snap = Snapshot(engine, None, backup_type=backup_type)
    try:
        manifest = snap.manifest()
        real = [(db["entry"], db["name"]) for db in manifest["databases"]]
        manifest = copy.deepcopy(manifest)
        if edit is not None:
            edit(manifest)
        bf = BackupFile(out, header_from_manifest(manifest), key=key, codec=codec)
        scratch = engine.datadir.join("backup_tmp")
        for entry, name in real + list(extra_entries):
            bf.begin_entry(entry)
            for chunk in snap.stream_database(name, scratch):
                bf.write(chunk)
            bf.end_entry()
        bf.commit()
    finally:
        snap.close()
    return manifest


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("source") / "data")
    engine = open_engine(path)
    fill_source(engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain_backup(source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("plain") / "full.backup")
    manifest = write_backup(source, out, codec="lz4")
    return out, manifest


def flip_byte_in_chunk(path: str, entry_index: int = 0) -> tuple[str, int]:
    """Flip one byte inside the first chunk's stored data; returns (entry name, chunk)."""
    with open(path, "rb") as f:
        entry = BackupReader(f).entries()[entry_index]
    at = entry.offset + RECORD.size + 5
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    return entry.name, 0


def copy_file(src: str, dst: str) -> str:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    return dst


def assert_clean_error(proc, code: int = 1) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- --info


def test_info_prints_the_guides_fields(plain_backup):
    path, manifest = plain_backup
    proc = run_tool("rusty-db-backup", "--info", path, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Backup ID: {manifest['backup_id']}"
    assert lines[1] == "Type: full"
    assert re.fullmatch(r"Created: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[2])
    assert re.fullmatch(r"Size: [\d.]+ (B|KB|MB) \(compressed\)", lines[3])
    assert lines[4] == "Encryption: none"
    assert lines[5] == "Databases: rustydb, sales"
    assert lines[6] == "Tables: 3"
    assert any(line.startswith("LSN range: ") for line in lines)


def test_info_json_matches_the_header(plain_backup):
    path, manifest = plain_backup
    info = json.loads(run_tool("rusty-db-backup", "--info", path, "--json", check=True).stdout)
    assert info["backup_id"] == manifest["backup_id"]
    assert info["type"] == "full"
    assert info["databases"] == ["rustydb", "sales"]
    assert info["tables"] == 3
    assert info["size_bytes"] == os.path.getsize(path)
    assert info["compression"] == "lz4" and info["compressed"] is True
    assert info["encryption"] == "none" and info["encrypted"] is False
    assert info["end_lsn"] == manifest["end_lsn"]
    counts = {t["name"]: t["rows"] for db in info["database_details"] for t in db["tables"]}
    assert counts == {"customers": CUSTOMERS, "notes": 2, "orders": 3}


def test_info_on_an_uncompressed_encrypted_backup_needs_no_key(source, tmp_path):
    key_path = str(tmp_path / "k.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "e.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path))
    proc = run_tool("rusty-db-backup", "--info", out, env=NO_KEYS, check=True)
    assert "Encryption: AES-256" in proc.stdout.splitlines()
    assert re.search(r"^Size: .* \(uncompressed\)$", proc.stdout, re.MULTILINE)


# ---------------------------------------------------------------- --verify


def test_verify_prints_the_guides_lines_for_an_unencrypted_backup(plain_backup):
    proc = run_tool("rusty-db-backup", "--verify", plain_backup[0], check=True)
    # An unencrypted backup must not claim "Encryption verified".
    assert proc.stdout.splitlines() == [
        "✓ Checksum verified",
        "✓ Encryption: not encrypted",
        "✓ File structure valid",
        "Backup is valid",
    ]


def test_verify_names_entry_and_chunk_of_a_flipped_byte(plain_backup, tmp_path):
    path = copy_file(plain_backup[0], str(tmp_path / "bad.backup"))
    entry, chunk = flip_byte_in_chunk(path, entry_index=1)
    proc = run_tool("rusty-db-backup", "--verify", path)
    assert_clean_error(proc)
    assert plain_backup[1]["backup_id"] in proc.stderr
    assert f"entry {entry!r}" in proc.stderr and f"chunk {chunk}" in proc.stderr
    assert "Backup is valid" not in proc.stdout
    report = json.loads(run_tool("rusty-db-backup", "--verify", path, "--json").stdout)
    assert report["valid"] is False
    assert (report["entry"], report["chunk"]) == (entry, chunk)


def test_verify_refuses_a_truncated_file(plain_backup, tmp_path):
    with open(plain_backup[0], "rb") as f:
        data = f.read()
    path = str(tmp_path / "cut.backup")
    with open(path, "wb") as f:
        f.write(data[: len(data) - 100])
    proc = run_tool("rusty-db-backup", "--verify", path)
    assert_clean_error(proc)
    assert "truncated" in proc.stderr


def test_verify_of_a_missing_file_is_a_clean_error(tmp_path):
    proc = run_tool("rusty-db-backup", "--verify", str(tmp_path / "nope.backup"))
    assert_clean_error(proc)
    assert "nope.backup" in proc.stderr


# ---------------------------------------------------------------- keys


def test_key_file_is_0600_and_never_overwritten(tmp_path):
    key_path = str(tmp_path / "backup.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(key_path) as f:
        before = f.read()
    proc = run_tool("rusty-db-backup", "--create-key-file", key_path)
    assert_clean_error(proc)
    assert "already exists" in proc.stderr
    with open(key_path) as f:
        assert f.read() == before


def test_encrypted_backup_with_a_key_file(source, tmp_path):
    key_path = str(tmp_path / "backup.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "enc.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path), codec="zstd")

    no_key = run_tool("rusty-db-backup", "--verify", out, env=NO_KEYS)
    assert_clean_error(no_key)
    assert "--key-file" in no_key.stderr

    good = run_tool(
        "rusty-db-backup", "--verify", out, "--key-file", key_path, "--threads", "2", env=NO_KEYS, check=True
    )
    assert good.stdout.splitlines() == [
        "✓ Checksum verified",
        "✓ Encryption verified",
        "✓ File structure valid",
        "Backup is valid",
    ]
    by_env = run_tool(
        "rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_KEY_FILE": key_path}, check=True
    )
    assert "✓ Encryption verified" in by_env.stdout


def test_passphrase_backup_and_a_wrong_key(source, tmp_path):
    out = str(tmp_path / "pass.backup")
    write_backup(source, out, key=PassphraseSource("correct horse"))
    good = run_tool(
        "rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "correct horse"}, check=True
    )
    assert "Backup is valid" in good.stdout

    wrong = run_tool("rusty-db-backup", "--verify", out, env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "battery staple"})
    assert_clean_error(wrong)
    assert "battery staple" not in wrong.stderr + wrong.stdout  # secrets are never echoed
    assert "Backup is valid" not in wrong.stdout

    no_key = run_tool("rusty-db-backup", "--verify", out, env=NO_KEYS)
    assert_clean_error(no_key)
    assert "RUSTYDB_BACKUP_PASSPHRASE" in no_key.stderr

    key_path = str(tmp_path / "other.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    mismatch = run_tool("rusty-db-backup", "--verify", out, "--key-file", key_path, env=NO_KEYS)
    assert_clean_error(mismatch)
    assert "passphrase" in mismatch.stderr


def test_a_key_file_readable_by_others_is_refused(source, tmp_path):
    key_path = str(tmp_path / "open.key")
    run_tool("rusty-db-backup", "--create-key-file", key_path, check=True)
    out = str(tmp_path / "enc.backup")
    write_backup(source, out, key=KeyFileSource.from_file(key_path))
    os.chmod(key_path, 0o644)
    proc = run_tool("rusty-db-backup", "--verify", out, "--key-file", key_path, env=NO_KEYS)
    assert_clean_error(proc)
    assert "chmod 600" in proc.stderr


def test_rotate_key_then_only_the_new_key_opens(source, tmp_path):
    old_key, new_key = str(tmp_path / "old.key"), str(tmp_path / "new.key")
    for path in (old_key, new_key):
        run_tool("rusty-db-backup", "--create-key-file", path, check=True)
    files = [str(tmp_path / f"b{i}.backup") for i in range(2)]
    for out in files:
        write_backup(source, out, key=KeyFileSource.from_file(old_key))

    proc = run_tool("rusty-db-backup", "--rotate-key", old_key, new_key, *files, env=NO_KEYS, check=True)
    assert proc.stdout.count("key rotated") == 2
    for out in files:
        assert_clean_error(run_tool("rusty-db-backup", "--verify", out, "--key-file", old_key, env=NO_KEYS))
        run_tool("rusty-db-backup", "--verify", out, "--key-file", new_key, env=NO_KEYS, check=True)
    # Rotating again with the (now wrong) old key fails for each file and says so.
    again = run_tool("rusty-db-backup", "--rotate-key", old_key, new_key, *files, env=NO_KEYS)
    assert_clean_error(again)
    assert all(f in again.stderr for f in files)


def test_rotate_a_passphrase_backup_to_a_key_file(source, tmp_path):
    out = str(tmp_path / "p.backup")
    write_backup(source, out, key=PassphraseSource("pw-one"))
    new_key = str(tmp_path / "new.key")
    run_tool("rusty-db-backup", "--create-key-file", new_key, check=True)
    run_tool(
        "rusty-db-backup",
        "--rotate-key",
        "-",
        new_key,
        out,
        env={**NO_KEYS, "RUSTYDB_BACKUP_PASSPHRASE": "pw-one"},
        check=True,
    )
    run_tool("rusty-db-backup", "--verify", out, "--key-file", new_key, env=NO_KEYS, check=True)


# ---------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--info", "a", "--verify", "b"],
        ["--type", "full"],
        ["--rotate-key", "a", "b"],
        ["--type", "full", "--output", "x", "--info", "y"],
        ["--info", "a", "--compress"],
        ["--type", "full", "--output", "x", "--threads", "0"],
        ["--type", "full", "--output", "x", "--threads", "65"],  # the API's limit too
        ["--type", "full", "--output", "x", "--compress", "gzip"],
        ["--type", "full", "--output", "x", "--nice", "20"],
        ["--info", "a", "--nice", "5"],
    ],
)
def test_usage_errors_exit_2(args):
    proc = run_tool("rusty-db-backup", *args)
    assert_clean_error(proc, 2)


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
        manifest = snap.manifest()
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


__all__ = ["CUSTOMERS", "NO_KEYS", "fill_source", "flip_byte_in_chunk", "open_engine", "run_sql", "write_backup"]


def test_taking_a_backup_lowers_the_tools_priority_to_the_niceness_asked():
    import subprocess
    import sys

    code = (
        "import os; from rustydb_server.tools.backup_main import _lower_priority; "
        "_lower_priority({n}); print(os.getpriority(os.PRIO_PROCESS, 0))"
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
