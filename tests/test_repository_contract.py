"""The repository contract (rustydb_server/repository/base.py), run against every implementation."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_server.repository import (
    InvalidKey,
    LocalRepository,
    ObjectExists,
    ObjectNotFound,
    Repository,
    RepositoryError,
    open_repository,
)

KINDS = ["local", "s3"]


@pytest.fixture(params=KINDS)
def repo(request, tmp_path) -> Repository:
    if request.param == "local":
        return LocalRepository(str(tmp_path / "repo"))
    seaweed = request.getfixturevalue("seaweed")
    url = request.getfixturevalue("s3_prefix_url")
    return open_repository(f"{url}/some/prefix", seaweed.settings())


def keys(repo, prefix=""):
    return [i.key for i in repo.list(prefix)]


def test_is_a_repository(repo):
    assert isinstance(repo, Repository)
    assert repo.url


def test_put_get_stat_delete(repo):
    info = repo.put_bytes("backups/b1/data.rdb", b"hello world")
    assert info.key == "backups/b1/data.rdb" and info.size == 11
    assert repo.get_bytes("backups/b1/data.rdb") == b"hello world"
    st_ = repo.stat("backups/b1/data.rdb")
    assert st_ is not None and st_.size == 11 and st_.mtime > 0
    assert repo.stat("backups/b1/missing") is None
    assert repo.stat("backups/b1") is None  # a "directory" is not an object
    repo.delete("backups/b1/data.rdb")
    assert repo.stat("backups/b1/data.rdb") is None
    repo.delete("backups/b1/data.rdb")  # deleting a missing key is not an error
    with pytest.raises(ObjectNotFound):
        repo.get_bytes("backups/b1/data.rdb")
    with pytest.raises(ObjectNotFound):
        repo.open_stream("backups/b1/data.rdb")
    with pytest.raises(ObjectNotFound):
        repo.get_range("backups/b1/data.rdb", 0, 1)


def test_put_replaces_without_if_absent(repo):
    repo.put_bytes("catalog/index.json", b"one")
    repo.put_bytes("catalog/index.json", b"two, longer")
    assert repo.get_bytes("catalog/index.json") == b"two, longer"


def test_empty_object(repo):
    assert repo.put_stream("wal/empty", iter([])).size == 0
    assert repo.get_bytes("wal/empty") == b""
    assert list(repo.open_stream("wal/empty")) == []
    assert [i.size for i in repo.list("wal/")] == [0]


def test_stream_round_trip_and_chunks(repo):
    data = os.urandom(300_000)
    repo.put_stream("backups/x/big", (data[i : i + 7000] for i in range(0, len(data), 7000)))
    chunks = list(repo.open_stream("backups/x/big", chunk_size=65536))
    assert b"".join(chunks) == data
    assert all(len(c) <= 65536 for c in chunks)


def test_ranges(repo):
    data = bytes(range(256)) * 40
    repo.put_bytes("r", data)
    assert repo.get_range("r", 0, 10) == data[:10]
    assert repo.get_range("r", 1000, 500) == data[1000:1500]
    assert repo.get_range("r", len(data) - 3, 100) == data[-3:]  # short at the end
    assert repo.get_range("r", len(data), 10) == b""  # past the end
    assert repo.get_range("r", 5, 0) == b""
    with pytest.raises(RepositoryError):
        repo.get_range("r", -1, 5)


def test_list_is_sorted_complete_and_prefixed(repo):
    for k in ["wal/000000010000000000000002.walz", "wal/000000010000000000000001.walz", "catalog/index.json"]:
        repo.put_bytes(k, k.encode())
    repo.put_bytes("wal2/x", b"x")
    assert keys(repo) == [
        "catalog/index.json",
        "wal/000000010000000000000001.walz",
        "wal/000000010000000000000002.walz",
        "wal2/x",
    ]
    assert keys(repo, "wal/") == ["wal/000000010000000000000001.walz", "wal/000000010000000000000002.walz"]
    assert keys(repo, "wal") == keys(repo, "wal/") + ["wal2/x"]
    assert keys(repo, "wal/0000000100000000000000") == keys(repo, "wal/")
    assert keys(repo, "nothing/") == []
    sizes = {i.key: i.size for i in repo.list()}
    assert sizes["catalog/index.json"] == len(b"catalog/index.json")


def test_if_absent(repo):
    repo.put_bytes("wal/seg", b"segment bytes", if_absent=True)
    # the same bytes again (a put repeated after a crash) succeed
    assert repo.put_bytes("wal/seg", b"segment bytes", if_absent=True).size == 13
    assert repo.put_stream("wal/seg", iter([b"segment ", b"bytes"]), if_absent=True).size == 13
    with pytest.raises(ObjectExists) as e:
        repo.put_bytes("wal/seg", b"other bytes!!", if_absent=True)  # same size, different bytes
    assert "wal/seg" in str(e.value) and "different" in str(e.value)
    with pytest.raises(ObjectExists):
        repo.put_bytes("wal/seg", b"short", if_absent=True)
    assert repo.get_bytes("wal/seg") == b"segment bytes"
    assert keys(repo) == ["wal/seg"]


class Interrupted(Exception):
    pass


def test_interrupted_put_leaves_nothing(repo):
    def chunks():
        yield b"a" * 100_000
        yield b"b" * 100_000
        raise Interrupted("the source failed half way")

    with pytest.raises(Interrupted):
        repo.put_stream("backups/b2/file", chunks())
    assert keys(repo) == []
    assert repo.stat("backups/b2/file") is None
    # an interrupted replacement leaves the old object as it was
    repo.put_bytes("backups/b2/file", b"old")
    with pytest.raises(Interrupted):
        repo.put_stream("backups/b2/file", chunks())
    assert repo.get_bytes("backups/b2/file") == b"old"
    assert keys(repo) == ["backups/b2/file"]


def test_list_never_leaves_the_repository(repo, tmp_path):
    (tmp_path / "outside").write_bytes(b"not the repository's")
    repo.put_bytes("inside", b"x")
    for prefix in ("../", "../../", "./", "a/../", "..", "a//"):
        assert [i.key for i in repo.list(prefix) if ".." in i.key or i.key.startswith(".")] == [], prefix
    assert keys(repo, "..") == []


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/../b", "..", "a/./b", "trailing/", "back\\slash"])
def test_invalid_keys(repo, bad):
    with pytest.raises(InvalidKey):
        repo.put_bytes(bad, b"x")
    with pytest.raises(InvalidKey):
        repo.stat(bad)


def test_free_bytes(repo):
    free = repo.free_bytes()
    assert free is None or free > 0


_part = st.text(alphabet="abcXYZ019-_.=", min_size=1, max_size=8).filter(lambda p: p not in (".", ".."))
_key = st.lists(_part, min_size=1, max_size=3).map("/".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), offset=st.integers(0, 3500), length=st.integers(0, 3500), key=_key)
def test_property_range_is_a_slice(repo, data, offset, length, key):
    key = f"prop-{uuid.uuid4().hex[:8]}/{key}"
    repo.put_bytes(key, data)
    try:
        assert repo.get_range(key, offset, length) == data[offset : offset + length]
        assert [i.key for i in repo.list(key)] == [key]
        assert repo.stat(key).size == len(data)
    finally:
        repo.delete(key)


def test_open_repository_kinds(tmp_path):
    r = open_repository(str(tmp_path / "r"))
    assert isinstance(r, LocalRepository) and r.url == str(tmp_path / "r")
    with pytest.raises(RepositoryError):
        open_repository("")


def test_local_put_makes_private_directories(tmp_path):
    r = LocalRepository(str(tmp_path / "new" / "repo"))
    r.put_bytes("backups/b/f", b"x")
    assert os.stat(tmp_path / "new" / "repo" / "backups").st_mode & 0o777 == 0o700
    assert os.stat(r.path("backups/b/f")).st_mode & 0o777 == 0o600


def test_local_unusable_root_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"not a directory")
    r = LocalRepository(str(tmp_path / "file" / "repo"))
    with pytest.raises(RepositoryError) as e:
        r.put_bytes("backups/b/k", b"x")
    assert str(tmp_path / "file" / "repo") in str(e.value) and "backups/b/k" in str(e.value)
    assert "Traceback" not in str(e.value)


def test_put_stream_takes_a_buffer_the_caller_refills(repo):
    """A producer that reads into one bytearray and yields it each time: every chunk's bytes are kept as they were."""
    data = os.urandom(200_000)
    buf = bytearray(30_000)

    def chunks():
        for i in range(0, len(data), len(buf)):
            n = len(data[i : i + len(buf)])
            buf[:n] = data[i : i + n]
            yield memoryview(buf)[:n]

    repo.put_stream("k", chunks())
    assert repo.get_bytes("k") == data


def _no_file_under_file(keys_: set[str]) -> bool:
    """A local repository cannot hold both a/b and a/b/c (a file and a directory of one name)."""
    return not any(other.startswith(k + "/") for k in keys_ for other in keys_)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keyset=st.sets(_key, min_size=1, max_size=8).filter(_no_file_under_file),
    extra_prefixes=st.lists(st.text(alphabet="abcXYZ019-_.=/", max_size=6), max_size=3),
)
def test_property_list_is_the_sorted_keys_with_the_prefix(repo, keyset, extra_prefixes):
    base = f"p{uuid.uuid4().hex[:8]}/"
    for k in keyset:
        repo.put_bytes(base + k, k.encode())
    try:
        full = sorted(base + k for k in keyset)
        prefixes = {base, *(base + k[: len(k) // 2] for k in keyset), *(base + p.lstrip("/") for p in extra_prefixes)}
        for prefix in prefixes:
            assert keys(repo, prefix) == [k for k in full if k.startswith(prefix)], prefix
    finally:
        for k in keyset:
            repo.delete(base + k)


def test_local_if_absent_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    r = LocalRepository(str(tmp_path / "repo"))
    r.put_bytes("wal/seg", b"segment", if_absent=True)
    assert r.put_bytes("wal/seg", b"segment", if_absent=True).size == 7
    with pytest.raises(ObjectExists):
        r.put_bytes("wal/seg", b"another", if_absent=True)
    assert r.get_bytes("wal/seg") == b"segment"
    assert keys(r) == ["wal/seg"]
