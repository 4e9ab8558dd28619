"""The --json contract of every tool, on success (failures: test_tools_failures_e2e.py).

rusty-db-backup, rusty-db-restore and rusty-db-export print exactly one JSON
document on stdout, one line, an object whose "ok" says whether the run
succeeded; rusty-db-export --output - prints it on stderr (stdout is the
data). rusty-db-cli prints one document per statement, and a failure ends
with {"ok": false, "error": ...}.
"""

from __future__ import annotations

import json

from tests.support.backups import NO_KEYS
from tests.support.servers import free_port, run_tool


def one_document(text: str) -> dict:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    doc = json.loads(text)
    assert isinstance(doc, dict)
    return doc


def ok(name: str, *args: str, stream: str = "stdout") -> dict:
    proc = run_tool(name, *args, "--json", env=NO_KEYS)
    assert proc.returncode == 0, proc.stderr
    doc = one_document(getattr(proc, stream))
    assert doc["ok"] is True
    return doc


def test_every_verb_prints_one_document(server, tmp_path):
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    server.sql("INSERT INTO t(v) VALUES ('a'), ('b'), ('c');")
    port = str(server.port)
    full = tmp_path / "full.backup"
    doc = ok("rusty-db-backup", "--type", "full", "--output", str(full), "--port", port, "--verify")
    assert doc["output"] == str(full) and doc["verified"] is True
    key = tmp_path / "k.key"
    assert ok("rusty-db-backup", "--create-key-file", str(key))["key_file"] == str(key)
    enc = tmp_path / "enc.backup"
    ok("rusty-db-backup", "--type", "full", "--output", str(enc), "--port", port, "--encrypt", "--key-file", str(key))
    key2 = tmp_path / "k2.key"
    ok("rusty-db-backup", "--create-key-file", str(key2))
    assert ok("rusty-db-backup", "--rotate-key", str(key), str(key2), str(enc))["rotated"] == [str(enc)]
    assert ok("rusty-db-backup", "--verify", str(enc), "--key-file", str(key2))["valid"] is True
    assert ok("rusty-db-backup", "--info", str(full))["type"] == "full"
    assert ok("rusty-db-backup", "--query", str(full), "SELECT count(*) FROM t")["rows"] == [[3]]
    incr = tmp_path / "incr.backup"
    server.sql("INSERT INTO t(v) VALUES ('d');")
    ok("rusty-db-backup", "--type", "incremental", "--output", str(incr), "--port", port, "--base-backup", str(full))

    restored = tmp_path / "restored"
    doc = ok("rusty-db-restore", "--input", str(full), "--data-dir", str(restored))
    assert doc["data_dir"] == str(restored)
    ok("rusty-db-restore", "--input", str(incr), "--data-dir", str(restored), "--incremental")

    out = tmp_path / "t.sql"
    doc = ok("rusty-db-export", "--table", "t", "--input-dir", str(restored), "--output", str(out))
    assert out.exists()
    # --output -: the data owns stdout, the document is on stderr
    proc = run_tool("rusty-db-export", "--table", "t", "--input-dir", str(restored), "--output", "-", "--json")
    assert proc.returncode == 0 and "INSERT" in proc.stdout
    assert one_document(proc.stderr)["ok"] is True
    proc = run_tool("rusty-db-export", "--table", "nope", "--input-dir", str(restored), "--output", "-", "--json")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("rusty-db-export: error: ")
    assert json.loads(lines[1])["ok"] is False


def test_the_cli_prints_a_document_per_statement_and_one_for_a_failure(server):
    proc = server.cli("--json", "--command", "SELECT 1 AS a; SELECT 2 AS b;")
    assert proc.returncode == 0
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["rows"] for d in docs] == [[[1]], [[2]]]
    proc = server.cli("--json", "--command", "SELECT 1 AS a; SELECT * FROM nowhere;")
    assert proc.returncode == 1
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert docs[0]["rows"] == [[1]]
    assert docs[-1]["ok"] is False and "nowhere" in docs[-1]["error"] and len(docs) == 2
    proc = run_tool("rusty-db-cli", "--port", str(free_port()), "--json", "--command", "SELECT 1;")
    assert proc.returncode == 1
    doc = one_document(proc.stdout)
    assert doc["ok"] is False and doc["code"] == "connection_refused"
    proc = run_tool("rusty-db-cli", "--port", "0", "--json", "--command", "SELECT 1;")
    assert proc.returncode == 2 and one_document(proc.stdout)["usage_error"] is True
