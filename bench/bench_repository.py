"""Repository benchmark against a local SeaweedFS: prints figures; never run as a test.

    python bench/bench_repository.py [--quick] [--size-mb 256] [--runs 3] [--archive-seconds 20]

Measures, in one run, against one SeaweedFS (`weed mini`, loopback only)
started here:
  1. the same random bytes (--size-mb) put and read back through
     S3Repository (multipart, parts of repository_s3_part_size sent by
     repository_s3_concurrency threads, a CRC32C per part (and once with
     SHA-256); reads: parallel ranges), next to a plain boto3 put_object / get_object of the same bytes
     (one request each), and through LocalRepository (a directory: written,
     fsynced, renamed); MB/s, median of --runs, and the repository's rate as
     a share of the plain one's;
  2. WAL archive throughput: a server under a steady insert load (16 MB
     segments, 4 writers) archiving to s3://bucket/prefix, then the same to a
     local directory: segments/s from the times the archiver marked segments
     .done, and how long the backlog took to drain once the load stopped.
The machine is shared (2 cores, other work running): compare figures of the
same run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package

MB = 1024 * 1024


def median_rate(size: int, fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return size / MB / statistics.median(times)


def bench_objects(store, work: str, size_mb: int, runs: int, part_size: int, concurrency: int) -> None:
    from rustydb_server.repository import LocalRepository, open_repository

    bucket = store.new_bucket()
    client = store.client()
    data = os.urandom(size_mb * MB)
    size = len(data)
    settings = store.settings(repository_s3_part_size=part_size, repository_s3_concurrency=concurrency)
    repo = open_repository(f"s3://{bucket}/repo", settings)
    local = LocalRepository(os.path.join(work, "local-repo"))

    def plain_put():
        client.put_object(Bucket=bucket, Key="plain/object", Body=data)

    def plain_get():
        body = client.get_object(Bucket=bucket, Key="plain/object")["Body"].read()
        assert len(body) == size

    def repo_put():
        repo.put_bytes("backups/b/object", data)

    def repo_stream_put():
        repo.put_stream("backups/b/streamed", (data[i : i + MB] for i in range(0, size, MB)))

    sha_repo = open_repository(f"s3://{bucket}/repo-sha", dict(settings, repository_s3_checksum="sha256"))

    def repo_put_sha256():
        sha_repo.put_bytes("backups/b/object", data)

    def repo_get():
        got = sum(len(c) for c in repo.open_stream("backups/b/object"))
        assert got == size

    def local_put():
        local.put_bytes("backups/b/object", data)

    def local_get():
        assert sum(len(c) for c in local.open_stream("backups/b/object")) == size

    print(
        f"\n== objects of {size_mb} MB (part size {part_size // MB} MB, {concurrency} in parallel, "
        f"crc32c per part; median of {runs})"
    )
    rates = {}
    for name, fn in [
        ("plain boto3 put_object", plain_put),
        ("S3Repository.put_bytes", repo_put),
        ("S3Repository.put_stream (1 MB chunks)", repo_stream_put),
        ("S3Repository.put_bytes, sha256 per part", repo_put_sha256),
        ("LocalRepository.put_bytes (fsync)", local_put),
        ("plain boto3 get_object", plain_get),
        ("S3Repository.open_stream", repo_get),
        ("LocalRepository.open_stream", local_get),
    ]:
        rates[name] = median_rate(size, fn, runs)
        print(f"  {name:<40} {rates[name]:8.1f} MB/s")
    put_ratio = rates["S3Repository.put_bytes"] / rates["plain boto3 put_object"]
    get_ratio = rates["S3Repository.open_stream"] / rates["plain boto3 get_object"]
    print(f"  repository put / plain put: {put_ratio:.0%}   repository get / plain get: {get_ratio:.0%}")


def bench_archive(store, work: str, seconds: float) -> None:
    from rustydb_client import client as rc
    from tests.support.servers import ServerProcess

    bucket = store.new_bucket()
    conf = os.path.join(work, "archive.toml")
    with open(conf, "w") as f:
        f.write(
            f"repository_s3_endpoint_url = '{store.endpoint_url}'\n"
            "repository_s3_force_path_style = true\n"
            f"repository_s3_credentials_file = '{store.credentials_path}'\n"
        )
    print(f"\n== WAL archive throughput (16 MB segments, 4 writers, {seconds:.0f} s of load)")
    for label, dest in [("s3", f"s3://{bucket}/rustydb"), ("local directory", os.path.join(work, "archive-dir"))]:
        srv = ServerProcess(os.path.join(work, f"data-{label.split()[0]}"), extra_args=["--config", conf])
        srv.start()
        try:
            srv.sql("ALTER SYSTEM SET archive_mode = on;")
            srv.sql(f"ALTER SYSTEM SET archive_dest = '{dest}';")
            srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);")
            status_dir = os.path.join(srv.data_dir, "wal", "archive_status")
            stop = threading.Event()

            def writer(wid, port=srv.port, stop=stop):
                conn = rc.connect(port=port)
                blob = os.urandom(2000).hex()
                n = wid * 100_000_000
                while not stop.is_set():
                    conn.execute("INSERT INTO t VALUES " + ",".join(f"({n + k}, x'{blob}')" for k in range(20)))
                    n += 20
                conn.close()

            threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
            done_at: dict[str, float] = {}
            t0 = time.time()
            for t in threads:
                t.start()
            while time.time() - t0 < seconds:
                for n in os.listdir(status_dir):
                    if n.endswith(".done") and n not in done_at:
                        try:
                            done_at[n] = os.stat(os.path.join(status_dir, n)).st_mtime
                        except FileNotFoundError:
                            pass
                time.sleep(0.1)
            stop.set()
            for t in threads:
                t.join()
            times = sorted(done_at.values())
            waiting = srv.archive_status()["segments_waiting"]
            t1 = time.time()
            srv.wait_archived(timeout=300.0)
            drain = time.time() - t1
            if len(times) >= 2 and times[-1] > times[0]:
                rate = (len(times) - 1) / (times[-1] - times[0])
                shown = f"{rate:.2f} segments/s = {rate * 16:.1f} MB/s of WAL"
            else:
                shown = f"{len(times)} segment(s) archived during the load: too few for a rate"
            print(
                f"  {label:<16} {shown}; backlog {waiting} segment(s) drained in {drain:.1f} s"
                + (f" ({waiting / drain:.2f} segments/s)" if waiting and drain > 0 else "")
            )
        finally:
            srv.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 MB objects, 1 run, 10 s of archive load")
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--part-size-mb", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--archive-seconds", type=float, default=20.0)
    p.add_argument("--skip-archive", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.runs, args.archive_seconds = 64, 1, 10.0

    from tests.support.seaweed import SeaweedS3, why_weed_cannot_run

    why = why_weed_cannot_run()
    if why:
        print(f"cannot run: {why}")
        return 1
    work = tempfile.mkdtemp(prefix="bench-repository-")
    store = SeaweedS3(os.path.join(work, "seaweedfs"))
    store.start()
    try:
        bench_objects(store, work, args.size_mb, args.runs, args.part_size_mb * MB, args.concurrency)
        if not args.skip_archive:
            bench_archive(store, work, args.archive_seconds)
    finally:
        store.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
