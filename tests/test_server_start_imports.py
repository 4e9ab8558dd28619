"""The server's start imports only what its first answer needs.

A restored server's start until it answers is mostly imports (issue 16's
fixed cost of a PITR), so what only a later request needs is imported when
that request comes: prometheus-client at the first GET /metrics, the
forensics modules (and the WAL reading behind them) at the first UNDO or AS
OF, urllib.request when an alert is first sent. (The cron parser is imported
when a schedule is first computed; a server with the default verify_schedule
computes one as it starts.)

The real server runs under a launcher that, once asked (a file appearing in
its data directory's parent), writes the names in its ``sys.modules`` to a
file: asked after the server answered a query, and again after a scrape of
/metrics, which must then have imported prometheus-client and still serve.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

from tests.support.servers import ServerProcess

LAUNCHER = """
import json, os, sys, threading, time
from rustydb_server.tools import server_main

def dump_on_request(folder):
    asked = 0
    while True:
        request = os.path.join(folder, f"dump-{asked}")
        if os.path.exists(request):
            with open(request + ".tmp", "w") as f:
                json.dump(sorted(sys.modules), f)
            os.rename(request + ".tmp", request + ".json")
            asked += 1
        time.sleep(0.01)

threading.Thread(target=dump_on_request, args=(sys.argv[1],), daemon=True).start()
sys.exit(server_main.main(sys.argv[2:]))
"""

DEFERRED = [
    "prometheus_client",
    "rustydb_server.forensics.live",
    "rustydb_server.forensics.asof",
    "rustydb_server.restore.pitr",
    "urllib.request",
    "rich",  # structlog's console extras: hidden from it (logsetup._structlog)
]


def modules_now(folder, n: int) -> set[str]:
    open(os.path.join(folder, f"dump-{n}"), "w").close()
    path = os.path.join(folder, f"dump-{n}.json")
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the server never wrote its modules"
        time.sleep(0.01)
    with open(path) as f:
        return set(json.load(f))


def test_first_answer_needs_no_metrics_forensics_or_urllib(tmp_path):
    folder = str(tmp_path)
    srv = ServerProcess(str(tmp_path / "data"), command=[sys.executable, "-c", LAUNCHER, folder])
    srv.start()
    try:
        srv.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        assert "1" in srv.sql("SELECT x FROM t;").stdout  # the server answers
        loaded = modules_now(folder, 0)
        assert "rustydb_server.http_api" in loaded and "rustydb_server.metrics" in loaded  # the probe sees the server
        for name in DEFERRED:
            assert name not in loaded, f"the server imported {name} before anything asked for it"
        with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10) as r:
            body = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert "rustydb_commits_total" in body
        assert "prometheus_client" in modules_now(folder, 1)  # imported by the scrape, which served
    finally:
        srv.stop()
