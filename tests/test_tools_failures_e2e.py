"""Every user-facing tool against damaged and unexpected inputs: one error line, never a traceback.

Each case runs the installed console script as a user would. A failure is
exactly one line on stderr, ``<tool>: error: ...``, and exit status 1 (2 for
a usage error). With --json (rusty-db-backup, -restore, -export) stdout then
holds exactly one JSON document, ``{"ok": false, "error": <that message>}``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from rustydb_server.keys import KeyFileSource
from tests.support.backups import NO_KEYS, open_engine, run_sql, write_backup
from tests.support.servers import free_port, run_tool, tool

TOOLS_WITH_JSON = ("rusty-db-backup", "rusty-db-restore", "rusty-db-export", "rusty-db-waldump")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good, damaged and unexpected files, by name."""
    root = tmp_path_factory.mktemp("inputs")
    engine = open_engine(str(root / "source"))
    try:
        run_sql(engine, "rustydb", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        run_sql(engine, "rustydb", "INSERT INTO t(v) VALUES ('x'), ('y')")
        good = str(root / "good.backup")
        write_backup(engine, good, codec="lz4")
        run_tool("rusty-db-backup", "--create-key-file", str(root / "right.key"), check=True)
        run_tool("rusty-db-backup", "--create-key-file", str(root / "wrong.key"), check=True)
        encrypted = str(root / "encrypted.backup")
        write_backup(engine, encrypted, key=KeyFileSource.from_file(str(root / "right.key")))
    finally:
        engine.close()
    data = open(good, "rb").read()
    (root / "truncated.backup").write_bytes(data[: len(data) // 2])
    (root / "headless.backup").write_bytes(data[:40])
    (root / "empty.backup").write_bytes(b"")
    (root / "garbage.backup").write_bytes(os.urandom(5000))
    (root / "a-directory").mkdir()
    (root / "not-a-dir").write_text("a file where a directory belongs\n")
    # archives: a garbage segment, an empty one, a backup posing as a segment
    for name, content in (
        ("garbage-archive", os.urandom(3000)),
        ("empty-archive", b""),
        ("backup-archive", data),
    ):
        (root / name).mkdir()
        (root / name / "000000010000000000000001.walz").write_bytes(content)
    # config files
    (root / "garbage.toml").write_text("this is = = not toml [\n")
    (root / "wrong-type.toml").write_text("port = 'five'\n")
    (root / "unknown.toml").write_text("no_such_setting = 1\n")
    (root / "bad-utf8.sql").write_bytes(b"SELECT '\xff\xfe';\n")
    return root


def _cases():
    closed = "{closed_port}"
    backup = [
        ("--info", "{missing}"),
        ("--info", "{root}/a-directory"),
        ("--info", "{root}/empty.backup"),
        ("--info", "{root}/garbage.backup"),
        ("--info", "{root}/headless.backup"),
        ("--verify", "{root}/truncated.backup"),
        ("--verify", "{root}/garbage.backup"),
        ("--verify", "{root}/a-directory"),
        ("--verify", "{root}/encrypted.backup", "--key-file", "{root}/wrong.key"),
        ("--verify", "{root}/encrypted.backup", "--key-file", "{missing}"),
        ("--verify", "{root}/encrypted.backup", "--key-file", "{root}/good.backup"),
        ("--verify", "{root}/encrypted.backup"),
        ("--query", "{root}/garbage.backup", "SELECT 1"),
        ("--query", "{root}/truncated.backup", "SELECT * FROM t"),
        ("--query", "{root}/good.backup", "SELECT * FROM no_such_table"),
        ("--query", "{root}/good.backup", "SELECT 1", "--database", "nope"),
        ("--type", "full", "--output", "{missing}/x.backup", "--port", closed),
        ("--type", "full", "--output", "{root}/a-directory", "--port", closed),
        ("--type", "full", "--output", "{root}/new.backup", "--port", closed),
        ("--type", "full", "--output", "{root}/new.backup", "--encrypt", "--key-file", "{missing}", "--port", closed),
        ("--type", "incremental", "--output", "{root}/i.backup", "--base-backup", "{missing}", "--port", closed),
        ("--type", "incremental", "--output", "{root}/i.backup", "--base-backup", "{root}/garbage.backup"),
        ("--rotate-key", "{missing}", "{root}/right.key", "{root}/encrypted.backup"),
        ("--rotate-key", "{root}/wrong.key", "{root}/right.key", "{root}/encrypted.backup"),
        ("--rotate-key", "{root}/right.key", "{root}/wrong.key", "{root}/garbage.backup"),
        ("--create-key-file", "{root}/right.key"),
        ("--create-key-file", "{missing}/k.key"),
        ("--create-key-file", "{root}/a-directory"),
    ]
    restore = [
        ("--input", "{missing}", "--data-dir", "{root}/out1"),
        ("--input", "{root}/a-directory", "--data-dir", "{root}/out2"),
        ("--input", "{root}/empty.backup", "--data-dir", "{root}/out3"),
        ("--input", "{root}/garbage.backup", "--data-dir", "{root}/out4"),
        ("--input", "{root}/truncated.backup", "--data-dir", "{root}/out5"),
        ("--input", "{root}/encrypted.backup", "--data-dir", "{root}/out6"),
        ("--input", "{root}/encrypted.backup", "--data-dir", "{root}/out7", "--key-file", "{root}/wrong.key"),
        ("--input", "{root}/good.backup", "--data-dir", "{root}/not-a-dir"),
        ("--input", "{root}/good.backup", "--data-dir", "{root}/not-a-dir/below"),
        ("--input", "{root}/good.backup", "--data-dir", "{root}/out8", "--incremental"),
        ("--input", "{root}/garbage.backup", "--data-dir", "{root}/out9", "--chain-dir", "{root}/a-directory"),
        ("--input", "{root}/good.backup", "--data-dir", "{root}/out10", "--chain-dir", "{missing}"),
        ("--input", "{root}/good.backup", "--data-dir", "{root}/out11", "--table", "nope"),
        (
            "--input",
            "{root}/good.backup",
            "--data-dir",
            "{root}/o12",
            "--archive-dir",
            "{missing}",
            "--recovery-target",
            "immediate",
        ),
        (
            "--input",
            "{root}/good.backup",
            "--data-dir",
            "{root}/o13",
            "--archive-dir",
            "{root}/garbage-archive",
            "--recovery-target-txid",
            "5",
        ),
        ("--list-wal", "--archive-dir", "{missing}"),
        ("--list-wal", "--archive-dir", "{root}/not-a-dir"),
        ("--list-wal", "--archive-dir", "{root}/garbage-archive"),
        ("--list-wal", "--archive-dir", "{root}/empty-archive"),
        ("--list-wal", "--archive-dir", "{root}/backup-archive"),
        ("--list-wal", "--archive-dir", "{root}/garbage-archive", "--recovery-target-timeline", "3"),
        ("--list-wal", "--archive-dir", "{root}/a-directory", "--since", "yesterday"),
    ]
    export = [
        ("--table", "t", "--input-dir", "{missing}", "--output", "{root}/e1.sql"),
        ("--table", "t", "--input-dir", "{root}/not-a-dir", "--output", "{root}/e2.sql"),
        ("--table", "t", "--input-dir", "{root}/a-directory", "--output", "{root}/e3.sql"),
        ("--table", "t", "--input-dir", "{root}/bad-datadir", "--output", "{root}/e4.sql"),
        ("--table", "t", "--input-dir", "{root}/restored", "--output", "{missing}/e5.sql"),
        ("--table", "t", "--input-dir", "{root}/restored", "--output", "{root}/a-directory"),
        ("--table", "nope", "--input-dir", "{root}/restored", "--output", "{root}/e6.sql"),
        ("--table", "t", "--input-dir", "{root}/restored", "--output", "{root}/e7.sql", "--database", "nope"),
    ]
    waldump = [
        ("--data-dir", "{missing}"),
        ("--data-dir", "{root}/a-directory"),
        ("--wal-dir", "{missing}"),
        ("--wal-dir", "{root}/not-a-dir"),
        ("--archive-dir", "{missing}"),
        ("--archive-dir", "{root}/garbage-archive"),
        ("--archive-dir", "{root}/backup-archive"),
        ("--backup", "{missing}"),
        ("--backup", "{root}/garbage.backup"),
        ("--backup", "{root}/good.backup"),
        ("--backup", "{root}/a-directory"),
    ]
    cli = [
        ("--port", closed, "--command", "SELECT 1;"),
        ("--port", closed, "--file", "{missing}"),
        ("--port", closed, "--file", "{root}/a-directory"),
    ]
    server = [
        ("--config", "{missing}", "--data-dir", "{root}/srv1"),
        ("--config", "{root}/a-directory", "--data-dir", "{root}/srv2"),
        ("--config", "{root}/garbage.toml", "--data-dir", "{root}/srv3"),
        ("--config", "{root}/wrong-type.toml", "--data-dir", "{root}/srv4"),
        ("--config", "{root}/unknown.toml", "--data-dir", "{root}/srv5"),
        ("--config", "{root}/good.backup", "--data-dir", "{root}/srv6"),
        ("--data-dir", "{root}/not-a-dir"),
        ("--data-dir", "{root}/bad-datadir"),
        ("--data-dir", "{root}/not-a-dir/below"),
    ]
    for name, cases in (
        ("rusty-db-backup", backup),
        ("rusty-db-restore", restore),
        ("rusty-db-export", export),
        ("rusty-db-waldump", waldump),
        ("rusty-db-cli", cli),
        ("rusty-db-server", server),
    ):
        for args in cases:
            yield pytest.param(name, args, id=f"{name.removeprefix('rusty-db-')} {' '.join(args)}")


@pytest.fixture(scope="module")
def restored(inputs):
    """A data directory restored from the good backup, for the export's cases."""
    run_tool(
        "rusty-db-restore",
        "--input",
        str(inputs / "good.backup"),
        "--data-dir",
        str(inputs / "restored"),
        env=NO_KEYS,
        check=True,
    )
    # a real data directory whose control file is damaged
    shutil.copytree(inputs / "restored", inputs / "bad-datadir")
    (inputs / "bad-datadir" / "control").write_bytes(os.urandom(200))
    return inputs / "restored"


def _fill(args, root) -> list[str]:
    values = {"root": str(root), "missing": str(root / "no-such-thing"), "closed_port": str(free_port())}
    return [a.format(**values) for a in args]


def _server_args(name: str) -> list[str]:
    """The server's ports: never the defaults, which another server may hold."""
    return ["--port", str(free_port()), "--http-port", str(free_port())] if name == "rusty-db-server" else []


def assert_one_line_failure(proc, name: str, code: int = 1) -> str:
    """The failure's message: one line on stderr, the exit status ``code``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{name}: "), lines[0]
    return lines[0]


def assert_server_failure(proc) -> None:
    """The server's stderr is also its log: besides its structured log events
    (one JSON object a line), one line says why it did not start."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    plain = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("rusty-db-server: "), proc.stderr
    for line in proc.stderr.splitlines():
        if line.startswith("{"):
            assert "event" in json.loads(line)


@pytest.mark.parametrize("name,args", list(_cases()))
def test_a_bad_input_is_one_error_line_and_exit_1(inputs, restored, name, args):
    argv = _fill(args, inputs) + _server_args(name)
    proc = run_tool(name, *argv, env=NO_KEYS, timeout=60)
    if name == "rusty-db-server":
        assert_server_failure(proc)
        return  # the server has no --json
    line = assert_one_line_failure(proc, name)
    if name == "rusty-db-cli":
        assert proc.stdout == ""
        return
    assert line.startswith(f"{name}: error: ")
    proc = run_tool(name, *argv, "--json", env=NO_KEYS, timeout=60)
    assert_one_line_failure(proc, name)
    assert proc.stdout.count("\n") == 1, proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    # the stderr line's message, or its end where the document has fields for the rest
    assert doc["error"] and proc.stderr.strip().endswith(doc["error"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
@pytest.mark.parametrize(
    "name,args",
    [
        ("rusty-db-backup", ("--info", "{root}/locked.backup")),
        ("rusty-db-backup", ("--verify", "{root}/locked.backup")),
        ("rusty-db-restore", ("--input", "{root}/locked.backup", "--data-dir", "{root}/out-locked")),
        ("rusty-db-export", ("--table", "t", "--input-dir", "{root}/locked-dir", "--output", "{root}/e.sql")),
    ],
)
def test_an_unreadable_file_is_one_error_line(inputs, restored, name, args):
    locked = inputs / "locked.backup"
    locked.write_bytes((inputs / "good.backup").read_bytes())
    locked.chmod(0)
    (inputs / "locked-dir").mkdir(exist_ok=True)
    (inputs / "locked-dir").chmod(0)
    proc = run_tool(name, *_fill(args, inputs), env=NO_KEYS)
    assert_one_line_failure(proc, name)


@pytest.mark.parametrize(
    "name,args",
    [
        ("rusty-db-backup", ()),
        ("rusty-db-backup", ("--info",)),
        ("rusty-db-backup", ("--type", "full")),
        ("rusty-db-restore", ("--list-wal",)),
        ("rusty-db-restore", ("--input", "x")),
        ("rusty-db-restore", ("--list-wal", "--archive-dir", "a", "--recovery-target-timeline", "current")),
        ("rusty-db-export", ("--table", "t")),
        ("rusty-db-export", ("--table", "t", "--input-dir", "d", "--output", "o", "--batch-rows", "0")),
        ("rusty-db-waldump", ("--wal-dir", "w", "--archive-dir", "a")),
        ("rusty-db-waldump", ("--as-of", "txid:soon")),
        ("rusty-db-waldump", ("--changes", "--stats")),
        ("rusty-db-restore", ("--input", "x", "--data-dir", "d", "--table", "t", "--dry-run")),
    ],
)
def test_a_usage_error_exits_2_and_still_gives_one_json_document(name, args):
    proc = run_tool(name, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"{name}: error: ")
    proc = run_tool(name, *args, "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["usage_error"] is True
    assert proc.stderr.splitlines()[-1] == f"{name}: error: {doc['error']}"


@pytest.mark.parametrize(
    "name,args",
    [
        ("rusty-db-backup", ("--info", "{root}/good.backup")),
        ("rusty-db-backup", ("--query", "{root}/good.backup", "SELECT * FROM t")),
        ("rusty-db-export", ("--table", "t", "--input-dir", "{root}/restored", "--output", "-")),
    ],
)
def test_a_closed_stdout_ends_quietly(inputs, restored, name, args):
    """``tool ... | head`` where head is gone before the first line: no traceback, no message."""
    proc = subprocess.Popen(
        [tool(name), *_fill(args, inputs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **NO_KEYS},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 1
    assert err == "", err
