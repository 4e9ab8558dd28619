"""Which listener opens first: the HTTP API before a crash recovery, the SQL listener otherwise.

After a crash the start replays the WAL since the last checkpoint, which can
take long: the HTTP API is up before it, so health says "starting" (503)
instead of refusing connections. After a clean stop or a restore there is
nothing to replay: the SQL listener answers first (a restored server's first
answer is part of every PITR's time), and hypercorn and Starlette are
imported and served right after it. What the API checks as it starts (its
token file) still stops the start before anything listens.
"""

from __future__ import annotations

import json
import os

from tests.support.servers import ServerProcess


def events_since(srv: ServerProcess, offset: int) -> list[str]:
    with open(srv.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line)["event"])
        except (ValueError, KeyError, TypeError):
            continue
    return events


def test_http_first_after_a_crash_sql_first_after_a_clean_stop(tmp_path):
    srv = ServerProcess(str(tmp_path / "data"))
    srv.start()
    srv.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
    srv.kill()  # a crash: the next start replays the WAL

    offset = os.path.getsize(srv.log_path)
    srv.start()
    try:
        events = events_since(srv, offset)
        assert events.index("HTTP API listening") < events.index("recovery complete")
        assert events.index("HTTP API listening") < events.index("listening on a Unix socket")
        assert "2" in srv.sql("SELECT count(*) FROM t;").stdout
    finally:
        assert srv.stop() == 0  # a clean stop: nothing to replay next time

    offset = os.path.getsize(srv.log_path)
    srv.start()
    try:
        events = events_since(srv, offset)
        assert events.index("recovery complete") < events.index("listening on a Unix socket")
        assert events.index("listening on a Unix socket") < events.index("HTTP API listening")
        assert events.index("HTTP API listening") < events.index("ready")
        assert srv.health()["status"] == "healthy"  # the API serves the running server
        assert "2" in srv.sql("SELECT count(*) FROM t;").stdout
    finally:
        srv.stop()


def test_a_bad_token_file_stops_a_clean_start_before_the_sql_listener_opens(tmp_path):
    srv = ServerProcess(str(tmp_path / "data"))
    srv.start()
    assert srv.stop() == 0
    token = tmp_path / "api.token"
    token.write_text("secret\n")
    token.chmod(0o644)  # others may read it: refused
    conf = tmp_path / "rustydb.toml"
    conf.write_text(f"http_api_token_file = '{token}'\n")
    offset = os.path.getsize(srv.log_path)
    srv.extra_args = ["--config", str(conf)]
    srv.start(wait=False)
    assert srv.wait_exit() == 1
    events = events_since(srv, offset)
    assert "server stopped on an error" in events
    assert "listening on a Unix socket" not in events and "recovery complete" not in events
    with open(srv.log_path, "rb") as f:
        f.seek(offset)
        assert str(token) in f.read().decode(errors="replace")
    srv.kill()


def test_which_data_directories_may_need_a_long_recovery(tmp_path):
    # The rule behind the order: only a control file that says neither a clean
    # stop nor a restore (every restore leaves the redo point at the WAL's end:
    # full, incremental, PITR) may have WAL to replay; an unreadable one is
    # left to the engine, with the API up first to say "starting".
    import dataclasses

    from rustydb_server.datadir import CONTROL_FILE, DataDir
    from rustydb_server.run import _recovery_may_take_long

    ddir = DataDir(str(tmp_path / "data"))
    assert _recovery_may_take_long(ddir) is False  # not initialized: nothing to recover
    control = ddir.initialize(segment_size=1 << 16)
    for state, long in [("shutdown", False), ("restored", False), ("running", True), ("pitr-replaying", True)]:
        ddir.write_control(dataclasses.replace(control, state=state))
        assert _recovery_may_take_long(ddir) is long, state
    with open(ddir.join(CONTROL_FILE), "wb") as f:
        f.write(b"garbage")
    assert _recovery_may_take_long(ddir) is True
