"""TLS cost benchmark: prints figures and same-run ratios; never run as a test.

    python bench/bench_tls.py [--size-mb 64] [--statements 2000] [--connects 30]

One server (tls_mode = allow, a throwaway CA's certificate), reached over TCP
loopback in plaintext (--tls disable) and over TLS (--tls verify-full), in one run:
  * connecting: hello, TLS handshake (when on) and SCRAM-SHA-256, median ms;
  * statements: SELECT 1 round trips on one session, per second;
  * a full backup streamed to the real rusty-db-backup (uncompressed, so the
    stream is what is measured), MB/s of database bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package

from rustydb_client import client as rc  # noqa: E402
from tests.support.servers import ServerProcess, run_tool  # noqa: E402
from tests.support.tls_certs import write_certs  # noqa: E402

PASSWORD = "bench pass"


def connect(port: int, mode: str, ca: str) -> rc.Connection:
    return rc.connect("127.0.0.1", port, user="bench", password=PASSWORD, tls=mode, tls_ca_file=ca)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=64, help="database size to back up (default 64)")
    ap.add_argument("--statements", type=int, default=2000, help="SELECT 1 round trips per mode (default 2000)")
    ap.add_argument("--connects", type=int, default=30, help="connections per mode (default 30)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        certs = write_certs(os.path.join(tmp, "certs"))
        conf = os.path.join(tmp, "rustydb.toml")
        with open(conf, "w") as f:
            f.write(f'tls_cert_file = "{certs.server_cert}"\ntls_key_file = "{certs.server_key}"\n')
        srv = ServerProcess(os.path.join(tmp, "data"), extra_args=["--config", conf], https_ca_file=certs.ca)
        with srv:
            srv.sql(f"CREATE ROLE bench LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
            srv.sql("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
            rows_per_mb = 16  # 64 KiB blobs
            srv.sql(
                "INSERT INTO blobs(data) SELECT randomblob(65536) FROM (WITH RECURSIVE n(i) AS "
                f"(SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT {args.size_mb * rows_per_mb}) SELECT i FROM n)"
            )
            srv.sql("CHECKPOINT")
            results = {}
            for mode in ("disable", "verify-full"):
                times = []
                for _ in range(args.connects):
                    started = time.perf_counter()
                    connect(srv.port, mode, certs.ca).close()
                    times.append(time.perf_counter() - started)
                with connect(srv.port, mode, certs.ca) as conn:
                    assert (conn.tls_version is not None) == (mode != "disable")
                    started = time.perf_counter()
                    for _ in range(args.statements):
                        conn.execute("SELECT 1")
                    per_s = args.statements / (time.perf_counter() - started)
                out = os.path.join(tmp, f"{mode}.backup")
                started = time.perf_counter()
                run_tool(
                    "rusty-db-backup",
                    *("--type", "full", "--output", out, "--host", "127.0.0.1", "--port", str(srv.port)),
                    *("-U", "bench", "--tls", mode, "--tls-ca-file", certs.ca),
                    env={"RUSTYDB_PASSWORD": PASSWORD, "RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""},
                    timeout=600,
                    check=True,
                )
                seconds = time.perf_counter() - started
                results[mode] = (statistics.median(times) * 1000, per_s, args.size_mb / seconds)
                os.unlink(out)

    print(f"{'':14}{'connect ms':>12}{'SELECT 1/s':>12}{'backup MB/s':>13}")
    for mode, (connect_ms, per_s, mb_s) in results.items():
        print(f"{mode:14}{connect_ms:12.2f}{per_s:12.0f}{mb_s:13.1f}")
    plain, tls = results["disable"], results["verify-full"]
    print(
        f"TLS / plaintext: connect x{tls[0] / plain[0]:.2f}, statements x{tls[1] / plain[1]:.2f}, "
        f"backup x{tls[2] / plain[2]:.2f} (same run, {args.size_mb} MB)"
    )


if __name__ == "__main__":
    main()
