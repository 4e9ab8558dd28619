"""Repository benchmark against a local SeaweedFS: prints figures; never run as a test.

    python bench/bench_repository.py [--quick] [--size-mb 256] [--runs 3] [--archive-seconds 20]
        [--backup-runs 3] [--skip-objects] [--skip-backup] [--skip-restore] [--skip-archive]

Measures, in one run, against one SeaweedFS (`weed mini`, loopback only)
started here:
  1. the same random bytes (--size-mb) put and read back through
     S3Repository (multipart, parts of repository_s3_part_size sent by
     repository_s3_concurrency threads, a CRC32C per part (and once with
     SHA-256; and fed 1 MB at a time to open_upload, the streamed upload a
     backup into S3 goes through); reads: parallel ranges), next to a plain
     boto3 put_object / get_object of the same bytes
     (one request each), and through LocalRepository (a directory: written,
     fsynced, renamed); MB/s, median of --runs, and the repository's rate as
     a share of the plain one's;
  2. a backup the server takes while backup_repositories = ['s3://...']: the
     time from the backup's start until it is complete and listed in the
     bucket's catalog (streamed into the bucket as it is written; "via"
     says whether the streamed upload did it or the background copy had to),
     in MB/s of the backup file, next to a plain boto3 upload_file and
     put_object of the same file (median of --backup-runs; the times come from the
     server's log lines, so waiting for the backup costs the server nothing), the
     CPU seconds of the server and the store, and where the streamed upload's
     time went (its first part, how much the store had not yet taken at the
     backup's last byte, the tail after it, the bucket's catalog); then
     (unless --skip-restore) `rusty-db-restore --repo
     s3://...` of it next to a plain download of the same object in a new
     process (python -c of boto3's download_file, and of get_object copied to
     a file: like the tool, they start Python and boto3 and write a file), a
     plain get_object into memory in this process (no start, no file), and
     `rusty-db-restore --input` of the same file on local disk (each restore
     tool run includes starting Python; interleaved rounds, median of --runs);
     then an incremental on it, and the
     restore of the chain from the bucket next to a plain download_file of
     both objects in a new process. Run it at --size-mb 1024 too: the tool's
     fixed start (Python, imports, the S3 client) weighs less there;
  3. WAL archive throughput: a server under a steady insert load (16 MB
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
import subprocess
import sys
import tempfile
import time
import uuid

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

    def repo_streamed_upload():
        up = repo.open_upload("backups/b/teed")
        for i in range(0, size, MB):
            up.write(data[i : i + MB])
        up.finish()

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
        ("S3Repository.open_upload (1 MB writes)", repo_streamed_upload),
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


def _http(server, method: str, path: str, body=None):
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LogWatch:
    """Reads the server's log (JSON lines) as it grows: the times come from the lines' own
    timestamps, so waiting for a backup costs the server nothing (polling its HTTP API
    every 20 ms cost it 0.2 CPU-s of a 3 s backup, taken from the store beside it)."""

    def __init__(self, path: str):
        self.path = path
        self._offset = os.path.getsize(path) if os.path.exists(path) else 0
        self._rest = b""

    def wait_for(self, timeout: float = 600.0, **match) -> dict:
        import json

        deadline = time.monotonic() + timeout
        while True:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                more = f.read()
            self._offset += len(more)
            lines = (self._rest + more).split(b"\n")
            self._rest = lines.pop()
            for line in lines:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if all(doc.get(k) == v for k, v in match.items()):
                    return doc
                if doc.get("event") == "backup failed" and doc.get("backup_id") == match.get("backup_id"):
                    raise RuntimeError(f"the backup failed: {doc.get('error')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line {match} in {self.path} after {timeout:.0f} s")
            time.sleep(0.01)


def log_time(doc: dict) -> float:
    """A log line's timestamp (UTC, ISO 8601) as time.time()."""
    from datetime import datetime

    return datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()


def bench_backup_restore(
    store, work: str, size_mb: int, runs: int, backup_runs: int = 3, skip_restore: bool = False
) -> None:
    from rustydb_client import client as rc
    from tests.support.servers import ServerProcess, run_tool

    bucket = store.new_bucket()
    url = f"s3://{bucket}/rustydb"
    srv = ServerProcess(os.path.join(work, "data-backup"), env=store.env())
    srv.start()
    try:
        srv.sql("ALTER SYSTEM SET repository_s3_force_path_style = on;")
        srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);")
        conn = rc.connect(port=srv.port)
        rows_per_mb = 16  # 64 KiB of random bytes a row: the backup does not compress
        for n in range(size_mb):
            values = ",".join(f"({n * rows_per_mb + k}, randomblob(65536))" for k in range(rows_per_mb))
            conn.execute(f"INSERT INTO t VALUES {values}")
        conn.close()
        srv.sql(f"ALTER SYSTEM SET backup_repositories = '{url}';")

        client = store.client()
        # Each run: a backup into the bucket, then plain uploads of the same file at once
        # (the machine is shared: each run's ratio compares figures taken moments apart).
        t_locals, t_s3s, t_upload_files, t_puts, vias = [], [], [], [], []
        cpu_backup: list[tuple[float, float]] = []  # (server, store) CPU seconds during each backup
        cpu_put: list[float] = []  # the store's CPU seconds during each plain put_object
        timelines: list[dict] = []  # where each streamed upload's time went (the server's log line)

        def plain_uploads(path: str) -> None:
            t = time.perf_counter()
            client.upload_file(path, bucket, "plain/upload_file")
            t_upload_files.append(time.perf_counter() - t)
            with open(path, "rb") as f:
                data = f.read()
            store_cpu = cpu_seconds(store.proc.pid)
            t = time.perf_counter()
            client.put_object(Bucket=bucket, Key="plain/put_object", Body=data)
            t_puts.append(time.perf_counter() - t)
            cpu_put.append(cpu_seconds(store.proc.pid) - store_cpu)

        path = None
        for run in range(backup_runs):
            # Every other run, the plain uploads (of the previous backup's file: the same
            # size, nothing was written since) go first: whatever either side leaves running
            # behind it (the store's clean-up, the file's write-back) weighs on both alike.
            plain_first = run % 2 == 1
            if plain_first:
                plain_uploads(path)
            watch = LogWatch(srv.log_path)
            cpu0 = (cpu_seconds(srv.proc.pid), cpu_seconds(store.proc.pid))
            t0 = time.time()
            started = _http(srv, "POST", "/api/v1/admin/backup", {"backup_type": "full"})
            backup_id = started["backup_id"]
            snapshot = watch.wait_for(event="snapshot taken", backup_id=backup_id)
            completed = watch.wait_for(event="backup completed", backup_id=backup_id)
            if completed.get("streamed", "").startswith("given up"):
                listed = watch.wait_for(event="backup copied to a repository", backup_id=backup_id)
                vias.append("copy")
            else:
                listed = watch.wait_for(event="backup streamed into a repository", backup_id=backup_id)
                vias.append("stream")
                timelines.append(dict(listed, start_ms=snapshot.get("start_ms")))
            t_s3s.append(log_time(listed) - t0)
            cpu_backup.append((cpu_seconds(srv.proc.pid) - cpu0[0], cpu_seconds(store.proc.pid) - cpu0[1]))
            t_locals.append(log_time(completed) - t0)
            entry = _http(srv, "GET", f"/api/v1/admin/backup/{backup_id}")
            assert entry["repositories"][url]["state"] == "copied"
            path = entry["location"]
            size = os.path.getsize(path)
            listed = client.get_object(Bucket=bucket, Key="rustydb/catalog/index.json")["Body"].read()
            assert backup_id.encode() in listed, "the backup is not listed in the bucket's catalog"
            if not plain_first:
                plain_uploads(path)
        t_local, t_s3 = statistics.median(t_locals), statistics.median(t_s3s)
        t_upload_file, t_put = statistics.median(t_upload_files), statistics.median(t_puts)
        run_ratios = [min(u, p) / s3 for u, p, s3 in zip(t_upload_files, t_puts, t_s3s)]

        mb = size / MB
        rate = {
            "backup, local file only (backup start to completed)": mb / t_local,
            "backup into s3:// (backup start to copy listed)": mb / t_s3,
            "plain boto3 upload_file of the same file": mb / t_upload_file,
            "plain boto3 put_object of the same bytes": mb / t_put,
        }
        print(
            f"\n== a {mb:.0f} MB backup taken by the server with backup_repositories = ['s3://...'] "
            f"(median of {backup_runs}, each next to plain uploads of its file)"
        )
        for name, r in rate.items():
            print(f"  {name:<56} {r:8.1f} MB/s")
        plain_up = max(
            rate["plain boto3 upload_file of the same file"], rate["plain boto3 put_object of the same bytes"]
        )
        print(
            f"  backup into s3 / best plain upload: {mb / t_s3 / plain_up:.0%} of the medians; per run: "
            + ", ".join(f"{r:.0%}" for r in run_ratios)
            + f"   (into the bucket via: {', '.join(str(v) for v in vias)}; before backups streamed into an S3 "
            "first repository, a local backup then a copy: 55%)"
        )
        # The floor on a machine that runs the store too: the CPU seconds the server and
        # the store spent during a backup, over the cores there are, against the wall time.
        srv_cpu = statistics.median(c[0] for c in cpu_backup)
        store_cpu = statistics.median(c[1] for c in cpu_backup)
        cores = os.cpu_count() or 1
        print(
            f"  CPU during a backup into s3 (medians): server {srv_cpu:.2f} s + store {store_cpu:.2f} s = "
            f"{(srv_cpu + store_cpu) / cores:.2f} s of {cores} cores' time, in {t_s3:.2f} s of wall time; "
            f"during a plain put_object: store {statistics.median(cpu_put):.2f} s in {t_put:.2f} s"
        )
        if timelines:
            med = {k: statistics.median(t[k] for t in timelines) for k in timelines[0] if k.endswith(("_s", "_ms"))}
            behind = statistics.median(t["behind_bytes"] for t in timelines) / MB
            read_back = [round(t.get("read_back_bytes", 0) / MB) for t in timelines]
            print(
                f"  the streamed upload (medians): start: snapshot {med['start_ms']:.0f} ms, first part sent "
                f"{med['first_part_s'] * 1000:.0f} ms after the upload opened; when the backup's last byte was "
                f"written, {behind:.0f} MB were not yet taken by the store; tail: {med['tail_s']:.2f} s from the "
                f"last byte until the object was complete (of which complete + size check {med['complete_s']:.2f} s), "
                f"then the bucket's catalog {med['catalog_s']:.2f} s; read back from the file past the wait budget "
                f"(MB, per backup): {', '.join(map(str, read_back))}"
            )

        if skip_restore:
            return
        key = f"rustydb/backups/{backup_id}/{backup_id}.backup"
        # A chain: an incremental of an eighth of the data on top of the full.
        conn = rc.connect(port=srv.port)
        for n in range(size_mb, size_mb + max(1, size_mb // 8)):
            values = ",".join(f"({n * rows_per_mb + k}, randomblob(65536))" for k in range(rows_per_mb))
            conn.execute(f"INSERT INTO t VALUES {values}")
        conn.close()
        incr_id = _http(srv, "POST", "/api/v1/admin/backup", {"backup_type": "incremental", "wait": True})["backup_id"]
        while True:
            entry = next(e for e in _http(srv, "GET", "/api/v1/admin/backups")["backups"] if e["backup_id"] == incr_id)
            if (entry.get("repositories") or {}).get(url, {}).get("state") == "copied":
                break
            time.sleep(0.05)
        incr_key = f"rustydb/backups/{incr_id}/{incr_id}.backup"
        chain_size = size + client.head_object(Bucket=bucket, Key=incr_key)["ContentLength"]
        srv.stop()

        fetched = os.path.join(work, "fetched.backup")
        env = dict(os.environ, **store.env())
        boto = "import sys, shutil, boto3; from botocore.config import Config; "
        boto += "c = boto3.client('s3', config=Config(s3={'addressing_style': 'path'})); "
        scripts = {
            # What an operator's own download costs in a new process (Python, boto3 and its
            # client set up, the object written to a file): what the tool also pays.
            "download_file": boto + "c.download_file(sys.argv[1], sys.argv[3], sys.argv[2])",
            # The same with one get_object streamed to the file (no parallel ranges).
            "get_object": boto + "b = c.get_object(Bucket=sys.argv[1], Key=sys.argv[3])['Body']; "
            "f = open(sys.argv[2], 'wb'); shutil.copyfileobj(b, f, 8 << 20); f.close()",
            # Both objects of the chain, one after the other.
            "chain": boto
            + "[c.download_file(sys.argv[1], k, f'{sys.argv[2]}.{i}') for i, k in enumerate(sys.argv[3:])]",
        }

        def plain(name, *keys):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", scripts[name], bucket, fetched, *keys], env=env, check=True)
            took = time.perf_counter() - t
            for leftover in [fetched] + [f"{fetched}.{i}" for i in range(len(keys))]:
                if os.path.exists(leftover):
                    os.unlink(leftover)
            return took

        def in_process():
            t = time.perf_counter()
            got = len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert got == size
            return time.perf_counter() - t

        def restore(*args):
            target = os.path.join(work, f"restored-{uuid.uuid4().hex[:6]}", "data")
            t = time.perf_counter()
            run_tool("rusty-db-restore", *args, "--data-dir", target, env=store.env(), timeout=900, check=True)
            took = time.perf_counter() - t
            shutil.rmtree(os.path.dirname(target), ignore_errors=True)
            return took

        # Interleaved rounds, medians: on a shared machine a single run of each swings widely.
        times: dict[str, list[float]] = {}
        for _ in range(runs):
            for name, fn in (
                ("get_process", lambda: plain("download_file", key)),
                ("get_object_process", lambda: plain("get_object", key)),
                ("get", in_process),
                ("restore_s3", lambda: restore("--repo", url, "--backup", backup_id)),
                ("restore_local", lambda: restore("--input", path)),
                ("chain_process", lambda: plain("chain", key, incr_key)),
                ("restore_chain", lambda: restore("--repo", url, "--backup", incr_id)),
            ):
                times.setdefault(name, []).append(fn())
        med = {name: statistics.median(v) for name, v in times.items()}
        t_get, t_get_process, t_get_object_process = med["get"], med["get_process"], med["get_object_process"]
        t_restore_s3, t_restore_local = med["restore_s3"], med["restore_local"]
        t_chain_process, t_restore_chain = med["chain_process"], med["restore_chain"]
    finally:
        srv.stop()

    mb = size / MB
    rate = {
        "rusty-db-restore --repo s3://...": mb / t_restore_s3,
        "rusty-db-restore --input FILE (local)": mb / t_restore_local,
        "plain boto3 get_object of the same object, in this process": mb / t_get,
        "plain boto3 download_file to a file, in a new process": mb / t_get_process,
        "plain boto3 get_object to a file, in a new process": mb / t_get_object_process,
    }
    print(f"\n== the last of those backups restored (downloads and restores: median of {runs} interleaved rounds)")
    for name, r in rate.items():
        print(f"  {name:<56} {r:8.1f} MB/s")
    # Like with like: a new process that starts Python and boto3, then reads the object into a
    # file; the best of the two plain downloads. The in-process get_object (into memory, no
    # start, no file) is printed beside it: at a small size the tool's start dominates.
    t_plain_process = min(t_get_process, t_get_object_process)
    print(
        f"  restore from s3 / best plain download in a new process: {t_plain_process / t_restore_s3:.0%}"
        f"   / plain get_object in this process: {t_get / t_restore_s3:.0%}"
        f"   / restore of the local file: {t_restore_local / t_restore_s3:.0%}"
    )
    print(
        f"  a chain (the full + a {(chain_size - size) / MB:.0f} MB incremental): rusty-db-restore --repo s3:// "
        f"{chain_size / MB / t_restore_chain:.1f} MB/s, plain download_file of both in a new process "
        f"{chain_size / MB / t_chain_process:.1f} MB/s: {t_chain_process / t_restore_chain:.0%}"
    )
    print(
        f"  times: restore --repo s3 {t_restore_s3:.2f} s, restore --input {t_restore_local:.2f} s, "
        f"download_file process {t_get_process:.2f} s, get_object process {t_get_object_process:.2f} s, "
        f"get_object in process {t_get:.2f} s"
    )


def bench_archive(store, work: str, seconds: float) -> None:
    from bench.bench_archive import archive_under_load
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
            done_at, _, _ = archive_under_load(srv.port, status_dir, seconds)
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
    p.add_argument("--backup-runs", type=int, default=3, help="backups into S3 timed (each next to plain uploads)")
    p.add_argument("--part-size-mb", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--archive-seconds", type=float, default=20.0)
    p.add_argument("--skip-archive", action="store_true")
    p.add_argument("--skip-objects", action="store_true")
    p.add_argument("--skip-backup", action="store_true")
    p.add_argument("--skip-restore", action="store_true", help="the backups into S3 only, no restores")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.runs, args.archive_seconds, args.backup_runs = 64, 1, 10.0, 1

    from tests.support.seaweed import SeaweedS3, why_weed_cannot_run

    why = why_weed_cannot_run()
    if why:
        print(f"cannot run: {why}")
        return 1
    work = tempfile.mkdtemp(prefix="bench-repository-")
    store = SeaweedS3(os.path.join(work, "seaweedfs"))
    store.start()
    try:
        if not args.skip_objects:
            bench_objects(store, work, args.size_mb, args.runs, args.part_size_mb * MB, args.concurrency)
        if not args.skip_backup:
            bench_backup_restore(store, work, args.size_mb, args.runs, args.backup_runs, args.skip_restore)
        if not args.skip_archive:
            bench_archive(store, work, args.archive_seconds)
    finally:
        store.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
