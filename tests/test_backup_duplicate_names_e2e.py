"""A backup request naming a database twice, on both paths, against a real
server: refused with the same message, and the server keeps serving.

It used to take the database's commit lock twice and hang the whole server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.support.servers import run_tool

NAMED_TWICE = 'database "rustydb" is named more than once in databases; name each database once'


def post_backup(server, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/api/v1/admin/backup",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_api_refuses_a_database_named_twice_and_the_server_goes_on(server):
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'before');")
    status, answer = post_backup(server, {"backup_type": "full", "databases": ["rustydb", "rustydb"]})
    assert status == 422, answer
    assert answer["error"] == "invalid_backup_request"
    assert NAMED_TWICE in answer["message"]
    server.sql("INSERT INTO t VALUES (2, 'after');")
    assert "after" in server.sql("SELECT v FROM t WHERE id = 2;").stdout
    assert server.health()["status"] == "healthy"


def test_the_backup_tool_refuses_a_database_named_twice_and_the_server_goes_on(server, tmp_path):
    server.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'before');")
    out = tmp_path / "twice.backup"
    proc = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--port",
        str(server.port),
        "-d",
        "rustydb",
        "-d",
        "rustydb",
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert NAMED_TWICE in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    server.sql("INSERT INTO t VALUES (2, 'after');")
    assert "after" in server.sql("SELECT v FROM t WHERE id = 2;").stdout
    # the same tool, each name once, still takes the backup
    run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--port",
        str(server.port),
        "-d",
        "rustydb",
        check=True,
    )
    assert server.health()["status"] == "healthy"
