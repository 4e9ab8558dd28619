"""S3Repository.open_upload: a multipart upload fed as the bytes are produced (against SeaweedFS)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rustydb_server.repository import RepositoryError, open_repository
from rustydb_server.repository.s3 import MIN_PART_SIZE
from tests.support.servers import free_port
from tests.test_repository_s3 import EXPECTED, CountingClient


def no_uploads(seaweed, bucket) -> bool:
    return not seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_streamed_upload_sends_checksummed_parts_as_the_bytes_come(seaweed, s3_bucket):
    repo = open_repository(
        f"s3://{s3_bucket}/s", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=2)
    )
    counting = CountingClient(repo._client)
    repo._client = counting
    data = os.urandom(3 * MIN_PART_SIZE + 777)
    up = repo.open_upload("backups/b/b.backup", if_absent=True)
    buffer = bytearray()
    for i in range(0, len(data), 300_001):  # odd pieces, some in a buffer the producer refills
        piece = data[i : i + 300_001]
        if i % 2:
            buffer[:] = piece
            up.write(buffer)
            buffer[:] = b"\0" * len(buffer)
        else:
            up.write(memoryview(piece))
    assert not up.given_up
    up.end()  # the last, short part goes as soon as the queue has room, before finish waits
    info = up.finish()
    assert info.size == len(data) == up.size
    assert [p[1] for p in sorted(counting.parts)] == [MIN_PART_SIZE] * 3 + [777]
    field, expected = EXPECTED["crc32c"]
    for number, _size, sent_field, sent in counting.parts:
        assert (sent_field, sent) == (field, expected(data[(number - 1) * MIN_PART_SIZE : number * MIN_PART_SIZE]))
    assert b"".join(repo.open_stream("backups/b/b.backup")) == data
    assert no_uploads(seaweed, s3_bucket)


def test_a_long_stream_fills_the_part_buffers_again_only_once_the_store_has_taken_them(seaweed, s3_bucket):
    """Many more parts than buffers: each buffer is filled again while other parts are still
    on their way; every part still reaches the store as it was written, checksum and all."""
    repo = open_repository(
        f"s3://{s3_bucket}/long", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=2)
    )
    counting = CountingClient(repo._client)
    bodies: set[int] = set()
    upload_part = counting.upload_part

    def recording_upload_part(**kw):
        bodies.add(id(kw["Body"]))
        return upload_part(**kw)

    counting.upload_part = recording_upload_part
    repo._client = counting
    parts = 12
    data = os.urandom(parts * MIN_PART_SIZE + 4321)
    up = repo.open_upload("backups/l/l.backup")
    for i in range(0, len(data), 1 << 20):
        up.write(data[i : i + (1 << 20)])
    info = up.finish()
    assert info.size == len(data)
    assert [p[0] for p in sorted(counting.parts)] == list(range(1, parts + 2))
    field, expected = EXPECTED["crc32c"]
    for number, _size, sent_field, sent in counting.parts:
        assert (sent_field, sent) == (field, expected(data[(number - 1) * MIN_PART_SIZE : number * MIN_PART_SIZE]))
    assert len(bodies) <= 2 * 2 + 2 + 1  # the part buffers (2 x concurrency + 2) and the last, short part
    assert b"".join(repo.open_stream("backups/l/l.backup")) == data
    timeline = up.timeline()
    assert timeline["first_part_s"] >= 0 and timeline["tail_s"] >= timeline["complete_s"] >= 0
    assert 0 <= timeline["behind_bytes"] <= len(data) and timeline["read_back_bytes"] == 0
    assert no_uploads(seaweed, s3_bucket)


def test_a_small_stream_is_one_part_and_an_existing_key_is_never_replaced(seaweed, s3_bucket):
    repo = open_repository(f"s3://{s3_bucket}/small", seaweed.settings())
    up = repo.open_upload("k", if_absent=True)
    up.write(b"hello")
    up.end()
    up.end()  # twice: still one part
    assert up.finish().size == 5
    again = repo.open_upload("k", if_absent=True)
    again.write(b"other")
    with pytest.raises(RepositoryError, match="already exists"):
        again.finish()
    assert repo.get_bytes("k") == b"hello"
    assert no_uploads(seaweed, s3_bucket)


def test_an_aborted_stream_leaves_nothing(seaweed, s3_bucket):
    repo = open_repository(f"s3://{s3_bucket}/a", seaweed.settings(repository_s3_part_size=MIN_PART_SIZE))
    up = repo.open_upload("backups/x/x.backup")
    up.write(os.urandom(2 * MIN_PART_SIZE + 5))
    up.abort("the backup failed")
    up.write(b"more")  # after giving up, writes are dropped: the producer goes on
    assert up.join(60)  # the upload is aborted in the store
    assert not seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    with pytest.raises(RepositoryError, match="the backup failed"):
        up.finish()
    assert list(repo.list()) == []
    assert no_uploads(seaweed, s3_bucket)


def test_an_unreachable_store_gives_the_stream_up_without_failing_the_producer(seaweed, s3_bucket):
    settings = seaweed.settings(
        repository_s3_endpoint_url=f"http://127.0.0.1:{free_port()}", repository_s3_part_size=MIN_PART_SIZE
    )
    up = open_repository(f"s3://{s3_bucket}/down", settings).open_upload("k", wait_budget=30)
    up.write(os.urandom(MIN_PART_SIZE))
    with pytest.raises(RepositoryError, match="cannot be reached"):
        up.finish()
    assert up.given_up


def _fell_behind(repo, data: bytes, part: int):
    """A streamed upload whose store took its first part, then fell behind the producer
    (a wait budget of 0: the first full queue is past it)."""
    up = repo.open_upload("backups/d/d.backup", wait_budget=0)
    up.write(data[:part])
    deadline = time.monotonic() + 60
    while up._acked < part:  # the store has taken part 1
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for i in range(part, len(data), 1 << 20):
        up.write(data[i : i + (1 << 20)])
    up.end()
    assert up.detached_at is not None and not up.given_up
    assert up.detached_at % part == 0 and part <= up.detached_at < len(data)
    return up


def test_a_store_slower_than_the_stream_keeps_what_it_took_and_reads_the_rest_back(seaweed, s3_bucket, tmp_path):
    """Past the wait budget, a store that still takes parts is not given up: the parts sent stay,
    and finish reads the rest back from the complete file (nothing is uploaded twice)."""
    part = MIN_PART_SIZE
    repo = open_repository(
        f"s3://{s3_bucket}/behind", seaweed.settings(repository_s3_part_size=part, repository_s3_concurrency=1)
    )
    counting = CountingClient(repo._client)
    repo._client = counting
    data = os.urandom(6 * part + 999)
    up = _fell_behind(repo, data, part)
    path = tmp_path / "d.backup"
    path.write_bytes(data)
    assert up.finish(rest_from=str(path)).size == len(data)
    assert up.timeline()["read_back_bytes"] == len(data) - up.detached_at
    assert sorted(p[0] for p in counting.parts) == list(range(1, 8))  # each part once
    assert b"".join(repo.open_stream("backups/d/d.backup")) == data
    assert no_uploads(seaweed, s3_bucket)


def test_a_stream_that_fell_behind_with_nothing_to_read_back_is_given_up(seaweed, s3_bucket, tmp_path):
    repo = open_repository(
        f"s3://{s3_bucket}/behind2",
        seaweed.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=1),
    )
    data = os.urandom(6 * MIN_PART_SIZE + 1)
    up = _fell_behind(repo, data, MIN_PART_SIZE)
    with pytest.raises(RepositoryError, match="cannot be read back"):
        up.finish()
    up2 = _fell_behind(repo, data, MIN_PART_SIZE)
    short = tmp_path / "short.backup"
    short.write_bytes(data[:-1])  # not the bytes written
    with pytest.raises(RepositoryError, match="cannot be read back"):
        up2.finish(rest_from=str(short))
    assert up.join(60) and up2.join(60)
    assert list(repo.list()) == []
    assert no_uploads(seaweed, s3_bucket)


def test_a_store_that_stops_answering_is_given_up_after_the_wait_budget(seaweed_own):
    store = seaweed_own
    bucket = store.new_bucket()
    repo = open_repository(
        f"s3://{bucket}/slow", store.settings(repository_s3_part_size=MIN_PART_SIZE, repository_s3_concurrency=1)
    )
    up = repo.open_upload("backups/s/s.backup", wait_budget=1.0)
    part = os.urandom(MIN_PART_SIZE)
    up.write(part)
    os.killpg(store.proc.pid, signal.SIGSTOP)  # the store hangs: requests neither answer nor fail
    try:
        for _ in range(8):  # more parts than the queue and the sender hold
            up.write(part)
        assert up.given_up
        assert "repository_s3_stream_wait" in up.error
        assert up.waited >= 1.0
    finally:
        os.killpg(store.proc.pid, signal.SIGCONT)
    with pytest.raises(RepositoryError, match="given up"):
        up.finish()
    assert list(repo.list()) == []
    assert no_uploads(store, bucket)


def test_the_replicator_waits_for_a_streamed_upload_and_keeps_the_order(tmp_path):
    """While a backup streams into a repository, no copy of it (nor of a later backup) starts there."""
    import trio

    from rustydb_server.backup.catalog import Catalog
    from rustydb_server.backup.replicate import Replicator

    catalog = Catalog(str(tmp_path))
    for b in ("a", "b"):
        catalog.add(backup_id=b, status="completed", repositories={"s3://x/p": {"state": "pending"}, "/r": {}})
    catalog.update_repository("a", "/r", state="pending")
    replicator = Replicator(catalog, {"backup_repositories": ["s3://x/p", "/r"]})
    replicator.begin_stream("s3://x/p", "a")
    assert replicator.due() == {"/r": ["a"]}  # the other repository is not held up

    async def main():
        replicator.stream_ended("s3://x/p", "a")  # given up: the copy of it is due again, first
        assert replicator._wake.is_set()

    trio.run(main)
    assert replicator.due() == {"s3://x/p": ["a", "b"], "/r": ["a"]}
    replicator.begin_stream("s3://x/p", "b")
    replicator.streamed("s3://x/p", "b", 10)  # b streamed whole: copied, via the stream
    assert catalog.get("b")["repositories"]["s3://x/p"]["via"] == "stream"
    assert replicator.bytes_copied == {"s3://x/p": 10}
