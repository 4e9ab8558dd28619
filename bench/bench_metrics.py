"""GET /metrics benchmark (issue 21, item 3): prints figures; never run as a test.

    python bench/bench_metrics.py [--backups 20] [--rounds 200]

Starts a real server, takes N full backups through the API (so the catalog
and the backup figures have something in them), then times, interleaved,
R scrapes of GET /metrics and R calls of GET /api/v1/admin/health (the whole
report, the API's cheapest route that reads the server's state). Both are
HTTP round trips to the same server; the ratio says what a scrape costs
beyond one. The machine is shared: quote the medians' ratio, not absolute
times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.support.servers import ServerProcess


def timed_get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t0, len(body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backups", type=int, default=20, help="full backups taken before timing (default 20)")
    p.add_argument("--rounds", type=int, default=200, help="scrapes and health calls timed (default 200)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        with ServerProcess(os.path.join(work, "data")) as server:
            server.sql(f"ALTER SYSTEM SET backup_dir = '{os.path.join(work, 'backups')}';")
            server.sql("CREATE TABLE t(v); INSERT INTO t VALUES (1);")
            base = f"http://127.0.0.1:{server.http_port}"
            for _ in range(args.backups):
                req = urllib.request.Request(
                    base + "/api/v1/admin/backup",
                    data=json.dumps({"backup_type": "full", "wait": True}).encode(),
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                urllib.request.urlopen(req, timeout=60).read()
            scrape, health, size = [], [], 0
            for _ in range(args.rounds):
                t, size = timed_get(base + "/metrics")
                scrape.append(t)
                health.append(timed_get(base + "/api/v1/admin/health")[0])
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"backups in the catalog: {args.backups}; rounds: {args.rounds}")
    p90 = sorted(scrape)[len(scrape) * 9 // 10] * 1000
    print(f"GET /metrics               median {ms(scrape):.2f} ms  p90 {p90:.2f} ms")
    print(f"GET /api/v1/admin/health   median {ms(health):.2f} ms")
    print(f"ratio metrics/health (same run): {statistics.median(scrape) / statistics.median(health):.2f}")
    print(f"/metrics body: {size} bytes")


if __name__ == "__main__":
    main()
