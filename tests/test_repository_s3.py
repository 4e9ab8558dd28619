"""What only the S3 repository does: multipart uploads, checksums, credentials, buckets (against SeaweedFS)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

import botocore.exceptions
import crc32c
import pytest

from rustydb_server.repository import ObjectExists, RepositoryError, open_repository
from rustydb_server.repository.s3 import MIN_PART_SIZE, S3Repository


def test_url_prefix_keeps_keys_apart(seaweed, s3_bucket):
    a = open_repository(f"s3://{s3_bucket}/one", seaweed.settings())
    b = open_repository(f"s3://{s3_bucket}/one/two/", seaweed.settings())
    a.put_bytes("k", b"a")
    b.put_bytes("k", b"b")
    assert a.url == f"s3://{s3_bucket}/one" and b.url == f"s3://{s3_bucket}/one/two"
    raw = sorted(o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert raw == ["one/k", "one/two/k"]
    assert [i.key for i in a.list()] == ["k", "two/k"]
    assert [i.key for i in b.list()] == ["k"]


class CountingClient:
    """The real boto3 client, recording the parts sent through it (no mock: every call reaches the store)."""

    def __init__(self, client):
        self._client = client
        self.parts: list[tuple[int, int, str]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_part(self, **kw):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            field = next(k for k in ("ChecksumCRC32C", "ChecksumSHA256", "ContentMD5") if k in kw)
            self.parts.append((kw["PartNumber"], len(kw["Body"]), field, kw[field]))
            return self._client.upload_part(**kw)
        finally:
            with self._lock:
                self.active -= 1


EXPECTED = {
    "crc32c": ("ChecksumCRC32C", lambda b: base64.b64encode(crc32c.crc32c(b).to_bytes(4, "big")).decode()),
    "sha256": ("ChecksumSHA256", lambda b: base64.b64encode(hashlib.sha256(b).digest()).decode()),
    "md5": ("ContentMD5", lambda b: base64.b64encode(hashlib.md5(b).digest()).decode()),
}


@pytest.mark.parametrize("checksum", ["crc32c", "sha256", "md5"])
def test_large_object_goes_up_in_checksummed_parallel_parts(seaweed, s3_bucket, checksum):
    settings = seaweed.settings(
        repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=3, repository_s3_checksum=checksum
    )
    repo = open_repository(f"s3://{s3_bucket}/big", settings)
    counting = CountingClient(repo._client)
    repo._client = counting
    data = os.urandom(3 * MIN_PART_SIZE + 12345)
    info = repo.put_stream("backups/b/data", (data[i : i + 100_000] for i in range(0, len(data), 100_000)))
    assert info.size == len(data)
    assert sorted(p[0] for p in counting.parts) == [1, 2, 3, 4]
    assert [p[1] for p in sorted(counting.parts)] == [MIN_PART_SIZE] * 3 + [12345]
    field, expected = EXPECTED[checksum]
    for number, _size, sent_field, sent in counting.parts:
        part = data[(number - 1) * MIN_PART_SIZE : number * MIN_PART_SIZE]
        assert (sent_field, sent) == (field, expected(part))
    assert 1 <= counting.max_active <= 3
    head = seaweed.client().head_object(Bucket=s3_bucket, Key="big/backups/b/data")
    assert head["ETag"].strip('"').endswith("-4")  # a multipart object
    assert b"".join(repo.open_stream("backups/b/data")) == data
    assert (
        repo.get_range("backups/b/data", 3 * MIN_PART_SIZE - 10, 20)
        == data[3 * MIN_PART_SIZE - 10 : 3 * MIN_PART_SIZE + 10]
    )
    assert seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) in ([], None)


@pytest.mark.parametrize("checksum", ["crc32c", "md5"])
def test_bodies_are_not_hashed_again_for_the_signature(seaweed, s3_bucket, checksum):
    """Each part and single-request object is covered by its own checksum in the signed headers:
    the body is sent as UNSIGNED-PAYLOAD (no SHA-256 of every byte on top), and the store takes it."""
    settings = seaweed.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_checksum=checksum)
    repo = open_repository(f"s3://{s3_bucket}/unsigned-{checksum}", settings)
    sent: list[tuple[str, str, str | None]] = []

    def record(request, event_name, **kwargs):
        headers = request.headers
        checksum_header = next((h for h in ("x-amz-checksum-crc32c", "Content-MD5") if h in headers), None)
        sent.append((event_name.rsplit(".", 1)[-1], headers.get("X-Amz-Content-SHA256"), checksum_header))

    for operation in ("PutObject", "UploadPart"):
        repo._client.meta.events.register(f"before-send.s3.{operation}", record)
    data = os.urandom(MIN_PART_SIZE + 1000)
    repo.put_bytes("small", b"x" * 1000)
    repo.put_bytes("large", data)
    assert repo.get_bytes("small") == b"x" * 1000 and repo.get_bytes("large") == data
    assert sorted(op for op, _, _ in sent) == ["PutObject", "UploadPart", "UploadPart"]
    for _op, payload_hash, checksum_header in sent:
        assert payload_hash == b"UNSIGNED-PAYLOAD"
        assert checksum_header is not None


def test_the_store_rejects_a_part_whose_checksum_does_not_match(seaweed, s3_bucket):
    """What the per-part checksum buys: a part damaged on the way is refused by the store."""
    client = seaweed.client()
    up = client.create_multipart_upload(Bucket=s3_bucket, Key="x", ChecksumAlgorithm="SHA256")
    wrong = base64.b64encode(hashlib.sha256(b"what was meant").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.upload_part(
            Bucket=s3_bucket, Key="x", UploadId=up["UploadId"], PartNumber=1, Body=b"what arrived", ChecksumSHA256=wrong
        )
    assert e.value.response["Error"]["Code"] in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidRequest")
    client.abort_multipart_upload(Bucket=s3_bucket, Key="x", UploadId=up["UploadId"])


def test_interrupted_multipart_upload_is_aborted_and_nothing_listed(seaweed, s3_bucket):
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE))

    def chunks():
        yield os.urandom(MIN_PART_SIZE)
        yield os.urandom(MIN_PART_SIZE)
        raise OSError("the backup source failed")

    with pytest.raises(OSError):
        repo.put_stream("backups/b/f", chunks())
    assert list(repo.list()) == []
    assert not seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_upload_left_by_a_crash_is_aborted_by_the_next_put(seaweed, s3_bucket):
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE))
    client = seaweed.client()
    left = client.create_multipart_upload(Bucket=s3_bucket, Key="p/wal/seg", ChecksumAlgorithm="SHA256")
    client.upload_part(
        Bucket=s3_bucket,
        Key="p/wal/seg",
        UploadId=left["UploadId"],
        PartNumber=1,
        Body=b"x" * 100,
        ChecksumAlgorithm="SHA256",
    )
    assert list(repo.list()) == []  # an incomplete upload is never an object
    data = os.urandom(MIN_PART_SIZE + 1)
    repo.put_bytes("wal/seg", data, if_absent=True)
    assert repo.get_bytes("wal/seg") == data
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_if_absent_large_object_conflict(seaweed, s3_bucket):
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE))
    data = os.urandom(MIN_PART_SIZE + 100)
    repo.put_bytes("k", data, if_absent=True)
    assert repo.put_bytes("k", data, if_absent=True).size == len(data)
    other = bytearray(data)
    other[-1] ^= 1
    with pytest.raises(ObjectExists):
        repo.put_bytes("k", bytes(other), if_absent=True)
    assert repo.get_bytes("k") == data


def test_if_absent_race_is_refused_by_the_store(seaweed, s3_bucket):
    """An object that appears between the look and the write: If-None-Match makes the store refuse it."""
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings())
    real_stat = repo.stat
    calls = []

    def stat_then_someone_writes(key):
        info = real_stat(key)
        if not calls:
            calls.append(key)
            seaweed.client().put_object(Bucket=s3_bucket, Key=f"p/{key}", Body=b"written by another server")
        return info

    repo.stat = stat_then_someone_writes
    with pytest.raises(ObjectExists):
        repo.put_bytes("wal/seg", b"ours", if_absent=True)
    assert repo.get_bytes("wal/seg") == b"written by another server"


def test_wrong_credentials_are_a_clear_error_and_write_nothing(seaweed, s3_bucket, tmp_path):
    creds = seaweed.credentials_file(str(tmp_path), secret="not-the-secret")
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_credentials_file=creds))
    with pytest.raises(RepositoryError) as e:
        repo.put_bytes("wal/seg", b"x")
    message = str(e.value)
    assert "access denied" in message and f"s3://{s3_bucket}/p" in message and "wal/seg" in message
    assert "not-the-secret" not in message and "Traceback" not in message
    assert not seaweed.client().list_objects_v2(Bucket=s3_bucket).get("Contents")
    with pytest.raises(RepositoryError, match="access denied"):
        list(repo.list())


def test_credentials_file_that_works(seaweed, s3_bucket, tmp_path):
    creds = seaweed.credentials_file(str(tmp_path))
    repo = open_repository(f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_credentials_file=creds))
    repo.put_bytes("k", b"v")
    assert repo.get_bytes("k") == b"v"


def test_unreadable_credentials_file(seaweed, tmp_path):
    with pytest.raises(RepositoryError, match="credentials file"):
        open_repository("s3://b/p", seaweed.settings(repository_s3_credentials_file=str(tmp_path / "missing")))
    (tmp_path / "bad").write_text("[other]\nx = y\n")
    with pytest.raises(RepositoryError, match="no \\[default\\] section"):
        open_repository("s3://b/p", seaweed.settings(repository_s3_credentials_file=str(tmp_path / "bad")))


def test_missing_bucket_is_a_clear_error(seaweed):
    repo = open_repository("s3://no-such-bucket-here/p", seaweed.settings())
    for op in (lambda: repo.put_bytes("k", b"x"), lambda: repo.stat("k"), lambda: list(repo.list())):
        with pytest.raises(RepositoryError) as e:
            op()
        assert "bucket no-such-bucket-here does not exist" in str(e.value)


def test_unreachable_endpoint_is_a_clear_error(seaweed):
    from tests.support.servers import free_port

    repo = open_repository("s3://b/p", seaweed.settings(repository_s3_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(RepositoryError, match="cannot be reached"):
        repo.put_bytes("k", b"x")


@pytest.mark.parametrize("url", ["s3://", "s3:///p", "s3://key:secret@bucket/p"])
def test_bad_urls(url):
    with pytest.raises(RepositoryError) as e:
        open_repository(url)
    assert "secret" not in str(e.value)


def test_standard_aws_environment(seaweed, s3_bucket, monkeypatch):
    """Without settings the client takes endpoint, region and keys from the AWS environment."""
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    repo = S3Repository.from_url(f"s3://{s3_bucket}/env")
    repo.put_bytes("k", b"from the environment")
    assert repo.get_bytes("k") == b"from the environment"


def test_a_read_fails_when_the_object_is_replaced_under_it(seaweed, s3_prefix_url, monkeypatch):
    """Ranged reads carry If-Match: a stream never mixes two versions of an object."""
    from rustydb_server.repository import s3 as s3mod

    monkeypatch.setattr(s3mod, "READ_RANGE", 1 << 20)
    repo = open_repository(s3_prefix_url, seaweed.settings(repository_s3_concurrency=1))
    repo.put_bytes("k", b"a" * (3 << 20))
    stream = repo.open_stream("k", chunk_size=1 << 20)
    assert next(stream) == b"a" * (1 << 20)
    repo.put_bytes("k", b"b" * (3 << 20))
    with pytest.raises(RepositoryError, match="replaced while it was being read"):
        list(stream)


def test_parallel_ranged_read_returns_the_bytes_in_order(seaweed, s3_prefix_url, monkeypatch):
    from rustydb_server.repository import s3 as s3mod

    monkeypatch.setattr(s3mod, "READ_RANGE", 256 << 10)
    repo = open_repository(s3_prefix_url, seaweed.settings(repository_s3_concurrency=4))
    data = os.urandom((3 << 20) + 777)
    repo.put_bytes("k", data)
    chunks = list(repo.open_stream("k", chunk_size=100_000))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 100_000


def test_store_stopped_during_an_upload(seaweed, s3_bucket):
    """The store goes down part-way through a multipart upload: a clear error, nothing listed once it is
    back, and the next upload of the key cleans up what the first one left."""
    repo = open_repository(
        f"s3://{s3_bucket}/p", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=1)
    )
    data = os.urandom(3 * MIN_PART_SIZE)

    def chunks():
        yield data[:MIN_PART_SIZE]
        yield data[MIN_PART_SIZE : MIN_PART_SIZE + 1]  # the first part is under way now
        seaweed.stop()
        yield data[MIN_PART_SIZE + 1 :]

    try:
        with pytest.raises(RepositoryError) as e:
            repo.put_stream("backups/b/file", chunks())
        assert "cannot be reached" in str(e.value) and "backups/b/file" in str(e.value)
    finally:
        seaweed.start()
    assert list(repo.list()) == []
    assert repo.stat("backups/b/file") is None
    # the abort could not reach the store: the upload is left, never an object
    left = seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert [u["Key"] for u in left] == ["p/backups/b/file"]
    repo.put_bytes("backups/b/file", data)
    assert repo.get_bytes("backups/b/file") == data
    assert not seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
